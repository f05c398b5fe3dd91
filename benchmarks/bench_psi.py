"""Benchmark: vfl's ECDH PSI against openmined-psi, guest and host as separate processes.

Both protocols run on the same id sets (50 % overlap) in the same run on the same machine, each
party in its own process, talking over a loopback transport (a multiprocessing Pipe carrying
Arrow IPC bytes for vfl, serialized protobufs for openmined-psi). For each run the table shows
the wall time (from a barrier both parties pass once their data is loaded, to the last party
finishing), items per second per party (ids of that party / wall time), and each party's peak
resident memory (its main process; vfl's pool workers separately).

    python benchmarks/bench_psi.py            # 100k x 100k and 1M x 1M
    python benchmarks/bench_psi.py --quick    # 10k x 10k and 100k x 100k

Targets (issue 3): >= 3.5x openmined-psi's throughput at 1M, and 1M x 1M in <= 150 s on 2 cores.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import resource
import sys
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from _common import parse_sizes, run_two_parties  # noqa: E402

from vfl.errors import PeerTimeoutError, TransportError  # noqa: E402
from vfl.protocols.psi import run_guest, run_host  # noqa: E402
from vfl.psi import PsiOptions, ScalarMultiplier  # noqa: E402
from vfl.transport.channel import Channel  # noqa: E402


class PipeChannel(Channel):
    """A two-party loopback ``Channel`` over a duplex multiprocessing ``Connection``.

    A reader thread drains the pipe into an inbox so that both parties can send large messages at
    the same time without deadlocking on full socket buffers.
    """

    def __init__(self, party: str, peer: str, conn: Any) -> None:
        super().__init__(party)
        self.peer = peer
        self.conn = conn
        self._inbox: dict[str, bytes] = {}
        self._cond = threading.Condition()
        self._send_lock = threading.Lock()
        self._closed = False
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        while True:
            try:
                tag = self.conn.recv_bytes().decode()
                payload = self.conn.recv_bytes()
            except (EOFError, OSError):
                with self._cond:
                    self._closed = True
                    self._cond.notify_all()
                return
            with self._cond:
                self._inbox[tag] = payload
                self._cond.notify_all()

    def _send_bytes(self, to: str, tag: str, payload: bytes) -> None:
        if to != self.peer:
            raise TransportError(f"this loopback channel only reaches '{self.peer}', not '{to}'")
        with self._send_lock:
            self.conn.send_bytes(tag.encode())
            self.conn.send_bytes(payload)

    def _recv_bytes(self, frm: str, tag: str, timeout: float) -> bytes:
        with self._cond:
            self._cond.wait_for(lambda: tag in self._inbox or self._closed, timeout=timeout)
            if tag in self._inbox:
                return self._inbox.pop(tag)
        raise PeerTimeoutError(f"party '{frm}' did not send '{tag}' within {timeout:g} s")

    send_raw = _send_bytes
    recv_raw = _recv_bytes


def make_ids(role: str, n: int) -> list[str]:
    """Guest ids 0..n-1 and host ids n/2..3n/2-1 (50 % overlap), as e-mail-like strings."""
    start = 0 if role == "guest" else n // 2
    return [f"customer-{i:09d}@example.com" for i in range(start, start + n)]


def _maxrss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _worker_rss(_: int) -> tuple[int, float]:
    time.sleep(0.3)
    return os.getpid(), _maxrss_mb()


def vfl_party(role: str, n: int, workers: int, conn: Any, barrier: Any, out: Any) -> None:
    ids = make_ids(role, n)
    peer = "host" if role == "guest" else "guest"
    channel = PipeChannel(role, peer, conn)
    options = PsiOptions(workers=workers, timeout=1800)
    context = mp.get_context("forkserver")
    with ProcessPoolExecutor(max_workers=workers, mp_context=context) as pool:
        list(pool.map(_worker_rss, range(workers)))  # start the workers before the clock starts
        multiplier = ScalarMultiplier(workers=workers, chunk_size=options.chunk_size, executor=pool)
        barrier.wait()
        t0 = time.perf_counter()
        if role == "guest":
            result = run_guest(channel, ids, ["host"], options, multiplier=multiplier)
        else:
            result = run_host(channel, ids, "guest", options, multiplier=multiplier)
        elapsed = time.perf_counter() - t0
        worker_rss = dict(pool.map(_worker_rss, range(workers * 2)))
    out.put((role, elapsed, result.size, _maxrss_mb(), max(worker_rss.values())))


def openmined_party(role: str, n: int, workers: int, conn: Any, barrier: Any, out: Any) -> None:
    import private_set_intersection.python as psi

    ids = make_ids(role, n)
    peer = "host" if role == "guest" else "guest"
    channel = PipeChannel(role, peer, conn)
    barrier.wait()
    t0 = time.perf_counter()
    if role == "host":  # openmined "server"
        server = psi.server.CreateWithNewKey(True)
        setup = server.CreateSetupMessage(1e-9, n, ids, psi.DataStructure.RAW)
        channel.send_raw(peer, "setup", setup.SerializeToString())
        request = psi.Request()
        request.ParseFromString(channel.recv_raw(peer, "request", 1800))
        channel.send_raw(peer, "response", server.ProcessRequest(request).SerializeToString())
        size = -1
    else:  # openmined "client"
        client = psi.client.CreateWithNewKey(True)
        channel.send_raw(peer, "request", client.CreateRequest(ids).SerializeToString())
        setup = psi.ServerSetup()
        setup.ParseFromString(channel.recv_raw(peer, "setup", 1800))
        response = psi.Response()
        response.ParseFromString(channel.recv_raw(peer, "response", 1800))
        size = len(client.GetIntersection(setup, response))
    elapsed = time.perf_counter() - t0
    out.put((role, elapsed, size, _maxrss_mb(), 0.0))


@dataclass
class Run:
    system: str
    n: int
    wall: float
    size: int
    rss: dict[str, float]
    worker_rss: dict[str, float]


def run_pair(target: Any, n: int, workers: int, system: str) -> Run:
    reports = run_two_parties(target, (n, workers))  # role -> (elapsed, size, rss, worker rss)
    wall = max(r[0] for r in reports.values())
    return Run(
        system,
        n,
        wall,
        reports["guest"][1],
        {k: v[2] for k, v in reports.items()},
        {k: v[3] for k, v in reports.items()},
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="10k and 100k only")
    parser.add_argument(
        "--sizes", type=str, default=None, help="comma-separated set sizes (overrides --quick)"
    )
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 2, help="vfl pool workers per party")
    parser.add_argument("--skip-baseline", action="store_true", help="do not run openmined-psi")
    args = parser.parse_args()
    sizes = parse_sizes(args.sizes, args.quick, [10_000, 100_000], [100_000, 1_000_000])

    print(
        f"PSI benchmark: {os.cpu_count()} cores, vfl workers per party: {args.workers}, 50 % overlap",
        flush=True,
    )
    rows = []
    for n in sizes:
        ours = run_pair(vfl_party, n, args.workers, "vfl")
        assert ours.size == n // 2, f"vfl found {ours.size} shared ids, expected {n // 2}"
        print(f"  vfl           {n:>9,} x {n:<9,} {ours.wall:8.1f} s", flush=True)
        base = None
        if not args.skip_baseline:
            base = run_pair(openmined_party, n, args.workers, "openmined-psi")
            assert base.size == n // 2, f"openmined-psi found {base.size} shared ids, expected {n // 2}"
            print(f"  openmined-psi {n:>9,} x {n:<9,} {base.wall:8.1f} s", flush=True)
        rows.append((ours, base))

    header = (
        f"{'n x n':>21} | {'system':<13} | {'wall s':>7} | {'items/s/party':>13} | "
        f"{'peak MB guest':>13} | {'peak MB host':>12} | {'worker MB':>9} | {'throughput ratio':>16}"
    )
    print()
    print(header)
    print("-" * len(header))
    for ours, base in rows:
        for run in (ours, base):
            if run is None:
                continue
            ratio = (
                f"{base.wall / ours.wall:.2f}x"
                if (base is not None and run is ours)
                else ("1.00x" if run is base else "n/a")
            )
            workers = f"{max(run.worker_rss.values()):9.0f}" if run.system == "vfl" else f"{'-':>9}"
            print(
                f"{f'{run.n:,} x {run.n:,}':>21} | {run.system:<13} | {run.wall:7.1f} | {run.n / run.wall:13,.0f} | "
                f"{run.rss['guest']:13.0f} | {run.rss['host']:12.0f} | {workers} | {ratio:>16}"
            )
    print(
        "\nthroughput ratio = vfl items/s / openmined-psi items/s on the same sets (higher is better; target >= 3.5x at 1M)"
    )


if __name__ == "__main__":
    main()
