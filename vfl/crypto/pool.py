"""An explicit process pool for the heavy big-integer work (no module-level state).

The engine's kernels (:mod:`vfl.crypto._kernels`) are plain functions over ``gmpy2`` integers, so a
chunk runs the same in-process, on a worker here, or on a Dask worker. Callers create one
:class:`WorkerPool`, pass it to the operations that accept ``workers=``, and close it (or use it as a
context manager). Work smaller than ``min_items`` encryption-equivalents (~1 ms each) per worker stays
in the calling process: starting a chunk costs a few ms of pickling and scheduling.

Workers are started with the ``forkserver`` method (``spawn`` where unavailable): forking a process
that runs Arrow or Flight threads can deadlock.

**Workers die with their party.** A party killed with SIGKILL cannot shut its pool down, and a
worker blocked on its task queue never notices (it holds both ends of the queue's pipe). Nor does
its parent, the forkserver: each worker holds a copy of the forkserver's "alive" pipe, so the
forkserver outlives the party as long as the workers do, and they wait on each other for ever. Every
worker therefore runs :func:`watch_parent` as its initializer: a daemon thread that polls the party's
pid (gone, zombie, or reused: start time from ``/proc`` on Linux) and calls ``os._exit``; the
forkserver and the resource tracker then see EOF and exit. ``vfl.psi.ecdh.ScalarMultiplier`` uses the
same initializer.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from typing import Any, TypeVar

from vfl.crypto import _kernels
from vfl.crypto.keys import PrivateKey, PublicKey

log = logging.getLogger(__name__)
T = TypeVar("T")
PARENT_POLL_SECONDS = 0.25


def watch_parent(creator_pid: int, poll_seconds: float = PARENT_POLL_SECONDS) -> None:
    """Worker initializer: make this process exit when the party that created the pool dies.

    The worker's parent is the forkserver, which does *not* exit with the party: every worker holds
    a copy of the forkserver's "alive" pipe (so that it could fork through it), so the forkserver
    waits for the workers while the workers wait on their task queue. Watching ``os.getppid()`` or
    asking for ``PR_SET_PDEATHSIG`` would therefore never fire. Instead a daemon thread checks the
    creator itself every ``poll_seconds`` -- gone, a zombie, or its pid reused by a process with
    another start time -- and the parent (for ``spawn``, where the creator *is* the parent), and
    calls ``os._exit(0)``. Once the workers are gone the forkserver and the resource tracker see
    EOF and exit too. A plain module-level function: picklable by reference for any executor.
    """
    token = _start_token(creator_pid)
    parent = os.getppid()
    if not _same_process(creator_pid, token):  # the party died before we started watching
        os._exit(0)
    thread = threading.Thread(
        target=_poll_creator,
        args=(creator_pid, token, parent, poll_seconds),
        name="vfl-parent-watch",
        daemon=True,
    )
    thread.start()


def _poll_creator(creator_pid: int, token: bytes | None, parent: int, poll_seconds: float) -> None:
    while True:
        time.sleep(poll_seconds)
        if os.getppid() != parent or not _same_process(creator_pid, token):
            os._exit(0)


def _proc_stat(pid: int) -> list[bytes] | None:
    """Fields of ``/proc/<pid>/stat`` after the command name (state first), or None if unavailable."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()
    except (OSError, IndexError):
        return None


def _start_token(pid: int) -> bytes | None:
    """The process start time (clock ticks since boot) on Linux: tells a reused pid apart."""
    fields = _proc_stat(pid)
    return fields[19] if fields and len(fields) > 19 else None


def _same_process(pid: int, token: bytes | None) -> bool:
    if not _pid_alive(pid):
        return False
    return token is None or _start_token(pid) == token


def _pid_alive(pid: int) -> bool:
    """True if ``pid`` exists and is not a zombie (a killed but not yet reaped party counts as dead)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    fields = _proc_stat(pid)
    return fields is None or fields[0] not in (b"Z", b"X")


class Chunked:
    """``should_split`` and ``map_chunks`` of a backend with ``workers``, ``min_items``, ``_closed`` and
    ``submit`` (the local :class:`WorkerPool` and ``vfl.compute.DaskBackend`` share them)."""

    workers: int
    min_items: int
    _closed: bool

    def submit(self, fn: Callable[..., T], *args: Any) -> Any:
        raise NotImplementedError

    def should_split(self, items: int, weight: float = 1.0) -> bool:
        """True if ``items`` units of ``weight`` (1.0 ~ one encryption, ~1 ms) are worth splitting.

        Splitting pays once every worker gets at least ``min_items`` weighted units.
        """
        return not self._closed and self.workers > 1 and items * weight >= 2 * self.min_items

    def map_chunks(
        self,
        fn: Callable[..., list[T]],
        items: Sequence[Any],
        args: tuple[Any, ...] = (),
        chunks: int | None = None,
    ) -> list[T]:
        """``fn(chunk, *args)`` over contiguous chunks of ``items`` on the workers, results concatenated in order."""
        return map_chunks(self.submit, chunks or self.workers, fn, items, args)


class WorkerPool(Chunked):
    """A lazily started process pool of ``workers`` processes (default ``os.cpu_count()``).

    ``workers=1`` (or 0) means: do everything in the calling process.
    """

    def __init__(
        self, workers: int | None = None, *, min_items: int = 64, start_method: str | None = None
    ) -> None:
        self.workers = max(1, int(workers if workers is not None else (os.cpu_count() or 1)))
        self.min_items = max(1, int(min_items))
        if start_method is None:
            methods = multiprocessing.get_all_start_methods()
            start_method = "forkserver" if "forkserver" in methods else "spawn"
        self.start_method = start_method
        self._executor: ProcessPoolExecutor | None = None
        self._closed = False

    def __repr__(self) -> str:
        state = "closed" if self._closed else ("running" if self._executor else "idle")
        return f"WorkerPool(workers={self.workers}, {state})"

    @property
    def executor(self) -> ProcessPoolExecutor:
        if self._closed:
            raise RuntimeError("this WorkerPool has been closed")
        if self._executor is None:
            ctx = multiprocessing.get_context(self.start_method)
            self._executor = ProcessPoolExecutor(
                max_workers=self.workers, mp_context=ctx, initializer=watch_parent, initargs=(os.getpid(),)
            )
            log.debug("started %d crypto workers (%s)", self.workers, self.start_method)
        return self._executor

    def submit(self, fn: Callable[..., T], *args: Any) -> Future[T]:
        """Run ``fn(*args)`` on a worker."""
        return self.executor.submit(fn, *args)

    def warm_up(self, key: PublicKey | PrivateKey) -> None:
        """Start the workers and build the key's fixed-base table in each (best effort, ~0.3 s).

        With the :class:`PrivateKey` (the key owner) the workers build the half-size CRT tables
        instead. Call it at job start, before latency matters; otherwise the first large operation
        pays for process start-up and table construction.
        """
        if self.workers <= 1:
            return
        if isinstance(key, PrivateKey):
            pk = key.public_key
            fn, args = (
                _kernels.warm_crt_tables,
                (pk.h_s, key.p, key.q, pk.djn_exponent_bits, key.crt_window, 0.2),
            )
        else:
            pk = key
            fn, args = _kernels.warm_table, (pk.h_s, pk.n_square, pk.djn_exponent_bits, pk.djn_window, 0.2)
        futures = [self.submit(fn, *args) for _ in range(self.workers)]
        pids = {fut.result() for fut in futures}
        log.debug("warmed %d of %d workers", len(pids), self.workers)

    def pids(self) -> list[int]:
        """Process ids of the running workers (empty before the pool starts)."""
        if self._executor is None:
            return []
        return sorted(p.pid for p in list(self._executor._processes.values()) if p.pid is not None)

    def close(self) -> None:
        """Stop the workers (cancelling queued work) and wait for them to exit. Idempotent."""
        self._closed = True
        if self._executor is not None:
            self._executor.shutdown(wait=True, cancel_futures=True)
            self._executor = None

    def __enter__(self) -> WorkerPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def map_chunks(
    submit: Callable[..., Any],
    parts: int,
    fn: Callable[..., list[T]],
    items: Sequence[Any],
    args: tuple[Any, ...],
) -> list[T]:
    """``fn(chunk, *args)`` over ``parts`` contiguous chunks of ``items`` through ``submit`` (any backend's),
    results concatenated in order."""
    count = len(items)
    parts = max(1, min(parts, count))
    bounds = [count * i // parts for i in range(parts + 1)]
    futures = [submit(fn, list(items[bounds[i] : bounds[i + 1]]), *args) for i in range(parts)]
    out: list[T] = []
    for fut in futures:
        out.extend(fut.result())
    return out
