"""The service policy: every rule, the defaults without a policy, and schema errors naming file and key."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from vfl.errors import ConfigError
from vfl.service.policy import ACCEPT, QUEUE, REFUSE, Cap, Policy

FEDERATION = ("retailer", "bank", "arbiter")

EXAMPLE = """
[defaults]
kinds = ["psi", "train", "predict"]
approval = "manual"
key_bits = [2048, 3072]

[partners.bank]
kinds = ["train", "predict"]
approval = { predict = "auto" }
key_bits = [3072]
columns = { train = ["age", "income"] }

[partners.shop]

[columns]
train = ["age", "income", "tenure"]
predict = "*"

[[caps.bank]]
period = "month"
epsilon = 3.0
jobs = 10

[[caps.bank]]
period = "day"
rows = 100000

[caps.shop]
period = "year"
delta = 1e-6
"""


def workspace(tmp_path: Path, policy: str | None = None, party_extra: str = "") -> Path:
    ws = tmp_path / "ws"
    ws.mkdir(exist_ok=True)
    (ws / "party.toml").write_text(
        '[party]\nid = "retailer"\nrole = "guest"\n[network]\nlisten = "127.0.0.1:7470"\n' + party_extra
    )
    if policy is not None:
        (ws / "policy.toml").write_text(textwrap.dedent(policy))
    return ws


@pytest.fixture
def policy(tmp_path: Path) -> Policy:
    return Policy.load(workspace(tmp_path, EXAMPLE), FEDERATION, "retailer")


def test_the_example_message_from_the_brief(policy: Policy) -> None:
    d = policy.check("bank", "segment", [], {})
    assert d.refused and d.action == REFUSE
    assert d.rule == "[partners.bank] kinds"
    assert d.message == (
        "refused by policy rule [partners.bank] kinds: 'segment' is not allowed (allowed: train, predict)"
    )


def test_partner_rule_only_listed_partners_may_propose(policy: Policy) -> None:
    d = policy.check("arbiter", "train", [], {"key_bits": 3072})
    assert d.refused and d.rule == "[partners]"
    assert (
        d.message
        == "refused by policy rule [partners]: 'arbiter' is not a listed partner (listed: bank, shop)"
    )
    assert policy.check("mallory", "psi").refused


def test_kinds_rule_falls_back_to_the_defaults(policy: Policy) -> None:
    assert policy.check("bank", "psi").message.startswith(
        "refused by policy rule [partners.bank] kinds: 'psi'"
    )
    d = policy.check("shop", "psi")  # shop sets no kinds: [defaults] allows psi
    assert d.queued and d.rule == "[defaults] approval"


def test_key_bits_rule(policy: Policy) -> None:
    d = policy.check("bank", "train", ["age"], {"key_bits": 2048})
    assert d.refused and d.rule == "[partners.bank] key_bits"
    assert (
        d.message
        == "refused by policy rule [partners.bank] key_bits: key_bits 2048 is not allowed (allowed: 3072)"
    )
    assert not policy.check("bank", "train", ["age"], {"key_bits": 3072}).refused
    # the default key size (2048) is what a train job without key_bits uses
    assert policy.check("bank", "train", ["age"], {}).rule == "[partners.bank] key_bits"
    assert policy.check("shop", "train", ["age"], {}).queued  # [defaults] allows 2048
    d = policy.check("shop", "train", ["age"], {"key_bits": 1024})
    assert d.refused and d.rule == "[defaults] key_bits"
    assert policy.check("shop", "psi", [], {}).queued  # a psi job makes no key: not checked


def test_columns_rule_partner_then_kind(policy: Policy) -> None:
    d = policy.check("bank", "train", ["age", "tenure", "zip"], {"key_bits": 3072})
    assert d.refused and d.rule == "[partners.bank] columns.train"
    assert d.message == (
        "refused by policy rule [partners.bank] columns.train: column(s) 'tenure', 'zip' may not be used "
        "by train jobs (allowed: age, income)"
    )
    d = policy.check("shop", "train", ["age", "tenure", "zip"])
    assert d.refused and d.rule == "[columns] train" and "'zip'" in d.message and "'tenure'" not in d.message
    assert policy.check("shop", "train", ["age", "tenure"]).queued
    assert not policy.check("bank", "predict", ["anything", "at", "all"]).refused  # predict = "*"


def test_approval_rule_per_kind(policy: Policy) -> None:
    d = policy.check("bank", "predict", ["age"])
    assert d.accepted and d.action == ACCEPT and d.rule == "[partners.bank] approval"
    assert (
        d.message
        == "accepted by policy rule [partners.bank] approval: predict jobs from 'bank' run without approval"
    )
    d = policy.check("bank", "train", ["age"], {"key_bits": 3072})  # not named by bank: the default
    assert d.action == QUEUE and d.rule == "[defaults] approval"
    assert (
        d.message == "queued by policy rule [defaults] approval: train jobs from 'bank' need manual approval"
    )


def test_auto_approval_from_the_defaults(tmp_path: Path) -> None:
    policy = Policy.load(workspace(tmp_path, '[defaults]\napproval = "auto"\n'), FEDERATION, "retailer")
    d = policy.check("bank", "train", ["x"])
    assert d.accepted and d.rule == "[defaults] approval"


def test_caps_are_parsed_and_exposed(policy: Policy) -> None:
    assert policy.caps_for("bank") == (
        Cap("bank", "month", epsilon=3.0, jobs=10),
        Cap("bank", "day", rows=100000),
    )
    assert policy.caps["shop"] == (Cap("shop", "year", delta=1e-6),)
    assert policy.caps_for("nobody") == ()


def test_safe_defaults_without_a_policy(tmp_path: Path) -> None:
    policy = Policy.load(workspace(tmp_path), FEDERATION, "retailer")
    for kind in ("psi", "train", "predict"):
        d = policy.check("bank", kind, ["any", "offered", "column"], {"key_bits": 1024})
        assert d.queued, d  # every kind needs approval; columns and key sizes are not restricted
        assert d.rule == "[defaults] approval"
    d = policy.check("mallory", "psi")
    assert d.refused and d.rule == "[defaults] partners"
    assert d.message == (
        "refused by policy rule [defaults] partners: 'mallory' is not a party of the federation "
        "(partners: bank, arbiter)"
    )
    assert policy.check("retailer", "psi").refused  # ourselves: not a partner
    assert Policy.load(workspace(tmp_path)).check("bank", "psi").refused  # no federation known: nobody
    assert policy.caps == {}


def test_a_policy_without_partner_tables_allows_the_federation(tmp_path: Path) -> None:
    policy = Policy.load(workspace(tmp_path, '[defaults]\nkinds = ["psi"]\n'), FEDERATION, "retailer")
    assert policy.check("bank", "psi").queued
    d = policy.check("bank", "train")
    assert d.refused and d.rule == "[defaults] kinds"
    assert policy.check("mallory", "psi").refused


def test_a_policy_table_in_party_toml(tmp_path: Path) -> None:
    extra = '[policy.partners.bank]\nkinds = ["psi"]\napproval = "auto"\n'
    policy = Policy.load(workspace(tmp_path, party_extra=extra), FEDERATION, "retailer")
    assert policy.check("bank", "psi").accepted
    assert policy.check("bank", "train").rule == "[partners.bank] kinds"
    assert policy.check("arbiter", "psi").refused


def test_a_policy_in_both_places_is_an_error(tmp_path: Path) -> None:
    ws = workspace(tmp_path, "[defaults]\n", party_extra="[policy.defaults]\n")
    with pytest.raises(ConfigError, match=r"party.toml: has a \[policy\] table and .*policy.toml exists too"):
        Policy.load(ws, FEDERATION)


BAD = [
    ("[default]\n", r"policy.toml: unknown key 'default' \(expected: defaults, partners, columns, caps\)"),
    ("[defaults]\nkind = ['psi']\n", r"policy.toml \[defaults\]: unknown key 'kind' \(expected: kinds"),
    ("[defaults]\ncolumns = {}\n", r"\[defaults\]: unknown key 'columns'"),
    (
        "[partners.bank]\nkinds = ['trian']\n",
        r"\[partners.bank\]: kinds: 'trian' is not one of the job kinds vfl knows",
    ),
    ("[partners.bank]\nkinds = 'psi'\n", r"\[partners.bank\]: 'kinds' must be a list"),
    ("[partners.bank]\napproval = 'yes'\n", r"\[partners.bank\]: approval must be \"manual\" or \"auto\""),
    ("[partners.bank]\napproval = { tarin = 'auto' }\n", r"approval: unknown job kind 'tarin'"),
    ("[partners.bank]\nkey_bits = [4096]\n", r"key_bits: 4096 is not one of the key sizes vfl knows"),
    ("[partners.bank]\nkey_bits = 2048\n", r"'key_bits' must be a list of key sizes"),
    ("[partners.bank]\ncolour = 1\n", r"\[partners.bank\]: unknown key 'colour'"),
    ("[partners]\nbank = 1\n", r"\[partners.bank\] must be a table"),
    ("[partners.bank.columns]\nstats = ['a']\n", r"\[partners.bank.columns\]: unknown key 'stats'"),
    ("[columns]\ntrain = 'age'\n", r"\[columns\]: 'train' must be a list of column names or \"\*\""),
    ("[columns]\nclustering = ['a']\n", r"\[columns\]: unknown key 'clustering'"),
    ("[caps.bank]\nperiod = 'fortnight'\njobs = 1\n", r"\[caps.bank\]: 'period' must be one of day"),
    ("[caps.bank]\nperiod = 'day'\nbudget = 1\n", r"\[caps.bank\]: unknown key 'budget'"),
    ("[caps.bank]\nperiod = 'day'\n", r"a cap needs at least one of epsilon"),
    ("[caps.bank]\nperiod = 'day'\nepsilon = -1\n", r"'epsilon' must be a number >= 0"),
    ("[[caps.bank]]\nperiod = 'day'\njobs = 1.5\n", r"\[caps.bank #1\]: 'jobs' must be an integer"),
    ("defaults = 3\n", r"\[defaults\] must be a table"),
    ("[defaults\n", r"is not valid TOML"),
]


@pytest.mark.parametrize(("text", "message"), BAD, ids=[b[0].split("\n")[0] for b in BAD])
def test_schema_errors_name_the_file_and_the_key(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as info:
        Policy.load(workspace(tmp_path, text), FEDERATION)
    assert "policy.toml" in str(info.value) and "\n" not in str(info.value)


def test_schema_errors_in_party_toml_name_the_policy_table(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"party.toml \[policy\]: unknown key 'defualts'"):
        Policy.load(workspace(tmp_path, party_extra="[policy.defualts]\n"), FEDERATION)
    with pytest.raises(ConfigError, match=r"party.toml \[policy.partners.bank\]: unknown key 'kind'"):
        Policy.load(workspace(tmp_path, party_extra="[policy.partners.bank]\nkind = []\n"), FEDERATION)
