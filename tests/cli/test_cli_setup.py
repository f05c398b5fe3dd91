"""``vfl init`` and ``vfl federation add/show/check``: through typer's runner and a real subprocess.

``federation check`` runs against real Flight inboxes (mutual TLS on 127.0.0.1) opened from the
workspaces the CLI created, so the whole path from ``vfl init`` to a probed peer is exercised.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner
from vfl.parties.network import open_channel, peers_by_role

from vfl.cli import app
from vfl.config import Federation, PartyConfig, PeerCard
from vfl.transport.flight import FlightChannel, FlightSettings

ROOT = Path(__file__).resolve().parents[2]
ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
FAST = FlightSettings(connect_deadline=2.0, initial_backoff=0.05, max_backoff=0.5, probe_timeout=1.0)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run(*args: object) -> tuple[int, str, str]:
    """Run ``vfl ARGS`` in-process; return (exit code, stdout, stderr) without colour codes."""
    result = CliRunner().invoke(app, [str(a) for a in args])
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result.exit_code, ANSI.sub("", result.stdout), ANSI.sub("", result.stderr)


def row(out: str, party: str) -> list[str]:
    """The cells of the table row whose first cell is ``party`` (boxed or space-separated tables)."""
    for line in out.splitlines():
        cells = [c.strip() for c in re.split(r"│|\s{2,}", line.strip()) if c.strip()]
        if cells and cells[0] == party:
            return cells
    raise AssertionError(f"no row for {party!r} in:\n{out}")


def assert_one_line_error(code: int, out: str, err: str, *fragments: str) -> str:
    """A user mistake: non-zero exit, exactly one 'error:' line on stderr naming ``fragments``, no traceback."""
    assert code != 0
    assert "Traceback" not in out + err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("error: "), err
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    return lines[0]


def init(ws: Path, party_id: str, role: str, *extra: object, port: int | None = None) -> tuple[int, str, str]:
    return run(
        "init", ws, "--id", party_id, "--role", role, "--listen", f"127.0.0.1:{port or free_port()}", *extra
    )


@pytest.fixture(scope="module")
def fed(tmp_path_factory, fate: Path) -> dict[str, Path]:
    """Workspaces bank (guest), shop (host), arb (arbiter) and their federation file, made by the CLI."""
    base = tmp_path_factory.mktemp("fed")
    ws = {"bank": base / "bank", "shop": base / "shop", "arb": base / "arb"}
    assert (
        init(ws["bank"], "bank", "guest", "--data", fate / "breast_hetero_guest.csv", "--label-column", "y")[
            0
        ]
        == 0
    )
    assert (
        init(ws["shop"], "shop", "host", "--data", fate / "breast_hetero_host.csv", "--columns", "x0, x1,x2")[
            0
        ]
        == 0
    )
    # The arbiter is made by a real process: the console entry point as a user runs it.
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.run(
        [sys.executable, "-m", "vfl.cli", "init", str(ws["arb"]), "--id", "arb", "--role", "arbiter",
         "--listen", f"127.0.0.1:{free_port()}"],
        capture_output=True, text=True, env=env, timeout=60, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "arb" in proc.stdout and "sha256:" in proc.stdout and "card.toml" in proc.stdout
    file = base / "federation.toml"
    code, out, err = run("federation", "add", *(ws[p] / "card.toml" for p in ws), "--file", file)
    assert code == 0, err
    return {**ws, "file": file}


@pytest.fixture
def inboxes(fed) -> Iterator[dict[str, FlightChannel]]:
    """The host's and the arbiter's inboxes, listening on their workspaces' addresses."""
    federation = Federation.load(fed["file"])
    chans = {
        p: open_channel(PartyConfig.load(fed[p]), federation, job_id="serve", settings=FAST)
        for p in ("shop", "arb")
    }
    yield chans
    for ch in chans.values():
        ch.close()


# ---------------------------------------------------------------- init


def test_init_writes_workspaces_for_every_role(fed, fate):
    bank = PartyConfig.load(fed["bank"])
    assert (bank.role, bank.label_column, bank.id_column) == ("guest", "y", "id")
    assert bank.data == (fate / "breast_hetero_guest.csv").resolve() and bank.data.is_absolute()
    shop = PartyConfig.load(fed["shop"])
    assert shop.role == "host" and shop.columns == ["x0", "x1", "x2"] and shop.label_column is None
    arb = PartyConfig.load(fed["arb"])
    assert arb.role == "arbiter" and arb.data is None
    for party in (bank, shop, arb):
        assert party.key.stat().st_mode & 0o077 == 0, "the private key must be private"
        assert party.certificate.exists() and party.output_dir.is_dir()
        card = PeerCard.load(party.workspace / "card.toml")
        assert (card.id, card.role, card.address) == (party.id, party.role, party.listen)
        assert "BEGIN CERTIFICATE" in card.certificate


def test_init_prints_the_card(tmp_path, fate):
    code, out, _ = init(tmp_path / "w", "bank", "guest", "--data", fate / "breast_hetero_guest.csv",
                        "--label-column", "y", port=7470)  # fmt: skip
    assert code == 0
    card = PeerCard.load(tmp_path / "w" / "card.toml")
    flat = re.sub(r"[\s│]+", "", out)  # the fingerprint may wrap inside the panel
    assert "bank" in out and "guest" in out and "127.0.0.1:7470" in out
    assert card.fingerprint in flat and "card.toml" in out


def test_init_advertise_is_the_card_address(tmp_path, fate):
    code, _, err = run("init", tmp_path / "w", "--id", "shop", "--role", "host", "--data", fate / "breast_hetero_host.csv",
                       "--listen", "0.0.0.0:7471", "--advertise", "10.1.2.3:7471")  # fmt: skip
    assert code == 0, err
    assert PeerCard.load(tmp_path / "w" / "card.toml").address == "10.1.2.3:7471"
    assert PartyConfig.load(tmp_path / "w").listen == "0.0.0.0:7471"


def test_init_force_replaces_the_identity(tmp_path):
    ws = tmp_path / "w"
    assert init(ws, "arb", "arbiter")[0] == 0
    before = PeerCard.load(ws / "card.toml").fingerprint
    assert_one_line_error(*init(ws, "arb", "arbiter"), str(ws), "already a workspace", "--force")
    assert PeerCard.load(ws / "card.toml").fingerprint == before
    assert init(ws, "arb", "arbiter", "--force")[0] == 0
    assert PeerCard.load(ws / "card.toml").fingerprint != before


@pytest.mark.parametrize(
    ("case", "fragments"),
    [
        ("missing data", ["nope.csv", "does not exist"]),
        ("wrong id column", ["no id column 'ident'", "breast_hetero_host.csv", "x19"]),
        ("guest without label", ["guest", "--label-column"]),
        ("guest with wrong label", ["no label column 'label'", "id, y, x0"]),
        ("host without data", ["host needs its data", "--data"]),
        ("arbiter with data", ["arbiter holds no data", "--data"]),
        ("unknown column", ["'x99'", "--columns", "x0"]),
        ("bad listen", ["--listen", "'localhost'", "HOST:PORT"]),
        ("wildcard without advertise", ["--advertise"]),
        ("bad id", ["--id", "spaces"]),
    ],
)
def test_init_rejects_bad_input_in_one_line(tmp_path, fate, case, fragments):
    host_csv, guest_csv = fate / "breast_hetero_host.csv", fate / "breast_hetero_guest.csv"
    ws = tmp_path / "w"
    args = {
        "missing data": ["--id", "s", "--role", "host", "--data", fate / "nope.csv", "--listen", "127.0.0.1:7471"],
        "wrong id column": ["--id", "s", "--role", "host", "--data", host_csv, "--id-column", "ident",
                            "--listen", "127.0.0.1:7471"],
        "guest without label": ["--id", "g", "--role", "guest", "--data", guest_csv, "--listen", "127.0.0.1:7471"],
        "guest with wrong label": ["--id", "g", "--role", "guest", "--data", guest_csv, "--label-column", "label",
                                   "--listen", "127.0.0.1:7471"],
        "host without data": ["--id", "s", "--role", "host", "--listen", "127.0.0.1:7471"],
        "arbiter with data": ["--id", "a", "--role", "arbiter", "--data", host_csv, "--listen", "127.0.0.1:7471"],
        "unknown column": ["--id", "s", "--role", "host", "--data", host_csv, "--columns", "x0,x99",
                           "--listen", "127.0.0.1:7471"],
        "bad listen": ["--id", "a", "--role", "arbiter", "--listen", "localhost"],
        "wildcard without advertise": ["--id", "a", "--role", "arbiter", "--listen", "0.0.0.0:7471"],
        "bad id": ["--id", "my bank", "--role", "arbiter", "--listen", "127.0.0.1:7471"],
    }[case]  # fmt: skip
    assert_one_line_error(*run("init", ws, *args), *fragments)
    assert not ws.exists(), "a rejected init must not leave a half-made workspace"


# ---------------------------------------------------------------- federation add / show


def test_federation_add_and_show(fed, tmp_path):
    federation = Federation.load(fed["file"])
    assert peers_by_role(federation) == {"guest": ["bank"], "host": ["shop"], "arbiter": ["arb"]}
    code, out, _ = run("federation", "show", "--file", fed["file"])
    assert code == 0
    for party, role in (("bank", "guest"), ("shop", "host"), ("arb", "arbiter")):
        assert row(out, party)[1] == role
    # adding to a missing file creates it; adding the same card again replaces it
    file = tmp_path / "f.toml"
    assert run("federation", "add", fed["bank"] / "card.toml", "--file", file)[0] == 0
    assert (
        run("federation", "add", fed["bank"] / "card.toml", fed["shop"] / "card.toml", "--file", file)[0] == 0
    )
    assert [p.id for p in Federation.load(file).parties] == ["bank", "shop"]


def test_federation_add_rejects_a_damaged_card(fed, tmp_path):
    text = (fed["shop"] / "card.toml").read_text()
    damaged = tmp_path / "damaged.toml"
    damaged.write_text(text.replace("MII", "MIX", 1))
    file = tmp_path / "f.toml"
    assert_one_line_error(*run("federation", "add", damaged, "--file", file), "damaged.toml", "shop")
    assert not file.exists()
    repinned = tmp_path / "repinned.toml"
    fp = PeerCard.load(fed["shop"] / "card.toml").fingerprint
    repinned.write_text(text.replace(fp, "sha256:" + "0" * 64))
    assert_one_line_error(*run("federation", "add", repinned, "--file", file), "repinned.toml", "fingerprint")
    garbage = tmp_path / "garbage.toml"
    garbage.write_text("this is not toml\n")
    assert_one_line_error(
        *run("federation", "add", garbage, "--file", file), "garbage.toml", "not valid TOML"
    )
    assert_one_line_error(*run("federation", "show", "--file", file), "does not exist", "vfl federation add")


def test_federation_refuses_a_second_guest(fed, tmp_path, fate):
    ws = tmp_path / "g2"
    assert (
        init(ws, "bank2", "guest", "--data", fate / "breast_hetero_guest.csv", "--label-column", "y")[0] == 0
    )
    file = tmp_path / "f.toml"
    shutil.copy(fed["file"], file)
    assert_one_line_error(*run("federation", "add", ws / "card.toml", "--file", file), "one guest")


# ---------------------------------------------------------------- federation check


def test_check_reports_every_peer_ok(fed, inboxes):
    code, out, err = run("federation", "check", "--party", fed["bank"], "--file", fed["file"], "--timeout", 2)
    assert code == 0, out + err
    for party in ("shop", "arb"):
        assert row(out, party)[-3:] == ["yes", "matches", "ok"], out


def test_check_uses_the_workspace_federation_by_default(fed, inboxes, tmp_path):
    ws = tmp_path / "bank"
    shutil.copytree(fed["bank"], ws)
    shutil.copy(fed["file"], ws / "federation.toml")
    code, out, err = run("federation", "check", "--party", ws)
    assert code == 0, out + err


def test_check_reports_a_peer_that_is_down(fed, inboxes):
    inboxes["arb"].close()
    code, out, err = run("federation", "check", "--party", fed["bank"], "--file", fed["file"], "--timeout", 1)
    assert_one_line_error(code, out, err, "1 of 2", "arb")
    assert row(out, "shop")[-1] == "ok"
    assert row(out, "arb")[-3:] == ["no", "-", "down"]
    assert "not reachable" in out


def test_check_reports_a_peer_with_another_certificate(fed, inboxes, tmp_path, fate):
    # A second 'shop' identity: its card pins a certificate the running shop does not present.
    other = tmp_path / "shop2"
    assert init(other, "shop", "host", "--data", fate / "breast_hetero_host.csv")[0] == 0
    card = PeerCard.load(other / "card.toml")
    real = PeerCard.load(fed["shop"] / "card.toml")
    file = tmp_path / "f.toml"
    shutil.copy(fed["file"], file)
    (other / "card.toml").write_text(
        PeerCard(card.id, card.role, real.address, card.fingerprint, card.certificate).to_toml()
    )
    assert run("federation", "add", other / "card.toml", "--file", file)[0] == 0
    code, out, err = run("federation", "check", "--party", fed["bank"], "--file", file, "--timeout", 1)
    assert_one_line_error(code, out, err, "1 of 2", "shop")

    assert row(out, "shop")[-3:] == ["yes", "MISMATCH", "wrong certificate"]
    assert real.fingerprint in out.replace("\n", "")  # what it presented is explained below the table


def test_check_reports_a_peer_that_does_not_pin_us(fed, tmp_path, fate):
    # The arbiter runs with a federation that pins another certificate for 'bank'.
    impostor = tmp_path / "bank2"
    assert (
        init(impostor, "bank", "guest", "--data", fate / "breast_hetero_guest.csv", "--label-column", "y")[0]
        == 0
    )
    federation = Federation.load(fed["file"])
    federation.add(PeerCard.load(impostor / "card.toml"))
    with open_channel(PartyConfig.load(fed["arb"]), federation, job_id="serve", settings=FAST):
        code, out, err = run(
            "federation", "check", "--party", fed["bank"], "--file", fed["file"], "--timeout", 1
        )
    assert_one_line_error(code, out, err, "failed the check", "arb")
    assert row(out, "arb")[-3:] == ["yes", "matches", "does not pin us"]


def test_check_refuses_a_stale_own_card(fed, tmp_path, fate):
    other = tmp_path / "bank2"
    assert (
        init(other, "bank", "guest", "--data", fate / "breast_hetero_guest.csv", "--label-column", "y")[0]
        == 0
    )
    file = tmp_path / "f.toml"
    shutil.copy(fed["file"], file)
    assert run("federation", "add", other / "card.toml", "--file", file)[0] == 0
    new = PeerCard.load(other / "card.toml").fingerprint
    old = PeerCard.load(fed["bank"] / "card.toml").fingerprint
    assert_one_line_error(
        *run("federation", "check", "--party", fed["bank"], "--file", file),
        f"pins {new} for 'bank'",
        f"certificate is {old}",
        "vfl federation add",
    )


def test_check_refuses_an_unknown_party(fed, tmp_path):
    ws = tmp_path / "outsider"
    assert init(ws, "outsider", "arbiter")[0] == 0
    assert_one_line_error(
        *run("federation", "check", "--party", ws, "--file", fed["file"]),
        "'outsider' is not in",
        "bank, shop, arb",
    )
    assert_one_line_error(
        *run("federation", "check", "--party", tmp_path / "nowhere"), "does not exist", "vfl init"
    )


# ---------------------------------------------------------------- the error policy


def test_debug_shows_the_traceback(tmp_path):
    code, out, err = run(
        "--debug", "init", tmp_path / "w", "--id", "a", "--role", "arbiter", "--listen", "bad"
    )
    assert code != 0 and "Traceback" in err and "error: --listen" in err


def test_ctrl_c_exits_130_with_one_line(tmp_path, monkeypatch):
    import vfl.cli.workspace as workspace

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(workspace, "create_workspace", interrupted)
    code, out, err = run(
        "init", tmp_path / "w", "--id", "a", "--role", "arbiter", "--listen", "127.0.0.1:7470"
    )
    assert code == 130 and err.strip() == "interrupted" and "Traceback" not in out + err


def test_a_real_process_prints_one_line_and_no_traceback(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    env.pop("VFL_DEBUG", None)
    proc = subprocess.run(
        [sys.executable, "-m", "vfl.cli", "federation", "show", "--file", str(tmp_path / "missing.toml")],
        capture_output=True, text=True, env=env, timeout=60, check=False,
    )  # fmt: skip
    assert_one_line_error(
        proc.returncode, ANSI.sub("", proc.stdout), ANSI.sub("", proc.stderr), "missing.toml"
    )
