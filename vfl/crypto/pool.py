"""An explicit process pool for the heavy big-integer work (no module-level state).

The engine's kernels (:mod:`vfl.crypto._kernels`) are plain functions over ``gmpy2`` integers, so a
chunk runs the same in-process, on a worker here, or on a Dask worker. Callers create one
:class:`WorkerPool`, pass it to the operations that accept ``workers=``, and close it (or use it as a
context manager). Work smaller than ``min_items`` encryption-equivalents (~1 ms each) per worker stays
in the calling process: starting a chunk costs a few ms of pickling and scheduling.

Workers are started with the ``forkserver`` method (``spawn`` where unavailable): forking a process
that runs Arrow or Flight threads can deadlock.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    from vfl.crypto.keys import PublicKey

log = logging.getLogger(__name__)
T = TypeVar("T")


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
            self._executor = ProcessPoolExecutor(max_workers=self.workers, mp_context=ctx)
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

    def warm_up(self, public_key: PublicKey) -> None:
        """Start the workers and build the key's fixed-base table in each (best effort, ~0.3 s).

        Call it at job start, before latency matters; otherwise the first large operation pays for
        process start-up and table construction.
        """
        if self.workers <= 1:
            return
        from vfl.crypto import _kernels

        pk = public_key
        args = (pk.h_s, pk.n_square, pk.djn_exponent_bits, pk.djn_window, 0.2)
        futures = [self.submit(_kernels.warm_table, *args) for _ in range(self.workers)]
        pids = {fut.result() for fut in futures}
        log.debug("warmed %d of %d workers", len(pids), self.workers)

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
