"""Aligning a job's rows: this party's side of the PSI with the job's other data parties, and the
checks every job makes on what it found (the minimum intersection, a serving party's rows cap)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from vfl.errors import ConfigError, DataError, PolicyError
from vfl.options import MIN_INTERSECTION_FLOOR, TrainOptions
from vfl.protocols import psi
from vfl.protocols.session import Session
from vfl.psi.ecdh import ScalarMultiplier
from vfl.psi.options import PsiOptions, PsiResult

if TYPE_CHECKING:
    from vfl.parties.common import Job


def require_min_intersection(size: int, options: TrainOptions) -> None:
    """Refuse to compute anything from labels or features on fewer aligned rows than the job allows."""
    if size < options.min_intersection:
        raise DataError(
            f"the parties share {size} ids, fewer than the job's minimum of {options.min_intersection} "
            f"(min_intersection in [train]; at least {MIN_INTERSECTION_FLOOR}): on so few customers every "
            "aggregate is close to a single customer's value"
        )


def require_intersection(result: PsiResult) -> None:
    result.require_nonempty()
    if not result.rows_revealed:
        raise ConfigError(
            "training needs PSI reveal='all': with 'guest-only' the hosts do not know their rows"
        )


def run_psi(
    session: Session, job: Job, ids: pd.Series, options: PsiOptions, *, column: str, workers: Any = None
) -> PsiResult:
    """This party's side of PSI with the job's other data parties (the guest with every host, a host with the guest)."""
    multiplier = psi_multiplier(workers, options)
    if session.party == job.guest:
        result = psi.run_guest(session, ids, list(job.hosts), options, column=column, multiplier=multiplier)
    else:
        result = psi.run_host(session, ids, job.guest, options, column=column, multiplier=multiplier)
    session.guard(lambda: require_row_limit(job, result.size))
    return result


def require_row_limit(job: Job, shared: int, peer: str | None = None) -> None:
    """A served job stops here if it shares more rows than this party's policy accepted it for.

    ``peer``: a pairwise PSI (audience jobs) with that party; only the pair with the proposer is bound
    by the ids it declared. Without it, ``shared`` is the job's intersection, bound by every set.
    """
    limit = job.row_limit
    if limit is not None and peer in (None, limit.partner) and shared > limit.rows:
        raise PolicyError(
            f"refused by policy rule [caps.{limit.partner}] rows: job '{job.id}' shares {shared} rows, more "
            f"than the {limit.rows} it was accepted for ('{limit.partner}' declared fewer ids than it brought)"
        )


def align_for_training(
    session: Session, job: Job, ids: pd.Series, *, column: str, workers: Any = None
) -> tuple[np.ndarray, dict[str, Any]]:
    """A training job's fresh alignment: its aligned rows and the summary the state store keeps with them."""
    result = run_psi(session, job, ids, job.training_psi, column=column, workers=workers)
    session.guard(lambda: require_intersection(result))
    return result.rows, {"size": result.size, "set_sizes": dict(result.set_sizes)}


def checked_view(data: pd.DataFrame, streamed: Any, values: Sequence[str] | None = None) -> pd.DataFrame:
    """What a role's checks before any peer is contacted look at: its table, or for a large file read in
    batches (``streamed``, a ``StreamedTable``: ``data`` holds the id and what is needed up front) a few
    rows with every column of the file, ``values`` (None: all) carrying what one streamed pass found, so
    the same checks give the same one-line errors (``StreamedTable.witness``)."""
    return data if streamed is None else streamed.witness(data, values)


def aligned_rows(
    result: PsiResult, data: pd.DataFrame, streamed: Any, columns: Sequence[str]
) -> pd.DataFrame:
    """This party's rows in the shared order: ``result.align(data)``, or for a streamed file (``streamed``)
    ``data``'s columns and ``columns`` read from the file, only the shared rows."""
    if streamed is None:
        return result.align(data)
    rows = result.rows if result.rows_revealed else np.empty(0, dtype=np.int64)
    return streamed.aligned(data, rows, columns)


def psi_multiplier(workers: Any, options: PsiOptions) -> ScalarMultiplier | None:
    """The PSI curve operations on the party's compute backend when it is a cluster (``DaskBackend``);
    None keeps the PSI's own local pool (``PsiOptions.workers``), as without a ``[compute]`` backend."""
    if workers is None or not getattr(workers, "remote", False):
        return None
    return ScalarMultiplier(
        workers=workers.workers,
        chunk_size=options.chunk_size,
        parallel_threshold=options.parallel_threshold,
        executor=workers,
    )
