"""Worker processes exit when the party that started them is killed (no orphans after SIGKILL).

A real child process starts a crypto :class:`WorkerPool` (one worker busy on a long task, one idle)
and a PSI :class:`ScalarMultiplier` pool, prints every pid (workers and the forkserver), and waits;
the test SIGKILLs it and polls the pids until they are gone (zombies count as gone: they are only
waiting for a re-parented reaper).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from vfl.crypto.pool import _pid_alive

ROOT = Path(__file__).resolve().parents[2]

PARTY = textwrap.dedent(
    """
    import json, multiprocessing, os, sys, time
    from vfl.crypto import WorkerPool
    from vfl.psi.ecdh import ScalarMultiplier

    start_method = sys.argv[1]
    pool = WorkerPool(2, start_method=start_method)
    pool.submit(time.sleep, 300)  # one worker busy when the party dies
    pool.submit(os.getpid).result()  # and a second, idle one
    psi = ScalarMultiplier(workers=2)
    executor = psi._pool()
    [f.result() for f in [executor.submit(time.sleep, 0.5) for _ in range(2)]]
    psi_pids = sorted(p.pid for p in executor._processes.values())
    from multiprocessing import forkserver
    server = forkserver._forkserver._forkserver_pid  # the PSI pool always uses it where available
    print(json.dumps({"crypto": pool.pids(), "psi": psi_pids, "forkserver": server}), flush=True)
    time.sleep(300)
    """
)


@pytest.mark.parametrize("start_method", ["forkserver", "spawn"])
def test_workers_exit_when_the_party_is_killed(start_method):
    if start_method not in __import__("multiprocessing").get_all_start_methods():
        pytest.skip(f"{start_method} is not available here")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    party = subprocess.Popen(
        [sys.executable, "-c", PARTY, start_method], stdout=subprocess.PIPE, text=True, env=env, cwd=ROOT
    )
    try:
        line = party.stdout.readline()
        assert line, f"the party process exited early (rc={party.poll()})"
        info = json.loads(line)
        workers = info["crypto"] + info["psi"]
        assert len(info["crypto"]) == 2 and len(info["psi"]) == 2
        assert all(_pid_alive(pid) for pid in workers)
        if Path("/proc").exists():  # the real chain: party -> forkserver -> worker, or party -> worker
            if info["forkserver"]:
                assert _parent_of(info["forkserver"]) == party.pid
            expected = info["forkserver"] if start_method == "forkserver" else party.pid
            assert all(_parent_of(pid) == expected for pid in info["crypto"])
            assert all(_parent_of(pid) in (info["forkserver"], party.pid) for pid in info["psi"])
    except BaseException:
        party.kill()
        party.wait()
        raise
    party.send_signal(signal.SIGKILL)
    party.wait(timeout=10)
    watched = workers + ([info["forkserver"]] if info["forkserver"] else [])
    deadline = time.monotonic() + 10
    alive = watched
    while alive and time.monotonic() < deadline:
        time.sleep(0.05)
        alive = [pid for pid in watched if _pid_alive(pid)]
    for pid in alive:  # do not leave orphans behind if the test fails
        os.kill(pid, signal.SIGKILL)
    assert not alive, f"processes {alive} outlived their SIGKILLed party by 10 s"


def _parent_of(pid: int) -> int | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_bytes()
    except OSError:
        return None
    return int(stat.rsplit(b")", 1)[1].split()[1])
