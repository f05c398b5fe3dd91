"""The guest's encrypted Poisson residual ``[[exp(u_g + log exposure) exp(u_h) - y]]``.

Message flow (keys held by the arbiter, as in DESIGN.md §6): the host sends ``[[exp(u_h)]]`` (and
``[[u_h]]`` if the loss is wanted) for the batch rows; the guest, which knows ``u_g = X_g w_g``, the
exposure and ``y``, multiplies each ciphertext by the plaintext ``exp(u_g + log exposure)`` and subtracts
``y``. Multiplying a ciphertext by a float needs fixed point: the multiplier is the integer
``a_i = round(exp(u_g,i + o_i) 16^D)`` (``D = digits``), so with ``[[exp(u_h)]]`` at exponent ``e``
(encoding ``h_i = round(exp(u_h,i) 16^-e)``) the product ``[[a_i h_i]]`` is ``mu_i`` at exponent
``e - D``, one ``|a_i|``-bit exponentiation per row. ``y`` is then subtracted exactly at that exponent.

Error: ``|mu^ - mu| <= exp(u_g + o) 16^e / 2 + exp(u_h) 16^-D / 2 + 16^(e-D) / 4`` -- with the defaults
(``e = -8``, ``D = 10``) below ``2^-33`` relative to the larger factor. Size: the encoding of ``mu`` needs
``log2(exp(u_h + u_g + o)) + 4 (D - e)`` bits (72 + 1.44 ``|eta|``), then ``rdot`` adds
``log2(rows) + bits``; a 2048-bit key has ample room, but ``exp`` must stay finite: clip ``u`` (e.g.
``|u| <= 30``) before exponentiating, and state the bound to :func:`~vfl.crypto.packing.mask_and_pack`.
"""

from __future__ import annotations

import numpy as np

from vfl.crypto.vector import EncryptedVector
from vfl.errors import CryptoError, DataError

DEFAULT_DIGITS = 10
"""Hexadecimal fractional digits of the guest's multiplier ``exp(u_g)``: 40 bits."""


def null_intercept(y: np.ndarray, offset: np.ndarray | None = None) -> float:
    """``log(sum y / sum exposure)``: the intercept of the model without features, where training starts.

    Started at 0 instead (a rate of 1 per row where dvisits' mean is 0.3), 30 full-batch epochs stop 4 %
    short of scikit-learn's deviance (which also starts from ``log(mean y)``); from here they are within
    0.7 %. ``offset`` is ``log(exposure)`` per row. The labels must not all be zero (``Poisson.check_labels``).
    """
    y = np.asarray(y, dtype=np.float64)
    exposure = len(y) if offset is None else float(np.sum(np.exp(np.asarray(offset, dtype=np.float64))))
    total = float(np.sum(y))
    if not total > 0:
        raise DataError("poisson targets are all zero: there is no rate to fit; check the label column")
    return float(np.log(total / exposure))


def guest_residual(
    encrypted_exp_host: EncryptedVector,
    u_guest: np.ndarray,
    y: np.ndarray,
    exposure: np.ndarray | None = None,
    digits: int = DEFAULT_DIGITS,
) -> EncryptedVector:
    """``[[exp(u_g + log exposure) * exp(u_h) - y]]`` at exponent ``encrypted_exp_host.exponent - digits``.

    The result keeps the host vector's randomness: re-randomize it before it leaves the guest.
    """
    u = np.asarray(u_guest, dtype=np.float64)
    y = np.asarray(y)
    if u.shape != (len(encrypted_exp_host),) or y.shape != u.shape:
        raise CryptoError(f"u_guest {u.shape} and y {y.shape} must match the {len(encrypted_exp_host)} rows")
    eta = u if exposure is None else u + np.log(np.asarray(exposure, dtype=np.float64))
    mu = times_exp(encrypted_exp_host, eta, digits)
    return mu - y.astype(np.float64) if y.dtype.kind == "f" else mu - y.astype(np.int64)


def times_exp(encrypted: EncryptedVector, eta: np.ndarray, digits: int = DEFAULT_DIGITS) -> EncryptedVector:
    """``[[x_i exp(eta_i)]]`` from ``[[x_i]]``: one scalar exponentiation per row by the integer
    ``round(exp(eta_i) 16^digits)``, the result at exponent ``encrypted.exponent - digits`` (not re-randomized).

    The guest's last step and every link of the hosts' chain (``protocols/lr_chain.py``).
    """
    scaled = np.rint(np.ldexp(np.exp(np.asarray(eta, dtype=np.float64)), 4 * digits))
    if len(scaled) != len(encrypted):
        raise CryptoError(f"{len(scaled)} multipliers for {len(encrypted)} ciphertexts")
    if not np.all(np.isfinite(scaled)) or (len(scaled) and np.max(scaled) >= 2.0**62):
        raise CryptoError("exp(u) is too large for the fixed-point multiplier; lower learning_rate")
    product = encrypted * scaled.astype(np.int64)  # integers: exponent unchanged, values scaled by 16^digits
    return EncryptedVector(
        product.public_key, product.ciphertexts, product.exponent - digits, product.bound
    )  # reinterpret: same plaintexts, 16^-digits finer
