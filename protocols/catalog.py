"""Every protocol vfl speaks, in one list: for transcript tests and for naming a captured message."""

from __future__ import annotations

from vfl.protocols.audience import AUDIENCE
from vfl.protocols.lr import LR, LR_STREAM
from vfl.protocols.lr_chain import LR_CHAIN
from vfl.protocols.lr_two_key import LR_TWO_KEY
from vfl.protocols.lr_two_key_multiclass import LR_TWO_KEY_CLASSES
from vfl.protocols.messages import Protocol, find
from vfl.protocols.predict import PREDICT
from vfl.protocols.psi import PSI
from vfl.protocols.screen import SCREEN
from vfl.protocols.segment import SEGMENT
from vfl.protocols.service import SERVICE
from vfl.protocols.session import SESSION
from vfl.protocols.shards import SHARDS
from vfl.protocols.split import SPLIT

ALL_PROTOCOLS: tuple[Protocol, ...] = (
    SESSION,
    PSI,
    SPLIT,
    LR,
    LR_STREAM,
    LR_CHAIN,
    PREDICT,
    SHARDS,
    LR_TWO_KEY,
    LR_TWO_KEY_CLASSES,
    SCREEN,
    AUDIENCE,
    SEGMENT,
    SERVICE,
)

__all__ = ["ALL_PROTOCOLS", "find"]
