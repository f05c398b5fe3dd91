"""Compute backends: where a party's heavy chunked work runs (DESIGN.md §8, "Cores").

Every heavy operation of the engine (randomness, encryption, re-randomization, ``X^T [[d]]``,
packing, decryption, PSI curve operations and hashing) cuts its work into chunks and hands
*plain functions* of integers and bytes (``vfl.crypto._kernels``, ``vfl.psi.ecdh``) to a backend:

* :class:`~vfl.crypto.pool.WorkerPool` (``backend = "local"``, the default): a process pool on this
  machine;
* :class:`DaskBackend` (``backend = "dask://HOST:PORT"``): the workers of an existing Dask
  scheduler (``dask scheduler`` / ``dask worker``, or a ``distributed.LocalCluster``).

Both satisfy :class:`ComputeBackend`: ``workers`` (cores), ``submit(fn, *args)`` -> a future with
``result()``, ``done()`` and ``cancel()``, ``map_chunks``, ``should_split``, ``warm_up`` and
``close``. The same chunk functions run on both, so results are identical bit for bit (only the
fresh Paillier randomness differs, which no decrypted value depends on).

On Dask: large integers in a task's arguments (key material: ``n``, ``h_s``, and at the key owner
``p``, ``q``) are scattered to every worker once and then passed by reference, not pickled into
every task; the fixed-base tables are built once per worker process from them (``lru_cache`` in
the kernels) and never shipped. Tasks are submitted with ``pure=False``: Dask would otherwise
merge two identical randomness requests into one task and hand out the *same* randomizers twice.
A worker lost mid-task is retried by Dask on another worker (up to ``retries`` times beyond the
scheduler's own rescheduling); a lost scheduler is a one-line :class:`ComputeError`.

The Dask cluster runs inside the party's trust boundary: at the arbiter (the key owner) the
secret primes are scattered to its workers, exactly as they are sent to its local pool workers.
"""

from __future__ import annotations

import logging
import os
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar, runtime_checkable

from gmpy2 import mpz

from vfl.crypto import _kernels
from vfl.crypto.keys import ChunkRunner, PrivateKey, PublicKey
from vfl.crypto.pool import Chunked, WorkerPool
from vfl.errors import ComputeError, ConfigError
from vfl.transport.address import parse_address

log = logging.getLogger(__name__)
T = TypeVar("T")

LOCAL = "local"
DASK_PREFIX = "dask://"
CONNECT_TIMEOUT = 10.0
DASK_MIN_ITEMS = 256
"""A Dask task costs a few ms of latency and CPU (client, scheduler, worker): chunks of ~0.25 s keep that small."""
SCATTER_MIN_BITS = 256
"""Integers at least this wide in a task's arguments are scattered once (key material), not pickled per task."""
SCATTER_TIMEOUT = 5.0
WORKERS_REFRESH = 2.0
"""Seconds between two looks at the scheduler's worker list (tasks go to the workers in turn)."""


@runtime_checkable
class ComputeFuture(Protocol[T]):
    def result(self, timeout: float | None = None) -> T: ...
    def done(self) -> bool: ...
    def cancel(self) -> bool: ...


@runtime_checkable
class ComputeBackend(ChunkRunner, Protocol):
    """What the engine needs from a pool of workers (``WorkerPool`` and ``DaskBackend`` both fit):
    ``should_split`` and ``map_chunks`` (:class:`~vfl.crypto.keys.ChunkRunner`) and these."""

    workers: int

    def submit(self, fn: Callable[..., T], *args: Any) -> ComputeFuture[T]: ...
    def warm_up(self, key: PublicKey | PrivateKey) -> None: ...
    def close(self) -> None: ...


@dataclass(frozen=True)
class BackendInfo:
    """What ``vfl info`` shows of a backend."""

    kind: str  # "local" or "dask"
    address: str | None
    workers: int  # worker processes
    cores: int  # cores (threads) the chunked work is spread over
    details: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class BackendSpec:
    """A parsed ``[compute] backend`` value."""

    kind: str
    address: str | None = None  # "tcp://HOST:PORT" for Dask

    @property
    def text(self) -> str:
        return LOCAL if self.kind == LOCAL else f"{DASK_PREFIX}{self.address.removeprefix('tcp://')}"  # type: ignore[union-attr]


def parse_backend(text: str, where: str = "[compute] backend") -> BackendSpec:
    """``"local"`` or ``"dask://HOST:PORT"`` -> :class:`BackendSpec`; a one-line ``ConfigError`` otherwise."""
    if not isinstance(text, str):
        raise ConfigError(f'{where} must be a string, "local" or "dask://HOST:PORT", got {text!r}')
    value = text.strip()
    if value == LOCAL:
        return BackendSpec(LOCAL)
    if value.startswith(DASK_PREFIX):
        host, port = parse_address(value[len(DASK_PREFIX) :], where)
        if port == 0:
            raise ConfigError(f"{where}: the Dask scheduler's port cannot be 0 in {value!r}")
        shown = f"[{host}]" if ":" in host else host
        return BackendSpec("dask", f"tcp://{shown}:{port}")
    raise ConfigError(
        f'{where} must be "local" or "dask://HOST:PORT" (the address of a Dask scheduler), got {text!r}'
    )


def open_backend(
    spec: str | BackendSpec | None = None,
    *,
    workers: int | None = None,
    connect_timeout: float = CONNECT_TIMEOUT,
    where: str = "[compute] backend",
) -> WorkerPool | DaskBackend:
    """The backend named by ``spec`` (default local). A Dask scheduler is contacted here, so a wrong
    address is a one-line ``ConfigError`` before the caller contacts any peer."""
    parsed = spec if isinstance(spec, BackendSpec) else parse_backend(spec or LOCAL, where)
    if parsed.kind == LOCAL:
        return WorkerPool(workers)
    assert parsed.address is not None
    return DaskBackend(parsed.address, connect_timeout=connect_timeout, where=where)


def describe(backend: Any) -> BackendInfo:
    """Backend, workers and cores of a backend (``WorkerPool`` or ``DaskBackend``)."""
    if isinstance(backend, DaskBackend):
        return backend.info()
    workers = int(getattr(backend, "workers", 1))
    return BackendInfo(LOCAL, None, workers, workers, {"machine cores": os.cpu_count() or 1})


@dataclass(frozen=True)
class Packed:
    """A list of non-negative integers as one fixed-width big-endian buffer.

    Dask ships a ``bytes`` buffer for a few percent of what a pickled list of ``mpz`` costs it
    (measured: ~0.03 against ~0.15 CPU-s for two tasks of 2,048 ciphertexts of 4,096 bits),
    so :class:`DaskBackend` packs such arguments and results, and the worker unpacks them.
    """

    data: bytes
    width: int
    kind: str  # "mpz" or "int": the element type given back

    def unpack(self) -> list[Any]:
        view, width = memoryview(self.data), self.width
        convert = mpz.from_bytes if self.kind == "mpz" else int.from_bytes
        return [convert(view[i : i + width], "big") for i in range(0, len(view), width)]


PACK_MIN_ITEMS = 16


def pack(values: Any) -> Packed | None:
    """``values`` as :class:`Packed` if it is a list of non-negative ``mpz`` (or of ``int``), else None."""
    if not isinstance(values, list) or len(values) < PACK_MIN_ITEMS:
        return None
    kind = type(values[0])
    if kind not in (mpz, int) or not all(type(v) is kind for v in values):
        return None
    width = max(1, (max(v.bit_length() for v in values) + 7) // 8)
    try:
        data = b"".join(v.to_bytes(width, "big") for v in values)
    except OverflowError:  # a negative value
        return None
    return Packed(data, width, "mpz" if kind is mpz else "int")


class LastPacked:
    """:func:`pack` that gives its last result again for an equal list (compared, not assumed): the
    ciphertexts that every task of a column split receives are packed once."""

    def __init__(self) -> None:
        self._last: tuple[list[Any], Packed] | None = None

    def __call__(self, values: Any) -> Packed | None:
        last = self._last
        if (
            last is not None
            and isinstance(values, list)
            and len(values) == len(last[0])
            and values == last[0]
        ):
            return last[1]
        packed = pack(values)
        if packed is not None:
            self._last = (list(values), packed)
        return packed


def call_packed(fn: Callable[..., Any], *args: Any) -> Any:
    """On a Dask worker: ``fn`` with :class:`Packed` arguments unpacked, a list-of-integers result packed."""
    out = fn(*(a.unpack() if isinstance(a, Packed) else a for a in args))
    return pack(out) or out


class _DaskFuture:
    """A Dask future whose ``result`` turns the loss of the cluster into a one-line ``ComputeError``."""

    def __init__(self, future: Any, backend: DaskBackend) -> None:
        self._future = future
        self._backend = backend

    def result(self, timeout: float | None = None) -> Any:
        from distributed.client import FutureCancelledError
        from distributed.scheduler import KilledWorker

        try:
            out = self._future.result(timeout=timeout)
        except KilledWorker as exc:
            raise ComputeError(
                f"a task was lost on every Dask worker that tried it ({exc}); check the workers' logs "
                f"and memory, then run the job again (it resumes from its checkpoint)"
            ) from exc
        except (FutureCancelledError, OSError) as exc:
            raise self._backend.lost(exc) from exc
        return out.unpack() if isinstance(out, Packed) else out

    def done(self) -> bool:
        return bool(self._future.done())

    def cancel(self) -> bool:
        try:
            self._future.cancel()
        except Exception:  # noqa: BLE001 - cancelling on a lost cluster must not hide the real error
            return False
        return True


class DaskBackend(Chunked):
    """A party's chunked work on the workers of an existing Dask scheduler at ``address``.

    ``workers`` is the number of cores (worker threads) the scheduler reports; run the workers
    with one thread each (``dask worker --nthreads 1 --nworkers N``): the big-integer kernels hold
    the GIL. ``min_items`` has the meaning of :class:`~vfl.crypto.pool.WorkerPool`'s.
    """

    def __init__(
        self,
        address: str,
        *,
        min_items: int = DASK_MIN_ITEMS,
        retries: int = 2,
        connect_timeout: float = CONNECT_TIMEOUT,
        where: str = "[compute] backend",
    ) -> None:
        try:
            from distributed import Client
        except ImportError as exc:  # pragma: no cover - a dependency of the package
            raise ConfigError(
                f"{where} names a Dask scheduler but dask.distributed is not installed"
            ) from exc
        self.address = address
        self.where = where
        self.min_items = max(1, int(min_items))
        self.retries = max(0, int(retries))
        self._scattered: dict[Any, Any] = {}
        self._pack = LastPacked()
        self._worker_list: list[str] = []
        self._workers_at = -float("inf")
        self._turn = 0
        self._closed = False
        shown = address.removeprefix("tcp://")
        try:
            self.client = Client(address, timeout=connect_timeout, set_as_default=False)
        except (OSError, TimeoutError, ValueError) as exc:
            raise ConfigError(
                f"cannot reach the Dask scheduler at dask://{shown} ({where}) within {connect_timeout:g} s: "
                f"{str(exc).splitlines()[0] if str(exc) else type(exc).__name__}; start it "
                f"('dask scheduler' and 'dask worker') or fix the address"
            ) from None
        try:
            self.client.wait_for_workers(1, timeout=connect_timeout)
        except (OSError, TimeoutError) as exc:
            self.client.close()
            raise ConfigError(
                f"the Dask scheduler at dask://{shown} ({where}) has no worker; start one with "
                f"'dask worker {address}'"
            ) from exc
        self.workers = max(1, self._cores())
        log.debug("connected to Dask at %s: %d cores", address, self.workers)

    remote = True  # runs on other processes or machines than the party's own pool

    def __repr__(self) -> str:
        return f"DaskBackend({self.address}, workers={self.workers})"

    def _cores(self) -> int:
        info = self.client.scheduler_info()
        return sum(int(w.get("nthreads", 1)) for w in info.get("workers", {}).values())

    def lost(self, exc: BaseException) -> ComputeError:
        """The one-line error for a lost scheduler or connection."""
        return ComputeError(
            f"lost the Dask scheduler at dask://{self.address.removeprefix('tcp://')} ({self.where}) "
            f"mid-job ({type(exc).__name__}); restart it and run the job again: it resumes from its checkpoint"
        )

    def info(self) -> BackendInfo:
        info = self.client.scheduler_info()
        workers = info.get("workers", {})
        memory = sum(int(w.get("memory_limit", 0) or 0) for w in workers.values())
        return BackendInfo(
            "dask",
            f"dask://{self.address.removeprefix('tcp://')}",
            len(workers),
            sum(int(w.get("nthreads", 1)) for w in workers.values()),
            {"memory limit (GB)": round(memory / 1e9, 1)},
        )

    # --- the WorkerPool interface -----------------------------------------------------------

    def _shared(self, arg: Any) -> Any:
        """A scattered reference for key material (wide integers), the argument itself otherwise.

        A broadcast to a worker that dies meanwhile can wait for ever inside Dask (the scheduler
        keeps replicating to it), so the scatter has a timeout; after one the value travels inside
        each task instead (a few hundred bytes), and the job goes on.
        """
        if not isinstance(arg, mpz) or arg.bit_length() < SCATTER_MIN_BITS:
            return arg
        ref = self._scattered.get(arg)
        if ref is None:
            try:
                ref = self.client.scatter(arg, broadcast=True, hash=False, timeout=SCATTER_TIMEOUT)
            except TimeoutError as exc:
                if self.client.status != "running":  # the scheduler itself is gone
                    raise self.lost(exc) from exc
                log.debug("scattering key material timed out (a worker lost?): it travels with each task")
                ref = arg
            except OSError as exc:
                raise self.lost(exc) from exc
            self._scattered[arg] = ref
        return ref

    def submit(self, fn: Callable[..., T], *args: Any) -> _DaskFuture:
        """Run ``fn(*args)`` on a Dask worker (key material by reference, integer lists packed).

        Consecutive tasks go to the workers in turn (a loose restriction: a lost or busy worker's
        task still runs elsewhere, and Dask may steal it). Left to itself the scheduler sends a task
        to a worker that holds its dependencies, and Dask's memory manager keeps a scattered key on
        one worker only within ~2 s (``ReduceReplicas``), so every task of a call ran on one worker,
        one after the other (the 2 tasks of a 2,048 x 20 ``X^T [[d]]``: 2x its wall time); the other
        worker now fetches the key (a few hundred bytes) from its peer. A list passed to several
        consecutive tasks (the ciphertexts of a column split) is packed once.
        """
        if self._closed:
            raise RuntimeError("this DaskBackend has been closed")
        shared = [self._pack(a) or self._shared(a) for a in args]
        worker = self._next_worker()
        try:
            future = self.client.submit(
                call_packed, fn, *shared, key=f"{getattr(fn, '__name__', 'task')}-{uuid.uuid4().hex}",
                pure=False, retries=self.retries, workers=worker, allow_other_workers=worker is not None,
            )  # fmt: skip
        except (OSError, TimeoutError) as exc:
            raise self.lost(exc) from exc
        return _DaskFuture(future, self)

    def _next_worker(self) -> list[str] | None:
        """The next worker in turn (None: let the scheduler choose, when it reports none).

        The worker list is asked of the scheduler at most every ``WORKERS_REFRESH`` seconds.
        """
        now = time.monotonic()
        if now - self._workers_at > WORKERS_REFRESH:
            try:
                self._worker_list = sorted(self.client.scheduler_info().get("workers", {}))
            except (OSError, TimeoutError) as exc:
                raise self.lost(exc) from exc
            self._workers_at = now
        if not self._worker_list:
            return None
        self._turn += 1
        return [self._worker_list[self._turn % len(self._worker_list)]]

    def warm_up(self, key: PublicKey | PrivateKey) -> None:
        """Build the key's fixed-base (or, for the key owner, CRT) table on every worker now (best effort)."""
        if isinstance(key, PrivateKey):
            pk = key.public_key
            fn: Callable[..., int] = _kernels.warm_crt_tables
            args: tuple[Any, ...] = (pk.h_s, key.p, key.q, pk.djn_exponent_bits, key.crt_window, 0.0)
        else:
            fn, args = (
                _kernels.warm_table,
                (key.h_s, key.n_square, key.djn_exponent_bits, key.djn_window, 0.0),
            )
        try:  # best effort: a worker lost meanwhile builds its table on first use instead
            results = self.client.run(fn, *args, on_error="return")
        except (OSError, TimeoutError) as exc:
            raise self.lost(exc) from exc
        warmed = sum(1 for r in results.values() if isinstance(r, int))
        log.debug("warmed %d of %d Dask workers", warmed, len(results))

    def worker_pids(self) -> dict[str, int]:
        """``{worker address: process id}`` of the cluster's workers."""
        return dict(self.client.run(os.getpid))

    def close(self) -> None:
        """Release scattered data and disconnect (the cluster itself keeps running). Idempotent."""
        if self._closed:
            return
        self._closed = True
        self._pack = LastPacked()
        refs, self._scattered = [r for r in self._scattered.values() if not isinstance(r, mpz)], {}
        try:
            for ref in refs:
                ref.release()
            self.client.close(timeout=5)
        except Exception as exc:  # noqa: BLE001 - closing a lost cluster must not hide the job's result
            log.debug("closing the Dask client: %s", exc)

    def __enter__(self) -> DaskBackend:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
