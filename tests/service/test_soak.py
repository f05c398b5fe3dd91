"""A test-sized soak: 100 consecutive small jobs through one serving host; its memory must not keep growing.

Each job runs in its own worker process, so the service itself only keeps job records, its control
endpoint and its logs. The RSS of the service (and of the guest, which runs its role of every job
in-process here) is read from /proc after a warm-up and at the end; ``VFL_SOAK_JOBS`` changes the
number of jobs. Run with ``-s`` to see the table.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from tests.service.serving import Services, job_file, served_federation, state

JOBS = int(os.environ.get("VFL_SOAK_JOBS", "100"))
WARM_UP = 10


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


@pytest.mark.slow
def test_a_hundred_small_jobs_do_not_grow_the_service(tmp_path):
    from vfl.parties.control import submit_job

    fed = served_federation(tmp_path, guest=None)
    rows = []
    with Services(fed, ("host",)) as services:
        pid = services.procs["host"].pid
        start = time.monotonic()
        for i in range(JOBS):
            submit_job(fed.ws["guest"], job_file(fed, f"soak-{i}", "psi"), poll=0.2)
            if i + 1 in (1, WARM_UP, JOBS // 2, JOBS):
                rows.append((i + 1, rss_mib(pid), rss_mib(os.getpid()), time.monotonic() - start))
        for i in (0, JOBS - 1):
            deadline = time.monotonic() + 30
            while state(fed, "host", f"soak-{i}") != "completed":
                assert time.monotonic() < deadline
                time.sleep(0.1)
    print("\njobs  service RSS MiB  guest RSS MiB  elapsed s")
    for n, service, guest, elapsed in rows:
        print(f"{n:4d}  {service:15.1f}  {guest:13.1f}  {elapsed:9.1f}")
    warm = next(r for r in rows if r[0] == WARM_UP)
    end = rows[-1]
    assert end[1] - warm[1] < 16, rows  # the service: bounded (job records live in SQLite, workers exit)
    assert end[2] - warm[2] < 64, rows  # the guest ran every job's role in this process
