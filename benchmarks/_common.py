"""Helpers the benchmark scripts share (each script puts this folder on ``sys.path``)."""

from __future__ import annotations

import multiprocessing as mp
import queue
import time
from collections.abc import Sequence
from typing import Any


def parse_sizes(text: str | None, quick: bool, quick_sizes: Sequence[int], sizes: Sequence[int]) -> list[int]:
    """``--sizes`` as comma-separated numbers if given, else the ``--quick`` or the full default list."""
    return [int(s) for s in text.split(",")] if text else list(quick_sizes if quick else sizes)


def run_two_parties(target: Any, args: tuple[Any, ...], timeout: float = 3600.0) -> dict[str, tuple]:
    """Run ``target(role, *args, conn, barrier, out)`` as a guest and a host process (spawned), joined by a
    duplex Pipe and a two-party Barrier; each puts ``(role, *report)`` on ``out``. Returns role -> report,
    or exits naming the party that died (its traceback is on stderr)."""
    context = mp.get_context("spawn")
    left, right = context.Pipe(duplex=True)
    barrier = context.Barrier(2)
    out = context.Queue()
    procs = [
        context.Process(target=target, args=(role, *args, conn, barrier, out), name=role)
        for role, conn in (("guest", left), ("host", right))
    ]
    for p in procs:
        p.start()
    reports: dict[str, tuple] = {}
    deadline = time.monotonic() + timeout
    while len(reports) < len(procs):
        try:
            report = out.get(timeout=2)
        except queue.Empty:
            dead = [p.name for p in procs if p.exitcode not in (None, 0)]
            if dead or time.monotonic() > deadline:
                for p in procs:
                    p.terminate()
                raise SystemExit(f"{', '.join(dead) or 'a party'} failed (see its traceback above)") from None
            continue
        reports[report[0]] = report[1:]
    for p in procs:
        p.join()
        if p.exitcode:
            raise SystemExit(f"{p.name} failed with exit code {p.exitcode}")
    return reports
