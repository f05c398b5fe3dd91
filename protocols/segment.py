"""Joint segmentation (job kind ``segment``, DESIGN.md §14): grid k-means across a guest and 1..N hosts.

Every party has standardized its own segmentation columns, clustered them locally into ``k_p``
clusters and dissolved local clusters below ``k_threshold`` rows (``vfl.segmentation``); all of that
stays at the party. This module moves what the grid k-means of Ding et al. (ICML 2016) needs, and
nothing else:

1. **policy**: each host tells the guest whether its party.toml allows membership release and shared
   means (``SegmentPolicy``); a job asking for membership that a host does not allow stops here.
2. **grid counts** (per host, :func:`crosstab_host` / :func:`crosstab_guest`, the generic "encrypted
   cross-tab of a guest code x a host code with two noise shares" round of ``protocols/crosstab.py``
   over ``vfl.analytics.crosstab``):
   the host encrypts, under its own Paillier key, a packed one-hot vector of its local cluster per
   aligned row; the guest folds the rows by its own local cluster (and raises them to its 0/1 outcome
   for the outcome sums), adds its noise share and a uniform mask; the host decrypts the masked values
   and adds its own noise share; the guest removes its mask. The guest obtains the DP-noised count
   (and noised positive outcomes) of every (guest local cluster, host local cluster) cell.
3. **geometry**: each host sends the ``k_h x k_h`` squared distances between its local cluster means
   (standardized units, no column names); the guest embeds them isometrically and runs the weighted
   k-means over the grid (with 2+ hosts the grid is estimated from the pairwise tables,
   ``vfl.segmentation.joint.pairwise_to_grid``), merges (or withholds) segments below ``min_size``
   by their noised size.
4. **result**: each host gets the noised weight per (its local cluster, segment) and computes its own
   part of the segment centroids, i.e. its own-column means per segment.
5. **means** (only where the host's policy allows): the host sends DP-noised means of its columns
   per segment (discrete Laplace on the sums, sensitivity of one clipped standardized row).
6. **labels** (only with ``membership = "guest"``, every host's policy allowing it, any number of
   hosts): a chain of masked selections of the guest's cell -> segment lookup by each host's encrypted
   one-hot local cluster in turn (``protocols/segment_labels.py``); the guest learns the final segment
   of every row and nothing about any host's local cluster beyond it.

Message table (``SEGMENT``; ``{step}`` names a cross-tab round, ``counts`` here):

| message | from -> to | carries | the receiver learns |
|---|---|---|---|
| ``segment.policy`` | host -> guest | release_membership, share_means | the host's segmentation policy |
| ``session.public-key`` | host -> guest | the host's Paillier public key | the key |
| ``segment.xt-layout`` | host -> guest | the cross-tab layout (row bound, number of host local clusters, slot width, epsilon) | how many local clusters the host has |
| ``segment.xt-rows`` | host -> guest | one packed encrypted one-hot per aligned row | nothing (encrypted under the host's key) |
| ``segment.xt-sealed`` | guest -> host | per guest local cluster: folded ciphertexts + guest noise share + uniform mask | nothing (uniformly masked) |
| ``segment.xt-reply`` | host -> guest | the masked values + host noise share | the DP-noised count (and positive outcomes) of every (guest local cluster, host local cluster) cell |
| ``segment.geometry`` | host -> guest | ``k_h x k_h`` squared distances between the host's local cluster means | the shape of the host's local clusters up to rotation (no column, no row) |
| ``segment.result`` | guest -> host | noised weight per (host local cluster, segment) | the noised size of every segment split by its own local clusters |
| ``segment.means`` | host -> guest (policy) | DP-noised means of the host's columns per segment | the host's noised column means per segment |
| ``segment.onehot`` | host -> guest (membership) | unpacked encrypted one-hot of the host's local cluster per row | nothing (encrypted) |
| ``segment.masked-label`` | guest -> host (membership) | its share of each row's remaining lookup entries, ``+ r`` (40 bits wider), rerandomized | nothing (statistically masked) |
| ``session.public-key`` | guest -> host ``j-1`` (membership, 2+ hosts) | host ``j``'s public key, forwarded | the key |
| ``segment.relay`` | guest -> host ``j-1`` (membership, 2+ hosts) | host ``j``'s encrypted one-hot, forwarded | nothing (under host ``j``'s key) |
| ``segment.select`` | host ``j-1`` -> guest (membership, 2+ hosts) | its share selected by host ``j``'s one-hot, rerandomized | nothing (under host ``j``'s key) |
| ``segment.label`` | last host -> guest (membership) | ``segment_i + 1 + r_i`` per row | the final segment of every shared customer |

Never: the guest never sees a host column value, a host's local cluster of a row, or a per-row
distance; a host never sees the guest's columns, outcome, local clusters, the lookup table, or any
row's segment.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import pyarrow as pa

from vfl.analytics.dp import discrete_laplace, noise_variance
from vfl.crypto import PrivateKey, PublicKey, WorkerPool
from vfl.errors import ProtocolError
from vfl.protocols.crosstab import GUEST_CODE as GUEST_CODE
from vfl.protocols.crosstab import HOST_CODE as HOST_CODE
from vfl.protocols.crosstab import OUTCOME, XT_MESSAGES, crosstab_guest, crosstab_host
from vfl.protocols.crosstab import crosstab_options as crosstab_options
from vfl.protocols.messages import FLOAT, INT, TEXT, Protocol, message
from vfl.protocols.segment_labels import (
    LABEL_MESSAGES,
    POLICY,
    assign_guest,
    assign_host,
    labels_guest,
    labels_host,
    recv_policies,
    require_release,
    send_policy,
)
from vfl.protocols.session import Session
from vfl.segmentation.grid import NOISE_THRESHOLD, GridSegmentation, fit_grid
from vfl.segmentation.joint import (
    CLIP_SIGMA,
    embed_distances,
    pairwise_to_grid,
    segment_marginals,
    segment_means,
    squared_distances,
)
from vfl.segmentation.options import SegmentOptions, SegmentPolicy
from vfl.segmentation.profiles import enforce_min_size

_AGGREGATES = (  # name (tag segment/<name>), sender, receiver, what the receiver learns, its columns
    ("geometry", "host", "guest", "the squared distances between each host's local cluster means (their shape "
     "up to rotation; no column, no row)", {"i": INT, "j": INT, "d2": FLOAT}),
    ("result", "guest", "host", "the noised size of every segment split by its own local clusters",
     {"cluster": INT, "segment": INT, "weight": FLOAT}),
    ("means", "host", "guest", "DP-noised means of a host's columns per segment (only where its policy allows)",
     {"segment": INT, "column": TEXT, "mean": FLOAT}),
)  # fmt: skip
GEOMETRY, RESULT, MEANS = (
    message(f"segment.{name}", f"segment/{name}", frm, to, learns, **columns)
    for name, frm, to, learns, columns in _AGGREGATES
)
SEGMENT = Protocol(
    "segment",
    (POLICY, *XT_MESSAGES, GEOMETRY, RESULT, MEANS, *LABEL_MESSAGES),
    never={
        "guest": ("any host column value", "a host's local cluster of any row", "any per-row distance"),
        "host": ("guest columns", "the outcome", "the guest's local clusters", "any row's segment"),
    },
)
XT_LAYOUT, XT_ROWS, XT_SEALED, XT_REPLY = XT_MESSAGES

CLIP = CLIP_SIGMA  # standardized values are clipped here (the sensitivity of a shared mean)


# ---------------------------------------------------------------------------------------------
# results
# ---------------------------------------------------------------------------------------------


@dataclass
class GuestSegments:
    """What the guest knows at the end (all aggregates noised; labels only with membership release)."""

    grid: GridSegmentation
    lookup: np.ndarray  # final segment (-1: withheld) of every grid cell
    sizes: np.ndarray  # (K',) noised segment sizes
    positives: np.ndarray | None  # (K',) noised positive outcomes
    own_means: np.ndarray  # (K', d_g) the guest's own segment centroids, standardized units
    host_means: dict[str, pd.DataFrame]  # host -> noised means per segment (original units), shared only
    labels: np.ndarray | None  # (n,) final segment per aligned row, membership release only
    policies: dict[str, SegmentPolicy]
    tables: dict[str, np.ndarray]  # host -> noised (k_g, k_h) counts
    noise_var: np.ndarray | None = None  # (K',) variance of the DP noise in each size (and outcome) sum

    @property
    def n_segments(self) -> int:
        return int(self.sizes.shape[0])


@dataclass
class HostSegments:
    """What a host knows at the end: its own part of the segments."""

    marginal: np.ndarray  # (k_h, K') noised weight per (own local cluster, segment)
    sizes: np.ndarray  # (K',)
    own_means: np.ndarray  # (K', d_h) standardized units

    @property
    def n_segments(self) -> int:
        return int(self.sizes.shape[0])


# ---------------------------------------------------------------------------------------------
# guest
# ---------------------------------------------------------------------------------------------


def run_guest(
    session: Session,
    hosts: Sequence[str],
    labels: np.ndarray,
    centroids: np.ndarray,
    options: SegmentOptions,
    *,
    outcome: np.ndarray | None = None,
    workers: WorkerPool | None = None,
) -> GuestSegments:
    """The guest's part: ``labels``/``centroids`` are its local clustering (standardized units)."""
    session.uses(SEGMENT)
    guest = session.party
    policies = recv_policies(session, hosts)
    if options.membership == "guest":
        session.guard(lambda: require_release(policies, 'membership = "guest"'))
    k_g = int(centroids.shape[0])
    tables: dict[str, np.ndarray] = {}
    positives_tables: dict[str, np.ndarray] = {}
    eps_count = math.inf
    keys: dict[str, PublicKey] = {}
    for h in hosts:
        pk = session.receive_key(h)
        xt_options = crosstab_options(
            guest,
            h,
            epsilon=options.epsilon,
            k=options.k_threshold,
            cells=1 << 16,
            outcome=outcome is not None,
        )
        keys[h] = pk
        table = crosstab_guest(
            session, h, labels, xt_options, pk, step="counts", outcome=outcome, workers=workers
        )
        counts, sums = table.values()
        tables[h] = counts[:k_g]  # the host's layout admits up to the rule's k_p guest clusters
        if outcome is not None:
            positives_tables[h] = sums[OUTCOME][:k_g]
        eps_count = min(eps_count, table.layout.epsilon["count"])
    embedded = []
    for h in hosts:
        g = session.recv(GEOMETRY, h)
        i, j, d2 = (np.asarray(g.column(c).to_numpy()) for c in ("i", "j", "d2"))
        k_h = tables[h].shape[1]
        if g.num_rows != k_h * k_h or i.max(initial=0) >= k_h or j.max(initial=0) >= k_h:
            raise ProtocolError(
                f"party '{h}' sent a distance table that does not fit its {k_h} local clusters"
            )
        matrix = np.zeros((k_h, k_h))
        matrix[i, j] = d2
        embedded.append(embed_distances(matrix))
    pw = [options.party_weight(guest), *(options.party_weight(h) for h in hosts)]
    if len(hosts) == 1:
        grid_counts = tables[hosts[0]]
        fit_threshold: dict[str, float | None] = {"epsilon": eps_count}
    else:
        # The noise threshold applies to the noised pairwise cells; the product estimate of the grid
        # is not noised cell by cell, so the fit then only drops its empty cells.
        limit = NOISE_THRESHOLD / eps_count
        grid_counts = pairwise_to_grid([np.where(tables[h] > limit, tables[h], 0.0) for h in hosts])
        fit_threshold = {"min_count": 0.0}

    def fit() -> GridSegmentation:
        return fit_grid(
            [centroids, *embedded], grid_counts, options.k, party_weights=pw, min_size=options.min_size,
            n_init=options.n_init, seed=options.seed, **fit_threshold,
        )  # fmt: skip

    grid = session.guard(fit)
    raw_sizes = grid.segment_weights
    mapping = session.guard(
        lambda: enforce_min_size(
            raw_sizes,
            options.min_size,
            centroids=grid.centroids,
            party_weights=pw,
            policy=options.small_segments,
        )  # fmt: skip
    )
    lookup = np.where(grid.cell_segment >= 0, mapping[grid.cell_segment], -1)
    k_final = int(mapping.max()) + 1 if (mapping >= 0).any() else 0
    # Released sizes sum the noised counts of *every* cell of a segment: the fit drops cells below the
    # noise threshold, but a sum over only the cells that noise pushed above it would be biased upwards.
    released = lookup >= 0
    sizes = np.bincount(lookup[released], weights=np.asarray(grid_counts)[released], minlength=k_final)
    cells_per_segment = np.bincount(lookup[released], minlength=k_final).astype(float)
    share_var = noise_variance(eps_count, 1) if math.isfinite(eps_count) else 0.0
    noise_var = 2.0 * share_var * cells_per_segment  # two shares per cell (guest x one host's cells)
    positives = None
    if outcome is not None:
        if len(hosts) == 1:
            cell_pos = positives_tables[hosts[0]]
        else:
            rates = []
            for k, h in enumerate(hosts):
                rate = np.clip(positives_tables[h] / np.maximum(tables[h], 1.0), 0.0, 1.0)
                shape = [k_g] + [1] * len(hosts)
                shape[k + 1] = rate.shape[1]
                rates.append(rate.reshape(shape))
            cell_pos = grid_counts * np.mean(np.broadcast_arrays(*rates), axis=0)
        positives = np.bincount(lookup[released], weights=np.asarray(cell_pos)[released], minlength=k_final)
    own = segment_means(centroids, segment_marginals(lookup, grid.weights, 0, k_final))
    for axis, h in enumerate(hosts, start=1):
        marg = segment_marginals(lookup, grid.weights, axis, k_final)
        cl, sg = np.divmod(np.arange(marg.size), k_final)
        session.send(RESULT, h, pa.table({"cluster": cl, "segment": sg, "weight": marg.ravel()}))
    host_means = {}
    for h in hosts:
        if policies[h].share_means:
            t = session.recv(MEANS, h)
            frame = t.to_pandas().pivot(index="segment", columns="column", values="mean")
            host_means[h] = frame.reindex(range(k_final))
    seg_labels = None
    if options.membership == "guest":
        seg_labels = labels_guest(session, hosts, keys, labels, lookup, workers)
    return GuestSegments(
        grid, lookup, sizes, positives, own, host_means, seg_labels, policies, tables, noise_var
    )


# ---------------------------------------------------------------------------------------------
# host
# ---------------------------------------------------------------------------------------------


def run_host(
    session: Session,
    guest: str,
    labels: np.ndarray,
    centroids: np.ndarray,
    options: SegmentOptions,
    policy: SegmentPolicy,
    keypair: tuple[PublicKey, PrivateKey],
    *,
    guest_clusters: int,  # the most local clusters the guest may have (the k_p rule's value)
    has_outcome: bool,
    column_names: Sequence[str] = (),
    hosts: Sequence[str] = (),  # the job's hosts in order (the label chain's order)
    scaler: tuple[np.ndarray, np.ndarray] | None = None,
    workers: WorkerPool | None = None,
) -> HostSegments:
    """A host's part: ``labels``/``centroids`` are its local clustering (standardized units).

    ``guest_clusters`` (k_g) follows from the agreed options and the intersection size; ``scaler``
    (mean, std) converts shared means back to the host's original units.
    """
    session.uses(SEGMENT)
    pk, _ = keypair
    send_policy(session, guest, policy)
    k_h = int(centroids.shape[0])
    session.hand_out_key(pk, [guest])
    xt_options = crosstab_options(
        guest,
        session.party,
        epsilon=options.epsilon,
        k=options.k_threshold,
        cells=1 << 16,
        outcome=has_outcome,
    )
    crosstab_host(
        session, guest, labels, k_h, xt_options, keypair, guest_clusters, step="counts", workers=workers
    )
    d2 = squared_distances(centroids)
    ii, jj = np.divmod(np.arange(k_h * k_h), k_h)
    session.send(GEOMETRY, guest, pa.table({"i": ii, "j": jj, "d2": d2.ravel()}))
    res = session.recv(RESULT, guest)
    cl, sg, w = (np.asarray(res.column(c).to_numpy()) for c in ("cluster", "segment", "weight"))
    k_final = int(sg.max()) + 1 if len(sg) else 0
    if len(cl) != k_h * k_final or (len(cl) and cl.max() >= k_h):
        raise ProtocolError(
            f"party '{guest}' sent a segment result that does not fit our {k_h} local clusters"
        )
    marginal = np.zeros((k_h, k_final))
    marginal[cl, sg] = w
    sizes = marginal.sum(axis=0)
    own = segment_means(centroids, marginal)
    if policy.share_means:
        session.send(MEANS, guest, _noised_means(own, sizes, options, column_names, scaler))
    if options.membership == "guest":
        labels_host(session, guest, labels, k_h, keypair, hosts or (session.party,), workers)
    return HostSegments(marginal, sizes, own)


def _noised_means(
    means: np.ndarray,
    sizes: np.ndarray,
    options: SegmentOptions,
    names: Sequence[str],
    scaler: tuple[np.ndarray, np.ndarray] | None,
) -> pa.Table:
    """Discrete Laplace on every segment's (standardized, clipped) column sums; means in original units.

    One customer moves one segment's sum of each column by at most ``CLIP`` standard deviations
    (resolution 2^-8); the columns compose sequentially, the segments in parallel, so every number
    gets ``means_epsilon / d``.
    """
    k, d = means.shape
    names = list(names) or [f"x{j}" for j in range(d)]
    eps = options.means_epsilon / max(d, 1)
    scale = 256
    sens = int(CLIP * scale)
    sums = np.nan_to_num(np.clip(means, -CLIP, CLIP)) * sizes[:, None]
    noisy = (np.rint(sums * scale) + discrete_laplace(eps, sens, size=k * d).reshape(k, d)) / scale
    out = noisy / np.maximum(sizes, 1.0)[:, None]
    if scaler is not None:
        out = out * scaler[1] + scaler[0]
    seg, col = np.divmod(np.arange(k * d), d)
    return pa.table({"segment": seg, "column": [names[c] for c in col], "mean": out.ravel().astype(float)})


def policies_table(policies: Mapping[str, SegmentPolicy]) -> dict[str, dict[str, bool]]:
    return {
        h: {"release_membership": p.release_membership, "share_means": p.share_means}
        for h, p in policies.items()
    }


__all__ = [
    "SEGMENT",
    "GuestSegments",
    "assign_guest",
    "assign_host",
    "HostSegments",
    "crosstab_guest",
    "crosstab_host",
    "crosstab_options",
    "run_guest",
    "run_host",
]
