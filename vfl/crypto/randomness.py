"""DJN randomness: the fixed-base window table for ``h_s`` and a pool of precomputed randomizers.

A Paillier randomizer is any ``n``-th residue mod ``n^2``. DJN takes ``r = h_s^a`` with the public
``h_s = (-x^2)^n`` and a fresh uniform ``a`` of ``n_bits / 2`` bits (see
:attr:`PublicKey.djn_exponent_bits`). Because the base is fixed, ``h_s^a`` is a product of table
entries ``h_s^(d 2^(w i))`` -- one modmul per ``w``-bit digit of ``a`` and no squarings. The window
``w`` depends on the key size (:data:`vfl.crypto.keys.DJN_WINDOWS`): 102 modmuls (~0.7 ms) at 2048
bits with ``w = 10`` and 42 (~0.11 ms) at 1024 bits with ``w = 12``, instead of phe's ``r^n``
(~3,000 modmul-equivalents, ~7-12 ms at 2048 bits).

Randomizers do not depend on the data, so a :class:`RandomnessPool` computes them ahead of time,
typically on worker processes while the party waits for the network; encryption and
re-randomization then cost about one modmul per value. Each randomizer is handed out exactly once.
"""

from __future__ import annotations

import logging
import sys
import threading
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from gmpy2 import mpz

from vfl.crypto import _kernels

if TYPE_CHECKING:
    from vfl.crypto.keys import PublicKey
    from vfl.crypto.pool import WorkerPool

log = logging.getLogger(__name__)


@dataclass(frozen=True, eq=False)
class FixedBaseTable:
    """``rows[i][d] = h_s^(d * 2^(window i)) mod n^2``, ``d < 2^window``, covering ``exponent_bits`` bits."""

    modulus: mpz
    exponent_bits: int
    window: int
    rows: list[list[mpz]] = field(repr=False)

    @classmethod
    def build(cls, public_key: PublicKey) -> FixedBaseTable:
        """Build the table for a key: ``ceil(n_bits / 2w) * (2^w - 1)`` modmuls (~0.7 s at 2048 bits)."""
        bits, window = public_key.djn_exponent_bits, public_key.djn_window
        rows = _kernels.build_fixed_base_table(public_key.h_s, public_key.n_square, bits, window)
        return cls(public_key.n_square, bits, window, rows)

    @property
    def modmuls_per_power(self) -> int:
        """Modmuls for one ``h_s^a``: one per window after the first."""
        return len(self.rows) - 1

    def powers(self, count: int) -> list[mpz]:
        """``count`` fresh randomizers ``h_s^a`` in this process."""
        return _kernels.fixed_base_powers(self.rows, self.modulus, self.exponent_bits, self.window, count)

    def memory_bytes(self) -> int:
        """Memory held by the table's integers (``sys.getsizeof`` includes GMP limbs)."""
        return sum(sys.getsizeof(v) for row in self.rows for v in row)


class RandomnessPool:
    """Precomputed DJN randomizers for one public key, filled in the background by a worker pool.

    ``fill(count)`` schedules ``count`` randomizers (on ``workers`` if given, else computes them now);
    ``take(count)`` hands out ready ones, waits for scheduled ones, and computes any shortfall in the
    calling process -- so it never fails, it only gets slower when the pool is empty. Thread-safe.
    Every randomizer is removed when taken: none is ever used twice.

    Typical use at a data party::

        with WorkerPool() as workers:
            pool = RandomnessPool(pk, workers)
            pool.fill(batch_size * 2)          # returns at once; workers compute
            ...                                # network round trip
            enc = pk.encrypt(d, randomness=pool)   # ~1 modmul per value
    """

    def __init__(self, public_key: PublicKey, workers: WorkerPool | None = None, chunk: int = 256) -> None:
        self.public_key = public_key
        self.workers = workers
        self.chunk = max(1, int(chunk))
        self._ready: list[mpz] = []
        self._pending: list[Future[list[mpz]]] = []
        self._lock = threading.Lock()
        self.peak_bytes = 0

    def _args(self) -> tuple[mpz, mpz, int, int]:
        pk = self.public_key
        return (pk.h_s, pk.n_square, pk.djn_exponent_bits, pk.djn_window)

    def fill(self, count: int) -> None:
        """Schedule ``count`` more randomizers: asynchronous on workers, otherwise computed now."""
        if count <= 0:
            return
        if self.workers is None or self.workers.workers <= 1:
            values = self.public_key.table.powers(count)
            with self._lock:
                self._ready.extend(values)
                self._track()
            return
        args = self._args()
        futures = []
        for start in range(0, count, self.chunk):
            size = min(self.chunk, count - start)
            futures.append(self.workers.submit(_kernels.worker_randomness, *args, size))
        with self._lock:
            self._pending.extend(futures)
        log.debug("scheduled %d randomizers in %d chunks", count, len(futures))

    def _collect(self, block: bool) -> None:
        with self._lock:
            pending, self._pending = self._pending, []
        still = []
        for fut in pending:
            if block or fut.done():
                values = fut.result()
                with self._lock:
                    self._ready.extend(values)
                    self._track()
            else:
                still.append(fut)
        with self._lock:
            self._pending = still + self._pending

    def _track(self) -> None:
        if self._ready:
            size = len(self._ready) * sys.getsizeof(self._ready[-1])
            self.peak_bytes = max(self.peak_bytes, size)

    @property
    def available(self) -> int:
        """Randomizers ready right now (collects finished background chunks)."""
        self._collect(block=False)
        with self._lock:
            return len(self._ready)

    @property
    def scheduled(self) -> int:
        """Background chunks not yet collected."""
        with self._lock:
            return len(self._pending)

    def take(self, count: int) -> list[mpz]:
        """Remove and return ``count`` randomizers; computes any shortfall in this process."""
        if count <= 0:
            return []
        self._collect(block=False)
        with self._lock:
            short = count > len(self._ready)
        if short and self._pending:
            self._collect(block=True)
        with self._lock:
            got = self._ready[-count:] if count <= len(self._ready) else list(self._ready)
            del self._ready[len(self._ready) - len(got) :]
        if len(got) < count:
            missing = count - len(got)
            log.debug("randomness pool short by %d; computing in-process", missing)
            got = got + self.public_key.table.powers(missing)
        return got

    def wait(self) -> None:
        """Block until every scheduled chunk is ready."""
        self._collect(block=True)

    def memory_bytes(self) -> int:
        """Memory held by ready randomizers right now."""
        with self._lock:
            return sum(sys.getsizeof(v) for v in self._ready)

    def close(self) -> None:
        """Cancel scheduled chunks and drop ready randomizers."""
        with self._lock:
            for fut in self._pending:
                fut.cancel()
            self._pending = []
            self._ready = []
