"""Feature screening across parties (DESIGN.md §17): WOE and information value of every host column.

The guest holds the 0/1 label and its own Paillier key pair (no arbiter takes part). After PSI:

1. the guest hands out its public key and sends each host ``[[y_i]]`` for every aligned row, encrypted
   once per host (fresh randomness);
2. each host bins every numeric column of its own on the aligned rows (quantile bins, missing values
   in their own bin) and merges bins until none describes fewer than ``min_bin_size`` customers --
   using only its own row counts, before anything is sent; it then sums the encrypted labels per bin
   (``vfl.screening.encrypted_bin_sums``: ``[[events of bin b]]``, re-randomized) and sends the
   per-bin row counts with the encrypted sums;
3. the guest decrypts the per-bin event counts (non-events = rows - events), merges adjacent bins until
   WOE is monotone if ``method = "monotone"`` (on counts alone), and computes WOE and IV per column;
4. with ``share_iv``, the guest sends each host the IV of the host's own columns.

Message table (``SCREEN``; the public key travels as the session's ``session.public-key``):

| message | from -> to | carries | the receiver learns |
|---|---|---|---|
| ``screen.labels`` | guest -> host | ``[[y_i]]`` per aligned row | nothing (encrypted under the guest's key) |
| ``screen.bins`` | host -> guest | per column and bin: the number of rows (every bin >= min_bin_size or empty) | per-bin row counts of each host column, in bin order; no bin edge, no row's bin |
| ``screen.sums`` | host -> guest | ``[[events]]`` per column and bin, re-randomized | per-bin event counts of each host column (so WOE and IV) |
| ``screen.iv`` | guest -> host | IV and strength of each of the host's columns (``share_iv`` only) | the IV of its own columns |

A host never learns a label, an event count, a guest column or the IV (unless shared); the guest
never learns a host value, a bin edge or which bin a customer is in.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import pyarrow as pa

from vfl.crypto import EncryptedVector, PrivateKey, PublicKey, WorkerPool, encrypt
from vfl.errors import DataError, ProtocolError
from vfl.options import ScreenOptions
from vfl.protocols.messages import FIXED, FLOAT, INT, TEXT, Protocol, message
from vfl.protocols.session import Session
from vfl.screening import (
    Binning,
    bin_counts,
    decrypt_bin_counts,
    encrypted_bin_sums,
    merge_counts,
    merge_small_bins,
    monotone_groups,
    quantile_binning,
    strength,
    woe_iv,
)

SCREEN = Protocol(
    "screen",
    (
        message("screen.labels", "screen/labels/{host}", "guest", "host",
                "nothing: the labels of the aligned rows, encrypted under the guest's key", ciphertext=FIXED),
        message("screen.bins", "screen/bins/{host}", "host", "guest",
                "per-bin row counts of each host column in bin order (every bin at least min_bin_size "
                "customers or empty; no bin edge, no customer's bin)", column=TEXT, bin=INT, size=INT),
        message("screen.sums", "screen/sums/{host}", "host", "guest",
                "per-bin event counts of each host column (so its WOE and IV)", ciphertext=FIXED),
        message("screen.iv", "screen/iv/{host}", "guest", "host",
                "the information value of each of its own columns (only with share_iv = true)",
                column=TEXT, iv=FLOAT, strength=TEXT),
    ),
    never={
        "guest": ("any host value", "any host bin edge", "which bin a customer is in at a host"),
        "host": ("labels", "event counts", "guest columns", "the IV of its columns (unless share_iv)"),
    },
)  # fmt: skip
LABELS, BINS, SUMS, IV = SCREEN.messages


@dataclass(frozen=True)
class ScreenPlan:
    guest: str
    hosts: tuple[str, ...]
    options: ScreenOptions


@dataclass
class ColumnScreen:
    """One column's bins after screening: counts per bin (value bins, then the missing bin)."""

    owner: str
    column: str
    events: np.ndarray
    non_events: np.ndarray
    labels: list[str] = field(default_factory=list)

    @property
    def iv(self) -> float:
        return float(np.sum(woe_iv(self.events, self.non_events)[1]))

    def woe_table(self) -> pd.DataFrame:
        woe, iv = woe_iv(self.events, self.non_events)
        rows = self.events + self.non_events
        with np.errstate(divide="ignore", invalid="ignore"):
            rate = np.where(rows > 0, self.events / np.maximum(rows, 1), np.nan)
        return pd.DataFrame(
            {
                "owner": self.owner,
                "column": self.column,
                "bin": self.labels or [str(b) for b in range(len(rows))],
                "rows": rows,
                "events": self.events,
                "non_events": self.non_events,
                "event_rate": rate,
                "woe": woe,
                "iv": iv,
            }
        )


# --- local steps (the same at the guest for its own columns and in tests on joined data) ----------


def numeric_columns(frame: pd.DataFrame) -> tuple[list[str], list[str]]:
    """``(numeric columns, skipped text columns)`` of ``frame``: screening bins numbers only."""
    numeric, skipped = [], []
    for name in frame.columns:
        (numeric if pd.api.types.is_numeric_dtype(frame[name]) else skipped).append(str(name))
    return numeric, skipped


def value_bins(values: np.ndarray, options: ScreenOptions) -> Binning:
    """What the owner of a column does alone: quantile bins, then bins below ``min_bin_size`` merged."""
    binning = quantile_binning(values, options.bins)
    counts = bin_counts(binning.assign(values), None, binning.n_bins)
    return merge_small_bins(binning, counts, options.min_bin_size)


def finish(
    events: np.ndarray, non_events: np.ndarray, options: ScreenOptions
) -> tuple[np.ndarray, np.ndarray, list]:
    """What the guest does with a column's counts: monotone merging if asked; returns the merge groups."""
    groups = [[b] for b in range(len(events) - 1)]
    if options.method == "monotone":
        groups = monotone_groups(events, non_events)
        events, non_events = merge_counts(events, groups), merge_counts(non_events, groups)
    return events, non_events, groups


def group_labels(groups: list[list[int]]) -> list[str]:
    """Bin names the guest can give a host's bins: order only (``bin 1`` is the lowest values)."""
    out = [f"bin {g[0] + 1}" if len(g) == 1 else f"bins {g[0] + 1}-{g[-1] + 1}" for g in groups]
    return [*out, "missing"]


def screen_own_column(
    values: np.ndarray, labels: np.ndarray, column: str, owner: str, options: ScreenOptions
) -> ColumnScreen:
    """A column and labels at the same party (the guest's own columns): the same steps as across parties."""
    binning = value_bins(values, options)
    events, non_events = bin_counts(binning.assign(values), labels, binning.n_bins)
    events, non_events, groups = finish(events, non_events, options)
    merged = binning.regrouped(groups)
    return ColumnScreen(owner, column, events, non_events, merged.labels())


# --- guest ------------------------------------------------------------------------------------------


def run_guest(
    session: Session,
    plan: ScreenPlan,
    labels: np.ndarray,
    keypair: tuple[PublicKey, PrivateKey],
    *,
    workers: WorkerPool | None = None,
) -> list[ColumnScreen]:
    """Guest side: send encrypted labels, decrypt every host's per-bin event counts, compute WOE and IV."""
    session.uses(SCREEN)
    public, private = keypair
    y = np.asarray(labels, dtype=np.int64)
    session.hand_out_key(public, plan.hosts)
    for host in plan.hosts:
        encrypted = encrypt(private, y, exponent=0, workers=workers)  # fresh randomness per host
        session.send(LABELS, host, encrypted.to_arrow(), host=host)
    results: list[ColumnScreen] = []
    k = plan.options.min_bin_size
    for host in plan.hosts:
        bins = session.recv(BINS, host, host=host)
        sums = EncryptedVector.from_arrow(session.recv(SUMS, host, host=host), public)
        if len(sums) != bins.num_rows:
            raise ProtocolError(f"host '{host}' sent {len(sums)} encrypted sums for {bins.num_rows} bins")
        columns = bins.column("column").to_pylist()
        rows = bins.column("size").to_numpy()
        if np.any((rows > 0) & (rows < k)) or np.any(rows < 0):
            raise ProtocolError(f"host '{host}' sent a bin of fewer than min_bin_size={k} customers")
        start = 0
        for name in dict.fromkeys(columns):
            count = columns.count(name)
            part = slice(start, start + count)
            if columns[part] != [name] * count:
                raise ProtocolError(f"host '{host}' sent the bins of column '{name}' out of order")
            if int(rows[part].sum()) != len(y):
                raise ProtocolError(
                    f"host '{host}' binned {int(rows[part].sum())} rows of '{name}', not {len(y)}"
                )
            events, non_events = decrypt_bin_counts(
                private, sums[np.arange(start, start + count)], rows[part]
            )
            events, non_events, groups = finish(events, non_events, plan.options)
            results.append(ColumnScreen(host, name, events, non_events, group_labels(groups)))
            start += count
    return results


def share_iv(session: Session, plan: ScreenPlan, results: list[ColumnScreen]) -> None:
    """Send each host the IV of its own columns (``share_iv``)."""
    for host in plan.hosts:
        own = [r for r in results if r.owner == host]
        table = pa.table(
            {
                "column": pa.array([r.column for r in own], pa.string()),
                "iv": pa.array([r.iv for r in own], pa.float64()),
                "strength": pa.array([strength(r.iv) for r in own], pa.string()),
            }
        )
        session.send(IV, host, table, host=host)


# --- host -------------------------------------------------------------------------------------------


def run_host(session: Session, plan: ScreenPlan, columns: pd.DataFrame) -> pd.DataFrame | None:
    """Host side: bin its own aligned columns, sum the encrypted labels per bin, send counts and sums.

    ``columns`` are the host's numeric columns on the aligned rows, in the shared order. Returns the
    IV table of its columns when the guest shares it, else None.
    """
    session.uses(SCREEN)
    me = session.party
    public = session.receive_key(plan.guest)
    labels = EncryptedVector.from_arrow(session.recv(LABELS, plan.guest, host=me), public)
    if len(labels) != len(columns):
        raise ProtocolError(
            f"party '{plan.guest}' sent {len(labels)} encrypted labels for {len(columns)} rows"
        )
    names, rows, parts = [], [], []
    for name in columns.columns:
        values = pd.to_numeric(columns[name], errors="coerce").to_numpy(dtype=float)
        if np.all(np.isnan(values)):
            raise DataError(f"column '{name}' of host '{me}' has no values on the aligned rows")
        binning = value_bins(values, plan.options)
        sums, counts = encrypted_bin_sums(
            labels, binning.assign(values), binning.n_bins, k=plan.options.min_bin_size
        )
        names += [str(name)] * binning.n_bins
        rows += counts.tolist()
        parts.append(sums)
    table = pa.table(
        {
            "column": pa.array(names, pa.string()),
            "bin": pa.array(
                [b for name in dict.fromkeys(names) for b in range(names.count(name))], pa.int64()
            ),
            "size": pa.array(rows, pa.int64()),
        }
    )
    session.send(BINS, plan.guest, table, host=me)
    session.send(SUMS, plan.guest, EncryptedVector.concatenate(parts).to_arrow(), host=me)
    if not plan.options.share_iv:
        return None
    shared = session.recv(IV, plan.guest, host=me)
    return shared.to_pandas()


def iv_ranking(results: list[ColumnScreen]) -> pd.DataFrame:
    """``owner, column, iv, strength, bins`` (non-empty bins), strongest first."""
    table = pd.DataFrame(
        {
            "owner": [r.owner for r in results],
            "column": [r.column for r in results],
            "iv": [r.iv for r in results],
            "bins": [int(np.count_nonzero(r.events + r.non_events)) for r in results],
        }
    )
    table["strength"] = [strength(v) for v in table["iv"]]
    table = table[["owner", "column", "iv", "strength", "bins"]]
    return table.sort_values(
        ["iv", "owner", "column"], ascending=[False, True, True], kind="stable"
    ).reset_index(drop=True)


def woe_tables(results: list[ColumnScreen]) -> pd.DataFrame:
    if not results:
        return pd.DataFrame(
            columns=["owner", "column", "bin", "rows", "events", "non_events", "event_rate", "woe", "iv"]
        )
    return pd.concat([r.woe_table() for r in results], ignore_index=True)


__all__ = [
    "SCREEN",
    "ColumnScreen",
    "ScreenPlan",
    "iv_ranking",
    "numeric_columns",
    "run_guest",
    "run_host",
    "screen_own_column",
    "share_iv",
    "woe_tables",
]
