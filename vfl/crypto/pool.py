"""An explicit process pool for the heavy big-integer work (no module-level state).

The engine's kernels (:mod:`vfl.crypto._kernels`) are plain functions over ``gmpy2`` integers, so a
chunk runs the same in-process, on a worker here, or on a Dask worker. Callers create one
:class:`WorkerPool`, pass it to the operations that accept ``workers=``, and close it (or use it as a
context manager). Work smaller than ``min_items`` encryption-equivalents (~1 ms each) per worker stays
in the calling process: starting a chunk costs a few ms of pickling and scheduling.

Workers are started with the ``forkserver`` method (``spawn`` where unavailable): forking a process
that runs Arrow or Flight threads can deadlock.

**Workers die with their parent.** A party killed with SIGKILL cannot shut its pool down, and a
worker blocked on its task queue never notices (it holds both ends of the queue's pipe). Every worker
therefore runs :func:`watch_parent` as its initializer. The process chain is ``party -> forkserver ->
worker`` (``party -> worker`` with ``spawn``); the forkserver exits as soon as the party dies (its
"alive" pipe from the party reaches EOF), the worker is re-parented, and the watchdog sees
``os.getppid()`` change and calls ``os._exit``. On Linux the worker also asks for
``PR_SET_PDEATHSIG`` (SIGKILL) when its parent is the forkserver (a single-threaded process; with
``spawn`` the parent *thread* may be any short-lived submitting thread, so only the poll is used).
``vfl.psi.ecdh.ScalarMultiplier`` uses the same initializer.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import multiprocessing
import os
import signal
import sys
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
_PR_SET_PDEATHSIG = 1


def watch_parent(creator_pid: int, poll_seconds: float = PARENT_POLL_SECONDS) -> None:
    """Worker initializer: make this process exit when the process that started it dies.

    ``creator_pid`` is the pid of the process that created the pool (the party). The worker's
    actual parent is the forkserver (or the party itself with ``spawn``); when that parent goes
    away the worker is re-parented and a daemon thread, polling ``os.getppid()`` every
    ``poll_seconds``, calls ``os._exit(0)``. On Linux, when the parent is not the creator (i.e. it
    is the single-threaded forkserver), ``PR_SET_PDEATHSIG`` makes the kernel kill the worker at
    once. A plain module-level function: picklable by reference for any executor.
    """
    parent = os.getppid()
    if parent != creator_pid and sys.platform.startswith("linux"):
        _set_parent_death_signal()
    if os.getppid() != parent or not _pid_alive(creator_pid):  # the parent died before we watched
        os._exit(0)
    thread = threading.Thread(
        target=_poll_parent, args=(parent, poll_seconds), name="vfl-parent-watch", daemon=True
    )
    thread.start()


def _set_parent_death_signal() -> None:
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
    except (OSError, AttributeError):  # pragma: no cover - the poll below still applies
        pass


def _poll_parent(parent: int, poll_seconds: float) -> None:
    while True:
        time.sleep(poll_seconds)
        if os.getppid() != parent:
            os._exit(0)


def _pid_alive(pid: int) -> bool:
    """True if ``pid`` exists and is not a zombie (a killed but not yet reaped party counts as dead)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            state = f.read().rsplit(b")", 1)[1].split()[0]
    except (OSError, IndexError):
        return True
    return state not in (b"Z", b"X")


class WorkerPool:
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

    def should_split(self, items: int, weight: float = 1.0) -> bool:
        """True if ``items`` units of ``weight`` (1.0 ~ one encryption, ~1 ms) are worth splitting.

        Splitting pays once every worker gets at least ``min_items`` weighted units.
        """
        return not self._closed and self.workers > 1 and items * weight >= 2 * self.min_items

    def submit(self, fn: Callable[..., T], *args: Any) -> Future[T]:
        """Run ``fn(*args)`` on a worker."""
        return self.executor.submit(fn, *args)

    def map_chunks(
        self,
        fn: Callable[..., list[T]],
        items: Sequence[Any],
        args: tuple[Any, ...] = (),
        chunks: int | None = None,
    ) -> list[T]:
        """``fn(chunk, *args)`` over contiguous chunks of ``items`` on the workers, results concatenated in order."""
        count = len(items)
        parts = max(1, min(chunks or self.workers, count))
        bounds = [count * i // parts for i in range(parts + 1)]
        futures = [self.submit(fn, list(items[bounds[i] : bounds[i + 1]]), *args) for i in range(parts)]
        out: list[T] = []
        for fut in futures:
            out.extend(fut.result())
        return out

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
