"""One error hierarchy for everything a user can get wrong or a peer can do wrong.

Every message is written for the person running vfl: it says what is wrong and how to fix it,
in one line. The command line prints ``str(error)`` and exits non-zero; it never shows a
traceback for a ``VflError`` unless ``--debug`` is given.
"""

from __future__ import annotations


class VflError(Exception):
    """Base class of every error vfl raises on purpose."""

    exit_code: int = 2


class ConfigError(VflError):
    """A configuration file, job option or command-line argument is wrong."""


class DataError(VflError):
    """Input data is unusable: missing columns, duplicate or missing ids, non-numeric values, ..."""


class KeyFileError(VflError):
    """A key or certificate file is missing, damaged, or belongs to someone else."""


class CryptoError(VflError):
    """A cryptographic operation cannot be done as asked (wrong key, bad ciphertext, ...)."""


class EncodingOverflowError(CryptoError):
    """A value is too large for the fixed-point encoding under this key; nothing was encrypted."""


class ProtocolError(VflError):
    """A peer sent something the protocol does not allow, or the parties disagree on settings."""


class IntegrityError(ProtocolError):
    """A message was truncated, altered, replayed, or belongs to another job, step or sender."""


class TransportError(VflError):
    """A peer could not be reached, refused us, or did not answer in time."""


class PeerTimeoutError(TransportError):
    """A peer did not send an expected message within the time-out."""


class OutputError(VflError):
    """An output could not be written (disk full, no permission); nothing half-written is left."""
