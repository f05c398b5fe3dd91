"""The steps of a federated training protocol that differ between model kinds (DESIGN.md §16).

A coordinated training job (``protocols/lr.py``) runs the same batch loop for every model kind:
hosts send encrypted partial scores, the guest turns them into encrypted residuals ``[[c d]]``, every
data party multiplies ``X_p^T [[c d]]``, masks it for the key holder, and steps its own optimizer on
``g / (c m)``. What differs is only

* what a host encrypts and sends for a batch (``host_vectors``): ``[[u_k]]`` for the quadratic
  kinds; ``[[u_k]]`` and ``[[exp(u_k)]]`` for Poisson;
* how the guest forms ``[[c d]]`` from them (``guest_residual``);
* the encrypted loss terms the guest adds for the batch (``guest_loss_terms``), whether hosts send
  the ``[[w_k . g_k]]`` loss term (``host_sends_wg``), and how the key holder turns the decrypted
  sum into the loss (``loss``);
* the a-priori bound on ``|c d|`` that sizes the gradient masks (``residual_bound``), and ``c``
  (``gradient_divisor``).

An ``Objective`` holds those steps as plain methods on encrypted vectors and numpy arrays, with no
session and no messages, so any topology (the coordinated one here, an arbiter-free one) can run
them. ``objective_for(options)`` picks the one of ``options.model``.

Binary logistic regression is the Taylor-loss protocol of DESIGN.md §6 with exactly the operations it
always had (``c = 4``: the guest sends ``[[4d]] = [[z - 2s]]``). Linear regression is the same
quadratic scheme with target ``y`` and ``c = 1``. Poisson follows FATE: the host sends
``[[exp(u_k)]]``, the guest multiplies it by ``exp(u_g + log exposure)`` under encryption
(``vfl.models.poisson.guest_residual``), so the gradient ``X^T (exp(z) - y)`` is exact; the loss needs
``[[u_k]]`` as well (``y . u_k``). With several hosts the product of their ``exp(u_k)`` is formed along a
chain (``protocols/lr_chain.py``, DESIGN.md §16): host 1 encrypts ``exp(u_1)``, each next host raises the
ciphertext to its own fixed-point ``exp(u_k)`` and re-randomizes it, and the last host sends the product
to the guest; so only the last host sends ``expu`` (``host_sends``).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import numpy as np

from vfl.crypto import EncryptedVector
from vfl.errors import ConfigError, DataError
from vfl.models.poisson import guest_residual as poisson_residual
from vfl.models.poisson import null_intercept
from vfl.options import TrainOptions

# A priori bound on |z| (the joint linear predictor) used to size the gradient masks: masks are 40
# bits wider than the largest gradient this bound allows (DESIGN.md §6).
LOGIT_BOUND = 2.0**16
# Regression targets must stay below this (checked at the guest), so the hosts can size their masks
# without learning anything about the labels.
TARGET_BOUND = 2.0**16
# Poisson: every party's partial predictor |u_p| (the guest's including log exposure) must stay below
# this, so exp(z) <= exp(2 * 20) < 2^58 sizes the masks; a run that exceeds it has diverged.
POISSON_SCORE_BOUND = 20.0
# Poisson with H hosts: |eta| <= (H + 1) * 20, and the chain adds 10 hexadecimal digits per party, so the
# plaintext of [[mu]] needs about 29 (H + 1) + 40 (H + 1) + 32 bits (DESIGN.md §16); 4 hosts stay far
# inside a 1024-bit key together with the gradient's rows, columns and mask bits.
POISSON_MAX_HOSTS = 4


@dataclass(frozen=True)
class Objective:
    """The per-kind steps (see the module docstring). Quadratic: ``d = z - a v``, ``Q = sum z^2 - 2a v.z``."""

    name: str
    target_scale: float  # a: the residual is z - a v (binary: v = s, a = 2; linear: v = y, a = 1)
    divisor: float  # c: the gradient is X^T [[c d]] / (c m)
    residual_bound: float  # a priori bound on |c d| per row
    host_vectors: tuple[str, ...] = ("u",)
    host_sends_wg: bool = True
    max_hosts: int | None = None

    def check_plan(self, hosts: int) -> None:
        if self.max_hosts is not None and hosts > self.max_hosts:
            raise ConfigError(
                f"model {self.name!r} trains with at most {self.max_hosts} hosts, the job has {hosts} (each host "
                "adds 70 bits to the encrypted exp(z) chain); join columns of some hosts before training"
            )

    def for_hosts(self, hosts: int) -> Objective:
        """These steps for a job with ``hosts`` hosts (Poisson's residual bound grows with them)."""
        return self

    def host_sends(self, position: int, hosts: int) -> tuple[str, ...]:
        """What the guest receives from the host at ``position`` of ``hosts`` (``host_vectors`` by default)."""
        return self.host_vectors

    def gradient_divisor(self, m: int) -> float:
        return self.divisor * m

    def guest_target(self, labels: np.ndarray) -> np.ndarray:
        """``v`` for the training rows: ``s = 2y - 1`` for binary, ``y`` for regression."""
        y = np.asarray(labels, dtype=float)
        return 2.0 * y - 1.0 if self.name == "binary-lr" else y

    def initial_intercept(self, labels: np.ndarray, offset: np.ndarray | None = None) -> float:
        """Where the guest's intercept starts (added to ``initial_weights``): 0 for the quadratic kinds."""
        return 0.0

    # host side -----------------------------------------------------------------------------------
    def host_plain(self, u: np.ndarray) -> dict[str, np.ndarray]:
        """What a host encrypts for the batch, by message (``u``, and ``expu`` for Poisson)."""
        return {"u": u}

    # guest side ----------------------------------------------------------------------------------
    def guest_residual(
        self,
        host: list[dict[str, EncryptedVector]],
        u_g: np.ndarray,
        v: np.ndarray,
        offset: np.ndarray | None = None,
    ) -> EncryptedVector:
        """``[[c d]]`` for the batch (not yet re-randomized)."""
        total = host[0]["u"]
        for h in host[1:]:
            total = total + h["u"]
        return total + (u_g - self.target_scale * v)

    def guest_loss_terms(
        self,
        host: list[dict[str, EncryptedVector]],
        wg: list[EncryptedVector | None],
        u_g: np.ndarray,
        v: np.ndarray,
        residual: EncryptedVector,
        offset: np.ndarray | None = None,
        workers=None,
    ) -> EncryptedVector | float:
        """The batch's encrypted loss numerator (summed over the epoch, decrypted once by the key holder).

        Quadratic kinds: ``Q = sum z^2 - 2a v.z = |u_g|^2 - 2a v.u_g + sum_k ([[u_k.u_g]] + [[w_k.g_k]]
        - a [[v.u_k]])`` (plus ``|y|^2`` for linear regression, so that ``Q / 2n`` is the loss).
        """
        a = self.target_scale
        plain = np.column_stack([u_g, v])
        q_b: EncryptedVector | float = float(u_g @ u_g) - 2.0 * a * float(v @ u_g)
        if self.name != "binary-lr":
            q_b = q_b + float(v @ v)
        for h, wg_h in zip(host, wg, strict=True):
            terms = h["u"].rdot(plain, workers=workers, rerandomize=False)  # [[u_h.u_g]], [[u_h.v]]
            assert wg_h is not None
            q_b = wg_h + terms[0:1] - terms[1:2] * a + q_b
        return q_b

    def plain_loss_term(self, a: np.ndarray, v: np.ndarray) -> float:
        """The guest's plain part of a batch's ``Q`` in the arbiter-free topology (DESIGN.md §15).

        There ``c d = a + sum_k u_k`` with the guest's part ``a = u_g - a_s v``, and ``|c d|^2 = |a|^2 +
        sum_k t_k`` (``t_k`` from host k). ``Q`` is ``|c d|^2 - a_s^2 |v|^2`` for binary (``|a|^2 - 4m``)
        and ``|c d|^2`` for linear (``|a|^2``): the same ``Q`` as :meth:`guest_loss_terms`, for :meth:`loss`."""
        constant = 0.0 if self.name == "binary-lr" else float(v @ v)
        return float(a @ a) - self.target_scale**2 * float(v @ v) + constant

    def check_guest_scores(self, u_g: np.ndarray, offset: np.ndarray | None) -> None:
        """Refuse to go on when the guest's partial predictor leaves the bounds the masks rely on."""

    def check_host_scores(self, u: np.ndarray) -> None:
        """Refuse to go on when a host's partial predictor leaves the bounds the masks rely on."""

    def check_targets(self, labels: np.ndarray) -> None:
        """Refuse targets beyond the bound the masks rely on (regression)."""

    # key holder ----------------------------------------------------------------------------------
    def loss(self, q: float, n_rows: int) -> float:
        """The epoch's mean training loss from the decrypted sum of the batches' loss terms."""
        if self.name == "binary-lr":
            return math.log(2.0) + q / (8.0 * n_rows)
        return q / (2.0 * n_rows)


class _BinaryLR(Objective):
    pass


@dataclass(frozen=True)
class _Linear(Objective):
    def check_targets(self, labels: np.ndarray) -> None:
        peak = float(np.max(np.abs(labels))) if len(labels) else 0.0
        if peak > TARGET_BOUND:
            raise DataError(
                f"the regression target reaches {peak:g}, beyond {TARGET_BOUND:g}; rescale it (e.g. thousands "
                "instead of units) before training"
            )


@dataclass(frozen=True)
class _Poisson(Objective):
    """Poisson regression (see the module docstring): ``d = exp(u_g + o) exp(u_h) - y``, ``c = 1``."""

    def for_hosts(self, hosts: int) -> Objective:
        """``|mu - y| <= exp((H + 1) 20) + 2^16``: every party's ``|u_p| <= 20``."""
        return dataclasses.replace(
            self, residual_bound=math.exp((hosts + 1) * POISSON_SCORE_BOUND) + TARGET_BOUND
        )

    def host_sends(self, position: int, hosts: int) -> tuple[str, ...]:
        """Every host sends ``[[u_k]]``; only the chain's last host sends ``[[prod_k exp(u_k)]]``."""
        return self.host_vectors if position == hosts - 1 else ("u",)

    def initial_intercept(self, labels: np.ndarray, offset: np.ndarray | None = None) -> float:
        """``log(sum y / sum exposure)``, the model without features (``vfl.models.poisson.null_intercept``)."""
        return null_intercept(labels, offset)

    def host_plain(self, u: np.ndarray) -> dict[str, np.ndarray]:
        self.check_host_scores(u)
        return {"u": u, "expu": np.exp(u)}

    def check_host_scores(self, u: np.ndarray) -> None:
        if len(u) and float(np.max(np.abs(u))) > POISSON_SCORE_BOUND:
            raise DataError(
                f"poisson training diverged: a host's partial predictor exceeds {POISSON_SCORE_BOUND:g} "
                "(exp of it would overflow the masks); lower learning_rate"
            )

    def check_guest_scores(self, u_g: np.ndarray, offset: np.ndarray | None) -> None:
        eta = u_g if offset is None else u_g + offset
        if len(eta) and float(np.max(np.abs(eta))) > POISSON_SCORE_BOUND:
            raise DataError(
                f"poisson training diverged or the exposures are extreme: the guest's predictor plus "
                f"log(exposure) exceeds {POISSON_SCORE_BOUND:g}; lower learning_rate or rescale the exposure"
            )

    def check_targets(self, labels: np.ndarray) -> None:
        _Linear.check_targets(self, labels)  # type: ignore[arg-type]

    def guest_residual(self, host, u_g, v, offset=None):  # type: ignore[override]
        self.check_guest_scores(u_g, offset)
        exposure = None if offset is None else np.exp(offset)
        return poisson_residual(host[-1]["expu"], u_g, v, exposure)  # the chain's product

    def guest_loss_terms(self, host, wg, u_g, v, residual, offset=None, workers=None):  # type: ignore[override]
        """``sum exp(eta) - y.eta = sum [[d]] + sum y - y.(u_g + o) - sum_k [[y.u_k]]``."""
        eta_g = u_g if offset is None else u_g + offset
        total = residual.sum()
        for h in host:
            total = total - h["u"].dot(v)  # [[y . u_k]]
        return total + (float(np.sum(v)) - float(v @ eta_g))

    def loss(self, q: float, n_rows: int) -> float:
        return q / n_rows


OBJECTIVES: dict[str, Objective] = {
    o.name: o
    for o in (
        _BinaryLR("binary-lr", 2.0, 4.0, LOGIT_BOUND + 2.0),
        _Linear("linear", 1.0, 1.0, LOGIT_BOUND + TARGET_BOUND),
        _Poisson(
            "poisson",
            1.0,
            1.0,
            math.exp(2 * POISSON_SCORE_BOUND) + TARGET_BOUND,
            host_vectors=("u", "expu"),
            host_sends_wg=False,
            max_hosts=POISSON_MAX_HOSTS,
        ),  # fmt: skip
    )
}


def objective_for(options: TrainOptions) -> Objective:
    """The steps of ``options.model`` (ConfigError for a kind this protocol does not train)."""
    try:
        return OBJECTIVES[options.model]
    except KeyError:
        raise ConfigError(
            f"model {options.model!r} is not trained by the coordinated protocol yet; "
            f"use one of {', '.join(OBJECTIVES)}"
        ) from None


# The kinds the arbiter-free topology trains (DESIGN.md §15): the quadratic ones, whose residual is
# ``a + sum_k u_k`` with the guest's part ``a``, and multi-class one-vs-rest (the binary steps per class,
# K parts packed per ciphertext: protocols/lr_two_key_multiclass.py). Poisson's exp(z) cannot be formed
# without a key no data party holds (§15).
TWO_KEY_MODELS = ("binary-lr", "linear", "multiclass-lr")


def two_key_objective(options: TrainOptions) -> Objective:
    """The steps of ``options.model`` in the arbiter-free topology (ConfigError for a kind it does not train);
    multi-class runs the binary steps per class."""
    if options.model not in TWO_KEY_MODELS:
        raise ConfigError(
            f'[train] model = "{options.model}" trains in the coordinated topology only (it needs an arbiter); '
            f"arbiter-free training fits model = {', '.join(map(repr, TWO_KEY_MODELS))}"
        )
    return OBJECTIVES["binary-lr" if options.model == "multiclass-lr" else options.model]
