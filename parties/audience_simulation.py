"""``vfl.simulate_audience``: a whole audience job (guest + hosts) in this process, over the in-process network."""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from vfl.analytics.options import AudienceJobOptions
from vfl.crypto import WorkerPool
from vfl.errors import DataError
from vfl.ledger import Ledger
from vfl.parties.audience import AudienceRun, check_inputs
from vfl.parties.common import Job, open_budget
from vfl.parties.jobs import RoleContext, run_role
from vfl.parties.simulation import _id_column, run_parties
from vfl.psi.options import PsiOptions
from vfl.transport.local import LocalNetwork


@dataclass
class AudienceResult:
    """Every party's view of a simulated audience job (released tables only)."""

    guest: AudienceRun
    hosts: dict[str, AudienceRun]
    network: LocalNetwork = field(repr=False)

    @property
    def ledgers(self) -> dict[str, Ledger]:
        out = {self.guest.party: self.guest.ledger}
        out.update({h: r.ledger for h, r in self.hosts.items()})
        return out  # type: ignore[return-value]

    @property
    def overlap(self) -> pd.DataFrame:
        """The overlap sizes at the guest (guest ∩ each host, and of all parties)."""
        return self.guest.overlap

    @property
    def crosstabs(self) -> dict[str, pd.DataFrame]:
        """Per host, the released cross-tab at the guest."""
        return self.guest.crosstabs


def simulate_audience(
    guest: pd.DataFrame,
    hosts: Mapping[str, pd.DataFrame] | list[pd.DataFrame] | pd.DataFrame,
    *,
    id: str,
    guest_name: str = "guest",
    psi: Mapping[str, Any] | None = None,
    output_dir: str | Path | None = None,
    budgets: Mapping[str, str | Path] | None = None,
    caps: Mapping[str, Mapping[str, Any]] | None = None,
    offered: Mapping[str, list[str]] | None = None,
    keypairs: Mapping[str, Any] | None = None,
    workers: int | None = None,
    job_id: str = "audience",
    _noise_off_for_tests: Collection[str] = (),
    **options: Any,
) -> AudienceResult:
    """Run an audience job between ``guest`` and ``hosts`` (``{name: frame}``) in this process.

    ``options`` are ``[audience]`` options (``segments``, ``metrics``, ``bounds``, ``epsilon``, ``k``,
    ``key_bits``, ...; segments and metrics keyed by party name). With ``budgets``
    (``{party: workspace folder}``) each party keeps its privacy budget in ``<folder>/budget.sqlite``
    with ``caps[party]`` (default: the safe default cap); ``offered`` limits each party's columns as
    ``[data] columns`` does. With ``output_dir`` each party writes its outputs to ``output_dir/<party>``.
    ``_noise_off_for_tests`` (party names) exists for exactness tests only: those parties add no noise
    share; it is not reachable from job.toml or the command line, and the ledger and report say so.
    """
    audience = AudienceJobOptions.from_dict(dict(options))
    if isinstance(hosts, pd.DataFrame):
        hosts = [hosts]
    if not isinstance(hosts, Mapping):
        hosts = {f"host{i + 1}": frame for i, frame in enumerate(hosts)}
    if not hosts:
        raise DataError("simulate_audience needs at least one host table")
    frames = {guest_name: guest, **dict(hosts)}
    for name, frame in frames.items():
        _id_column(frame, id, f"party '{name}'")
    job = Job(
        id=job_id, guest=guest_name, hosts=tuple(hosts), kind="audience",
        psi=PsiOptions.from_mapping(dict(psi or {})), audience=audience,
    )  # fmt: skip
    offered = dict(offered or {})
    for name, frame in frames.items():  # every local check first: nothing is written on bad input
        check_inputs(job, name, frame, id_column=id, label=None, offered=offered.get(name))
    network = LocalNetwork(list(job.parties))
    out = Path(output_dir) if output_dir is not None else None
    ledgers = {p: open_budget(Path(budgets[p]), (caps or {}).get(p)) for p in (budgets or {})}
    try:
        with WorkerPool(workers) as pool:
            roles: dict[str, Callable[[], Any]] = {}
            for name, frame in frames.items():
                ctx = RoleContext(
                    job.session(network.channel(name)), job, frame, id_column=id, columns=offered.get(name),
                    output_dir=out / name if out is not None else None, workers=pool,
                    keypair=(keypairs or {}).get(name), budget=ledgers.get(name),
                    disable_noise_for_tests=name in set(_noise_off_for_tests),
                )  # fmt: skip
                roles[name] = lambda ctx=ctx: run_role("audience", ctx).result
            results = run_parties(network, roles)
    finally:
        for budget in ledgers.values():
            budget.close()
    return AudienceResult(results[guest_name], {h: results[h] for h in hosts}, network)


__all__ = ["AudienceResult", "simulate_audience"]
