"""What a party's service accepts, from whom: its policy (``policy.toml`` next to ``party.toml``).

The policy is declarative; every key is listed in this module and an unknown one is an error
naming the file and the key. It may also be a ``[policy]`` table of ``party.toml`` (then its
tables are ``[policy.defaults]``, ``[policy.partners.bank]``, ...), but not both.

```toml
[defaults]                      # applies to every partner allowed to propose
kinds = ["psi", "train", "predict"]   # job kinds a partner may propose (default: every kind)
approval = "manual"             # "manual" (queue for a person) or "auto"; or per kind:
                                # approval = { predict = "auto", train = "manual" }
key_bits = [2048, 3072]         # Paillier key sizes a job may use (default: every size vfl has)

[partners.retailer]             # with any [partners.*] table, only the listed partners may propose
kinds = ["train", "predict"]    # overrides [defaults] kinds for this partner
approval = { predict = "auto" } # kinds not named keep the default (manual)
key_bits = [3072]
columns = { train = ["age", "income"] }   # overrides [columns] for this partner

[columns]                       # which of our columns each kind may use (default: all offered)
train = ["age", "income", "tenure"]
predict = "*"                   # every offered column

[[caps.retailer]]               # caps per period: parsed here (Policy.caps), enforced by the
period = "month"                # service when a proposal arrives (parties/service_proposals.py)
epsilon = 3.0                   # epsilon summed over the period's jobs
jobs = 10                       # jobs proposed in the period
rows = 100000                   # rows of ours the period's jobs may use (each: its intersection)
```

With no policy at all (no file, no ``[policy]`` table): only the parties of the federation file
(but ourselves) may propose, every kind needs manual approval, every offered column and every
key size is allowed.

``Policy.check(proposer, kind, columns, options)`` goes through the rules in this order and stops
at the first that refuses: partner, kinds, key_bits, columns; then approval decides between
accept and queue. A refusal message is one line naming the rule, e.g.
``refused by policy rule [partners.bank] kinds: 'segment' is not allowed (allowed: train, predict)``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vfl.config import JOB_KINDS, read_toml
from vfl.errors import ConfigError
from vfl.options import KEY_BITS, TrainOptions

ACCEPT = "accept"
QUEUE = "queue"
REFUSE = "refuse"
APPROVALS = ("manual", "auto")
PERIODS = ("day", "week", "month", "quarter", "year")
ALL = "*"
POLICY_FILE = "policy.toml"
KEY_KINDS = ("train",)  # kinds that make a Paillier key (others are checked only if they name key_bits)

_TOP_KEYS = ("defaults", "partners", "columns", "caps")
_RULE_KEYS = ("kinds", "approval", "key_bits")
_PARTNER_KEYS = (*_RULE_KEYS, "columns")
_CAP_KEYS = ("period", "epsilon", "delta", "jobs", "rows")


@dataclass(frozen=True)
class Decision:
    """What to do with a proposal: ``accept``, ``queue`` (for manual approval) or ``refuse``."""

    action: str
    rule: str  # the rule that decided, e.g. "[partners.bank] kinds"
    message: str  # one line

    @property
    def accepted(self) -> bool:
        return self.action == ACCEPT

    @property
    def queued(self) -> bool:
        return self.action == QUEUE

    @property
    def refused(self) -> bool:
        return self.action == REFUSE


@dataclass(frozen=True)
class Cap:
    """An audience privacy-budget cap for one partner over one period (None: no limit on that).

    ``delta``: every vfl release is pure epsilon-DP (two-sided geometric noise, DESIGN.md §13), so a
    job spends delta 0 and a delta cap never refuses one; it is read so that a policy written for
    (epsilon, delta) mechanisms stays valid here.
    """

    partner: str
    period: str
    epsilon: float | None = None
    delta: float | None = None
    jobs: int | None = None
    rows: int | None = None


@dataclass(frozen=True)
class Rules:
    """The rules for one partner (or the defaults), each with the table it came from."""

    kinds: tuple[str, ...] | None = None  # None: every kind
    approval: Mapping[str, str] = field(default_factory=dict)  # kind -> manual | auto; "*" = any kind
    key_bits: tuple[int, ...] | None = None  # None: every size vfl has
    columns: Mapping[str, tuple[str, ...] | None] = field(default_factory=dict)  # kind -> columns; None = all
    source: Mapping[str, str] = field(default_factory=dict)  # rule -> "[partners.bank]" / "[defaults]"


@dataclass(frozen=True)
class Policy:
    """A party's policy. ``partners`` None: every member of ``federation`` (but ``party_id``)."""

    defaults: Rules = field(default_factory=Rules)
    partners: Mapping[str, Rules] | None = None
    columns: Mapping[str, tuple[str, ...] | None] = field(default_factory=dict)
    caps: Mapping[str, tuple[Cap, ...]] = field(default_factory=dict)
    federation: tuple[str, ...] = ()
    party_id: str | None = None
    path: str = "(no policy: defaults)"

    # -- loading ------------------------------------------------------------------------------

    @classmethod
    def load(
        cls, workspace: str | Path, federation: Iterable[str] = (), party_id: str | None = None
    ) -> Policy:
        """The policy of the party in ``workspace``: ``policy.toml``, else ``[policy]`` of party.toml.

        ``federation`` is the party ids of the federation file (the partners allowed when the
        policy lists none); ``party_id`` is ours (never a partner).
        """
        workspace = Path(workspace)
        file = workspace / POLICY_FILE
        party_file = workspace / "party.toml"
        embedded = None
        if party_file.exists():
            embedded = read_toml(party_file, "party file").get("policy")
        if file.exists():
            if embedded is not None:
                raise ConfigError(
                    f"{party_file}: has a [policy] table and {file} exists too; keep one of them"
                )
            return cls.from_dict(read_toml(file, "policy file"), str(file), federation, party_id)
        if embedded is not None:
            if not isinstance(embedded, dict):
                raise ConfigError(f"{party_file}: 'policy' must be a table")
            return cls.from_dict(embedded, str(party_file), federation, party_id, prefix="policy.")
        return cls(federation=tuple(federation), party_id=party_id)

    @classmethod
    def from_dict(
        cls,
        raw: Mapping[str, Any],
        where: str = POLICY_FILE,
        federation: Iterable[str] = (),
        party_id: str | None = None,
        *,
        prefix: str = "",
    ) -> Policy:
        """Parse a policy table (the contents of policy.toml), with errors naming ``where`` and the key."""
        _no_unknown(raw, _TOP_KEYS, where, prefix.rstrip("."))
        defaults = _rules(_table(raw, "defaults", where, prefix), _RULE_KEYS, where, f"{prefix}defaults")
        partners_raw = _table(raw, "partners", where, prefix) if "partners" in raw else None
        partners = None
        if partners_raw is not None:
            partners = {}
            for partner, table in partners_raw.items():
                name = f"{prefix}partners.{partner}"
                if not isinstance(table, dict):
                    raise ConfigError(f"{where}: [{name}] must be a table, got {table!r}")
                partners[partner] = _rules(table, _PARTNER_KEYS, where, name)
        columns = _columns(_table(raw, "columns", where, prefix), where, f"{prefix}columns")
        caps = _caps(_table(raw, "caps", where, prefix), where, f"{prefix}caps")
        return cls(
            defaults=defaults,
            partners=partners,
            columns=columns,
            caps=caps,
            federation=tuple(federation),
            party_id=party_id,
            path=where,
        )

    # -- deciding -----------------------------------------------------------------------------

    def caps_for(self, partner: str) -> tuple[Cap, ...]:
        return tuple(self.caps.get(partner, ()))

    def _partner_rules(self, proposer: str) -> tuple[Rules | None, str, str]:
        """(rules, rule name, refusal reason) for ``proposer``; rules None when not allowed."""
        if self.partners is not None:
            if proposer in self.partners and proposer != self.party_id:
                return self.partners[proposer], f"[partners.{proposer}]", ""
            listed = ", ".join(p for p in self.partners if p != self.party_id) or "none"
            return None, "[partners]", f"'{proposer}' is not a listed partner (listed: {listed})"
        members = [p for p in self.federation if p != self.party_id]
        if proposer in members:
            return Rules(), "[defaults]", ""
        return (
            None,
            "[defaults] partners",
            f"'{proposer}' is not a party of the federation (partners: {', '.join(members) or 'none'})",
        )

    def check(
        self,
        proposer: str,
        kind: str,
        columns: Iterable[str] = (),
        options: Mapping[str, Any] | None = None,
    ) -> Decision:
        """Accept, queue or refuse ``proposer``'s ``kind`` job using our ``columns`` with ``options``.

        ``options`` are the job's options (the ``[train]`` table of job.toml); ``key_bits`` is
        read from them (default: ``TrainOptions``' default, for a train job).
        """
        options = dict(options or {})
        rules, partner_rule, reason = self._partner_rules(proposer)
        if rules is None:
            return _refuse(partner_rule, reason)

        def pick(name: str) -> tuple[Any, str]:
            """The partner's value of rule ``name`` if it sets one, else the default's."""
            if name in rules.source:
                return getattr(rules, name), f"{partner_rule} {name}"
            source = self.defaults.source.get(name, "[defaults]")
            return getattr(self.defaults, name), f"{source} {name}"

        kinds, rule = pick("kinds")
        allowed_kinds = kinds if kinds is not None else JOB_KINDS
        if kind not in allowed_kinds:
            return _refuse(rule, f"{kind!r} is not allowed (allowed: {', '.join(allowed_kinds)})")

        key_bits, rule = pick("key_bits")
        if key_bits is not None and (kind in KEY_KINDS or "key_bits" in options):
            bits = options.get("key_bits", TrainOptions.key_bits)
            if bits not in key_bits:
                return _refuse(
                    rule, f"key_bits {bits!r} is not allowed (allowed: {', '.join(map(str, key_bits))})"
                )

        wanted = list(dict.fromkeys(columns))
        if kind in rules.columns:
            allowed, rule = rules.columns[kind], f"{partner_rule} columns.{kind}"
        elif kind in self.columns:
            allowed, rule = self.columns[kind], f"[columns] {kind}"
        else:
            allowed, rule = None, ""
        if allowed is not None:
            extra = [c for c in wanted if c not in allowed]
            if extra:
                return _refuse(
                    rule,
                    f"column(s) {', '.join(map(repr, extra))} may not be used by {kind} jobs "
                    f"(allowed: {', '.join(allowed) or 'none'})",
                )

        approval, rule = pick("approval")
        mode = approval.get(kind, approval.get(ALL))
        if mode is None and "approval" in rules.source:  # the partner's table does not name this kind
            mode = self.defaults.approval.get(kind, self.defaults.approval.get(ALL))
            rule = f"{self.defaults.source.get('approval', '[defaults]')} approval"
        mode = mode or "manual"
        if mode == "auto":
            return Decision(
                ACCEPT,
                rule,
                f"accepted by policy rule {rule}: {kind} jobs from '{proposer}' run without approval",
            )
        return Decision(
            QUEUE, rule, f"queued by policy rule {rule}: {kind} jobs from '{proposer}' need manual approval"
        )


def _refuse(rule: str, reason: str) -> Decision:
    return Decision(REFUSE, rule, f"refused by policy rule {rule}: {reason}")


# -- the schema ----------------------------------------------------------------------------------


def _no_unknown(table: Mapping[str, Any], known: Iterable[str], where: str, name: str) -> None:
    known = tuple(known)
    for key in table:
        if key not in known:
            inside = f" [{name}]" if name else ""
            raise ConfigError(f"{where}{inside}: unknown key '{key}' (expected: {', '.join(known)})")


def _table(raw: Mapping[str, Any], key: str, where: str, prefix: str) -> dict[str, Any]:
    value = raw.get(key, {})
    if not isinstance(value, dict):
        raise ConfigError(f"{where}: [{prefix}{key}] must be a table, got {value!r}")
    return value


def _choices(value: Any, kind: type, choices: Iterable[Any], where: str, name: str, key: str) -> tuple:
    """``value`` as a tuple of distinct items of ``kind``, each one of ``choices`` (else one-line errors)."""
    choices = tuple(choices)
    what = {"kinds": "job kinds", "key_bits": "key sizes"}[key]
    if not isinstance(value, list) or not all(isinstance(v, kind) and not isinstance(v, bool) for v in value):
        raise ConfigError(f"{where} [{name}]: '{key}' must be a list of {what}, got {value!r}")
    unknown = [v for v in value if v not in choices]
    if unknown:
        listed = ", ".join(map(repr if kind is str else str, unknown))
        raise ConfigError(
            f"{where} [{name}]: {key}: {listed} is not one of the {what} vfl knows "
            f"({', '.join(map(str, choices))})"
        )
    return tuple(dict.fromkeys(value))


def _approval(value: Any, where: str, name: str) -> dict[str, str]:
    table = {ALL: value} if isinstance(value, str) else value
    if not isinstance(table, dict):
        raise ConfigError(
            f'{where} [{name}]: \'approval\' must be "manual", "auto" or a table of kind = mode, got {value!r}'
        )
    for kind, mode in table.items():
        if kind != ALL and kind not in JOB_KINDS:
            raise ConfigError(
                f"{where} [{name}]: approval: unknown job kind {kind!r} (known: {', '.join(JOB_KINDS)})"
            )
        if mode not in APPROVALS:
            raise ConfigError(
                f"{where} [{name}]: approval{'' if kind == ALL else '.' + kind} must be "
                f'"manual" or "auto", got {mode!r}'
            )
    return dict(table)


def _columns(table: Any, where: str, name: str) -> dict[str, tuple[str, ...] | None]:
    if not isinstance(table, dict):
        raise ConfigError(f"{where} [{name}]: must be a table of kind = [columns], got {table!r}")
    out: dict[str, tuple[str, ...] | None] = {}
    for kind, value in table.items():
        if kind not in JOB_KINDS:
            raise ConfigError(
                f"{where} [{name}]: unknown key '{kind}' (expected job kinds: {', '.join(JOB_KINDS)})"
            )
        if value == ALL:
            out[kind] = None
        elif isinstance(value, list) and all(isinstance(c, str) for c in value):
            out[kind] = tuple(dict.fromkeys(value))
        else:
            raise ConfigError(
                f"{where} [{name}]: '{kind}' must be a list of column names or \"*\", got {value!r}"
            )
    return out


def _rules(table: Mapping[str, Any], known: tuple[str, ...], where: str, name: str) -> Rules:
    _no_unknown(table, known, where, name)
    values: dict[str, Any] = {}
    if "kinds" in table:
        values["kinds"] = _choices(table["kinds"], str, JOB_KINDS, where, name, "kinds")
    if "approval" in table:
        values["approval"] = _approval(table["approval"], where, name)
    if "key_bits" in table:
        values["key_bits"] = _choices(table["key_bits"], int, KEY_BITS, where, name, "key_bits")
    if "columns" in table:
        values["columns"] = _columns(table["columns"], where, f"{name}.columns")
    source = {rule: f"[{name}]" for rule in values}
    return Rules(**values, source=source)


def _caps(table: Mapping[str, Any], where: str, name: str) -> dict[str, tuple[Cap, ...]]:
    out: dict[str, tuple[Cap, ...]] = {}
    for partner, value in table.items():
        items = value if isinstance(value, list) else [value]
        caps = []
        for i, item in enumerate(items):
            label = f"{name}.{partner}" + (f" #{i + 1}" if isinstance(value, list) else "")
            if not isinstance(item, dict):
                raise ConfigError(f"{where} [{label}]: must be a table (period, epsilon, ...), got {item!r}")
            _no_unknown(item, _CAP_KEYS, where, label)
            period = item.get("period")
            if period not in PERIODS:
                raise ConfigError(
                    f"{where} [{label}]: 'period' must be one of {', '.join(PERIODS)}, got {period!r}"
                )
            limits: dict[str, Any] = {}
            for key in ("epsilon", "delta"):
                if key in item:
                    v = item[key]
                    if isinstance(v, bool) or not isinstance(v, int | float) or v < 0:
                        raise ConfigError(f"{where} [{label}]: '{key}' must be a number >= 0, got {v!r}")
                    limits[key] = float(v)
            for key in ("jobs", "rows"):
                if key in item:
                    v = item[key]
                    if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                        raise ConfigError(f"{where} [{label}]: '{key}' must be an integer >= 0, got {v!r}")
                    limits[key] = v
            if not limits:
                raise ConfigError(
                    f"{where} [{label}]: a cap needs at least one of epsilon, delta, jobs, rows"
                )
            caps.append(Cap(partner=partner, period=period, **limits))
        out[partner] = tuple(caps)
    return out
