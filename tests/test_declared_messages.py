"""Every message any protocol sends is declared: its tag matches a declaration, it goes from and to the
declared roles, and it carries exactly the declared fields (protocols/messages.py).

Each job kind runs over the in-process network; the captured transcript is checked message by message.
"""

from __future__ import annotations

import pandas as pd
import pytest

import vfl
from vfl.parties.common import Job
from vfl.parties.jobs import RoleContext, run_role
from vfl.parties.simulation import run_parties
from vfl.protocols.catalog import ALL_PROTOCOLS, find
from vfl.protocols.messages import Message, Protocol, learned_by, message
from vfl.transport import LocalNetwork, decode_table
from vfl.transport.channel import ABORT_TAG, NOTICE_PREFIX

RESERVED = (ABORT_TAG, NOTICE_PREFIX)


def assert_all_declared(network: LocalNetwork, job: Job) -> set[str]:
    """Check every captured message against its declaration; return the declared names seen."""
    members = job.members
    seen = set()
    for m in network.transcript:
        if m.tag == ABORT_TAG or m.tag.startswith(NOTICE_PREFIX):
            continue
        found = find(ALL_PROTOCOLS, m.tag)
        assert found is not None, f"undeclared message {m.tag} from {m.sender} to {m.receiver}"
        _, declared, _ = found
        assert members.role_of(m.sender) in declared.sender, (m.tag, m.sender)
        assert members.role_of(m.receiver) in declared.receiver, (m.tag, m.receiver)
        declared.check(decode_table(m.payload), peer=m.sender, tag=m.tag)  # raises if the fields differ
        seen.add(declared.name)
    return seen


@pytest.fixture(scope="module")
def frames(fate):
    guest = pd.read_csv(fate / "breast_hetero_guest.csv")
    host = pd.read_csv(fate / "breast_hetero_host.csv")
    half = host.columns[1:11]
    return guest, host[["id", *half]], host.drop(columns=list(half))


def _run(
    job: Job, datas: dict[str, pd.DataFrame | None], model_of=None, **extra
) -> tuple[LocalNetwork, dict]:
    network = LocalNetwork(list(job.parties))
    roles = {}
    for party in job.parties:
        session = job.session(network.channel(party))
        ctx = RoleContext(session, job, datas.get(party), label="y" if party == "guest" else None, **extra)
        if model_of is not None and party in model_of:
            ctx.model = model_of[party]
        roles[party] = lambda ctx=ctx: run_role(job.kind, ctx)
    return network, run_parties(network, roles)


def test_psi_train_and_predict_send_only_declared_messages(frames, keypair_1024):
    guest, host1, host2 = frames
    datas = {"guest": guest, "host1": host1, "host2": host2}
    psi_job = Job("psi-job", "guest", ("host1", "host2"), kind="psi")
    network, _ = _run(psi_job, datas)
    assert assert_all_declared(network, psi_job) >= {
        "session.agree",
        "psi.hello",
        "psi.result",
        "session.done",
    }

    result = vfl.simulate(
        guest,
        [host1, host2],
        id="id",
        label="y",
        key_bits=1024,
        keypair=keypair_1024,
        max_epochs=1,
        randomizer_stream="arbiter",
    )
    train_job = Job("t", "guest", ("host1", "host2"), "arbiter")
    seen = assert_all_declared(result.network, train_job)
    assert {"lr.u", "lr.d", "lr.masked", "lr.unmasked", "lr.control", "lr.stop", "predict.pair-seed"} <= seen
    assert "lr.randomizers" in seen  # the arbiter's randomizer stream (randomizer_stream = "arbiter")

    free = vfl.simulate(
        guest, [host1, host2], id="id", label="y", key_bits=1024, max_epochs=1, topology="arbiter-free"
    )
    free_job = Job("t", "guest", ("host1", "host2"), None)
    assert {"lr2.setup", "lr2.seed", "lr2.a", "lr2.u", "lr2.masked", "lr2.unmasked", "lr2.loss-masked",
            "lr2.loss-part", "lr2.stop"} <= assert_all_declared(free.network, free_job)  # fmt: skip

    predict_job = Job("p", "guest", ("host1", "host2"), "arbiter", kind="predict", model="t")
    network, outcome = _run(predict_job, datas, model_of=result.shards)
    assert "predict.partial" in assert_all_declared(network, predict_job)
    assert outcome["guest"].summary["rows"] == len(guest)


def test_a_mistyped_or_missing_field_is_a_protocol_error_naming_peer_tag_and_field():
    import pyarrow as pa

    from vfl.errors import ProtocolError
    from vfl.protocols.messages import INT, TEXT

    m = message("x.y", "x/{n}", "guest", "host", "a test", rows=1, count=INT, label=TEXT)
    with pytest.raises(ProtocolError, match=r"message 'x/1' from 'g' lacks the field 'label'"):
        m.check(pa.table({"count": [1]}), peer="g", tag="x/1")
    with pytest.raises(ProtocolError, match=r"field 'count' must be int64, got string"):
        m.check(pa.table({"count": ["1"], "label": ["a"]}), peer="g", tag="x/1")
    with pytest.raises(ProtocolError, match="undeclared field"):
        m.check(pa.table({"count": [1], "label": ["a"], "extra": [2.0]}), peer="g", tag="x/1")
    with pytest.raises(ProtocolError, match="must have 1 row"):
        m.check(pa.table({"count": [1, 2], "label": ["a", "b"]}), peer="g", tag="x/1")
    assert m.tag(n=3) == "x/3" and m.match("x/3") == {"n": "3"} and m.match("x/3/4") is None


def test_a_malformed_peer_message_fails_with_the_field_named_not_a_key_error(keypair_1024):
    """A peer that sends a setup record without its row count gets a ProtocolError at the arbiter."""
    import pyarrow as pa

    from vfl.errors import ProtocolError
    from vfl.options import TrainOptions
    from vfl.protocols import lr
    from vfl.protocols.session import Members, Session

    network = LocalNetwork(["guest", "host", "arbiter"])
    members = Members("guest", ("host",), "arbiter")
    arbiter = Session(network.channel("arbiter"), members, job_id="j")
    network.channel("guest").send("arbiter", "lr/setup", pa.table({"rows": [10]}))
    plan = lr.LrPlan("j", "guest", ("host",), "arbiter", TrainOptions())
    with pytest.raises(ProtocolError, match=r"message 'lr/setup' from 'guest' lacks the field 'n_rows'"):
        lr._Arbiter(arbiter, plan, None, None, None, {}).setup()


def test_ledgers_list_what_the_protocols_that_ran_reveal():
    from vfl.protocols.lr import LR
    from vfl.protocols.psi import PSI
    from vfl.protocols.session import SESSION

    psi_only, _ = learned_by([SESSION, PSI], "host")
    assert not any("gradient" in item for item in psi_only)
    training, never = learned_by([SESSION, PSI, LR], "host")
    assert any("its own gradient" in item for item in training) and "labels" in never
    arbiter, _ = learned_by([SESSION, PSI, LR], "arbiter")
    assert not any("intersection" in item for item in arbiter)  # the arbiter takes no part in PSI


def test_the_randomizer_stream_is_in_the_ledger_only_when_it_runs():
    from vfl.protocols.lr import LR, LR_STREAM
    from vfl.protocols.session import SESSION

    streamed, never = learned_by([SESSION, LR, LR_STREAM], "host")
    assert any("encryptions of zero" in item for item in streamed)
    assert "another party's randomness" in never
    assert not any("encryptions of zero" in item for item in learned_by([SESSION, LR], "host")[0])
    arbiter, arbiter_never = learned_by([SESSION, LR, LR_STREAM], "arbiter")
    assert not any("encryptions of zero" in item for item in arbiter)  # it sends them, receives none
    assert "any ciphertext it randomizes" in arbiter_never


def test_every_message_declaration_is_unique_and_has_roles():
    names = [m.name for p in ALL_PROTOCOLS for m in p.messages]
    assert len(names) == len(set(names))
    for protocol in ALL_PROTOCOLS:
        assert isinstance(protocol, Protocol)
        for m in protocol.messages:
            assert isinstance(m, Message) and m.sender and m.receiver and m.learns
    # Distinct templates never match the same tag (a tag names exactly one declared message).
    examples = {m.name: m.tag(**{p: "1" for p in m.parameters}) for p in ALL_PROTOCOLS for m in p.messages}
    for name, tag in examples.items():
        assert find(ALL_PROTOCOLS, tag)[1].name == name, tag


@pytest.fixture(scope="module")
def keypair_1024():
    from vfl.crypto import generate_keypair

    return generate_keypair(1024)


def test_the_service_control_calls_send_only_declared_messages(tmp_path):
    """propose / decision / start / cancel / status / report between a guest and a real PartyService."""
    from dataclasses import dataclass

    from tests.faults.helpers import make_federation
    from vfl.config import JobConfig
    from vfl.parties.runner import federation_digest
    from vfl.parties.service import PartyService, members_of
    from vfl.protocols import service as control
    from vfl.protocols.session import Session
    from vfl.transport.channel import Channel

    fed = make_federation(tmp_path)
    (fed.ws["host"] / "policy.toml").write_text('[defaults]\napproval = { psi = "manual", train = "auto" }\n')
    service = PartyService(fed.ws["host"])

    @dataclass
    class Captured:
        sender: str
        receiver: str
        tag: str
        payload: bytes

    transcript: list[Captured] = []

    class ToService(Channel):
        """The guest's side: every call goes to the service's handler, as over the RPC transport."""

        answers: dict = {}

        def _send_bytes(self, to, tag, payload):
            transcript.append(Captured(self.party, to, tag, payload))
            answer_tag, answer = service.handle(self.party, tag, payload)
            transcript.append(Captured(to, self.party, answer_tag, answer))
            self.answers[(to, answer_tag)] = answer

        def _recv_bytes(self, frm, tag, timeout):
            return self.answers.pop((frm, tag))

    members = members_of(fed.federation())
    guest = Session(ToService("guest"), members, job_id="vfl-service")
    digest = federation_digest(fed.federation())
    psi_toml = JobConfig(id="p1", kind="psi").to_toml()
    queued = control.propose(guest, "host", job="p1", kind="psi", job_toml=psi_toml, federation=digest)
    assert (queued.action, queued.state) == ("queue", "awaiting-approval") and queued.port > 0
    assert control.start(guest, "host", job="p1", addresses={}).state == "awaiting-approval"  # not approved
    kinds = control.status(guest, "host", job="p1").kinds
    assert {k: kinds[k] for k in ("psi", "train", "predict")} == {
        "psi": "manual",
        "train": "auto",
        "predict": "manual",
    }
    assert set(kinds.values()) <= {"manual", "auto"}
    assert control.cancel(guest, "host", job="p1", reason="test").state == "cancelled"
    refused = control.propose(guest, "host", job="p2", kind="psi", job_toml=psi_toml, federation=digest)
    assert refused.action == "refuse" and "differs from its job file" in refused.message
    service.store.close()

    seen = set()
    for m in transcript:
        found = find(ALL_PROTOCOLS, m.tag)
        assert found is not None, m.tag
        _, declared, _ = found
        assert (
            members.role_of(m.sender) in declared.sender and members.role_of(m.receiver) in declared.receiver
        )
        declared.check(decode_table(m.payload), peer=m.sender, tag=m.tag)
        seen.add(declared.name)
    assert seen == {f"service.{n}" for n in ("propose", "decision", "start", "cancel", "status", "report")}


def test_segment_job_sends_only_declared_messages(keypair_1024):
    """A segment job (guest + 2 hosts, one host sharing its means) through run_role."""
    from vfl.segmentation.options import SegmentOptions, SegmentPolicy
    from vfl.segmentation.synthetic import vertical_blobs

    data = vertical_blobs(600, [2, 2, 2], centers=3, seed=0)
    datas = {}
    for name, part in zip(("guest", "host1", "host2"), data.parts, strict=True):
        frame = pd.DataFrame(part, columns=[f"{name}_{j}" for j in range(part.shape[1])])
        frame.insert(0, "id", range(len(frame)))
        datas[name] = frame
    job = Job("s", "guest", ("host1", "host2"), kind="segment", segment=SegmentOptions(k=3, key_bits=1024))
    network = LocalNetwork(list(job.parties))
    roles = {}
    for party in job.parties:
        ctx = RoleContext(job.session(network.channel(party)), job, datas[party], keypair=keypair_1024)
        ctx.segment_policy = SegmentPolicy(share_means=party == "host2")
        roles[party] = lambda ctx=ctx: run_role("segment", ctx)
    outcome = run_parties(network, roles)
    seen = assert_all_declared(network, job)
    assert {
        "segment.policy",
        "segment.xt-rows",
        "segment.xt-reply",
        "segment.geometry",
        "segment.result",
    } <= seen
    assert "segment.means" in seen and "segment.label" not in seen
    assert outcome["guest"].summary["segments"] == 3


def test_an_audience_job_sends_only_declared_messages(keypair_1024):
    from vfl.analytics.options import AudienceJobOptions
    from vfl.datasets import marketing

    d = marketing(400, seed=2)
    options = AudienceJobOptions.from_dict(
        {
            # bank: 5 x 9 cells, the retailer's rows are cheaper and it encrypts; publisher: the host encrypts
            "segments": {
                "retailer": ["channel"],
                "bank": ["income_band", "products_held"],
                "publisher": ["interest_segment"],
            },
            "metrics": {"retailer": ["spend"], "bank": ["balance"]},
            "bounds": {"spend": [0, 300], "balance": [0, 20000]},
            "key_bits": 1024,
        }
    )
    job = Job("aud", "retailer", ("bank", "publisher"), kind="audience", audience=options)
    network = LocalNetwork(list(job.parties))
    roles = {}
    for party in job.parties:
        ctx = RoleContext(job.session(network.channel(party)), job, d[party], keypair=keypair_1024)
        roles[party] = lambda ctx=ctx: run_role("audience", ctx)
    outcome = run_parties(network, roles)
    seen = assert_all_declared(network, job)
    assert {"audience.cells", "audience.layout", "audience.rows", "audience.sealed", "audience.reply",
            "audience.guest-rows", "audience.guest-sealed", "audience.release", "psi.result",
            "session.public-key", "session.done"} <= seen  # fmt: skip
    assert set(outcome["retailer"].summary["overlap"]) == {
        "retailer ∩ bank",
        "retailer ∩ publisher",
        "all parties",
    }
