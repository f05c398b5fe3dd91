"""DJN randomness: fixed-base tables for ``h_s``, randomizers, a pool of precomputed ones, and streams.

A Paillier randomizer is any ``n``-th residue mod ``n^2``. DJN takes ``r = h_s^a`` with the public
``h_s = (-x^2)^n`` and a fresh uniform ``a`` of ``n_bits / 2`` bits (see
:attr:`PublicKey.djn_exponent_bits`). Because the base is fixed, ``h_s^a`` is a product of table
entries ``h_s^(d 2^(w i))`` -- one modmul per ``w``-bit digit of ``a`` and no squarings. The window
``w`` depends on the key size (:data:`vfl.crypto.keys.DJN_WINDOWS`): 102 modmuls (~0.7 ms) at 2048
bits with ``w = 10`` and 42 (~0.11 ms) at 1024 bits with ``w = 12``, instead of phe's ``r^n``
(~3,000 modmul-equivalents, ~7-12 ms at 2048 bits).

**Key owner.** The party holding the private key computes the *same* randomizers (same ``h_s``, same
fresh ``a``, same distribution) mod ``p^2`` and ``q^2`` with half-size tables and recombines them
(:func:`vfl.crypto._kernels.crt_randomizers`): pass the :class:`PrivateKey` wherever a key is taken
here (:func:`randomizers`, :class:`RandomnessPool`). Its randomizers and ciphertexts are
interchangeable with the public-key ones.

Randomizers do not depend on the data, so a :class:`RandomnessPool` computes them ahead of time,
typically on worker processes while the party waits for the network; encryption and
re-randomization then cost about one modmul per value. Each randomizer is handed out exactly once.
A key owner can also *supply* randomizers to a data party: :func:`randomizers_to_arrow` /
:func:`randomizers_from_arrow` and :meth:`RandomnessPool.add` (DESIGN.md §8 for why that is safe).

Every function here that runs on a worker is a plain function of :mod:`vfl.crypto._kernels` taking
integers only (no closures); per-process tables are memos of pure functions.
"""

from __future__ import annotations

import logging
import sys
import threading
import weakref
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import pyarrow as pa
from gmpy2 import mpz

from vfl.crypto import _kernels
from vfl.crypto.arrow import ciphertext_table, read_metadata, table_ciphertexts
from vfl.crypto.keys import PrivateKey, PublicKey
from vfl.errors import IntegrityError

if TYPE_CHECKING:
    from vfl.crypto.pool import WorkerPool

Key = PublicKey | PrivateKey
"""Either key: a :class:`PrivateKey` selects the key owner's CRT arithmetic."""
RANDOMIZERS_KIND = b"paillier.randomizers"

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

    @classmethod
    def for_key(cls, public_key: PublicKey) -> FixedBaseTable:
        """The key's table, built on first use and kept as long as the key object lives."""
        return _cached(_PUBLIC_TABLES, public_key, cls.build)

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


_PUBLIC_TABLES: weakref.WeakKeyDictionary[PublicKey, FixedBaseTable] = weakref.WeakKeyDictionary()
_OWNER_TABLES: weakref.WeakKeyDictionary[PrivateKey, Any] = weakref.WeakKeyDictionary()
_TABLES_LOCK = threading.Lock()


def _cached(cache: weakref.WeakKeyDictionary, key: Any, build: Callable[[Any], Any]) -> Any:
    """Per-key-object memo (the table dies with the key object; one build even under threads)."""
    with _TABLES_LOCK:
        value = cache.get(key)
        if value is None:
            value = build(key)
            cache[key] = value
        return value


def fixed_base_table(public_key: PublicKey) -> FixedBaseTable:
    """The fixed-base window table for ``h_s`` (built on first use, ~0.7 s and ~58 MB at 2048 bits)."""
    return FixedBaseTable.for_key(public_key)


def key_owner_args(private_key: PrivateKey) -> tuple[mpz, mpz, mpz, int, int]:
    """``(h_s, p, q, exponent_bits, window)``: the arguments of the key owner's worker kernels."""
    pk = private_key.public_key
    return (pk.h_s, private_key.p, private_key.q, pk.djn_exponent_bits, private_key.crt_window)


def key_owner_tables(private_key: PrivateKey) -> tuple[Any, Any]:
    """The key owner's half-size ``(e, u)`` tables mod ``p^2`` and ``q^2`` (~62 MB, ~0.9 s at 2048 bits)."""
    return _cached(_OWNER_TABLES, private_key, lambda sk: _kernels.build_crt_tables(*key_owner_args(sk)))


def key_owner_encrypt(private_key: PrivateKey, plaintexts: Sequence[mpz]) -> list[mpz]:
    """In-process key-owner DJN encryption of plaintexts in ``[0, n)`` (see :func:`_kernels.crt_encrypt`)."""
    if not plaintexts:
        return []
    h_s, p, q, bits, window = key_owner_args(private_key)
    tables = key_owner_tables(private_key)
    digits = _kernels.window_digit_array(len(tables[0][0]), window, bits, len(plaintexts))
    return _kernels.crt_from_digits(tables, p, q, digits, plaintexts)


def public_key_of(key: Key) -> PublicKey:
    return key.public_key if isinstance(key, PrivateKey) else key


def randomizers(key: Key, count: int, workers: WorkerPool | None = None) -> list[mpz]:
    """``count`` fresh DJN randomizers ``h_s^a mod n^2``: with the fixed-base table for a
    :class:`PublicKey`, with the CRT tables (~1.8x faster) for a :class:`PrivateKey`; on ``workers``
    when worth splitting."""
    if count <= 0:
        return []
    if workers is not None and workers.should_split(count):
        fn, args = chunk_task(key)
        per = [count * i // workers.workers for i in range(workers.workers + 1)]
        futures = [workers.submit(fn, *args, per[i + 1] - per[i]) for i in range(workers.workers)]
        return [r for fut in futures for r in fut.result()]
    if isinstance(key, PrivateKey):
        h_s, p, q, bits, window = key_owner_args(key)
        tables = key_owner_tables(key)
        digits = _kernels.window_digit_array(len(tables[0][0]), window, bits, count)
        return _kernels.crt_from_digits(tables, p, q, digits)
    return fixed_base_table(key).powers(count)


def chunk_task(key: Key) -> tuple[Callable[..., list[mpz]], tuple[Any, ...]]:
    """``(fn, args)`` such that ``fn(*args, count)`` computes ``count`` randomizers on any worker."""
    if isinstance(key, PrivateKey):
        return _kernels.crt_randomizers, key_owner_args(key)
    return _kernels.worker_randomness, (key.h_s, key.n_square, key.djn_exponent_bits, key.djn_window)


def randomizers_to_arrow(values: Sequence[mpz], public_key: PublicKey) -> pa.Table:
    """Randomizers as a ``fixed_size_binary(2 * key_bytes)`` column, key fingerprint in the metadata.

    For a key owner handing randomizers to a data party (each must then be used once only: the
    receiver puts them in its :class:`RandomnessPool` with :meth:`RandomnessPool.add`).
    """
    return ciphertext_table(list(values), public_key, {b"vfl.kind": RANDOMIZERS_KIND})


def randomizers_from_arrow(table: pa.Table, public_key: PublicKey) -> list[mpz]:
    """Parse :func:`randomizers_to_arrow`; ``CryptoError`` if they are for another key,
    ``IntegrityError`` if malformed (wrong kind, width, nulls, a value ``>= n^2`` or not a unit)."""
    what = "the randomizer stream"
    read_metadata(table, RANDOMIZERS_KIND, public_key, what)
    return table_ciphertexts(table, public_key, what)


class RandomnessPool:
    """Precomputed DJN randomizers for one key, filled in the background by a worker pool.

    ``fill(count)`` schedules ``count`` randomizers (on ``workers`` if given, else computes them now);
    ``add(values)`` takes randomizers supplied by the key owner; ``take(count)`` hands out ready ones
    (supplied ones first), waits for scheduled ones, and computes any shortfall in the calling
    process -- so it never fails, it only gets slower when the pool is empty. Thread-safe. Every
    randomizer is removed when taken: none is ever used twice.

    ``key`` is the :class:`PublicKey` or, at the key owner, the :class:`PrivateKey` (the pool then
    computes with the faster CRT tables; ``public_key`` is always the public key).

    Typical use at a data party::

        with WorkerPool() as workers:
            pool = RandomnessPool(pk, workers)
            pool.fill(batch_size * 2)          # returns at once; workers compute
            ...                                # network round trip
            enc = encrypt(pk, d, randomness=pool)   # ~1 modmul per value
    """

    def __init__(self, key: Key, workers: WorkerPool | None = None, chunk: int = 256) -> None:
        self._key = key
        self.public_key = public_key_of(key)
        self.workers = workers
        self.chunk = max(1, int(chunk))
        self._ready: list[mpz] = []
        self._supplied: list[mpz] = []
        self._pending: list[Future[list[mpz]]] = []
        self._lock = threading.Lock()
        self.peak_bytes = 0

    @property
    def key_owner(self) -> bool:
        """True if this pool computes with the private key (CRT)."""
        return isinstance(self._key, PrivateKey)

    def fill(self, count: int) -> None:
        """Schedule ``count`` more randomizers: asynchronous on workers, otherwise computed now."""
        if count <= 0:
            return
        if self.workers is None or self.workers.workers <= 1:
            values = randomizers(self._key, count)
            with self._lock:
                self._ready.extend(values)
                self._track()
            return
        fn, args = chunk_task(self._key)
        futures = []
        for start in range(0, count, self.chunk):
            size = min(self.chunk, count - start)
            futures.append(self.workers.submit(fn, *args, size))
        with self._lock:
            self._pending.extend(futures)
        log.debug("scheduled %d randomizers in %d chunks", count, len(futures))

    def add(self, values: Sequence[mpz | int]) -> None:
        """Add externally supplied randomizers (e.g. :func:`randomizers_from_arrow` of a key owner's
        stream); each is handed out once, before the pool's own. ``IntegrityError`` for a value
        that cannot be a randomizer of this key (outside ``1 < r < n^2``)."""
        n2 = self.public_key.n_square
        items = [mpz(v) for v in values]
        for i, r in enumerate(items):
            if not 1 < r < n2:
                raise IntegrityError(f"supplied randomizer {i} is outside 1 < r < n^2 for this key")
        with self._lock:
            self._supplied.extend(items)

    @property
    def supplied(self) -> int:
        """Supplied randomizers not yet used."""
        with self._lock:
            return len(self._supplied)

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
        """Randomizers ready right now, supplied ones included (collects finished background chunks)."""
        self._collect(block=False)
        with self._lock:
            return len(self._ready) + len(self._supplied)

    @property
    def scheduled(self) -> int:
        """Background chunks not yet collected."""
        with self._lock:
            return len(self._pending)

    def take(self, count: int) -> list[mpz]:
        """Remove and return ``count`` randomizers (supplied ones first); computes any shortfall here."""
        if count <= 0:
            return []
        with self._lock:
            got = self._supplied[:count]
            del self._supplied[: len(got)]
        need = count - len(got)
        if need == 0:
            return got
        self._collect(block=False)
        with self._lock:
            short = need > len(self._ready)
        if short and self._pending:
            self._collect(block=True)
        with self._lock:
            own = self._ready[-need:] if need <= len(self._ready) else list(self._ready)
            del self._ready[len(self._ready) - len(own) :]
        got += own
        if len(got) < count:
            missing = count - len(got)
            log.debug("randomness pool short by %d; computing in-process", missing)
            got += randomizers(self._key, missing)
        return got

    def wait(self) -> None:
        """Block until every scheduled chunk is ready."""
        self._collect(block=True)

    def memory_bytes(self) -> int:
        """Memory held by ready randomizers right now."""
        with self._lock:
            return sum(sys.getsizeof(v) for v in self._ready + self._supplied)

    def close(self) -> None:
        """Cancel scheduled chunks and drop ready randomizers."""
        with self._lock:
            for fut in self._pending:
                fut.cancel()
            self._pending = []
            self._ready = []
            self._supplied = []
