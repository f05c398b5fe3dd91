"""The role runtime of a ``segment`` job (joint segmentation, DESIGN.md §14).

Every data party: pick and check its segmentation columns (before any peer is contacted), agree,
align with PSI, standardize and cluster its own columns locally, run ``protocols/segment.py``, and
write its outputs: at the guest the segment profiles (CSV and JSON), the HTML report, the segment of
every shared customer when membership release is on, its model file and the ledger; at a host its own
column means per segment, its model file and the ledger.

The model file (``segment_model.json``, kind ``segment``) holds the party's standardizer and local
centroids, and at the guest the cell -> segment lookup: what assigns new shared customers to segments
(the same cross-party assignment step, for new ids after PSI).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from vfl.analytics.budget import PrivacyBudget
from vfl.crypto import PrivateKey, PublicKey, WorkerPool, generate_keypair
from vfl.errors import ConfigError, DataError
from vfl.io import atomic_write_text
from vfl.ledger import Ledger
from vfl.parties.alignment import aligned_rows, checked_view, run_psi
from vfl.parties.budget import reserve_budget as _reserve
from vfl.parties.common import Job, ledger_for, write_outputs
from vfl.protocols import segment as protocol
from vfl.protocols.session import Session
from vfl.psi.options import PsiResult
from vfl.segmentation.joint import merge_small_clusters
from vfl.segmentation.local import (
    LocalClustering,
    Standardizer,
    as_matrix,
    cluster_locally,
    default_local_k,
)
from vfl.segmentation.model import SegmentModel
from vfl.segmentation.options import SegmentOptions, SegmentPolicy
from vfl.segmentation.profiles import profile_segments, wilson_interval

log = logging.getLogger(__name__)


@dataclass
class SegmentRun:
    """One party's outcome of a segment job."""

    party: str
    role: str
    intersection: int
    columns: list[str]
    local: LocalClustering
    profiles: pd.DataFrame  # guest: the full profile table; host: its own means per segment
    outputs: dict[str, Path] = field(default_factory=dict)
    labels: pd.DataFrame | None = None  # guest, membership release: id column + segment
    result: Any = None  # GuestSegments / HostSegments
    ledger: Ledger | None = None
    ids: np.ndarray | None = field(default=None, repr=False)  # this party's aligned ids (never sent)


def segment_columns(
    frame: pd.DataFrame, id_column: str, offered: Sequence[str] | None, exclude: Sequence[str], party: str
) -> list[str]:
    """The party's segmentation columns: its offered columns (party.toml) but the id, label and outcome."""
    if offered is not None:
        missing = [c for c in offered if c not in frame.columns]
        if missing:
            raise DataError(f"{party}: offered column(s) {missing} are not in the data")
        columns = [c for c in offered if c != id_column and c not in exclude]
    else:
        columns = [c for c in frame.columns if c != id_column and c not in exclude]
    if not columns:
        raise DataError(
            f"{party} offers no segmentation columns; list numeric columns in [data] columns of its party.toml"
        )
    as_matrix(frame[columns], party=party)  # non-numeric, missing or infinite values: refused now
    return columns


def check_outcome(frame: pd.DataFrame, outcome: str, party: str) -> np.ndarray:
    if outcome not in frame.columns:
        raise DataError(f"{party}: the outcome column {outcome!r} ([segment] outcome) is not in the data")
    values = pd.to_numeric(frame[outcome], errors="coerce")
    if values.isna().any() or not values.isin([0, 1]).all():
        raise DataError(f"{party}: the outcome column {outcome!r} must hold only 0 and 1 (no missing values)")
    return values.to_numpy(dtype=np.int64)


def dp_rate_interval(
    positives: np.ndarray, sizes: np.ndarray, noise_var: np.ndarray, z: float = 1.96
) -> tuple[np.ndarray, np.ndarray]:
    """The Wilson interval widened by the DP noise of the noised positives and size (delta method)."""
    n = np.maximum(np.asarray(sizes, dtype=float), 1.0)
    low, high = wilson_interval(positives, n, z)
    rate = np.clip(np.asarray(positives, dtype=float) / n, 0.0, 1.0)
    noise_sd = np.sqrt(np.asarray(noise_var, dtype=float) * (1.0 + rate**2)) / n
    sample_half_low, sample_half_high = rate - low, high - rate
    widen_low = np.sqrt(sample_half_low**2 + (z * noise_sd) ** 2)
    widen_high = np.sqrt(sample_half_high**2 + (z * noise_sd) ** 2)
    return np.clip(rate - widen_low, 0.0, 1.0), np.clip(rate + widen_high, 0.0, 1.0)


def local_k(options: SegmentOptions, n_parties: int, n_rows: int) -> int:
    """``k_p``: the option, or the rule of ``default_local_k``; at most the rows available.

    The noised counts are always pairwise tables (guest x one host), so the rule sizes ``k_p`` for
    ``k_p ** 2`` cells whatever the number of hosts.
    """
    if options.local_k:
        return min(options.local_k, n_rows)
    return default_local_k(options.k, min(n_parties, 2), n_rows, min_mean_cell=options.min_mean_cell)


def require_audience(options: SegmentOptions, size: int) -> None:
    """Refuse a K the shared audience cannot fill with segments of at least ``min_size`` customers."""
    if options.k * options.min_size > size:
        raise ConfigError(
            f"K = {options.k} segments of at least {options.min_size} customers need {options.k * options.min_size} "
            f"shared customers, but the parties share {size}; lower [segment] k or min_size"
        )


def _local(
    frame: pd.DataFrame, columns: list[str], options: SegmentOptions, k: int, party: str
) -> tuple[LocalClustering, np.ndarray]:
    """Standardize, clip at ``CLIP`` standard deviations (what bounds one customer's share of any mean
    that crosses), k-means, and dissolve local clusters below ``k_threshold`` rows."""
    raw, names = as_matrix(frame[columns], party=party)
    scaler = Standardizer.fit(raw, names)
    matrix = np.clip(scaler.transform(raw), -protocol.CLIP, protocol.CLIP)
    local = cluster_locally(matrix, k, seed=options.seed, standardized=True, party=party)
    local = dataclasses.replace(local, scaler=scaler)
    return merge_small_clusters(local, matrix, options.k_threshold), matrix


def _prepare(session: Session, job: Job, data: pd.DataFrame, id_column: str) -> PsiResult:
    session.guard(lambda: session.agree(job.settings()))
    ids = data[id_column]
    result = run_psi(session, job, ids, job.psi, column=id_column)
    session.guard(result.require_nonempty)
    session.guard(lambda: require_audience(job.segment, result.size))
    return result


@dataclass(frozen=True)
class PartyIO:
    """Where a party's segment job reads and writes: its id column, offered columns (None: all), output
    folder, crypto workers and privacy budget ledger."""

    id_column: str = "id"
    offered: Sequence[str] | None = None
    output_dir: Path | None = None
    workers: WorkerPool | None = None
    budget: PrivacyBudget | None = None
    streamed: Any = None  # a large file read in batches (StreamedTable): data holds the id and outcome


def run_guest(
    session: Session, job: Job, data: pd.DataFrame, io: PartyIO = PartyIO(), *, label: str | None = None
) -> SegmentRun:
    options: SegmentOptions = job.segment
    exclude = [c for c in (label, options.outcome) if c]
    view = checked_view(data, io.streamed, io.offered)
    columns = session.guard(lambda: segment_columns(view, io.id_column, io.offered, exclude, session.party))
    if options.outcome:
        session.guard(lambda: check_outcome(data, options.outcome, session.party))
    aligned_psi = _prepare(session, job, data, io.id_column)
    aligned = aligned_rows(aligned_psi, data, io.streamed, columns)
    n = len(aligned)
    k_rule = local_k(options, len(job.hosts) + 1, n)
    _reserve(session, job, io.budget, dict.fromkeys(job.hosts, options.epsilon))
    with _spending(io.budget, job.id) as spend:
        local, _ = session.guard(lambda: _local(aligned, columns, options, k_rule, session.party))
        outcome = check_outcome(aligned, options.outcome, session.party) if options.outcome else None
        spend.exposed = True  # from here on noised numbers move: a failure keeps the epsilon spent
        hosts = list(job.hosts)
        result = protocol.run_guest(
            session, hosts, local.labels, local.centroids, options, outcome=outcome, workers=io.workers
        )
    assert local.scaler is not None
    own = local.scaler.inverse(result.own_means)
    column_sums = {session.party: own * result.sizes[:, None]}
    names = {session.party: columns}
    for h, frame in result.host_means.items():
        column_sums[h] = frame.to_numpy() * result.sizes[:, None]
        names[h] = list(frame.columns)
    profiles = profile_segments(result.sizes, positives=result.positives, column_sums=column_sums,
                                column_names=names).table  # fmt: skip
    if result.positives is not None and result.noise_var is not None:
        profiles["rate_low"], profiles["rate_high"] = dp_rate_interval(
            result.positives, result.sizes, result.noise_var
        )
    labels = None
    if result.labels is not None:
        labels = pd.DataFrame({io.id_column: aligned_psi.ids.to_numpy(), "segment": result.labels})
    session.barrier("segment")
    run = SegmentRun(session.party, "guest", n, columns, local, profiles, labels=labels, result=result,
                     ids=aligned_psi.ids.to_numpy())  # fmt: skip
    notes = _notes(n, local, result.n_segments)
    notes.append(f"host policies: {json.dumps(protocol.policies_table(result.policies), sort_keys=True)}")
    if labels is not None:
        notes.append("membership release: the segment of every shared customer is known at this party")
    run.ledger = ledger_for(session, notes)
    if io.output_dir is not None:
        from vfl.segment_report import write_report

        out = run.outputs
        out["profiles"] = atomic_write_text(io.output_dir / "segment_profiles.csv", profiles.to_csv())
        out["profiles_json"] = atomic_write_text(
            io.output_dir / "segment_profiles.json",
            json.dumps(json.loads(profiles.reset_index().to_json(orient="records")), indent=2),
        )
        if labels is not None:
            out["segments"] = atomic_write_text(io.output_dir / "segments.csv", labels.to_csv(index=False))
        out["model"] = _save_model(io.output_dir, job, session, columns, local, lookup=result.lookup)
        out["report"] = write_report(io.output_dir / "segment_report.html", profiles, job_id=job.id,
                                     party=session.party, outcome=options.outcome)  # fmt: skip
        out.update(write_outputs(io.output_dir, None, run.ledger))
    return run


def run_host(
    session: Session,
    job: Job,
    data: pd.DataFrame,
    io: PartyIO = PartyIO(),
    *,
    policy: SegmentPolicy | None = None,
    keypair: tuple[PublicKey, PrivateKey] | None = None,
) -> SegmentRun:
    options: SegmentOptions = job.segment
    policy = policy or SegmentPolicy()
    view = checked_view(data, io.streamed, io.offered)
    columns = session.guard(lambda: segment_columns(view, io.id_column, io.offered, (), session.party))
    aligned_psi = _prepare(session, job, data, io.id_column)
    aligned = aligned_rows(aligned_psi, data, io.streamed, columns)
    n = len(aligned)
    k_rule = local_k(options, len(job.hosts) + 1, n)
    local, _ = session.guard(lambda: _local(aligned, columns, options, k_rule, session.party))
    keypair = keypair or generate_keypair(options.key_bits)
    assert local.scaler is not None
    spent = options.epsilon + (options.means_epsilon if policy.share_means else 0.0)
    _reserve(session, job, io.budget, {job.guest: spent})
    with _spending(io.budget, job.id) as spend:
        spend.exposed = True
        result = protocol.run_host(
            session, job.guest, local.labels, local.centroids, options, policy, keypair,
            guest_clusters=k_rule, has_outcome=options.outcome is not None, column_names=columns,
            hosts=list(job.hosts), scaler=(local.scaler.mean, local.scaler.std), workers=io.workers,
        )  # fmt: skip
    own = pd.DataFrame(local.scaler.inverse(result.own_means), columns=columns)
    own.insert(0, "size", result.sizes)
    own.index.name = "segment"
    session.barrier("segment")
    run = SegmentRun(
        session.party, "host", n, columns, local, own, result=result, ids=aligned_psi.ids.to_numpy()
    )
    notes = _notes(n, local, result.n_segments)
    notes.append(f"policy: release_membership={policy.release_membership}, share_means={policy.share_means}")
    run.ledger = ledger_for(session, notes)
    if io.output_dir is not None:
        out = run.outputs
        out["profiles"] = atomic_write_text(io.output_dir / "segment_own_means.csv", own.to_csv())
        out["model"] = _save_model(io.output_dir, job, session, columns, local)
        out.update(write_outputs(io.output_dir, None, run.ledger))
    return run


# --- the privacy budget (the same ledger and rules as audience jobs) ----------------------------------


@dataclass
class _Spend:
    exposed: bool = False


@contextlib.contextmanager
def _spending(budget: PrivacyBudget | None, job_id: str) -> Iterator[_Spend]:
    """Commit the reservation on success; a failure before any noised number moved gives it back."""
    spend = _Spend()
    try:
        yield spend
    except BaseException:
        if budget is not None and not spend.exposed:
            try:
                budget.release(job_id)
            except Exception as exc:  # noqa: BLE001 - never hide the job's own error
                log.warning("could not release the privacy budget of job %s: %s", job_id, exc)
        raise
    if budget is not None:
        budget.commit(job_id)


def _notes(n: int, local: LocalClustering, k: int) -> list[str]:
    return [f"intersection size {n}; {local.k} local clusters kept here; {k} segments released"]


def _save_model(
    directory: Path,
    job: Job,
    session: Session,
    columns: list[str],
    local: LocalClustering,
    lookup: np.ndarray | None = None,
) -> Path:
    """``segment_model.json``: the party's standardizer, local centroids and (guest) the lookup table."""
    assert local.scaler is not None
    model: dict[str, Any] = {
        "kind": "segment",
        "job_id": job.id,
        "party": session.party,
        "role": session.role,
        "parties": list(job.members.data_parties),
        "columns": columns,
        "scaler": {"mean": local.scaler.mean.tolist(), "std": local.scaler.std.tolist()},
        "centroids": local.centroids.tolist(),
        "options": job.segment.to_dict(),
    }
    if lookup is not None:
        model["lookup"] = {"shape": list(lookup.shape), "segments": lookup.ravel().tolist()}
    return atomic_write_text(directory / "segment_model.json", json.dumps(model, indent=1))


# --- in-process federation -------------------------------------------------------------------------


@dataclass
class SegmentSimulation:
    guest: SegmentRun
    hosts: dict[str, SegmentRun]
    network: Any = field(repr=False)
    job: Job | None = None


def simulate_segment(
    guest: pd.DataFrame,
    hosts: list[pd.DataFrame] | pd.DataFrame,
    *,
    id: str,
    policies: Sequence[SegmentPolicy | dict[str, bool]] | None = None,
    keypairs: Sequence[tuple[PublicKey, PrivateKey]] | None = None,
    output_dir: str | Path | None = None,
    workers: int | None = 1,
    psi: dict[str, Any] | None = None,
    budgets: dict[str, str | Path] | None = None,
    budget_caps: dict[str, Any] | None = None,
    job_id: str = "segment-simulation",
    **options: Any,
) -> SegmentSimulation:
    """A guest and hosts run a real segment job in this process (threads over the in-process network).

    ``options`` are ``[segment]`` options (``k``, ``epsilon``, ``outcome``, ``membership``, ...);
    ``policies`` each host's ``[segment]`` policy (default: nothing released); ``budgets`` a privacy
    budget ledger file per party (opened in the party's own thread, with ``budget_caps``).
    """
    from vfl.parties.simulation import run_parties
    from vfl.psi.options import PsiOptions
    from vfl.transport.local import LocalNetwork

    if isinstance(hosts, pd.DataFrame):
        hosts = [hosts]
    seg = SegmentOptions.from_dict(options)
    names = tuple(f"host{i + 1}" for i in range(len(hosts)))
    job = Job(id=job_id, guest="guest", hosts=names, kind="segment",
              psi=PsiOptions.from_mapping(psi or {}), segment=seg)  # fmt: skip
    network = LocalNetwork(list(job.parties))
    pols = [p if isinstance(p, SegmentPolicy) or p is None else SegmentPolicy.from_dict(p)
            for p in (policies or [None] * len(hosts))]  # fmt: skip
    out = Path(output_dir) if output_dir is not None else None

    def with_budget(party: str, role: Any) -> Any:
        path = (budgets or {}).get(party)
        if path is None:
            return role(None)
        with contextlib.closing(PrivacyBudget(path, budget_caps)) as budget:  # SQLite: one per thread
            return role(budget)

    def guest_role(budget: PrivacyBudget | None) -> SegmentRun:
        io = PartyIO(id, None, out / "guest" if out else None, pool, budget)
        return run_guest(job.session(network.channel("guest")), job, guest, io)

    def host_role(i: int, budget: PrivacyBudget | None) -> SegmentRun:
        name = names[i]
        io = PartyIO(id, None, out / name if out else None, pool, budget)
        keypair = keypairs[i] if keypairs else None
        return run_host(
            job.session(network.channel(name)), job, hosts[i], io, policy=pols[i], keypair=keypair
        )

    with WorkerPool(workers) as pool:
        roles: dict[str, Any] = {"guest": lambda: with_budget("guest", guest_role)}
        for i, name in enumerate(names):
            roles[name] = lambda i=i, name=name: with_budget(name, lambda b: host_role(i, b))
        results = run_parties(network, roles)
    return SegmentSimulation(results["guest"], {h: results[h] for h in names}, network, job)


# --- scoring: assign new shared customers with a segment model ------------------------------------


def _score_clusters(
    session: Session, job: Job, data: pd.DataFrame, model: SegmentModel, io: PartyIO
) -> tuple[PsiResult, np.ndarray]:
    """Check the data against the model, agree, PSI on the new ids, and every aligned row's local cluster."""
    session.guard(lambda: model.local_clusters(checked_view(data, io.streamed, model.columns)))
    session.guard(lambda: session.agree(job.settings()))
    result = run_psi(session, job, data[io.id_column], job.psi, column=io.id_column)
    session.guard(result.require_nonempty)
    return result, model.local_clusters(aligned_rows(result, data, io.streamed, model.columns))


def assign_guest(
    session: Session, job: Job, data: pd.DataFrame, model: SegmentModel, io: PartyIO = PartyIO()
) -> pd.DataFrame:
    """PSI on the new ids, then the joint assignment step: the guest gets every shared customer's segment."""
    if model.lookup is None or model.role != "guest":
        raise ConfigError(f"the segment model of job '{model.job_id}' here is not a guest's model")
    if model.lookup.ndim != len(job.hosts) + 1:
        raise ConfigError(
            f"the segment model of job '{model.job_id}' was made with {model.lookup.ndim - 1} host(s), "
            f"this job has {len(job.hosts)}; score with the same parties as the segment job"
        )
    result, labels = _score_clusters(session, job, data, model, io)
    seg = protocol.assign_guest(session, list(job.hosts), labels, model.lookup, workers=io.workers)
    session.barrier("segment-assign")
    out = pd.DataFrame({io.id_column: result.ids.to_numpy(), "segment": seg})
    if io.output_dir is not None:
        atomic_write_text(io.output_dir / "segments.csv", out.to_csv(index=False))
        notes = [f"intersection size {result.size}; the segment of every shared customer is known here"]
        write_outputs(io.output_dir, None, ledger_for(session, notes))
    return out


def assign_host(
    session: Session,
    job: Job,
    data: pd.DataFrame,
    model: SegmentModel,
    io: PartyIO = PartyIO(),
    *,
    policy: SegmentPolicy | None = None,
    keypair: tuple[PublicKey, PrivateKey] | None = None,
) -> int:
    """Scoring at a host: its local cluster of every new shared customer goes, encrypted, into the chain."""
    policy = policy or SegmentPolicy()
    result, labels = _score_clusters(session, job, data, model, io)
    keypair = keypair or generate_keypair(int(model.options.get("key_bits", 2048)))
    k_h = model.centroids.shape[0]
    protocol.assign_host(
        session, job.guest, labels, k_h, policy, keypair, list(job.hosts), workers=io.workers
    )
    session.barrier("segment-assign")
    if io.output_dir is not None:
        write_outputs(io.output_dir, None, ledger_for(session, [f"intersection size {result.size}"]))
    return result.size
