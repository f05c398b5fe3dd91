"""A small vocabulary of option constraints and the one validator of every options table.

Modelled on scikit-learn's ``_parameter_constraints``: each options class declares, in one table,
the constraints every option must meet (a list: the value must satisfy at least one of them;
``None`` in the list allows ``None``)::

    _parameter_constraints = {
        "max_epochs": [Interval(int, 1, None, closed="left")],
        "test_size": [Interval(float, 0, 1, closed="neither")],
        "optimizer": [Options(str, ("sgd", "momentum", "adam"))],
        "workers": [Interval(int, 1, None, closed="left"), None],
    }

Types, ranges and choices all come from the table, and every error names the option, the value
and what is allowed: ``job option learning_rate must be a float in (0, inf), got -1``. Rules
between options (if any) live in one ``_cross_field_rules`` method per class.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable, Mapping
from typing import Any, ClassVar

from vfl.errors import ConfigError

_CLOSED = ("left", "right", "both", "neither")


class Constraint:
    """One kind of allowed value. ``convert`` turns an accepted value into the stored one."""

    note: str | None = None
    #: False for values an error must not print (a salt or key): the error gives only their length.
    shows_value: bool = True

    def is_satisfied_by(self, value: Any) -> bool:  # pragma: no cover - abstract
        raise NotImplementedError

    def convert(self, value: Any) -> Any:
        return value

    def _describe(self) -> str:  # pragma: no cover - abstract
        raise NotImplementedError

    def describe(self) -> str:
        """What the constraint allows, as words that follow "must be"."""
        text = self._describe()
        return f"{text} ({self.note})" if self.note else text

    def __repr__(self) -> str:
        return f"<{type(self).__name__}: {self.describe()}>"


class Interval(Constraint):
    """A number of type ``int`` or ``float`` in an interval; ``None`` bounds are infinite.

    ``Interval(int, ...)`` takes only integers (not booleans, not ``2.0``); ``Interval(float, ...)``
    takes integers and floats, but never NaN, infinity, or an integer too large to be a float.
    """

    def __init__(
        self,
        type_: type,
        left: float | None,
        right: float | None,
        *,
        closed: str = "both",
        note: str | None = None,
    ) -> None:
        if type_ not in (int, float):
            raise TypeError(f"Interval type must be int or float, not {type_!r}")
        if closed not in _CLOSED:
            raise ValueError(f"closed must be one of {', '.join(_CLOSED)}, not {closed!r}")
        if left is not None and right is not None and left > right:
            raise ValueError(f"empty interval [{left}, {right}]")
        self.type, self.left, self.right, self.closed, self.note = type_, left, right, closed, note

    def is_satisfied_by(self, value: Any) -> bool:
        if isinstance(value, bool):
            return False
        if self.type is int:
            if not isinstance(value, int):
                return False
        elif isinstance(value, int):
            try:
                float(value)
            except OverflowError:
                return False
        elif not isinstance(value, float) or not math.isfinite(value):
            return False
        left_ok = (
            self.left is None or value > self.left or (value == self.left and self.closed in ("left", "both"))
        )
        right_ok = (
            self.right is None
            or value < self.right
            or (value == self.right and self.closed in ("right", "both"))
        )
        return left_ok and right_ok

    def _describe(self) -> str:
        kind = "an int" if self.type is int else "a float"
        if self.left is None and self.right is None:
            return kind if self.type is int else "a finite float"
        low = (
            "(-inf"
            if self.left is None
            else ("[" if self.closed in ("left", "both") else "(") + f"{self.left}"
        )
        high = (
            "inf)"
            if self.right is None
            else f"{self.right}" + ("]" if self.closed in ("right", "both") else ")")
        )
        return f"{kind} in {low}, {high}"


class Options(Constraint):
    """One of a fixed set of values of one type (``Options(str, ("sgd", "adam"))``).

    The values keep the order they are given in (a set is sorted), which is the order the error lists.
    """

    def __init__(self, type_: type, values: Iterable[Any], *, note: str | None = None) -> None:
        if isinstance(values, set | frozenset):
            values = sorted(values)
        self.type, self.values, self.note = type_, tuple(values), note
        if not self.values or not all(isinstance(v, type_) for v in self.values):
            raise TypeError(f"Options needs at least one value, every one a {type_.__name__}")

    def is_satisfied_by(self, value: Any) -> bool:
        if isinstance(value, bool) and self.type is not bool:
            return False
        return isinstance(value, self.type) and value in self.values

    def _describe(self) -> str:
        return "one of " + ", ".join(str(v) for v in self.values)


class Boolean(Constraint):
    """``True`` or ``False`` (not 0 or 1)."""

    def __init__(self, *, note: str | None = None) -> None:
        self.note = note

    def is_satisfied_by(self, value: Any) -> bool:
        return isinstance(value, bool)

    def _describe(self) -> str:
        return "true or false"


class String(Constraint):
    """A string of at least ``min_length`` characters."""

    def __init__(self, min_length: int = 0, *, note: str | None = None) -> None:
        self.min_length, self.note = min_length, note

    def is_satisfied_by(self, value: Any) -> bool:
        return isinstance(value, str) and len(value) >= self.min_length

    def _describe(self) -> str:
        if self.min_length == 0:
            return "a string"
        if self.min_length == 1:
            return "a non-empty string"
        return f"a string of at least {self.min_length} characters"


class FolderName(String):
    """A string that is safe as one folder name: no slashes, colons, NUL, ``.``/``..`` or surrounding spaces."""

    def __init__(self, *, note: str | None = None) -> None:
        super().__init__(1, note=note)

    def is_satisfied_by(self, value: Any) -> bool:
        return (
            super().is_satisfied_by(value)
            and value not in (".", "..")
            and not any(c in value for c in "/\\:\0")
            and value == value.strip()
        )

    def _describe(self) -> str:
        return (
            "a folder name of letters, digits, dots, dashes or underscores, "
            "without slashes, colons or surrounding spaces"
        )


class Bytes(Constraint):
    """At least ``min_length`` bytes; with ``hex=True`` also a hex string, converted to bytes."""

    shows_value = False

    def __init__(self, min_length: int = 0, *, hex: bool = False, note: str | None = None) -> None:  # noqa: A002
        self.min_length, self.hex, self.note = min_length, hex, note

    def is_satisfied_by(self, value: Any) -> bool:
        if isinstance(value, bytes):
            return len(value) >= self.min_length
        if self.hex and isinstance(value, str):
            try:
                return len(bytes.fromhex(value)) >= self.min_length
            except ValueError:
                return False
        return False

    def convert(self, value: Any) -> bytes:
        return bytes.fromhex(value) if isinstance(value, str) else value

    def _describe(self) -> str:
        text = f"at least {self.min_length} bytes"
        return f"{text} (or a hex string of at least {2 * self.min_length} digits)" if self.hex else text


class Sentinel(Constraint):
    """One special value that stands for another (``Sentinel(0, None, "full batch")``: TOML has no null)."""

    def __init__(self, value: Any, means: Any, note: str) -> None:
        self.value, self.means, self.note = value, means, note

    def is_satisfied_by(self, value: Any) -> bool:
        return type(value) is type(self.value) and value == self.value

    def convert(self, value: Any) -> Any:
        return self.means

    def _describe(self) -> str:
        return repr(self.value)


class InstanceOf(Constraint):
    """An instance of a class (for options that are objects, such as a ``Normalization``)."""

    def __init__(self, cls: type, description: str, *, note: str | None = None) -> None:
        self.cls, self.description, self.note = cls, description, note

    def is_satisfied_by(self, value: Any) -> bool:
        return isinstance(value, self.cls)

    def _describe(self) -> str:
        return self.description


ConstraintList = list[Constraint | None]


def describe(constraints: ConstraintList) -> str:
    """``"an int in [1, inf), 0 (full batch) or None"``."""
    words = [c.describe() if c is not None else "None" for c in constraints]
    return words[0] if len(words) == 1 else ", ".join(words[:-1]) + " or " + words[-1]


def show(value: Any, *, secret: bool = False) -> str:
    """A value as an error message shows it: ``repr``, shortened; bytes (and secrets) only by their length."""
    if isinstance(value, bytes | bytearray):
        return f"{len(value)} bytes"
    if secret and isinstance(value, str):
        return f"a string of {len(value)} characters"
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def check_value(label: str, name: str, value: Any, constraints: ConstraintList) -> Any:
    """The value to store for option ``name``, or a ``ConfigError`` naming the option, value and allowed values."""
    for constraint in constraints:
        if constraint is None:
            if value is None:
                return None
        elif constraint.is_satisfied_by(value):
            return constraint.convert(value)
    secret = any(c is not None and not c.shows_value for c in constraints)
    raise ConfigError(f"{label} {name} must be {describe(constraints)}, got {show(value, secret=secret)}")


def _plural(label: str) -> str:
    return label.rsplit(" ", 1)[-1] + "s"


def check_keys(values: Mapping[str, Any], known: Iterable[str], label: str) -> None:
    """Refuse keys that are not options, listing the known ones."""
    known = set(known)
    unknown = sorted(str(k) for k in set(values) - known)
    if unknown:
        raise ConfigError(
            f"unknown {label}(s) {', '.join(unknown)}; known {_plural(label)}: {', '.join(sorted(known))}"
        )


def check_table(
    values: Mapping[str, Any],
    constraints: Mapping[str, ConstraintList],
    label: str,
    *,
    required: Iterable[str] = (),
) -> dict[str, Any]:
    """Check a whole table (a TOML section): known keys, required keys, then every value."""
    check_keys(values, constraints, label)
    for name in required:
        if name not in values:
            raise ConfigError(f"missing {label} {name}; it must be {describe(constraints[name])}")
    return {name: check_value(label, name, value, constraints[name]) for name, value in values.items()}


class OptionsTable:
    """Base of the frozen options dataclasses: validation from ``_parameter_constraints``.

    A subclass declares ``_option_label`` (how errors name its options: ``"job option"``) and one
    ``_parameter_constraints`` entry per field. Construction validates every field (so direct use
    from Python is checked too) and stores converted values (a hex salt becomes bytes).
    """

    _option_label: ClassVar[str] = "option"
    _parameter_constraints: ClassVar[dict[str, ConstraintList]] = {}

    def __post_init__(self) -> None:
        table = type(self)._parameter_constraints
        for f in dataclasses.fields(self):  # type: ignore[arg-type]
            if f.name not in table:
                raise TypeError(f"{type(self).__name__}._parameter_constraints has no entry for {f.name!r}")
            value = getattr(self, f.name)
            checked = check_value(self._option_label, f.name, value, table[f.name])
            if checked is not value:
                object.__setattr__(self, f.name, checked)
        self._cross_field_rules()

    def _cross_field_rules(self) -> None:
        """Rules between options, the only hand-written checks (none by default)."""

    @classmethod
    def option_names(cls) -> list[str]:
        return [f.name for f in dataclasses.fields(cls)]  # type: ignore[arg-type]

    @classmethod
    def required_options(cls) -> list[str]:
        return [
            f.name
            for f in dataclasses.fields(cls)  # type: ignore[arg-type]
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        ]

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> Any:
        """Options from a mapping (a ``job.toml`` section, keyword arguments); unknown keys are an error."""
        check_keys(values, cls.option_names(), cls._option_label)
        for name in cls.required_options():
            if name not in values:
                raise ConfigError(
                    f"missing {cls._option_label} {name}; it must be {describe(cls._parameter_constraints[name])}"
                )
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)  # type: ignore[call-overload]
