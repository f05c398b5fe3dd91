"""Scalar multiplication of many Curve25519 points by a secret scalar, chunked over a process pool.

X25519 from the ``cryptography`` package (OpenSSL) computes ``scalar * point`` on u-coordinates:
``X25519PrivateKey(scalar).exchange(X25519PublicKey(point))``. X25519 clamps the scalar, and
clamped scalars commute (``X(a, X(b, P)) == X(b, X(a, P))``), which is all ECDH PSI needs.

One operation costs ~50 us (~20k per second per core), so large sets are cut into chunks of
``chunk_size`` points that worker processes multiply: a worker receives the 32-byte scalar and a
bytes buffer of points and returns a bytes buffer. At most ``2 * workers`` chunks are in flight,
so memory stays bounded; points live in NumPy ``S32`` arrays (one 32-byte row per point), never as
millions of Python objects. Below ``parallel_threshold`` points the work is done in this process,
which avoids starting a pool for small jobs.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Executor, Future, ProcessPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey

from vfl.crypto.pool import watch_parent
from vfl.errors import ConfigError, ProtocolError
from vfl.psi.hashing import POINT_BYTES, POINT_DTYPE, hash_ids

log = logging.getLogger(__name__)

SCALAR_BYTES = 32
DEFAULT_CHUNK_SIZE = 32768
DEFAULT_PARALLEL_THRESHOLD = 65536


@dataclass(frozen=True)
class SecretScalar:
    """A party's secret X25519 scalar for one job; drawn fresh per job and never sent to a peer."""

    value: bytes = field(repr=False)

    def __post_init__(self) -> None:
        if not isinstance(self.value, bytes) or len(self.value) != SCALAR_BYTES:
            raise ConfigError(f"a PSI secret scalar must be {SCALAR_BYTES} bytes")

    @classmethod
    def generate(cls) -> SecretScalar:
        """A fresh uniformly random scalar from the operating system's CSPRNG."""
        return cls(os.urandom(SCALAR_BYTES))

    def __repr__(self) -> str:
        return "SecretScalar(<hidden>)"


def multiply_buffer(scalar: bytes, points: bytes) -> bytes:
    """``scalar * P`` for every 32-byte point ``P`` in ``points``; the worker function (picklable).

    A point whose product is the identity (a low-order point, never the hash of an id and never
    an honest peer's product) raises ``ProtocolError``: only a broken or malicious peer sends one.
    """
    if len(points) % POINT_BYTES:
        raise ProtocolError(
            f"a buffer of points must be a multiple of {POINT_BYTES} bytes, got {len(points)}"
        )
    exchange = X25519PrivateKey.from_private_bytes(scalar).exchange
    load = X25519PublicKey.from_public_bytes
    try:
        return b"".join(
            [exchange(load(points[i : i + POINT_BYTES])) for i in range(0, len(points), POINT_BYTES)]
        )
    except ValueError as exc:
        raise ProtocolError(
            "received a low-order Curve25519 point; the peer's PSI messages are malformed or malicious"
        ) from exc


def hash_and_multiply(scalar: bytes, salt: bytes, ids: list[str]) -> bytes:
    """``scalar * H(id)`` for every normalized id string; the worker function for a party's own ids.

    Hashing in the workers keeps the party's main process free and overlaps it with the
    scalar multiplications.
    """
    return multiply_buffer(scalar, hash_ids(ids, salt).tobytes())


class ScalarMultiplier:
    """Multiplies arrays of points by secret scalars, in chunks, on a process pool for large inputs.

    Use as a context manager (or call ``close``) so a pool it started is shut down. Pass
    ``executor`` to share a pool you own (it is then not shut down here). The pool uses the
    ``forkserver`` start method where available: forking a process that runs threads (the
    in-process simulation does) can deadlock. Its workers exit when this process dies
    (:func:`vfl.crypto.pool.watch_parent`), even if it is SIGKILLed.
    """

    def __init__(
        self,
        *,
        workers: int | None = None,
        chunk_size: int = DEFAULT_CHUNK_SIZE,
        parallel_threshold: int = DEFAULT_PARALLEL_THRESHOLD,
        executor: Executor | None = None,
    ) -> None:
        if chunk_size < 1:
            raise ConfigError(f"PSI option chunk_size must be >= 1, got {chunk_size}")
        if workers is not None and workers < 1:
            raise ConfigError(f"PSI option workers must be >= 1, got {workers}")
        self.workers = workers or os.cpu_count() or 1
        self.chunk_size = chunk_size
        self.parallel_threshold = parallel_threshold
        self._executor = executor
        self._owned = False

    def __enter__(self) -> ScalarMultiplier:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Shut down the pool this multiplier started (a shared executor is left alone)."""
        if self._owned and self._executor is not None:
            self._executor.shutdown(wait=True, cancel_futures=True)
            self._executor = None
            self._owned = False

    def _pool(self) -> Executor:
        if self._executor is None:
            methods = multiprocessing.get_all_start_methods()
            context = multiprocessing.get_context("forkserver" if "forkserver" in methods else "spawn")
            self._executor = ProcessPoolExecutor(
                max_workers=self.workers,
                mp_context=context,
                initializer=watch_parent,
                initargs=(os.getpid(),),
            )
            self._owned = True
            log.debug("started a pool of %d PSI workers", self.workers)
        return self._executor

    def _parallel(self, n: int) -> bool:
        return n >= self.parallel_threshold and (self.workers > 1 or self._executor is not None)

    def _chunk(self, n: int) -> int:
        """Chunk length for ``n`` items: at most ``chunk_size``, and small enough that every worker
        gets several chunks (a last round with one big chunk would leave the other cores idle)."""
        return max(1, min(self.chunk_size, -(-n // (8 * self.workers))))

    def _run(self, n: int, tasks: Iterator[tuple[Any, ...]]) -> Iterator[np.ndarray]:
        """Run ``(function, *args)`` tasks in order, in this process or on the pool with a bounded window."""
        if not self._parallel(n):
            for function, *args in tasks:
                yield np.frombuffer(function(*args), dtype=POINT_DTYPE)
            return
        pool = self._pool()
        window = 2 * self.workers
        pending: deque[Future[bytes]] = deque()
        try:
            for function, *args in tasks:
                pending.append(pool.submit(function, *args))
                if len(pending) >= window:
                    yield np.frombuffer(pending.popleft().result(), dtype=POINT_DTYPE)
            while pending:
                yield np.frombuffer(pending.popleft().result(), dtype=POINT_DTYPE)
        finally:
            for future in pending:
                future.cancel()

    def iter_multiply(self, scalar: SecretScalar, points: np.ndarray) -> Iterator[np.ndarray]:
        """Yield ``scalar * points`` chunk by chunk, in order (``S32`` arrays)."""
        points = _as_points(points)
        n, size = len(points), self._chunk(len(points))
        tasks = ((multiply_buffer, scalar.value, points[i : i + size].tobytes()) for i in range(0, n, size))
        yield from self._run(n, tasks)

    def multiply(self, scalar: SecretScalar, points: np.ndarray) -> np.ndarray:
        """``scalar * points`` as one ``S32`` array, in the same order as ``points``."""
        points = _as_points(points)
        return _collect(len(points), self.iter_multiply(scalar, points))

    def hash_and_multiply(
        self, scalar: SecretScalar, salt: bytes, normalized: pa.ChunkedArray | pa.Array
    ) -> np.ndarray:
        """``scalar * H(id)`` for every normalized id (hashing done in the workers), in order."""
        n, size = len(normalized), self._chunk(len(normalized))
        tasks = (
            (hash_and_multiply, scalar.value, salt, normalized.slice(i, size).to_pylist())
            for i in range(0, n, size)
        )
        return _collect(n, self._run(n, tasks))


def _collect(n: int, chunks: Iterator[np.ndarray]) -> np.ndarray:
    out = np.empty(n, dtype=POINT_DTYPE)
    position = 0
    for chunk in chunks:
        out[position : position + len(chunk)] = chunk
        position += len(chunk)
    if position != n:
        raise ProtocolError(f"scalar multiplication returned {position} points for {n} inputs")
    return out


def _as_points(points: np.ndarray) -> np.ndarray:
    if not isinstance(points, np.ndarray) or points.dtype != POINT_DTYPE or points.ndim != 1:
        raise TypeError(f"points must be a 1-d NumPy array of dtype {POINT_DTYPE}")
    return np.ascontiguousarray(points)
