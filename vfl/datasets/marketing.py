"""A synthetic three-party marketing audience: a retailer, a bank and a publisher.

``marketing(n, seed)`` returns ``{"retailer": ..., "bank": ..., "publisher": ...}`` (pandas DataFrames,
each sorted by ``id``). The retailer is the guest (it holds the label), the others are hosts.

**Generative model.** Every customer has latent traits, drawn independently per customer:

* ``age ~ 18 + 70 * Beta(2, 3)`` (years), ``a0 = (age - 46) / 14``;
* affluence ``A = 0.4 a0 + sqrt(0.84) N(0, 1)`` and engagement ``E = -0.3 a0 + sqrt(0.91) N(0, 1)``;
* interest (one of ``finance, travel, sports, tech, fashion, home``) ~ softmax of logits linear in
  ``A``, ``E`` and ``a0`` (e.g. finance rises with affluence, tech with engagement, home with age).

Columns, given the traits:

* **retailer** -- ``age_band`` (18-24, 25-34, 35-44, 45-54, 55-64, 65+); ``region`` (5 regions, the
  capital more likely for affluent customers); ``channel`` (app / online / store, softmax of
  ``1 - 0.8 a0 + 0.5 E``, ``0.5 + 0.3 E``, 0); ``spend = exp(3.5 + 0.4 A + 0.3 E + 0.8 N)``; ``visits ~
  Poisson(exp(0.8 + 0.5 E))``; and the label ``purchase ~ Bernoulli(sigmoid(-1.6 + 0.7 A + 0.6 E + 0.5
  [interest in fashion, home] + 0.3 [channel = app]))``.
* **bank** -- ``income_band`` (<25k, 25-50k, 50-100k, 100-200k, 200k+: cuts of ``A + 0.5 N`` at -1, -0.3,
  0.4, 1.2); ``products_held ~ min(Poisson(exp(0.4 + 0.35 A)), 10)``; ``balance = exp(7.5 + 0.9 A + 0.6
  N)``.
* **publisher** -- ``interest_segment`` (the interest above); ``page_visits ~ Poisson(exp(1.2 + 0.7 E))``.

So the label correlates with the bank's columns through ``A`` and with the publisher's through ``E``
and the interest: a joint model or cross-tab beats the retailer alone.

**Overlap.** The retailer has ``n`` customers. Each is also a customer of partner ``p`` with
probability ``overlap[p]`` (default bank 0.6, publisher 0.4, independently), and each partner has
further customers of its own (traits drawn the same way) so that it holds about ``n`` rows too.
Ids are distinct 11-digit integers (a bijective scramble of the customer index, keyed by the seed).

**Determinism and memory.** Customers are generated in chunks of 2^18 with a generator keyed by
``(seed, population, chunk)`` (so the result depends on ``seed`` and ``chunk`` only); everything is
vectorized numpy and categorical columns are ``pandas.Categorical``. The result takes ~55 bytes per
retailer row (550 MB for 10M rows), the peak is about 2.5 times that (the chunks are concatenated
column by column, then sorted by id), and 1M rows take about a second (10M: ~20 s).
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np
import pandas as pd

PARTNERS = ("bank", "publisher")
DEFAULT_OVERLAP = {"bank": 0.6, "publisher": 0.4}
CHUNK = 1 << 18
AGE_BANDS = ("18-24", "25-34", "35-44", "45-54", "55-64", "65+")
REGIONS = ("capital", "north", "south", "east", "west")
CHANNELS = ("app", "online", "store")
INCOME_BANDS = ("<25k", "25-50k", "50-100k", "100-200k", "200k+")
INTERESTS = ("finance", "travel", "sports", "tech", "fashion", "home")
_ID_BASE = 10_000_000_000
_ID_BITS = 34
_MULT = 0x9E3779B1  # odd: i -> i * MULT mod 2^34 is a bijection


def _rng(seed: int, population: int, chunk: int) -> np.random.Generator:
    return np.random.default_rng([int(seed), population, chunk])


def _ids(index: np.ndarray, seed: int) -> np.ndarray:
    offset = int(np.random.default_rng([int(seed), 99]).integers(0, 1 << _ID_BITS))
    mask = (1 << _ID_BITS) - 1
    return _ID_BASE + (
        (index.astype(np.uint64) * np.uint64(_MULT) + np.uint64(offset)) & np.uint64(mask)
    ).astype(np.int64)


def _softmax_choice(rng: np.random.Generator, logits: np.ndarray) -> np.ndarray:
    """One category per row from row-wise softmax probabilities (int8 codes)."""
    p = np.exp(logits - logits.max(axis=1, keepdims=True))
    cum = np.cumsum(p, axis=1)
    u = rng.random(len(p)) * cum[:, -1]
    return (cum < u[:, None]).sum(axis=1).astype(np.int8)


def _traits(rng: np.random.Generator, m: int) -> dict[str, np.ndarray]:
    age = 18 + 70 * rng.beta(2.0, 3.0, m)
    a0 = (age - 46) / 14
    aff = 0.4 * a0 + math.sqrt(0.84) * rng.standard_normal(m)
    eng = -0.3 * a0 + math.sqrt(0.91) * rng.standard_normal(m)
    logits = np.stack(
        [
            0.8 * aff,
            0.5 * aff - 0.2 * a0,
            0.4 * eng - 0.3 * a0,
            0.7 * eng - 0.4 * a0,
            0.3 * eng - 0.2 * a0,
            0.5 * a0,
        ],
        axis=1,
    )
    interest = _softmax_choice(rng, logits)
    return {"age": age, "a0": a0, "aff": aff, "eng": eng, "interest": interest}


def _retailer_cols(rng: np.random.Generator, t: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    m = len(t["age"])
    age_band = np.searchsorted(np.array([25, 35, 45, 55, 65]), t["age"], side="right").astype(np.int8)
    region_logits = np.zeros((m, len(REGIONS)))
    region_logits[:, 0] = 0.3 + 0.5 * t["aff"]
    region = _softmax_choice(rng, region_logits)
    ch_logits = np.stack([1.0 - 0.8 * t["a0"] + 0.5 * t["eng"], 0.5 + 0.3 * t["eng"], np.zeros(m)], axis=1)
    channel = _softmax_choice(rng, ch_logits)
    spend = np.round(np.exp(3.5 + 0.4 * t["aff"] + 0.3 * t["eng"] + 0.8 * rng.standard_normal(m)), 2)
    visits = rng.poisson(np.exp(0.8 + 0.5 * t["eng"])).astype(np.int32)
    likes = np.isin(t["interest"], [INTERESTS.index("fashion"), INTERESTS.index("home")])
    logit = -1.6 + 0.7 * t["aff"] + 0.6 * t["eng"] + 0.5 * likes + 0.3 * (channel == 0)
    purchase = (rng.random(m) < 1 / (1 + np.exp(-logit))).astype(np.int8)
    return {
        "purchase": purchase,
        "age_band": age_band,
        "region": region,
        "channel": channel,
        "spend": spend,
        "visits": visits,
    }


def _bank_cols(rng: np.random.Generator, t: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    m = len(t["aff"])
    income = np.searchsorted(
        np.array([-1.0, -0.3, 0.4, 1.2]), t["aff"] + 0.5 * rng.standard_normal(m)
    ).astype(np.int8)
    products = np.minimum(rng.poisson(np.exp(0.4 + 0.35 * t["aff"])), 10).astype(np.int8)
    balance = np.round(np.exp(7.5 + 0.9 * t["aff"] + 0.6 * rng.standard_normal(m)), 2)
    return {"income_band": income, "products_held": products, "balance": balance}


def _publisher_cols(rng: np.random.Generator, t: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    visits = rng.poisson(np.exp(1.2 + 0.7 * t["eng"])).astype(np.int32)
    return {"interest_segment": t["interest"], "page_visits": visits}


_COLS = {"bank": _bank_cols, "publisher": _publisher_cols}
_CATEGORIES = {
    "age_band": AGE_BANDS,
    "region": REGIONS,
    "channel": CHANNELS,
    "income_band": INCOME_BANDS,
    "interest_segment": INTERESTS,
}


def _frame(parts: list[dict[str, np.ndarray]]) -> pd.DataFrame:
    """Concatenate one party's chunks column by column (freeing each chunk's piece), sorted by id."""
    names = list(parts[0])
    ids = np.concatenate([p.pop("id") for p in parts])
    order = np.argsort(ids, kind="stable")
    out: dict[str, object] = {"id": ids[order]}
    del ids
    for name in names[1:]:
        values = np.concatenate([p.pop(name) for p in parts])[order]
        if name in _CATEGORIES:
            out[name] = pd.Categorical.from_codes(values, categories=list(_CATEGORIES[name]))
        else:
            out[name] = values
        del values
    return pd.DataFrame(out, copy=False)


def marketing(
    n: int, seed: int = 0, *, overlap: float | Mapping[str, float] | None = None, chunk: int = CHUNK
) -> dict[str, pd.DataFrame]:
    """Three parties' tables about ``n`` retailer customers (see the module docstring for the model)."""
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise ValueError(f"n must be a positive integer, got {n!r}")
    if overlap is None:
        ov = dict(DEFAULT_OVERLAP)
    elif isinstance(overlap, (int, float)):
        ov = {p: float(overlap) for p in PARTNERS}
    else:
        ov = {**DEFAULT_OVERLAP, **{str(k): float(v) for k, v in overlap.items()}}
        unknown = sorted(set(ov) - set(PARTNERS))
        if unknown:
            raise ValueError(
                f"overlap is given for unknown partners {unknown}; partners are {list(PARTNERS)}"
            )
    for p, v in ov.items():
        if not 0.0 <= v <= 1.0:
            raise ValueError(f"overlap[{p!r}] must be in [0, 1], got {v}")
    n = int(n)
    parts: dict[str, list[dict[str, np.ndarray]]] = {"retailer": [], "bank": [], "publisher": []}
    shared = dict.fromkeys(PARTNERS, 0)
    for ci, start in enumerate(range(0, n, chunk)):
        m = min(chunk, n - start)
        rng = _rng(seed, 0, ci)
        t = _traits(rng, m)
        ids = _ids(np.arange(start, start + m), seed)
        parts["retailer"].append({"id": ids, **_retailer_cols(rng, t)})
        for p in PARTNERS:
            member = rng.random(m) < ov[p]
            cols = _COLS[p](rng, t)
            parts[p].append({"id": ids[member], **{k: v[member] for k, v in cols.items()}})
            shared[p] += int(member.sum())
    next_index = n
    for pi, p in enumerate(PARTNERS, start=1):
        own = n - shared[p]
        for ci, start in enumerate(range(0, own, chunk)):
            m = min(chunk, own - start)
            rng = _rng(seed, pi, ci)
            t = _traits(rng, m)
            ids = _ids(np.arange(next_index + start, next_index + start + m), seed)
            parts[p].append({"id": ids, **_COLS[p](rng, t)})
        next_index += own
    return {name: _frame(parts.pop(name)) for name in list(parts)}
