"""Loading a party's table and preparing its columns locally (impute, encode, standardize, clip).

Nothing here crosses the wire: each party fits its own ``Preprocessor`` on its own aligned
training rows and keeps it with its weight shard, so scoring applies the very same transform.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pandas as pd

from vfl.column_checks import MAX_MAGNITUDE, as_float, column_problem, summarize  # noqa: F401 - re-exported
from vfl.errors import DataError

log = logging.getLogger(__name__)

MAX_CATEGORIES = 20
# Columns more skewed than this are log-compressed (sign(x) log(1 + |x|)) before scaling: the Taylor
# loss is a least-squares fit, and a few huge values would otherwise dominate it.
HEAVY_TAIL_SKEW = 3.0


def load_table(source: pd.DataFrame | str | Path, *, id_column: str | None = None) -> pd.DataFrame:
    """A party's data as a DataFrame, from a DataFrame, a CSV / Parquet file or a folder of Parquet files.

    The ``id_column`` of a CSV file is read as text, exactly as written: ``000133`` stays
    ``000133`` (not 133) and ``63`` never comes back as ``63.0``. (PSI jobs read only the id
    column, in batches: :func:`vfl.streaming.read_ids`.)
    """
    if isinstance(source, pd.DataFrame):
        return source
    path = Path(source)
    if not path.exists():
        raise DataError(
            f"data file {path} does not exist; check the path in party.toml or on the command line"
        )
    suffix = path.suffix.lower()
    try:
        if path.is_dir():  # a Parquet dataset: a folder of .parquet files, read as one table
            from vfl.streaming import open_dataset

            frame = open_dataset(path).to_table().to_pandas()
        elif suffix in (".parquet", ".pq"):
            frame = pd.read_parquet(path)
        elif suffix in (".csv", ".txt", ".tsv"):
            dtype = {id_column: str} if id_column is not None else None
            frame = pd.read_csv(path, sep="\t" if suffix == ".tsv" else ",", dtype=dtype)
        else:
            raise DataError(f"data file {path} has an unknown type '{suffix}'; use .csv or .parquet")
    except pd.errors.EmptyDataError as exc:
        raise DataError(
            f"data file {path} is empty; it needs a header row and at least one data row"
        ) from exc
    except (pd.errors.ParserError, UnicodeDecodeError, OSError, ValueError) as exc:
        if isinstance(exc, DataError):
            raise
        raise DataError(f"data file {path} could not be read: {str(exc).splitlines()[0]}") from exc
    if frame.empty:
        raise DataError(f"data file {path} has no data rows")
    return frame


def require_columns(frame: pd.DataFrame, columns: list[str], *, what: str = "data") -> None:
    """Raise a ``DataError`` naming every missing column and the ones that are there."""
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        available = ", ".join(map(str, frame.columns[:30]))
        raise DataError(
            f"{what} has no column {', '.join(repr(c) for c in missing)}; columns present: {available}"
        )


def positive_class(values: pd.Series, *, column: str, positive: str | None = None) -> str:
    """The label value that counts as positive, as text: ``1`` for 0/1 labels, ``True`` for booleans.

    Any other two-valued label needs ``positive`` (``[data] positive`` in party.toml): vfl does not
    guess which of two words is the outcome. The error names the values found.
    """
    present = values.dropna()
    uniques = pd.unique(present)
    if len(uniques) != 2:
        shown = ", ".join(map(str, sorted(map(str, uniques))[:5])) + (" ..." if len(uniques) > 5 else "")
        raise DataError(
            f"label column '{column}' must have exactly two distinct values, found {len(uniques)}: {shown}"
        )
    if positive is not None:
        if positive not in set(map(str, uniques)):
            raise DataError(
                f"positive class {positive!r} is not a value of label column '{column}' "
                f"(its values: {', '.join(sorted(map(str, uniques)))})"
            )
        return positive
    if present.dtype == bool:
        return "True"
    numeric = pd.to_numeric(present, errors="coerce")
    if not numeric.isna().any() and set(numeric.unique()) == {0, 1}:
        return "1"
    raise DataError(
        f"label column '{column}' has the values {', '.join(sorted(map(str, uniques)))}: say which one is the "
        'positive class with positive = "..." under [data] in party.toml (or positive= in Python)'
    )


def binary_labels(values: pd.Series, *, column: str, positive: str | None = None) -> np.ndarray:
    """Labels as 0/1 floats (1 = the positive class, see ``positive_class``); missing labels are an error."""
    if values.isna().any():
        raise DataError(
            f"label column '{column}' has {int(values.isna().sum())} missing values; every row needs a label"
        )
    label = positive_class(values, column=column, positive=positive)
    if label == "1" and positive is None:
        return pd.to_numeric(values).to_numpy(dtype=float)
    return (values.astype(str) == label).to_numpy(dtype=float)


def check_columns(
    frame: pd.DataFrame, *, max_categories: int = MAX_CATEGORIES, what: str = "the data"
) -> None:
    """Checks of the offered columns that need no peer: done before any id is sent (every party, locally).

    Refuses a column without values, a constant one, infinite values, and text columns with more
    categories than one-hot encoding takes. Checks that depend on the intersection run after it.
    """
    problems = [column_problem(name, summarize(frame[name]), max_categories) for name in frame.columns]
    report_problems([p for p in problems if p], what)


def report_problems(problems: list[str], what: str) -> None:
    """The one-line error of the column checks (nothing when there is no problem)."""
    if problems:
        raise DataError(
            f"{what}: {'; '.join(problems)}; drop these columns from the offered columns or fix them"
        )


@dataclass
class ColumnSpec:
    """How one input column becomes model columns: numeric (impute, scale, clip) or one-hot."""

    name: str
    kind: str  # "numeric" or "onehot"
    median: float = 0.0
    categories: list[str] = field(default_factory=list)
    log: bool = False  # heavy-tailed: sign(x) * log1p(|x|) before scaling


@dataclass
class Preprocessor:
    """A party's local transform, fitted on its own training rows and saved with its shard.

    Per numeric column: median imputation, log compression of heavy-tailed columns (|skew| > 3),
    standardization and clipping at ``clip_sigma``; text columns of up to ``MAX_CATEGORIES`` values
    are one-hot encoded.
    """

    columns: list[ColumnSpec] = field(default_factory=list)
    mean: list[float] = field(default_factory=list)
    std: list[float] = field(default_factory=list)
    clip_sigma: float = 5.0
    imputed: dict[str, int] = field(default_factory=dict)

    @property
    def input_names(self) -> list[str]:
        """The data columns this preprocessor reads."""
        return [spec.name for spec in self.columns]

    @property
    def output_names(self) -> list[str]:
        names: list[str] = []
        for spec in self.columns:
            if spec.kind == "numeric":
                names.append(spec.name)
            else:
                names.extend(f"{spec.name}={c}" for c in spec.categories)
        return names

    @classmethod
    def fit(
        cls, frame: pd.DataFrame, *, clip_sigma: float = 5.0, max_categories: int = MAX_CATEGORIES
    ) -> Preprocessor:
        """Decide each column's treatment from ``frame`` and fit medians, means and deviations."""
        specs: list[ColumnSpec] = []
        too_many: list[str] = []
        for name in frame.columns:
            col = frame[name]
            if col.isna().all():
                raise DataError(
                    f"column '{name}' has no values in the aligned rows; drop it from the offered columns"
                )
            numeric = _as_numeric(col)
            if numeric is not None:
                skew = pd.Series(numeric).skew()
                heavy = bool(np.isfinite(skew) and abs(skew) > HEAVY_TAIL_SKEW)
                specs.append(ColumnSpec(str(name), "numeric", median=float(np.nanmedian(numeric)), log=heavy))
                continue
            cats = sorted(map(str, col.dropna().unique()))
            if len(cats) > max_categories:
                too_many.append(f"'{name}' ({len(cats)} values)")
            else:
                specs.append(ColumnSpec(str(name), "onehot", categories=cats))
        if too_many:
            raise DataError(
                f"text column(s) {', '.join(too_many)} have more than {max_categories} distinct values and cannot be "
                "one-hot encoded; drop them or map them to fewer categories"
            )
        pre = cls(columns=specs, clip_sigma=clip_sigma)
        raw = pre._encode(frame, record_imputed=True)
        mean = raw.mean(axis=0) if len(raw) else np.zeros(raw.shape[1])
        std = raw.std(axis=0) if len(raw) else np.ones(raw.shape[1])
        constant = [n for n, s in zip(pre.output_names, std, strict=True) if not s > 1e-12]
        if constant:
            raise DataError(
                f"column(s) {', '.join(map(repr, constant))} are constant over the aligned rows and carry no "
                "information; drop them from the offered columns"
            )
        pre.mean, pre.std = mean.tolist(), std.tolist()
        return pre

    def _encode(self, frame: pd.DataFrame, *, record_imputed: bool = False) -> np.ndarray:
        parts: list[np.ndarray] = []
        for spec in self.columns:
            if spec.name not in frame.columns:
                raise DataError(f"column '{spec.name}' the model was trained on is missing from the data")
            col = frame[spec.name]
            if spec.kind == "numeric":
                values = _as_numeric(col)
                if values is None:
                    raise DataError(
                        f"column '{spec.name}' must be numeric but holds text, e.g. {col.dropna().iloc[0]!r}"
                    )
                missing = np.isnan(values)
                if missing.any():
                    if record_imputed:
                        self.imputed[spec.name] = int(missing.sum())
                    values = np.where(missing, spec.median, values)
                if spec.log:
                    values = np.sign(values) * np.log1p(np.abs(values))
                parts.append(values[:, None])
            else:
                text = col.astype(str).where(col.notna(), None)
                parts.append(np.stack([(text == c).to_numpy(dtype=float) for c in spec.categories], axis=1))
        if not parts:
            return np.zeros((len(frame), 0))
        return np.hstack(parts)

    def transform(self, frame: pd.DataFrame) -> np.ndarray:
        """Model matrix for ``frame``: imputed, encoded, standardized and clipped."""
        raw = self._encode(frame)
        scaled = (raw - np.asarray(self.mean)) / np.asarray(self.std)
        if self.clip_sigma > 0:
            scaled = np.clip(scaled, -self.clip_sigma, self.clip_sigma)
        return scaled

    def to_dict(self) -> dict[str, Any]:
        return {
            "columns": [vars(s) for s in self.columns],
            "mean": self.mean,
            "std": self.std,
            "clip_sigma": self.clip_sigma,
            "imputed": self.imputed,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Preprocessor:
        return cls(
            columns=[ColumnSpec(**c) for c in data["columns"]],
            mean=list(data["mean"]),
            std=list(data["std"]),
            clip_sigma=float(data["clip_sigma"]),
            imputed=dict(data.get("imputed", {})),
        )


def _as_numeric(col: pd.Series) -> np.ndarray | None:
    """The column as float64 (NaN for missing), or None when it holds text that is not a number."""
    values = as_float(col)
    if values is None:
        return None
    if np.isinf(values).any():
        raise DataError(
            f"column '{col.name}' has {int(np.isinf(values).sum())} infinite values; replace them or drop the column"
        )
    return values


@dataclass
class Whitening:
    """A party's local block-Jacobi preconditioner: ``x @ matrix`` has (nearly) identity second moments.

    The Taylor loss is quadratic with Hessian ``X^T X / 4m``; its diagonal block of party ``p`` is
    ``X_p^T X_p / 4m``, which the party can compute on its own rows. Training on ``X_p M_p`` with
    ``M_p = C_p^{-1/2}`` (ZCA, symmetric) makes that block the identity, so a plain gradient step of
    size ~1 is close to a Newton step within the party's columns; cross-party correlations remain.
    ``C_p`` is the second-moment matrix of the training rows shrunk toward a multiple of the identity
    by the Ledoit-Wolf estimate, and at least by ``SHRINK_PER_COLUMN * columns / rows`` (few rows
    per column: more shrinkage, less amplified noise), with
    eigenvalues floored at ``EIGEN_FLOOR`` of the largest. A weight vector ``w`` on the whitened
    columns is ``M_p w`` on the party's own (standardized) columns, which is what the model saves.
    The intercept column (the guest's first, when ``skip`` is 1) is left as it is.
    """

    matrix: np.ndarray
    shrinkage: float = 0.0

    EIGEN_FLOOR: ClassVar[float] = 1e-3
    # At least this many times columns / rows of shrinkage: on few rows per column a full whitening
    # fits the training rows' noise (measured: ionosphere, 280 rows, 34 columns).
    SHRINK_PER_COLUMN: ClassVar[float] = 5.0

    @classmethod
    def fit(cls, x: np.ndarray, *, skip: int = 0) -> Whitening:
        from sklearn.covariance import ledoit_wolf_shrinkage

        x = np.asarray(x, dtype=np.float64)
        k = x.shape[1]
        matrix = np.eye(k)
        rest = x[:, skip:]
        if rest.shape[1] == 0 or len(rest) < 2:
            return cls(matrix, 0.0)
        moment = rest.T @ rest / len(rest)
        rho = min(
            1.0,
            max(
                float(ledoit_wolf_shrinkage(rest, assume_centered=True)),
                cls.SHRINK_PER_COLUMN * rest.shape[1] / len(rest),
            ),
        )
        moment = (1.0 - rho) * moment + rho * float(np.trace(moment)) / len(moment) * np.eye(len(moment))
        matrix[skip:, skip:] = inverse_sqrt(moment, cls.EIGEN_FLOOR)
        return cls(matrix, rho)

    def apply(self, x: np.ndarray) -> np.ndarray:
        return np.asarray(x, dtype=np.float64) @ self.matrix

    def to_original(self, weights: np.ndarray) -> np.ndarray:
        """Weights on the whitened columns -> the same model's weights on the party's own columns."""
        return self.matrix @ np.asarray(weights, dtype=np.float64)


def inverse_sqrt(moment: np.ndarray, floor: float) -> np.ndarray:
    """``C^{-1/2}`` of a symmetric positive semi-definite matrix, eigenvalues floored at ``floor * max``."""
    lam, vectors = np.linalg.eigh(moment)
    top = float(lam.max()) if len(lam) else 1.0
    lam = np.maximum(lam, floor * max(top, 1e-300))
    return (vectors * lam**-0.5) @ vectors.T
