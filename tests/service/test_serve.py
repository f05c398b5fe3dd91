"""``vfl serve`` end to end: real service processes on loopback mTLS, the guest's ``vfl submit``."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from tests.service.serving import (
    AUTO,
    Services,
    cli,
    job_file,
    saved_epoch,
    served_federation,
    start_vfl,
    state,
    vfl,
    wait_result,
    wait_state,
)
from vfl.model import ModelShard
from vfl.service.store import JobStore


def test_submit_approve_complete(tmp_path):
    fed = served_federation(tmp_path, policies={"host": '[partners.guest]\napproval = "manual"\n'})
    with Services(fed, ("host",), "--health-port", "0") as services:
        submit = start_vfl("submit", str(job_file(fed, "a1", "psi")), "--party", str(fed.ws["guest"]), "--quiet",
                           log=tmp_path / "submit.log")  # fmt: skip
        wait_state(fed, "host", "a1", "awaiting-approval")
        assert state(fed, "guest", "a1") == "proposed"
        approve = cli("jobs", "approve", "a1", "--party", str(fed.ws["host"]))
        assert approve.returncode == 0, approve.stderr
        assert submit.wait(timeout=120) == 0, (tmp_path / "submit.log").read_text()
        assert "waiting for approval at 'host'" in (tmp_path / "submit.log").read_text()
        for party in ("guest", "host"):
            wait_state(fed, party, "a1", "completed")
            assert (fed.ws[party] / "out" / "a1" / "ledger.json").exists()
        shown = cli("jobs", "show", "a1", "--party", str(fed.ws["host"]))
        assert "completed" in shown.stdout and "intersection 120" in shown.stdout
        logs = cli("jobs", "logs", "a1", "--party", str(fed.ws["host"]))
        assert logs.returncode == 0 and "job a1 completed" in logs.stdout
        assert cli("health", "--party", str(fed.ws["host"])).returncode == 0
        services.stop()  # SIGTERM: graceful, exit code 0
    assert "service stopped" in (fed.ws["host"] / "logs" / "vfl.log").read_text()
    assert cli("health", "--party", str(fed.ws["host"])).returncode == 1


def test_policy_refusals_name_their_rule_and_the_federation_check_shows_the_service(tmp_path):
    fed = served_federation(
        tmp_path,
        policies={
            "host": (
                '[partners.guest]\nkinds = ["psi", "train"]\napproval = "auto"\n[columns]\ntrain = ["c"]\n'
                '[[caps.guest]]\nperiod = "day"\njobs = 1\n'
            ),
            "arbiter": '[partners.someone-else]\napproval = "auto"\n',
        },
    )
    with Services(fed):
        check = cli("federation", "check", "--party", str(fed.ws["guest"]))
        assert check.returncode == 0, check.stdout + check.stderr
        services = check.stdout.split("party services", 1)[1].splitlines()
        host_row = next(line for line in services if line.strip().startswith("host"))
        arbiter_row = next(line for line in services if line.strip().startswith("arbiter"))
        assert "vfl 0." in host_row and host_row.rstrip().endswith("psi (auto)")  # train: column 'd' refused
        assert "vfl 0." in arbiter_row and arbiter_row.rstrip().endswith(
            "nothing"
        )  # guest is not its partner
        cases = {
            "p-kind": ("predict", {"predict": {"model": "m"}}, "host", "[partners.guest] kinds"),
            "t-cols": (
                "train",
                {},
                "host",
                "[columns] train: this party offers columns its policy does not allow",
            ),
            "psi-1": ("psi", {}, "host", None),  # accepted: the first job from guest today (cap 1)
            "psi-2": ("psi", {}, "host", "[caps.guest] jobs"),
        }
        for job_id, (kind, sections, party, rule) in cases.items():
            result = cli(
                "submit", str(job_file(fed, job_id, kind, **sections)), "--party", str(fed.ws["guest"]), "-q"
            )
            if rule is None:
                assert result.returncode == 0, result.stderr
                continue
            assert result.returncode != 0
            lines = [line for line in result.stderr.splitlines() if line.strip()]
            assert len(lines) == 1 and lines[0].startswith(f"error: party '{party}' refused job"), (
                result.stderr
            )
            assert rule in lines[0], lines[0]
            assert state(fed, party, job_id) == "refused"
            assert "'c'" not in lines[0] and "'d'" not in lines[0]  # the host's column names stay there
            assert state(fed, "guest", job_id) == "refused"
            assert not (fed.ws[party] / "out" / job_id).exists()
        shown = cli("jobs", "show", "t-cols", "--party", str(fed.ws["host"]))
        assert "column(s) 'd' may not be used by train jobs" in shown.stdout  # the full reason, kept locally
        # the wrong partner: the arbiter lists only another partner (a train job reaches it once the host agrees)
        (fed.ws["host"] / "policy.toml").write_text('[defaults]\napproval = "auto"\n')
        result = cli("submit", str(job_file(fed, "t-arb")), "--party", str(fed.ws["guest"]), "-q")
        assert result.returncode != 0
        assert "party 'arbiter' refused job 't-arb'" in result.stderr and "[partners]" in result.stderr
        assert "'guest' is not a listed partner" in result.stderr
        assert state(fed, "host", "t-arb") == "cancelled"  # withdrawn where it had been accepted


def test_a_proposal_from_an_unpinned_certificate_is_refused_and_recorded(tmp_path):
    from cryptography.hazmat.primitives.asymmetric import ec

    from vfl.config import PartyConfig
    from vfl.errors import TransportError
    from vfl.parties.network import load_party_identity, to_peers
    from vfl.parties.runner import federation_digest
    from vfl.parties.service import members_of
    from vfl.protocols import service as control
    from vfl.protocols.session import Session
    from vfl.service.store import JobStore
    from vfl.transport.rpc import SERVICE_JOB, RpcChannel
    from vfl.transport.tls import create_identity, fingerprint, load_identity

    fed = served_federation(tmp_path)
    federation = fed.federation()
    digest = federation_digest(federation)
    toml = job_file(fed, "x1", "psi").read_text()
    members = members_of(federation)
    with Services(fed, ("host",)):
        # 1. a certificate nobody pinned, claiming to be the guest: refused before any other work, recorded
        create_identity("guest", tmp_path / "evil.key", tmp_path / "evil.crt", hosts=["127.0.0.1"])
        evil = load_identity(tmp_path / "evil.key", tmp_path / "evil.crt", party_id="guest")
        channel = RpcChannel(evil, to_peers(federation), connect_deadline=2.0)
        with channel, pytest.raises(TransportError, match="is not pinned by this party"):
            control.propose(Session(channel, members, job_id=SERVICE_JOB), "host", job="x1", kind="psi",
                            job_toml=toml, federation=digest)  # fmt: skip
        # 2. the guest's certificate, but a proposal signed with a key nobody pinned: refused, recorded
        real = load_party_identity(PartyConfig.load(fed.ws["guest"]))
        forged = dataclasses.replace(real, private_key=ec.generate_private_key(ec.SECP256R1()))
        channel = RpcChannel(forged, to_peers(federation))
        with channel, pytest.raises(TransportError, match="not signed by the key pinned for 'guest'"):
            control.propose(Session(channel, members, job_id=SERVICE_JOB), "host", job="x1", kind="psi",
                            job_toml=toml, federation=digest)  # fmt: skip
        with JobStore.for_workspace(fed.ws["host"]) as store:
            second, first = store.refused_calls()[:2]
        assert (first.claimed, first.fingerprint) == ("guest", fingerprint(evil.certificate))
        assert first.tag.startswith("service/") and first.tag.endswith("/propose")
        assert "is not pinned" in first.reason
        assert (second.claimed, second.fingerprint) == ("guest", real.fingerprint)
        assert "not signed by the key pinned" in second.reason
        log = (fed.ws["host"] / "logs" / "vfl.log").read_text()
        assert "refused a call claimed from 'guest' (service/" in log and fingerprint(evil.certificate) in log
        shown = cli("jobs", "refused", "--party", str(fed.ws["host"]))
        assert shown.returncode == 0 and fingerprint(evil.certificate)[:20] in shown.stdout, shown.stderr
        listed = vfl("jobs", "list", "--party", str(fed.ws["host"]))
        assert "x1" not in listed.stdout  # no job was recorded from either


def wait_epoch(fed, job: str, epoch: int, submit: subprocess.Popen, log: Path) -> None:
    """Wait until the host has saved ``epoch`` epochs of ``job`` (while ``vfl submit`` still runs)."""
    deadline = time.monotonic() + 120
    while saved_epoch(fed, "host", job) < epoch:
        assert time.monotonic() < deadline and submit.poll() is None, log.read_text()
        time.sleep(0.05)


@pytest.mark.slow
@pytest.mark.parametrize("canceller", ["guest", "host"])
def test_cancel_stops_the_job_everywhere_and_leaves_no_outputs(tmp_path, canceller):
    fed = served_federation(tmp_path)
    with Services(fed):
        job = job_file(fed, "long", train={"max_epochs": 2000, "tol": 0.0})
        submit = start_vfl(
            "submit", str(job), "--party", str(fed.ws["guest"]), "-q", log=tmp_path / "submit.log"
        )
        wait_epoch(fed, "long", 1, submit, tmp_path / "submit.log")
        result = cli("jobs", "cancel", "long", "--party", str(fed.ws[canceller]))
        assert result.returncode == 0, result.stderr
        assert submit.wait(timeout=60) != 0
        assert "cancelled" in (tmp_path / "submit.log").read_text()
        for party in ("guest", "host", "arbiter"):
            wait_state(fed, party, "long", "cancelled", timeout=60)
            assert wait_result(fed, party, "long")["state"] == "cancelled"
            time.sleep(0.5)  # the service settles the record after its worker ends
            out = fed.ws[party] / "out" / "long"
            assert not (out / "model.json").exists() and not (out / "scores.csv").exists()
            assert not (out / "state").exists()


@pytest.mark.slow
def test_a_killed_serving_host_resumes_the_job_to_the_same_model(tmp_path):
    fed = served_federation(tmp_path)
    options = {"max_epochs": 6, "tol": 0.0}
    with Services(fed) as services:
        ref = vfl("submit", str(job_file(fed, "ref", train=options)), "--party", str(fed.ws["guest"]), "-q")
        assert ref.returncode == 0, ref.stderr
        submit = start_vfl("submit", str(job_file(fed, "k1", train=options)), "--party", str(fed.ws["guest"]),
                           "-q", log=tmp_path / "submit.log")  # fmt: skip
        wait_epoch(fed, "k1", 2, submit, tmp_path / "submit.log")
        services.kill("host")  # the service and its worker, as a crash would
        assert not (fed.ws["host"] / "out" / "k1" / "model.json").exists()
        services.start("host")
        assert submit.wait(timeout=240) == 0, (tmp_path / "submit.log").read_text()
        wait_state(fed, "host", "k1", "completed", timeout=60)
    for party in ("guest", "host"):
        a = ModelShard.load(fed.ws[party] / "out" / "ref" / "model.json").weight_vector
        b = ModelShard.load(fed.ws[party] / "out" / "k1" / "model.json").weight_vector
        np.testing.assert_allclose(b, a, rtol=1e-9, atol=1e-12)
    ledger = json.loads((fed.ws["host"] / "out" / "k1" / "ledger.json").read_text())
    assert any("resynchronized" in note for note in ledger["notes"])


@pytest.mark.slow
def test_scoring_new_ids_through_the_services_equals_vfl_predict(tmp_path):
    fed = served_federation(tmp_path)
    guest = pd.read_csv(fed.base / "data" / "guest.csv")
    new = guest.sample(40, random_state=3)
    (fed.base / "ids.csv").write_text(new[["id"]].to_csv(index=False))  # ids only: columns from guest data
    with Services(fed, ("guest", "host", "arbiter")):  # the guest serves too: its own roles beside it
        assert (
            vfl(
                "submit",
                str(
                    job_file(fed, "m"),
                ),
                "--party",
                str(fed.ws["guest"]),
                "-q",
            ).returncode
            == 0
        )
        scored = vfl("score", str(fed.base / "ids.csv"), "--party", str(fed.ws["guest"]), "--model", "m",
                     "--output", str(fed.base / "served.csv"), "-q")  # fmt: skip
        assert scored.returncode == 0, scored.stderr
    # the same ids with 'vfl predict' at every data party (the per-job path, no service)
    new.to_csv(fed.base / "new-guest.csv", index=False)
    procs = [
        start_vfl("predict", "--party", str(fed.ws[p]), "--model", "m", "--job-id", "pm", "-q",
                  *(["--data", str(fed.base / "new-guest.csv")] if p == "guest" else []), log=tmp_path / f"{p}.log")
        for p in ("guest", "host")
    ]  # fmt: skip
    for proc, p in zip(procs, ("guest", "host"), strict=True):
        assert proc.wait(timeout=120) == 0, (tmp_path / f"{p}.log").read_text()
    served = pd.read_csv(fed.base / "served.csv").set_index("id").sort_index()
    direct = pd.read_csv(fed.ws["guest"] / "out" / "pm" / "scores.csv").set_index("id").sort_index()
    assert len(served) == 40
    np.testing.assert_allclose(
        served["score"].to_numpy(), direct.loc[served.index, "score"].to_numpy(), rtol=1e-9
    )


def test_a_serving_guest_takes_a_hosts_proposal_submits_itself_and_rows_caps_hold(tmp_path):
    """The guest serves too: a host proposes to it; its own 'vfl submit' runs beside its service; the
    host's rows cap counts the intersection of the completed job and refuses the next one."""
    fed = served_federation(
        tmp_path, policies={"host": AUTO + '[[caps.guest]]\nperiod = "day"\nrows = 150\n'}
    )
    (fed.ws["guest"] / "policy.toml").write_text(AUTO)
    with Services(fed, ("guest", "host")):
        by_host = cli("submit", str(job_file(fed, "h1", "psi")), "--party", str(fed.ws["host"]), "-q")
        assert by_host.returncode == 0, by_host.stderr
        wait_state(fed, "guest", "h1", "completed")
        with JobStore.for_workspace(fed.ws["guest"]) as store:
            assert store.get("h1").proposer == "host" and store.get("h1").rows == 120  # its intersection
        by_guest = cli("submit", str(job_file(fed, "g1", "psi")), "--party", str(fed.ws["guest"]), "-q")
        assert by_guest.returncode == 0, by_guest.stderr
        wait_state(fed, "host", "g1", "completed")
        with JobStore.for_workspace(fed.ws["host"]) as store:
            assert store.get("g1").rows == 120  # charged the intersection, not the bound
        over = cli("submit", str(job_file(fed, "g2", "psi")), "--party", str(fed.ws["guest"]), "-q")
        assert over.returncode != 0
        lines = [line for line in over.stderr.splitlines() if line.strip()]
        assert len(lines) == 1 and "refused by policy rule [caps.guest] rows" in lines[0], over.stderr
        assert "has used 120 of 150 this day" in lines[0]
        assert state(fed, "host", "g2") == "refused" and state(fed, "guest", "g2") == "refused"


def test_the_federation_check_tells_a_service_that_does_not_pin_us(tmp_path):
    """The service's TLS accepts any caller; its refusal of our certificate shows in the check."""
    from tests.faults.helpers import card_of
    from vfl.transport.tls import create_identity

    fed = served_federation(tmp_path)
    with Services(fed, ("host",)):
        guest = fed.ws["guest"]
        create_identity("guest", guest / "tls" / "key.pem", guest / "tls" / "cert.pem", hosts=["127.0.0.1"],
                        overwrite=True)  # fmt: skip
        mine = fed.federation("guest")
        mine.add(card_of(fed, "guest"))  # the guest pins its new certificate, the host still the old one
        fed.save_federation(mine, "guest")
        check = cli("federation", "check", "--party", str(guest), "--timeout", "3")
        assert check.returncode != 0
        host_row = next(line for line in check.stdout.split("party services", 1)[1].splitlines()
                        if line.strip().startswith("host"))  # fmt: skip
        assert "does not pin us" in host_row
        assert "- host:" in check.stdout and "is not pinned by this party" in check.stdout
        with JobStore.for_workspace(fed.ws["host"]) as store:
            assert store.refused_calls()[0].fingerprint == card_of(fed, "guest").fingerprint
