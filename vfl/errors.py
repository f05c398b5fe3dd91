"""One error hierarchy for everything a user can get wrong or a peer can do wrong.

Every message is written for the person running vfl: it says what is wrong and how to fix it,
in one line. The command line prints ``str(error)`` and exits non-zero; it never shows a
traceback for a ``VflError`` unless ``--debug`` is given.
"""

from __future__ import annotations


class VflError(Exception):
    """Base class of every error vfl raises on purpose.

    ``code`` is all a peer ever learns of a failure (DESIGN.md §10, abort notices): the message
    itself may name local columns, values or counts, so it stays in the local error and log.
    """

    exit_code: int = 2
    code: str = "error"

    def __init_subclass__(cls, code: str | None = None, **kwargs: object) -> None:
        """``class DataError(VflError, code="data")``: a subclass names its reason code where it is declared."""
        super().__init_subclass__(**kwargs)
        if code is not None:
            cls.code = code


class ConfigError(VflError, code="config"):
    """A configuration file, job option or command-line argument is wrong."""


class PolicyError(ConfigError, code="policy"):
    """A party's own policy refuses the job (a partner's rule, a cap); the message names the rule."""


class DisagreementError(ConfigError, code="disagreement"):
    """The parties' shared job settings differ (job.toml, federation.toml or a version)."""


class DataError(VflError, code="data"):
    """Input data is unusable: missing columns, duplicate or missing ids, non-numeric values, ..."""


class KeyFileError(VflError, code="keys"):
    """A key or certificate file is missing, damaged, or belongs to someone else."""


class CryptoError(VflError, code="crypto"):
    """A cryptographic operation cannot be done as asked (wrong key, bad ciphertext, ...)."""


class EncodingOverflowError(CryptoError):
    """A value is too large for the fixed-point encoding under this key; nothing was encrypted."""


class ProtocolError(VflError, code="protocol"):
    """A peer sent something the protocol does not allow, or the parties disagree on settings."""


class PeerAbortedError(ProtocolError):
    """Another party stopped the job; ``peer_code`` is the reason code it sent (its only detail)."""

    def __init__(self, message: str, peer_code: str | None = None) -> None:
        super().__init__(message)
        self.peer_code = peer_code


class IntegrityError(ProtocolError):
    """A message was truncated, altered, replayed, or belongs to another job, step or sender."""


class TransportError(VflError, code="transport"):
    """A peer could not be reached, refused us, or did not answer in time."""


class PeerTimeoutError(TransportError):
    """A peer did not send an expected message within the time-out."""


class ComputeError(VflError, code="compute"):
    """The compute backend (a Dask cluster) failed: its scheduler went away, or a task was lost on every worker."""


class OutputError(VflError, code="output"):
    """An output could not be written (disk full, no permission); nothing half-written is left."""


# What a peer is told when a party stops: a reason code and this sentence, never the local message.
ABORT_CODES: dict[str, str] = {
    "error": "it hit an error; see its log",
    "config": "its configuration or a job option is not usable; see its log",
    "data": "its input data failed a check; see its log",
    "keys": "a key or certificate is not usable; see its log",
    "crypto": "a cryptographic operation failed; see its log",
    "protocol": "it received a message it could not accept; see its log",
    "transport": "it lost the connection to a peer",
    "output": "it could not write its outputs; see its log",
    "compute": "its compute cluster failed; see its log",
    "policy": "its policy refused the job",
    "small-intersection": "the intersection is smaller than the job's minimum",
    "disagreement": "the parties' job settings differ",
    "cancelled": "the job was cancelled",
    "interrupted": "it was interrupted",
    "internal": "an internal error; see its log",
}


def abort_code(exc: BaseException) -> str:
    """The reason code a peer may learn for ``exc`` (never its text)."""
    if isinstance(exc, PeerAbortedError) and exc.peer_code == "cancelled":
        return "cancelled"  # a cancel reaches every party as a cancel, whoever passes it on
    if isinstance(exc, VflError):
        return exc.code if exc.code in ABORT_CODES else "error"
    if isinstance(exc, KeyboardInterrupt):
        return "interrupted"
    return "internal"


def describe_abort(sender: str, code: str) -> str:
    """One line for the peers of a party that stopped: who, and the public meaning of its code."""
    meaning = ABORT_CODES.get(code, ABORT_CODES["error"])
    return f"party '{sender}' stopped the job ({code}: {meaning})"


class JobCancelledError(VflError, code="cancelled"):
    """A job was cancelled (at this party, or by a peer); nothing it would have written is left."""
