"""Failure paths that must not leak, hang or lie (issue: error privacy, re-runs, barriers).

Every party runs in its own thread over the in-process network, through the same job registry as
``vfl run``; each party's own outcome (result or error) is collected, and the transcript is read.
"""

from __future__ import annotations

import shutil
import threading
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from tests.faults.helpers import guest_frame, host_frame
from vfl.crypto import generate_keypair
from vfl.errors import DataError, PeerAbortedError, ProtocolError, VflError
from vfl.options import TrainOptions
from vfl.parties.common import Job
from vfl.parties.jobs import RoleContext, run_role
from vfl.transport import LocalNetwork, decode_table
from vfl.transport.channel import ABORT_TAG

N = 150
OPTIONS = dict(key_bits=1024, max_epochs=2, batch_size=64, tol=0.0)


@pytest.fixture(scope="module")
def keypair():
    return generate_keypair(1024)


def run_job(job: Job, datas: dict, *, out: Path | None = None, keypair=None, models=None, timeout=60.0):
    """Run every party of ``job``; return ``(outcomes, network)`` where an outcome is a result or an error."""
    network = LocalNetwork(list(job.parties))
    outcomes: dict[str, object] = {}

    def body(party: str) -> None:
        ctx = RoleContext(
            job.session(network.channel(party), first_contact=10.0), job, datas.get(party),
            label="y" if party == "guest" else None, output_dir=out / party if out else None,
            resumable=out is not None, keypair=keypair if party == "arbiter" else None,
            model=(models or {}).get(party),
        )  # fmt: skip
        try:
            outcomes[party] = run_role(job.kind, ctx)
        except Exception as exc:  # noqa: BLE001 - an internal failure is an outcome too
            outcomes[party] = exc

    threads = [threading.Thread(target=body, args=(p,), daemon=True) for p in job.parties]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout)
    hung = [p for p, t in zip(job.parties, threads, strict=True) if t.is_alive()]
    assert not hung, f"parties still waiting after {timeout} s: {hung}"
    return outcomes, network


def train_job(**options) -> Job:
    return Job("job", "guest", ("host1",), "arbiter", options=TrainOptions(**{**OPTIONS, **options}))


def test_an_abort_carries_a_reason_code_never_the_error_text():
    # A guest label with three values: the guest's error names them; the host learns only the code.
    guest = guest_frame(N).assign(y=np.arange(N) % 3)
    outcomes, network = run_job(train_job(), {"guest": guest, "host1": host_frame(N)})
    assert isinstance(outcomes["guest"], DataError) and "found 3: 0, 1, 2" in str(outcomes["guest"])
    for party in ("host1", "arbiter"):
        error = outcomes[party]
        assert isinstance(error, PeerAbortedError) and error.peer_code == "data", error
        assert str(error).startswith("party 'guest' stopped the job (data:")
        assert "0, 1, 2" not in str(error) and "label" not in str(error)
    aborts = [decode_table(m.payload) for m in network.transcript if m.tag == ABORT_TAG]
    assert aborts and all(t.column_names == ["code"] for t in aborts)
    # The label check runs before the PSI: not one id point left the guest.
    assert not [m for m in network.transcript if m.tag.startswith("psi/")]


def test_host_column_names_and_cardinalities_do_not_reach_the_guest():
    host = host_frame(N).assign(secret_segment=[f"segment-{i % 40}" for i in range(N)])
    outcomes, network = run_job(train_job(), {"guest": guest_frame(N), "host1": host})
    assert isinstance(outcomes["host1"], DataError) and "secret_segment" in str(outcomes["host1"])
    assert isinstance(outcomes["guest"], PeerAbortedError)
    for message in network.transcript:
        if message.receiver == "guest":
            assert b"secret_segment" not in message.payload and b"40 distinct" not in message.payload
    assert "secret_segment" not in str(outcomes["guest"])


def test_a_small_intersection_stops_before_any_label_or_feature_step():
    host = host_frame(N).assign(id=[f"c{i:04d}" if i < 30 else f"other{i}" for i in range(N)])
    outcomes, network = run_job(train_job(), {"guest": guest_frame(N), "host1": host})
    for party in ("guest", "host1"):
        assert isinstance(outcomes[party], (DataError, PeerAbortedError)), outcomes[party]
    own = [e for e in outcomes.values() if isinstance(e, DataError)]
    assert own and all("share 30 ids, fewer than the job's minimum of 100" in str(e) for e in own)
    # Nothing derived from labels or features crossed: no held-out split, no training message.
    assert not [m for m in network.transcript if m.tag.startswith(("split/", "lr/"))]


def test_min_intersection_is_configurable_down_to_its_floor():
    with pytest.raises(VflError, match="min_intersection"):
        TrainOptions(min_intersection=5)
    host = host_frame(N).assign(id=[f"c{i:04d}" if i < 60 else f"other{i}" for i in range(N)])
    outcomes, _ = run_job(
        train_job(min_intersection=50, batch_size=0), {"guest": guest_frame(N), "host1": host}
    )
    assert not isinstance(outcomes["guest"], Exception), outcomes["guest"]


def test_a_rerun_after_a_failure_past_psi_does_not_hang(tmp_path, keypair):
    """Guest and host keep their alignment from a failed run; the arbiter starts fresh: all start afresh."""
    datas = {"guest": guest_frame(N), "host1": host_frame(N)}
    broken = (
        keypair[0],
        None,
    )  # the arbiter fails at its first decryption, after the data parties saved state
    outcomes, _ = run_job(train_job(), datas, out=tmp_path, keypair=broken)
    assert all(isinstance(o, Exception) for o in outcomes.values())
    assert (tmp_path / "guest" / "state" / "alignment.npz").exists()
    shutil.rmtree(tmp_path / "arbiter", ignore_errors=True)  # a fresh arbiter (another machine, say)
    outcomes, _ = run_job(train_job(), datas, out=tmp_path, keypair=keypair)
    assert not any(isinstance(o, Exception) for o in outcomes.values()), outcomes
    clean, _ = run_job(train_job(), datas, keypair=keypair)
    np.testing.assert_allclose(
        outcomes["guest"].result.shard.weight_vector, clean["guest"].result.shard.weight_vector, rtol=1e-9
    )
    assert not (tmp_path / "guest" / "state").exists()


def test_a_failure_during_scoring_reaches_every_party_and_none_reports_success(keypair):
    datas = {"guest": guest_frame(N), "host1": host_frame(N)}
    trained, _ = run_job(train_job(), datas, keypair=keypair)
    models = {p: trained[p].result.shard for p in ("guest", "host1")}
    predict = Job("p", "guest", ("host1",), "arbiter", kind="predict", model="job")
    # The guest's new data has text where the model expects numbers: it fails after the PSI.
    broken = {"guest": guest_frame(N).assign(a="n/a"), "host1": host_frame(N)}
    outcomes, _ = run_job(predict, broken, models=models, timeout=30)
    assert isinstance(outcomes["guest"], DataError)
    assert isinstance(outcomes["host1"], ProtocolError), "the host reported success while the guest failed"


def test_scores_keep_the_input_order_and_the_ids_exactly_as_written(tmp_path, keypair):
    from vfl.data import load_table

    guest = guest_frame(N).assign(id=[f"{i:06d}" for i in range(N)])
    host = host_frame(N).assign(id=[f"{i:06d}" for i in range(N)]).sample(frac=1.0, random_state=1)
    guest.to_csv(tmp_path / "g.csv", index=False)
    loaded = load_table(tmp_path / "g.csv", id_column="id")
    assert loaded["id"].iloc[7] == "000007"  # leading zeros kept
    outcomes, _ = run_job(
        train_job(), {"guest": loaded, "host1": host}, out=tmp_path / "out", keypair=keypair
    )
    scores = pd.read_csv(tmp_path / "out" / "guest" / "scores.csv", dtype={"id": str})
    assert scores["id"].tolist() == guest["id"].tolist()


def test_parties_that_disagree_on_predict_options_refuse_before_scoring(keypair):
    datas = {"guest": guest_frame(N), "host1": host_frame(N), "host2": host_frame(N, seed=2)}
    job = Job("t", "guest", ("host1", "host2"), "arbiter", options=TrainOptions(**OPTIONS))
    trained, _ = run_job(job, datas, keypair=keypair)
    models = {p: trained[p].result.shard for p in ("guest", "host1", "host2")}
    network = LocalNetwork(["guest", "host1", "host2"])
    outcomes: dict[str, object] = {}

    def body(party: str, reveal: str) -> None:
        predict = Job("p", "guest", ("host1", "host2"), kind="predict", model="t", reveal=reveal)
        ctx = RoleContext(
            predict.session(network.channel(party), first_contact=10.0),
            predict,
            datas[party],
            model=models[party],
        )
        try:
            outcomes[party] = run_role("predict", ctx)
        except VflError as exc:
            outcomes[party] = exc

    reveals = {"guest": "sum", "host1": "sum", "host2": "partial"}  # masks that would not cancel
    threads = [threading.Thread(target=body, args=(p, r), daemon=True) for p, r in reveals.items()]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert all(isinstance(o, VflError) for o in outcomes.values()), outcomes
    assert "predict.reveal" in str(outcomes["host2"])
    assert not [m for m in network.transcript if m.tag.startswith(("psi/", "predict/"))]
