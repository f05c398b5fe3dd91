"""In-process federations for tests and notebooks: every party in its own thread over a ``LocalNetwork``.

The messages still go through Arrow IPC, exactly as between machines, so a simulation exercises
the real protocol code; only the transport differs.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Callable
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from vfl.crypto import PrivateKey, PublicKey, WorkerPool
from vfl.errors import DataError, ProtocolError, TransportError, VflError, abort_code, describe_abort
from vfl.ledger import Ledger
from vfl.metrics import Evaluation
from vfl.model import ModelShard
from vfl.options import TrainOptions
from vfl.parties.common import Job
from vfl.parties.jobs import RoleContext, run_role
from vfl.protocols.psi import run_guest, run_host
from vfl.psi.options import PsiOptions, PsiResult
from vfl.transport.local import LocalNetwork

log = logging.getLogger(__name__)


def _id_column(frame: pd.DataFrame, id: str, party: str) -> pd.Series:
    if not isinstance(frame, pd.DataFrame):
        raise DataError(f"the {party}'s data must be a pandas DataFrame, got {type(frame).__name__}")
    if id not in frame.columns:
        available = ", ".join(map(str, frame.columns[:30])) or "(none)"
        raise DataError(f"the {party}'s table has no id column '{id}'; columns available: {available}")
    return frame[id]


def run_parties(network: LocalNetwork, roles: dict[str, Callable[[], Any]]) -> dict[str, Any]:
    """Run each party's role in its own thread; return ``{party: result}``.

    When a role fails, the network is aborted so the other parties stop waiting, and the original
    error is re-raised here: the first one that is not a protocol or transport error (those are
    what the other parties see of a failure), else the first error.
    """
    results: dict[str, Any] = {}
    errors: dict[str, BaseException] = {}
    lock = threading.Lock()

    def body(party: str, role: Callable[[], Any]) -> None:
        try:
            value = role()
        except BaseException as exc:  # noqa: BLE001 - re-raised in the caller's thread
            with lock:
                errors[party] = exc
            network.abort(describe_abort(party, abort_code(exc)))
            return
        with lock:
            results[party] = value

    threads = [
        threading.Thread(target=body, args=(p, r), name=f"vfl-{p}", daemon=True) for p, r in roles.items()
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        # A party's own failure (bad data, bad option) is the cause; the others' protocol or
        # transport errors ("aborted", "refused to start") are its consequences.
        # In the parties' order, so that the same mistake always reports the same party's error.
        ordered = [errors[p] for p in roles if p in errors]
        own = [e for e in ordered if not isinstance(e, (ProtocolError, TransportError))]
        first = (own or ordered)[0]
        if isinstance(first, BrokenProcessPool):
            raise VflError(
                "the crypto worker processes could not start; a script that calls vfl.simulate must do so "
                "under 'if __name__ == \"__main__\":' (workers re-import the main module), or pass workers=1"
            ) from first
        raise first
    return results


def simulate_psi(
    guest: pd.DataFrame, hosts: list[pd.DataFrame], *, id: str, **options: Any
) -> list[pd.DataFrame]:
    """Align a guest's and hosts' tables with the real PSI protocol, all in this process.

    Returns each party's rows of the intersection (guest first, then the hosts in order), all in
    the same shared order, with a fresh 0..n-1 index. ``options`` are ``PsiOptions`` fields
    (``strip``, ``casefold``, ``nfkc``, ``dedupe``, ``reveal``, ``salt``, ...). Integer ids are
    matched by their decimal string, so ``7`` in one table matches ``"7"`` in another. Under
    ``reveal="guest-only"`` the hosts' frames are empty (hosts learn only the size).
    """
    results = simulate_psi_results(guest, hosts, id=id, **options)
    frames = [guest, *hosts]
    return [result.align(frame) for result, frame in zip(results, frames, strict=True)]


def simulate_psi_results(
    guest: pd.DataFrame, hosts: list[pd.DataFrame], *, id: str, **options: Any
) -> list[PsiResult]:
    """Like ``simulate_psi`` but returns every party's ``PsiResult`` (guest first)."""
    psi_options = PsiOptions.from_mapping(options)
    if isinstance(hosts, pd.DataFrame):
        hosts = [hosts]
    if not hosts:
        raise DataError("simulate_psi needs at least one host table")
    guest_ids = _id_column(guest, id, "guest")
    host_names = [f"host{i + 1}" for i in range(len(hosts))]
    host_ids = [
        _id_column(frame, id, f"host '{name}'") for name, frame in zip(host_names, hosts, strict=True)
    ]
    network = LocalNetwork(["guest", *host_names])
    roles: dict[str, Callable[[], PsiResult]] = {
        "guest": lambda: run_guest(network.channel("guest"), guest_ids, host_names, psi_options, column=id)
    }
    for name, ids in zip(host_names, host_ids, strict=True):
        roles[name] = lambda name=name, ids=ids: run_host(
            network.channel(name), ids, "guest", psi_options, column=id
        )
    results = run_parties(network, roles)
    return [results["guest"], *(results[name] for name in host_names)]


@dataclass
class SimulationResult:
    """A whole training federation run in this process: the guest's view plus every party's shard and ledger."""

    metrics: dict[str, float]
    scores: pd.DataFrame  # id column, score, held_out
    shards: dict[str, ModelShard]
    losses: list[float]
    epochs: int
    evaluation: Evaluation
    ledgers: dict[str, Ledger]
    network: LocalNetwork = field(repr=False)

    @property
    def lift(self) -> pd.DataFrame:
        return self.evaluation.lift


def _backend(workers: int | Any | None) -> Any:
    """A local pool of ``workers`` processes, or a backend the caller owns (e.g. a ``DaskBackend``, left open)."""
    if workers is None or isinstance(workers, int):
        return WorkerPool(workers)
    return contextlib.nullcontext(workers)


def simulate(
    guest: pd.DataFrame,
    hosts: list[pd.DataFrame] | pd.DataFrame,
    *,
    id: str,
    label: str,
    psi: dict[str, Any] | None = None,
    reveal: str | None = None,
    workers: int | Any | None = None,
    keypair: tuple[PublicKey, PrivateKey] | None = None,
    output_dir: str | Path | None = None,
    positive: str | None = None,
    topology: str | None = None,
    keypairs: dict[str, tuple[PublicKey, PrivateKey]] | None = None,
    **job_options: Any,
) -> SimulationResult:
    """Train, score and evaluate a federation of a guest, hosts and an arbiter, all in this process.

    ``topology="arbiter-free"`` trains without the arbiter, every data party under its own key
    (DESIGN.md §15; ``keypairs`` optionally gives a party, by id, its first key pair); the default
    ``"coordinated"`` uses the arbiter (``keypair`` is its key pair).

    ``job_options`` are ``TrainOptions`` fields (``max_epochs``, ``batch_size``, ``optimizer``,
    ``learning_rate``, ``penalty``, ``key_bits``, ``seed``, ...); ``psi`` holds PSI options
    (``strip``, ``casefold``, ``dedupe``, ...). Every party runs in its own thread and every message
    goes through Arrow IPC; ``result.network.transcript`` holds them all. With ``output_dir``, each
    party writes its outputs to ``output_dir/<party>``. ``workers`` is a local pool size or a compute
    backend the caller owns (``vfl.compute.open_backend("dask://HOST:PORT")``), shared by every party.
    """
    options = TrainOptions.from_dict({**job_options, "topology": topology or "coordinated"})
    if isinstance(hosts, pd.DataFrame):
        hosts = [hosts]
    if not hosts:
        raise DataError("simulate needs at least one host table")
    _id_column(guest, id, "guest")
    host_names = tuple(f"host{i + 1}" for i in range(len(hosts)))
    for name, frame in zip(host_names, hosts, strict=True):
        _id_column(frame, id, f"host '{name}'")
    job = Job(
        id=f"simulation-{options.digest()[:8]}",
        guest="guest",
        hosts=host_names,
        arbiter="arbiter",
        options=options,
        psi=PsiOptions.from_mapping(psi or {}),
        reveal=reveal,
    )
    network = LocalNetwork(list(job.parties))
    out = Path(output_dir) if output_dir is not None else None

    def where(party: str) -> Path | None:
        return out / party if out is not None else None

    with _backend(workers) as pool:

        def context(party: str, frame: pd.DataFrame | None = None) -> RoleContext:
            own = (keypairs or {}).get(party) if job.topology == "arbiter-free" else keypair
            return RoleContext(
                job.session(network.channel(party)), job, frame, id_column=id, label=label if party == "guest" else None,
                positive=positive, output_dir=where(party), workers=pool, keypair=own,
            )  # fmt: skip

        contexts = {"guest": context("guest", guest)}
        if "arbiter" in job.members.parties:
            contexts["arbiter"] = context("arbiter")
        contexts.update({name: context(name, frame) for name, frame in zip(host_names, hosts, strict=True)})
        roles: dict[str, Callable[[], Any]] = {
            party: (lambda ctx=ctx: run_role("train", ctx).result) for party, ctx in contexts.items()
        }
        results = run_parties(network, roles)
    g = results["guest"]
    shards = {"guest": g.shard, **{h: results[h].shard for h in host_names}}
    ledgers = {p: results[p].ledger for p in job.members.parties}
    return SimulationResult(g.metrics, g.scores, shards, g.losses, g.epochs, g.evaluation, ledgers, network)
