"""Optimizers, learning-rate schedules and penalties that each party applies to its own weight shard.

Every rule here is coordinate-wise, so applying it shard by shard at each party gives exactly the
update a centralized optimizer would make on the concatenated weight vector.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from vfl.options import TrainOptions

# A round has at least this many rows: on fewer, the loss of a share of the rows is too noisy to
# compare with the next share's (it differs by which rows it holds), so small data has one round per pass.
MIN_ROUND_ROWS = 5000


def rounds_per_pass(n_rows: int, options: TrainOptions) -> int:
    """How many rounds (loss checks, checkpoints) one pass over ``n_rows`` training rows has."""
    return max(1, min(options.loss_checks, n_rows // MIN_ROUND_ROWS))


def max_rounds(n_rows: int, options: TrainOptions) -> int:
    """The most rounds a job runs: ``max_epochs`` passes."""
    return options.max_epochs * rounds_per_pass(n_rows, options)


def passes(n_rows: int, options: TrainOptions, epoch: int) -> float:
    """Round ``epoch`` as a position in passes over the rows (what the learning-rate schedule runs on)."""
    return epoch / rounds_per_pass(n_rows, options)


def learning_rate(options: TrainOptions, passes: float) -> float:
    """The step size at ``passes`` (0-based, in passes over the rows) under the job's schedule."""
    lr = options.learning_rate
    if options.schedule == "step":
        return lr * options.decay ** (passes // options.decay_epochs)
    if options.schedule == "inverse-time":
        return lr / (1.0 + options.decay * passes)
    return lr


def epoch_batches(n_rows: int, options: TrainOptions, epoch: int) -> list[np.ndarray]:
    """Row positions of each mini-batch of round ``epoch``, reshuffled every pass from the job seed.

    A pass over the rows is ``rounds_per_pass`` rounds (the arbiter checks the loss after every
    round): round ``epoch`` is part ``epoch % r`` of pass ``epoch // r``, a contiguous
    share of that pass's permutation, cut into mini-batches. Every party computes the same batches
    from the shared seed, so batch membership never has to be sent; the last batch of a round is
    folded into the previous one when it would be smaller than half a batch.
    """
    checks = rounds_per_pass(n_rows, options)
    if checks > 1:
        part = epoch % checks
        order = np.random.default_rng([options.seed, 3, epoch // checks]).permutation(n_rows)
        lo, hi = (n_rows * part) // checks, (n_rows * (part + 1)) // checks
        return [order[lo:hi][b] for b in _batches(hi - lo, options.batch_size, order[lo:hi])]
    if options.batch_size is None or options.batch_size >= n_rows:
        return [np.arange(n_rows)]
    order = np.random.default_rng([options.seed, 1, epoch]).permutation(n_rows)
    size = options.batch_size
    starts = list(range(0, n_rows, size))
    if len(starts) > 1 and n_rows - starts[-1] < size // 2:
        starts.pop()
    ends = starts[1:] + [n_rows]
    return [np.sort(order[a:b]) for a, b in zip(starts, ends, strict=True)]


def _batches(n: int, size: int | None, rows: np.ndarray) -> list[np.ndarray]:
    """Positions (into ``rows``) of the mini-batches of one round, each sorted by row."""
    if size is None or size >= n:
        return [np.argsort(rows, kind="stable")]
    starts = list(range(0, n, size))
    if len(starts) > 1 and n - starts[-1] < size // 2:
        starts.pop()
    ends = starts[1:] + [n]
    return [a + np.argsort(rows[a:b], kind="stable") for a, b in zip(starts, ends, strict=True)]


def initial_weights(n_columns: int, options: TrainOptions, party: str) -> np.ndarray:
    """Zeros, or small seeded random weights (seeded by job seed and party id, so runs repeat)."""
    if options.init == "zeros":
        return np.zeros(n_columns)
    salt = int.from_bytes(party.encode()[:8].ljust(8, b"\0"), "little")
    return np.random.default_rng([options.seed, 2, salt]).normal(0.0, 0.01, n_columns)


@dataclass
class ShardOptimizer:
    """The optimizer state of one party's weights: momentum or Adam moments and the step count."""

    options: TrainOptions
    n_columns: int
    intercept_index: int | None = None  # the intercept is not penalized
    step: int = 0
    m: np.ndarray = field(default=None)  # type: ignore[assignment]
    v: np.ndarray = field(default=None)  # type: ignore[assignment]

    def __post_init__(self) -> None:
        if self.m is None:
            self.m = np.zeros(self.n_columns)
        if self.v is None:
            self.v = np.zeros(self.n_columns)

    def _penalty_mask(self) -> np.ndarray:
        mask = np.ones(self.n_columns)
        if self.intercept_index is not None:
            mask[self.intercept_index] = 0.0
        return mask

    def update(self, weights: np.ndarray, gradient: np.ndarray, epoch: float) -> np.ndarray:
        """New weights after one step on ``gradient`` (the mean Taylor-loss gradient of a batch).

        ``epoch`` is the position in passes over the rows (:func:`passes` of the round)."""
        o = self.options
        lr = learning_rate(o, epoch)
        mask = self._penalty_mask()
        g = gradient + (o.alpha * weights * mask if o.penalty == "l2" else 0.0)
        self.step += 1
        if o.optimizer == "sgd":
            delta = lr * g
        elif o.optimizer == "momentum":
            self.m = o.momentum * self.m + g
            delta = lr * self.m
        else:  # adam
            self.m = o.beta1 * self.m + (1 - o.beta1) * g
            self.v = o.beta2 * self.v + (1 - o.beta2) * g * g
            m_hat = self.m / (1 - o.beta1**self.step)
            v_hat = self.v / (1 - o.beta2**self.step)
            delta = lr * m_hat / (np.sqrt(v_hat) + 1e-8)
        new = weights - delta
        if o.penalty == "l1":
            # Proximal step: soft-threshold by lr * alpha (the intercept is left alone).
            threshold = lr * o.alpha * mask
            new = np.sign(new) * np.maximum(np.abs(new) - threshold, 0.0)
        return new

    def state(self) -> dict[str, object]:
        """Everything needed to resume: the step count and the moments."""
        return {"step": self.step, "m": self.m.tolist(), "v": self.v.tolist()}

    def load_state(self, state: dict[str, object]) -> None:
        self.step = int(state["step"])  # type: ignore[arg-type]
        self.m = np.asarray(state["m"], dtype=float)
        self.v = np.asarray(state["v"], dtype=float)


@dataclass
class IterateAverage:
    """The mean of a party's weights over the batches of one round (``averaging = "round"``).

    At the end of every round the party continues from this mean (averaging with restarts), so the
    average needs no state across rounds: checkpoints and resumption stay as they are. Every rule is
    coordinate-wise, so averaging shard by shard equals averaging the joint weight vector.
    """

    total: np.ndarray | None = None
    count: int = 0

    def add(self, weights: np.ndarray) -> None:
        self.total = weights.copy() if self.total is None else self.total + weights
        self.count += 1

    def result(self, weights: np.ndarray, options: TrainOptions) -> np.ndarray:
        """The round's weights: the mean of its iterates, or ``weights`` (the last) without averaging."""
        if options.averaging == "none" or self.total is None:
            return weights
        return self.total / self.count


@dataclass
class EarlyStopping:
    """The arbiter's stopping rule: the loss (and optionally the weight change) stopped moving."""

    options: TrainOptions
    history: list[float] = field(default_factory=list)
    _quiet_epochs: int = 0

    @classmethod
    def replay(cls, options: TrainOptions, losses: list[float]) -> bool:
        """The decision after the last of ``losses`` (the rule is a pure function of the loss history)."""
        rule = cls(options)
        return any([rule.should_stop(loss) for loss in losses][-1:])

    def should_stop(self, loss: float) -> bool:
        o = self.options
        stop = False
        if self.history:
            prev = self.history[-1]
            rel = abs(prev - loss) / max(abs(prev), 1e-12)
            self._quiet_epochs = self._quiet_epochs + 1 if rel < o.tol else 0
            stop = self._quiet_epochs >= o.patience
        self.history.append(loss)
        return stop
