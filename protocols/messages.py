"""Declared messages: every message a protocol sends is a record in its module's table.

A protocol module declares its messages as data (``Message``: a tag template, the sender and
receiver roles, the Arrow fields it carries, and what the receiver learns from it) and groups them
into a ``Protocol`` (with what each role never learns). Everything else follows from the table:

* tags are only ever built from a message's template (``Message.tag``), never by hand;
* every message received is checked against its declaration before a protocol reads it
  (``Message.check``): a missing, extra or mistyped field from a peer is a ``ProtocolError`` naming
  the peer, the tag and the field, never a ``KeyError`` deep in a protocol;
* the leakage ledger of a job lists what each role learns from the messages of the protocols that
  job actually ran (``learned_by``), so a PSI job's ledger says nothing about gradients;
* a transcript test matches every captured message to its declaration (``Protocol.match``) and
  checks sender, receiver and fields.

Roles are the federation's: ``guest``, ``host`` and ``arbiter``.
"""

from __future__ import annotations

import re
import string
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa

from vfl.errors import ProtocolError

ROLES = ("guest", "host", "arbiter")
DATA_ROLES = ("guest", "host")
ANY_ROLE = ROLES


@dataclass(frozen=True)
class Kind:
    """What an Arrow field must hold: a name for messages and a test on its type."""

    name: str
    accepts: Callable[[pa.DataType], bool]

    def __str__(self) -> str:
        return self.name


def exactly(arrow_type: pa.DataType) -> Kind:
    return Kind(str(arrow_type), lambda t: t == arrow_type)


INT = Kind("int64", lambda t: pa.types.is_integer(t))
FLOAT = Kind("double", lambda t: pa.types.is_floating(t))
BOOL = exactly(pa.bool_())
TEXT = Kind("string", lambda t: pa.types.is_string(t) or pa.types.is_large_string(t))
BYTES = Kind("binary", lambda t: pa.types.is_binary(t) or pa.types.is_fixed_size_binary(t))
# Paillier ciphertexts, curve points and big integers: big-endian fixed-width binary (vfl/crypto/arrow.py).
FIXED = Kind("fixed_size_binary", pa.types.is_fixed_size_binary)
WORDS = exactly(pa.uint64())


@dataclass(frozen=True)
class Field:
    name: str
    kind: Kind


def fields(**kinds: Kind) -> tuple[Field, ...]:
    return tuple(Field(name, kind) for name, kind in kinds.items())


@dataclass(frozen=True)
class Message:
    """One message of a protocol: where it goes, what it carries, what its receiver learns from it.

    ``tag`` is a template such as ``"lr/g{gen}/e{epoch}/b{batch}/u"``; ``rows`` is the exact row
    count when the message is a record (``1``), else ``None``; ``meta`` names schema metadata keys
    the message must carry.
    """

    name: str
    tag_template: str
    sender: tuple[str, ...]
    receiver: tuple[str, ...]
    fields: tuple[Field, ...]
    learns: str
    rows: int | None = None
    meta: tuple[str, ...] = ()
    _pattern: re.Pattern[str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        for role in (*self.sender, *self.receiver):
            if role not in ROLES:
                raise ValueError(f"message {self.name}: unknown role {role!r}")
        regex = ""
        for literal, name, _, _ in string.Formatter().parse(self.tag_template):
            regex += re.escape(literal)
            if name is not None:
                regex += f"(?P<{name}>[^/]+)"
        object.__setattr__(self, "_pattern", re.compile(regex))

    @property
    def parameters(self) -> tuple[str, ...]:
        return tuple(name for _, name, _, _ in string.Formatter().parse(self.tag_template) if name)

    def tag(self, **params: Any) -> str:
        """The tag of one instance of this message (every template parameter must be given)."""
        missing = set(self.parameters) - set(params)
        if missing:
            raise ValueError(f"message {self.name} needs {', '.join(sorted(missing))} to build its tag")
        return self.tag_template.format(**params)

    def match(self, tag: str) -> dict[str, str] | None:
        found = self._pattern.fullmatch(tag)
        return found.groupdict() if found else None

    def check(self, table: pa.Table, *, peer: str, tag: str) -> pa.Table:
        """``table`` if it has exactly the declared fields, kinds, rows and metadata, else ``ProtocolError``."""
        where = f"message '{tag}' from '{peer}'"
        names = list(table.column_names)
        for f in self.fields:
            if f.name not in names:
                raise ProtocolError(
                    f"{where} lacks the field '{f.name}'; the peer runs another protocol version"
                )
            actual = table.schema.field(f.name).type
            if not f.kind.accepts(actual):
                raise ProtocolError(f"{where}: field '{f.name}' must be {f.kind}, got {actual}")
            if table.column(f.name).null_count:
                raise ProtocolError(f"{where}: field '{f.name}' has missing values")
        extra = sorted(set(names) - {f.name for f in self.fields})
        if extra:
            raise ProtocolError(f"{where} carries undeclared field(s) {', '.join(extra)}")
        if self.rows is not None and table.num_rows != self.rows:
            raise ProtocolError(f"{where} must have {self.rows} row(s), got {table.num_rows}")
        if self.meta:
            present = {k.decode() for k in (table.schema.metadata or {})}
            lacking = [k for k in self.meta if k not in present]
            if lacking:
                raise ProtocolError(f"{where} lacks the metadata {', '.join(lacking)}")
        return table


def message(
    name: str,
    tag: str,
    sender: str | tuple[str, ...],
    receiver: str | tuple[str, ...],
    learns: str,
    *,
    rows: int | None = None,
    meta: tuple[str, ...] = (),
    **kinds: Kind,
) -> Message:
    """Shorthand for the declaration tables: ``message("lr.u", "lr/.../u", "host", "guest", "...", ciphertext=FIXED)``."""
    as_tuple = lambda r: (r,) if isinstance(r, str) else tuple(r)  # noqa: E731
    return Message(name, tag, as_tuple(sender), as_tuple(receiver), fields(**kinds), learns, rows, meta)


@dataclass(frozen=True)
class Protocol:
    """A protocol's message table and what each role never learns from it (DESIGN.md §9)."""

    name: str
    messages: tuple[Message, ...]
    never: dict[str, tuple[str, ...]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        names = [m.name for m in self.messages]
        if len(set(names)) != len(names):
            raise ValueError(f"protocol {self.name} declares a message name twice")

    def match(self, tag: str) -> tuple[Message, dict[str, str]] | None:
        """The declaration a captured tag belongs to, with its parameters (None if undeclared)."""
        for m in self.messages:
            params = m.match(tag)
            if params is not None:
                return m, params
        return None


def find(protocols: Iterable[Protocol], tag: str) -> tuple[Protocol, Message, dict[str, str]] | None:
    for protocol in protocols:
        found = protocol.match(tag)
        if found is not None:
            return protocol, *found
    return None


def learned_by(
    protocols: Iterable[Protocol], role: str, received: Iterable[str] | None = None
) -> tuple[list[str], list[str]]:
    """What ``role`` learns from the messages it receives in ``protocols``, and what it never learns.

    With ``received`` (names of the declared messages a party actually received), only those count:
    a job that never needed a key hand-out does not list "a Paillier public key".
    """
    names = None if received is None else set(received)
    learns: list[str] = []
    never: list[str] = []
    for protocol in protocols:
        for m in protocol.messages:
            if names is not None and m.name not in names:
                continue
            if role in m.receiver and m.learns and m.learns not in learns:
                learns.append(m.learns)
        for item in protocol.never.get(role, ()):
            if item not in never:
                never.append(item)
    return learns, never


def one(table: pa.Table, name: str) -> Any:
    """The value of field ``name`` in a checked one-row message."""
    return table.column(name)[0].as_py()
