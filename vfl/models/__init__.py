"""Model math for the coming model types (pure, network-free library code).

* :mod:`vfl.models.kinds` -- the model-kind registry (``binary-lr``, ``multiclass-lr``, ``linear``,
  ``poisson``): label checks, links, residuals, losses, metrics; :func:`from_name`.
* :mod:`vfl.models.packing` -- K residuals per row packed into one plaintext so that one
  ``X^T [[D]]`` returns every class's gradient (:class:`SlotLayout`).
* :mod:`vfl.models.reference` -- numpy reference trainers the federated protocols must equal.
"""

from vfl.models.kinds import KINDS, MAX_CLASSES, Labels, ModelKind, from_model, from_name
from vfl.models.packing import SlotLayout, encrypt_packed, packed_rdot

__all__ = [
    "KINDS",
    "MAX_CLASSES",
    "Labels",
    "ModelKind",
    "SlotLayout",
    "encrypt_packed",
    "from_model",
    "from_name",
    "packed_rdot",
]
