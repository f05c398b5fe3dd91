"""``party.toml``, ``federation.toml`` and ``job.toml`` (DESIGN.md §11): loaded, validated, explained.

Every error names the file, the key and what is wrong. Relative paths in ``party.toml`` are relative
to the workspace directory that holds it.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vfl.constraints import ConstraintList, FolderName, Options, check_table
from vfl.errors import ConfigError
from vfl.io import atomic_write_text
from vfl.transport.address import parse_address

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

ROLES = ("guest", "host", "arbiter")

_PSI = "vfl.psi.options:PsiOptions"
#: The sections of ``job.toml`` each kind of job has (besides ``[job]``), and the options class that
#: checks each section (a class, or "module:Class" so that loading this module stays cheap). A new
#: kind of job is one entry here plus its options class (an ``OptionsTable`` dataclass with
#: ``from_dict``, see vfl/options.py).
JOB_SECTIONS: dict[str, dict[str, type | str]] = {
    "psi": {"psi": _PSI},
    "train": {"psi": _PSI, "train": "vfl.options:TrainOptions"},
    "predict": {"psi": _PSI, "predict": "vfl.options:PredictOptions"},
    "screen": {"psi": _PSI, "screen": "vfl.options:ScreenOptions"},
    "segment": {"psi": _PSI, "segment": "vfl.segmentation.options:SegmentOptions"},
    "audience": {"psi": _PSI, "audience": "vfl.analytics.options:AudienceJobOptions"},
}
JOB_KINDS = tuple(JOB_SECTIONS)


def job_table() -> dict[str, ConstraintList]:
    """The ``[job]`` section: what to run (a kind of ``JOB_SECTIONS``) and where its outputs go."""
    return {
        "id": [FolderName(note="it names the job's output folder")],
        "kind": [Options(str, tuple(JOB_SECTIONS))],
    }


def options_class(kind: str, section: str) -> Any:
    """The options class that checks ``[section]`` of a ``kind`` job (imported on first use)."""
    ref = JOB_SECTIONS[kind][section]
    if isinstance(ref, str):
        module, _, name = ref.partition(":")
        return getattr(importlib.import_module(module), name)
    return ref


def read_toml(path: str | Path, what: str) -> dict[str, Any]:
    """Parse a TOML file, with errors that name the file."""
    path = Path(path)
    try:
        with path.open("rb") as handle:
            return tomllib.load(handle)
    except FileNotFoundError as exc:
        raise ConfigError(f"{what} {path} does not exist") from exc
    except IsADirectoryError as exc:
        raise ConfigError(f"{what} {path} is a directory, not a file") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{what} {path} is not valid TOML: {exc}") from exc
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{what} {path} is not UTF-8 text") from exc


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)  # a JSON string is a valid TOML basic string
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{k} = {_toml_value(v)}" for k, v in value.items()) + " }"
    raise ConfigError(f"cannot write {type(value).__name__} to TOML")


def dump_toml(
    tables: dict[str, dict[str, Any]], arrays: dict[str, list[dict[str, Any]]] | None = None
) -> str:
    """TOML text for flat tables and arrays of tables (all our files need); values must not be None."""
    lines: list[str] = []
    for name, table in tables.items():
        lines.append(f"[{name}]")
        lines.extend(f"{k} = {_toml_value(v)}" for k, v in table.items() if v is not None)
        lines.append("")
    for name, items in (arrays or {}).items():
        for item in items:
            lines.append(f"[[{name}]]")
            lines.extend(f"{k} = {_toml_value(v)}" for k, v in item.items() if v is not None)
            lines.append("")
    return "\n".join(lines)


def _get(
    table: dict[str, Any], key: str, kind: type | tuple[type, ...], where: str, default: Any = ...
) -> Any:
    if key not in table:
        if default is ...:
            raise ConfigError(f"{where}: missing key '{key}'")
        return default
    value = table[key]
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        names = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
        raise ConfigError(f"{where}: '{key}' must be a {names}, got {value!r}")
    return value


@dataclass
class PartyConfig:
    """A party's own settings (``party.toml`` in its workspace)."""

    workspace: Path
    id: str
    role: str
    listen: str
    key: Path
    certificate: Path
    output_dir: Path
    data: Path | None = None
    id_column: str = "id"
    label_column: str | None = None
    columns: list[str] | None = None  # offered feature columns; None = every column but id and label
    positive: str | None = None  # guest: the label value that is the positive class (needed unless 0/1)
    compute: str = "local"  # [compute] backend: "local" (a process pool here) or "dask://HOST:PORT"
    compute_workers: int | None = None  # [compute] workers: local pool size (default: every core)
    # [compute] stream_bytes: a party's data file at least this large is streamed, not loaded
    # (vfl.streamed_table; -1: never); batch_rows: the rows of one streamed batch
    stream_bytes: int = 256 * 1024 * 1024
    batch_rows: int = 262_144
    segment_policy: Any = None  # [segment] of party.toml (vfl.segmentation.options.SegmentPolicy)
    # [budget]: privacy budget caps per partner ({partner: {epsilon, period}}, "*" for any other);
    # None: the safe default cap of vfl.analytics.budget.DEFAULT_CAP
    budget: dict[str, dict[str, Any]] | None = None

    @classmethod
    def load(cls, workspace: str | Path) -> PartyConfig:
        workspace = Path(workspace)
        if not workspace.is_dir():
            raise ConfigError(f"party workspace {workspace} does not exist; create it with 'vfl init'")
        path = workspace / "party.toml"
        raw = read_toml(path, "party file")
        where = str(path)
        party = _get(raw, "party", dict, where)
        role = _get(party, "role", str, f"{where} [party]")
        if role not in ROLES:
            raise ConfigError(f"{where} [party]: role must be one of {', '.join(ROLES)}, got {role!r}")
        party_id = _get(party, "id", str, f"{where} [party]")
        if not party_id or any(c in party_id for c in "/\\ :"):
            raise ConfigError(
                f"{where} [party]: id {party_id!r} must be non-empty without spaces, slashes or colons"
            )
        network = _get(raw, "network", dict, where, {})
        listen = _get(network, "listen", str, f"{where} [network]")
        parse_address(listen, f"{where} [network]")
        tls = _get(raw, "tls", dict, where, {})
        output = _get(raw, "output", dict, where, {})
        data = _get(raw, "data", dict, where, {})

        def resolve(p: str) -> Path:
            q = Path(p).expanduser()
            return q if q.is_absolute() else workspace / q

        cfg = cls(
            workspace=workspace,
            id=party_id,
            role=role,
            listen=listen,
            key=resolve(_get(tls, "key", str, f"{where} [tls]", "tls/key.pem")),
            certificate=resolve(_get(tls, "certificate", str, f"{where} [tls]", "tls/cert.pem")),
            output_dir=resolve(_get(output, "dir", str, f"{where} [output]", "out")),
        )
        compute = _get(raw, "compute", dict, where, {})
        cfg.compute = _get(compute, "backend", str, f"{where} [compute]", "local").strip()
        cfg.compute_workers = _get(compute, "workers", int, f"{where} [compute]", None)
        cfg.stream_bytes = _get(compute, "stream_bytes", int, f"{where} [compute]", cfg.stream_bytes)
        cfg.batch_rows = _get(compute, "batch_rows", int, f"{where} [compute]", cfg.batch_rows)
        unknown = sorted(set(compute) - {"backend", "workers", "stream_bytes", "batch_rows"})
        if unknown:
            raise ConfigError(
                f"{where} [compute]: unknown key '{unknown[0]}'; known keys: backend, workers, stream_bytes, "
                "batch_rows"
            )
        if cfg.batch_rows < 1:
            raise ConfigError(f"{where} [compute]: batch_rows must be >= 1, got {cfg.batch_rows}")
        if cfg.compute_workers is not None and cfg.compute_workers < 1:
            raise ConfigError(f"{where} [compute]: workers must be >= 1, got {cfg.compute_workers}")
        from vfl.compute import parse_backend  # imports gmpy2: only once a party file is read

        parse_backend(cfg.compute, f"{where} [compute] backend")
        budget = _get(raw, "budget", dict, where, None)
        if budget is not None:
            cfg.budget = _budget_caps(budget, f"{where} [budget]")
        if role != "arbiter":
            cfg.data = resolve(_get(data, "path", str, f"{where} [data]"))
            cfg.id_column = _get(data, "id_column", str, f"{where} [data]", "id")
            cfg.columns = _get(data, "columns", list, f"{where} [data]", None)
            if role == "guest":
                cfg.label_column = _get(data, "label_column", str, f"{where} [data]")
                positive = _get(data, "positive", (str, int, bool), f"{where} [data]", None)
                cfg.positive = None if positive is None else str(positive)
        segment = _get(raw, "segment", dict, where, {})
        if segment:
            from vfl.segmentation.options import SegmentPolicy

            try:
                cfg.segment_policy = SegmentPolicy.from_dict(segment)
            except ConfigError as exc:
                raise ConfigError(f"{where} [segment]: {exc}") from exc
        return cfg

    def to_toml(self) -> str:
        def rel(p: Path) -> str:
            try:
                return str(p.relative_to(self.workspace))
            except ValueError:
                return str(p)

        tables: dict[str, dict[str, Any]] = {
            "party": {"id": self.id, "role": self.role},
            "network": {"listen": self.listen},
            "tls": {"key": rel(self.key), "certificate": rel(self.certificate)},
            "output": {"dir": rel(self.output_dir)},
        }
        if self.compute != "local" or self.compute_workers is not None:
            tables["compute"] = {"backend": self.compute, "workers": self.compute_workers}
        streaming = {"stream_bytes": self.stream_bytes, "batch_rows": self.batch_rows}
        changed = {k: v for k, v in streaming.items() if v != getattr(PartyConfig, k)}
        if changed:
            tables.setdefault("compute", {"backend": self.compute}).update(changed)
        if self.data is not None:
            tables["data"] = {
                "path": str(self.data),
                "id_column": self.id_column,
                "label_column": self.label_column,
                "columns": self.columns,
                "positive": self.positive,
            }
        if self.budget:
            tables["budget"] = {("default" if k == "*" else k): v for k, v in self.budget.items()}
        return dump_toml(tables)

    def save(self) -> Path:
        return atomic_write_text(self.workspace / "party.toml", self.to_toml())


def _budget_caps(table: dict[str, Any], where: str) -> dict[str, dict[str, Any]]:
    """``[budget]``: ``partner = { epsilon = 3.0, period = "30d" }`` per partner; ``default`` (or "*") for the rest."""
    from vfl.analytics.budget import _cap_from

    caps: dict[str, dict[str, Any]] = {}
    for partner, spec in table.items():
        name = "*" if partner in ("default", "*") else str(partner)
        try:
            _cap_from(name, spec)
        except ConfigError as exc:
            raise ConfigError(f"{where}: {exc}") from exc
        caps[name] = dict(spec)
    return caps


@dataclass(frozen=True)
class PeerCard:
    """What a party shares with its partners: id, role, address and pinned certificate."""

    id: str
    role: str
    address: str
    fingerprint: str
    certificate: str  # PEM text

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, raw: dict[str, Any], where: str) -> PeerCard:
        card = cls(
            **{f.name: _get(raw, f.name, str, where) for f in dataclasses.fields(cls)}
        )  # every field is text
        if card.role not in ROLES:
            raise ConfigError(
                f"{where}: role of '{card.id}' must be one of {', '.join(ROLES)}, got {card.role!r}"
            )
        parse_address(card.address, f"{where} (party '{card.id}')")
        if "BEGIN CERTIFICATE" not in card.certificate:
            raise ConfigError(f"{where}: the certificate of '{card.id}' is not a PEM certificate")
        return card

    @classmethod
    def load(cls, path: str | Path) -> PeerCard:
        raw = read_toml(path, "party card")
        return cls.from_dict(_get(raw, "card", dict, str(path)), str(path))

    def to_toml(self) -> str:
        return dump_toml({"card": self.to_dict()})


@dataclass
class Federation:
    """Every party of a federation (``federation.toml``), identical at every party."""

    parties: list[PeerCard] = field(default_factory=list)

    @classmethod
    def load(cls, path: str | Path) -> Federation:
        if not Path(path).exists():
            raise ConfigError(
                f"federation file {path} does not exist; create it with 'vfl federation add CARD...'"
            )
        raw = read_toml(path, "federation file")
        items = _get(raw, "party", list, str(path), [])
        fed = cls([PeerCard.from_dict(item, f"{path} [[party]] #{i + 1}") for i, item in enumerate(items)])
        fed.validate(str(path))
        return fed

    def validate(self, where: str = "federation") -> None:
        ids = [p.id for p in self.parties]
        dupes = sorted({i for i in ids if ids.count(i) > 1})
        if dupes:
            raise ConfigError(f"{where}: party id(s) {', '.join(dupes)} appear more than once")
        roles = [p.role for p in self.parties]
        if roles.count("guest") > 1:
            raise ConfigError(f"{where}: a federation has exactly one guest, found {roles.count('guest')}")
        if roles.count("arbiter") > 1:
            raise ConfigError(
                f"{where}: a federation has at most one arbiter, found {roles.count('arbiter')}"
            )

    def add(self, card: PeerCard) -> None:
        """Add or replace (same id) a party's card."""
        self.parties = [p for p in self.parties if p.id != card.id] + [card]
        self.validate()

    def get(self, party_id: str) -> PeerCard:
        for p in self.parties:
            if p.id == party_id:
                return p
        raise ConfigError(
            f"party '{party_id}' is not in the federation (known: {', '.join(p.id for p in self.parties)}); "
            "add its card with 'vfl federation add CARD'"
        )

    def with_role(self, role: str) -> list[PeerCard]:
        return [p for p in self.parties if p.role == role]

    def to_toml(self) -> str:
        return dump_toml({}, {"party": [p.to_dict() for p in self.parties]})

    def save(self, path: str | Path) -> Path:
        return atomic_write_text(path, self.to_toml())


@dataclass
class JobConfig:
    """What to run (``job.toml``): the kind of job, its id, and one section of options per step.

    ``psi``, ``train`` and ``predict`` hold those sections as written; ``sections`` holds the
    sections of other kinds of job (``JOB_SECTIONS``). ``options(name)`` gives a section's checked
    options object.
    """

    id: str
    kind: str
    psi: dict[str, Any] = field(default_factory=dict)
    train: dict[str, Any] = field(default_factory=dict)
    predict: dict[str, Any] = field(default_factory=dict)
    sections: dict[str, dict[str, Any]] = field(default_factory=dict)

    _NAMED = ("psi", "train", "predict")

    def section(self, name: str) -> dict[str, Any]:
        """The raw values of ``[name]`` (empty when the file has no such section)."""
        if name in self._NAMED:
            return getattr(self, name)
        return self.sections.get(name, {})

    @classmethod
    def load(cls, path: str | Path) -> JobConfig:
        raw = read_toml(path, "job file")
        where = str(path)
        job = _get(raw, "job", dict, where)
        _check_job_table(job, where)
        kind = job["kind"]
        allowed = JOB_SECTIONS[kind]
        unknown = sorted(set(raw) - {"job"} - {s for sections in JOB_SECTIONS.values() for s in sections})
        if unknown:
            raise ConfigError(
                f"{where}: unknown section(s) {', '.join(unknown)}; expected {', '.join(['job', *allowed])}"
            )
        unused = sorted(set(raw) - {"job"} - set(allowed))
        if unused:
            raise ConfigError(
                f"{where}: a job of kind {kind} has no section(s) {', '.join(unused)}; "
                f"its sections are {', '.join(['job', *allowed])}"
            )
        config = cls(id=job["id"], kind=kind)
        for name in allowed:
            table = _get(raw, name, dict, where, {})
            if name in cls._NAMED:
                setattr(config, name, table)
            elif table:
                config.sections[name] = table
        config.check(where)
        return config

    def check(self, where: str = "job.toml") -> None:
        """Validate every section against its options table now, naming the file (every party does the same)."""
        _check_job_table({"id": self.id, "kind": self.kind}, where)
        allowed = JOB_SECTIONS[self.kind]
        given = [n for n in self._NAMED if getattr(self, n)] + [n for n, t in self.sections.items() if t]
        unused = sorted(set(given) - set(allowed))
        if unused:
            raise ConfigError(
                f"{where}: a job of kind {self.kind} has no section(s) {', '.join(unused)}; "
                f"its sections are {', '.join(['job', *allowed])}"
            )
        built = {name: self._build(name, where) for name in allowed}
        _cross_section_rules(self.kind, built, where)

    def _build(self, name: str, where: str) -> Any:
        values = self.section(name)
        if not isinstance(values, Mapping):
            raise ConfigError(f"{where}: [{name}] must be a table of options, got {values!r}")
        try:
            return options_class(self.kind, name).from_dict(values)
        except ConfigError as exc:
            raise ConfigError(f"{where} [{name}]: {exc}") from exc

    def options(self, name: str, where: str = "job.toml") -> Any:
        """The checked options object of section ``name`` (``TrainOptions``, ``PsiOptions``, ...)."""
        if name not in JOB_SECTIONS[self.kind]:
            raise ConfigError(f"{where}: a job of kind {self.kind} has no [{name}] section")
        return self._build(name, where)

    def to_toml(self) -> str:
        tables: dict[str, dict[str, Any]] = {"job": {"id": self.id, "kind": self.kind}}
        for name in (*self._NAMED, *self.sections):
            if self.section(name):
                tables[name] = self.section(name)
        return dump_toml(tables)


def _check_job_table(job: Mapping[str, Any], where: str) -> None:
    try:
        table = job_table()
        check_table(job, table, "key", required=table)
    except ConfigError as exc:
        raise ConfigError(f"{where} [job]: {exc}") from exc


# --- rules between sections: the only hand-written checks of job.toml -----------------------------


def _cross_section_rules(kind: str, options: dict[str, Any], where: str) -> None:
    if kind == "screen" and options["psi"].reveal != "all":
        raise ConfigError(
            f'{where} [psi]: a screening job needs reveal = "all" (the hosts bin their aligned rows)'
        )
    if kind == "audience" and options["psi"].reveal != "all":
        raise ConfigError(
            f'{where} [psi]: an audience job needs reveal = "all" (each host encrypts its shared rows '
            "in the shared order)"
        )
    if kind == "train" and options["psi"].reveal != "all":
        raise ConfigError(
            f'{where} [psi]: a training job needs reveal = "all" (with "guest-only" the hosts '
            "would not know their rows); use a psi job for overlap analysis"
        )
    if kind == "segment" and options["psi"].reveal != "all":
        raise ConfigError(
            f'{where} [psi]: a segment job needs reveal = "all" (every party clusters its own aligned rows)'
        )
