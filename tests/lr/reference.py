"""The plain numpy trainer of the Taylor-loss logistic regression, for equivalence tests.

It is :func:`vfl.models.reference.train_binary_reference` (one reference implementation for every model
kind): it sees the joined data in one place, which the federation never does; training the federation
with the same options must give the same weights (up to the engine's fixed-point encoding of ciphertexts).
"""

from __future__ import annotations

from vfl.models.reference import train_binary_reference as train_reference

__all__ = ["train_reference"]
