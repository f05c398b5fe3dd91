"""A table of user mistakes: each must fail with the exact error class, a message naming the problem, and
leave every file of the federation (workspaces, outputs, job and data files) exactly as it was.

Three kinds of rows:

* ``LIBRARY``: ``parties.runner.run_party`` (what ``vfl run`` calls) or the loaders it uses, on a real
  three-party federation on disk; the rows that fail after the inbox opened use short transport
  deadlines so the failing party's best-effort abort notice gives up quickly.
* ``SIMULATED``: bad data *contents* that are only detected after alignment (duplicate ids, text,
  NaN, inf, no overlap, tiny batches) through ``vfl.simulate``, which runs the real party code.
* ``CLI``: the command line in-process through typer's runner: exit code 2 and exactly one
  ``error: ...`` line on stderr, never a traceback.

The rows that need real processes (a port in use for ``vfl run``, and guest, host and arbiter running
job files that differ in one option) are in ``test_bad_inputs_processes.py``.
"""

from __future__ import annotations

import os
import re
import socket
import stat
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

import vfl
from tests.faults.helpers import (
    FAST,
    Fed,
    card_of,
    expired_identity,
    guest_frame,
    host_frame,
    make_federation,
    snapshot,
)
from vfl.cli import app
from vfl.config import JobConfig
from vfl.data import load_table
from vfl.errors import (
    ConfigError,
    DataError,
    KeyFileError,
    OutputError,
    TransportError,
    VflError,
)
from vfl.parties.runner import run_party
from vfl.transport.tls import create_identity

ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
# A library row's setup: prepares the federation, returns the call that must fail.
Setup = Callable[[Fed, pytest.MonkeyPatch], Callable[[], Any]]


@pytest.fixture
def fed(tmp_path) -> Fed:
    return make_federation(tmp_path / "fed")


def run_guest(fed: Fed, **kwargs: Any) -> Callable[[], Any]:
    return lambda: run_party(fed.ws["guest"], fed.job, settings=FAST, workers=1, **kwargs)


def edit_party(fed: Fed, name: str, **changes: Any) -> None:
    party = fed.party(name)
    for key, value in changes.items():
        setattr(party, key, value)
    party.save()


def job_text(body: str) -> str:
    return '[job]\nid = "job-1"\nkind = "train"\n\n' + body


# --------------------------------------------------------------------------- library rows


def missing_data_file(fed: Fed, _mp) -> Callable:
    edit_party(fed, "guest", data=fed.base / "data" / "nowhere.csv")
    return run_guest(fed)


def data_path_is_a_directory(fed: Fed, _mp) -> Callable:
    edit_party(fed, "guest", data=fed.base / "data")
    return run_guest(fed)


def _guest_file(fed: Fed, name: str, content: bytes) -> Callable:
    path = fed.base / "data" / name
    path.write_bytes(content)
    edit_party(fed, "guest", data=path)
    return run_guest(fed)


def guest_runs_file(name: str, content: bytes) -> Setup:
    """The guest runs the job on a data file ``name`` holding ``content``."""
    return lambda fed, _mp: _guest_file(fed, name, content)


def guest_runs_after_edit(**changes: Any) -> Setup:
    """The guest runs the job after these changes to its party.toml."""

    def setup(fed: Fed, _mp: pytest.MonkeyPatch) -> Callable[[], Any]:
        edit_party(fed, "guest", **changes)
        return run_guest(fed)

    return setup


def guest_runs_job(text: str) -> Setup:
    """The guest runs the job file ``text``."""

    def setup(fed: Fed, _mp: pytest.MonkeyPatch) -> Callable[[], Any]:
        fed.write_job(text)
        return run_guest(fed)

    return setup


def unknown_extension(fed: Fed, _mp) -> Callable:
    return _guest_file(fed, "guest.xlsx", (fed.base / "data" / "guest.csv").read_bytes())


def corrupt_parquet(fed: Fed, _mp) -> Callable:
    good = fed.base / "data" / "good.parquet"
    guest_frame().to_parquet(good)
    damaged = good.read_bytes()
    return _guest_file(fed, "guest.parquet", damaged[: len(damaged) // 2] + b"PAR1")


def load_unknown_extension(fed: Fed, _mp) -> Callable:
    path = fed.base / "data" / "guest.json"
    path.write_text("{}")
    return lambda: load_table(path)


def job_text_learning_rate(fed: Fed, _mp) -> Callable:
    fed.write_job(job_text('[train]\nlearning_rate = "fast"\n'))
    return lambda: JobConfig.load(fed.job)


def missing_federation_file(fed: Fed, _mp) -> Callable:
    (fed.ws["guest"] / "federation.toml").unlink()
    return run_guest(fed)


def certificate_expired(name: str) -> Setup:
    """The guest runs the job while party ``name``'s certificate has expired (pinned correctly: the only
    problem is the date)."""

    def setup(fed: Fed, mp: pytest.MonkeyPatch) -> Callable[[], Any]:
        tls = fed.ws[name] / "tls"
        expired_identity(tls / "key.pem", tls / "cert.pem", name, mp)
        federation = fed.federation()
        federation.add(card_of(fed, name))
        fed.save_federation(federation)
        return run_guest(fed)

    return setup


def own_certificate_not_pinned(fed: Fed, _mp) -> Callable:
    tls = fed.ws["guest"] / "tls"  # 'vfl init --force' made a new identity; partners pin the old one
    create_identity("guest", tls / "key.pem", tls / "cert.pem", overwrite=True)
    return run_guest(fed)


def peer_certificate_not_pinned(fed: Fed, _mp) -> Callable:
    federation = fed.federation()
    host = fed.cards["host"]
    federation.add(
        type(host)(host.id, host.role, host.address, fed.cards["arbiter"].fingerprint, host.certificate)
    )
    fed.save_federation(federation, "guest")
    return run_guest(fed)


def port_in_use(fed: Fed, _mp) -> Callable:
    host, port = fed.party("guest").listen.rsplit(":", 1)
    sock = socket.socket()
    sock.bind((host, int(port)))
    sock.listen()

    def call() -> Any:
        try:
            return run_party(fed.ws["guest"], fed.job, settings=FAST, workers=1)
        finally:
            sock.close()

    return call


def output_dir_under_a_file(fed: Fed, _mp) -> Callable:
    blocker = fed.ws["guest"] / "results"
    blocker.write_text("a file where a folder should be\n")
    edit_party(fed, "guest", output_dir=blocker / "out")
    return run_guest(fed)


@dataclass(frozen=True)
class Case:
    name: str
    setup: Setup
    error: type[VflError]
    match: str


LIBRARY = [
    Case("missing data file", missing_data_file, DataError, r"data file .*nowhere\.csv does not exist; check the path"),
    Case("data path is a directory", data_path_is_a_directory, DataError, r"data path .* is a directory"),
    Case("wrong id column", guest_runs_after_edit(id_column="customer_id"), DataError, r"has no column 'customer_id'; columns present: id, y, a, b"),
    Case("wrong label column", guest_runs_after_edit(label_column="converted"), DataError, r"has no column 'converted'"),
    Case("empty CSV", guest_runs_file("empty.csv", b""), DataError, r"empty\.csv is empty; it needs a header row"),
    Case("header-only CSV", guest_runs_file("header.csv", b"id,y,a,b\n"), DataError, r"header\.csv has no data rows"),
    Case("ragged CSV", guest_runs_file("ragged.csv", b"id,y,a\nc1,1,0.5\nc2,0,0.1,9,9,9\n"), DataError, r"ragged\.csv could not be read: .*Expected 3 fields"),
    Case("corrupt Parquet", corrupt_parquet, DataError, r"guest\.parquet could not be read"),
    Case("unknown file extension", unknown_extension, DataError, r"has an unknown type '\.xlsx'; use \.csv or \.parquet"),
    Case("unknown extension (load_table)", load_unknown_extension, DataError, r"unknown type '\.json'"),
    Case("offered column missing", guest_runs_after_edit(columns=["a", "income"]), DataError, r"has no column 'income'"),
    Case("job: invalid TOML", guest_runs_job('[job]\nid = "job-1"\nkind = train\n'), ConfigError, r"job file .*job\.toml is not valid TOML"),
    Case("job: unknown section", guest_runs_job(job_text("[model]\nlayers = 3\n")), ConfigError, r"unknown section\(s\) model; expected job, psi"),
    Case("job: unknown train option", guest_runs_job(job_text("[train]\nlerning_rate = 0.1\n")), ConfigError, r"\[train\]: unknown job option\(s\) lerning_rate"),
    Case("job: optimizer adagrad", guest_runs_job(job_text('[train]\noptimizer = "adagrad"\n')), ConfigError, r"\[train\]: job option optimizer must be one of sgd, momentum, adam, got 'adagrad'"),
    Case("job: negative learning rate", guest_runs_job(job_text("[train]\nlearning_rate = -0.1\n")), ConfigError, r"\[train\]: job option learning_rate must be a float in \(0, inf\), got -0\.1"),
    Case("job: learning rate is text", job_text_learning_rate, ConfigError, r"\[train\]: job option learning_rate must be a float in \(0, inf\), got 'fast'"),
    Case("job: key_bits 1000", guest_runs_job(job_text("[train]\nkey_bits = 1000\n")), ConfigError, r"job option key_bits must be one of 1024, 2048, 3072, got 1000"),
    Case("job: missing [job] kind", guest_runs_job('[job]\nid = "job-1"\n'), ConfigError, r"job\.toml \[job\]: missing key kind; it must be one of psi, train, predict"),
    Case("job: unknown kind", guest_runs_job('[job]\nid = "job-1"\nkind = "deep-learning"\n'), ConfigError, r"kind must be one of psi, train, predict(, [a-z-]+)*, got 'deep-learning'"),
    Case("job: id escapes the output folder", guest_runs_job('[job]\nid = "../../elsewhere"\nkind = "psi"\n'), ConfigError, r"\[job\]: key id must be a folder name .*\(it names the job's output folder\), got '\.\./\.\./elsewhere'"),
    Case("job: unknown PSI option", guest_runs_job(job_text("[psi]\nlowercase = true\n")), ConfigError, r"\[psi\]: unknown PSI option\(s\) lowercase"),
    Case("missing federation file", missing_federation_file, ConfigError, r"federation file .*federation\.toml does not exist; create it with 'vfl federation add CARD\.\.\.'"),
    Case("wrong role", guest_runs_after_edit(role="host", label_column=None), ConfigError, r"party 'guest' is a host in party\.toml but a guest in the federation file"),
    Case("unknown peer", guest_runs_after_edit(id="mallory"), ConfigError, r"party 'mallory' is not in the federation \(known: guest, host, arbiter\); add its card"),
    Case("own certificate expired", certificate_expired("guest"), KeyFileError, r"certificate .*cert\.pem for 'guest' expired on \d{4}-\d\d-\d\d; create a new identity"),
    Case("peer certificate expired", certificate_expired("host"), KeyFileError, r"certificate of peer 'host' for 'host' expired on"),
    Case("own certificate not the pinned one", own_certificate_not_pinned, KeyFileError, r"pins sha256:\w+ for 'guest' but this workspace's certificate is sha256:\w+"),
    Case("peer certificate not the pinned one", peer_certificate_not_pinned, KeyFileError, r"peer 'host' has fingerprint sha256:\w+, but the federation pins sha256:\w+"),
    Case("port in use", port_in_use, TransportError, r"party 'guest' cannot listen on 127\.0\.0\.1:\d+ \(Address already in use\)"),
    Case("output dir below a file", output_dir_under_a_file, OutputError, r"output directory .*results/out/job-1 is not writable: .*results is a file"),
]  # fmt: skip


@pytest.mark.parametrize("case", LIBRARY, ids=[c.name for c in LIBRARY])
def test_library_mistake(fed, monkeypatch, case):
    call = case.setup(fed, monkeypatch)
    before = snapshot(fed.base)
    with pytest.raises(case.error, match=case.match) as info:
        call()
    assert type(info.value) is case.error
    assert "\n" not in str(info.value)
    assert snapshot(fed.base) == before, "a failed run created or changed files"
    assert not (fed.base.parent / "elsewhere").exists()


def test_unwritable_output_dir_by_permissions(fed):
    out = fed.ws["guest"] / "out"
    out.chmod(0o500)
    try:
        if os.access(out, os.W_OK):
            pytest.skip("running as root: permissions do not stop writes (see 'output dir below a file')")
        before = snapshot(fed.base)
        with pytest.raises(OutputError, match=r"output directory .*out/job-1 is not writable"):
            run_guest(fed)()
        assert snapshot(fed.base) == before
    finally:
        out.chmod(stat.S_IRWXU)


# --------------------------------------------------------------------------- simulated rows (bad contents)


def _with(frame: pd.DataFrame, **columns: Any) -> pd.DataFrame:
    return frame.assign(**columns)


G, H = guest_frame(), host_frame()
SIMULATED = [
    ("duplicate ids", pd.concat([G, G.iloc[:3]]), H, {}, DataError, r"id column 'id' has 3 duplicate ids .* e\.g\. 'c0000'"),
    ("null ids", _with(G, id=[None, *G["id"][1:]]), H, {}, DataError, r"1 of 120 rows have no id .* e\.g\. row 0"),
    ("high-cardinality text column", _with(G, city=[f"town {i}" for i in range(len(G))]), H, {}, DataError, r"text column 'city' has \d+ distinct values \(at most 20\)"),
    ("NaN-only column", _with(G, empty=np.nan), H, {}, DataError, r"column 'empty' has no values"),
    ("+inf values", _with(G, a=np.where(np.arange(len(G)) == 3, np.inf, G["a"])), H, {}, DataError, r"column 'a' has 1 infinite values"),
    ("-inf values at a host", G, _with(H, d=np.where(np.arange(len(H)) < 2, -np.inf, H["d"])), {}, DataError, r"column 'd' has 2 infinite values"),
    ("values like 1e308", _with(G, a=np.where(np.arange(len(G)) == 3, 1e308, G["a"])), H, {}, DataError, r"column 'a' has values up to 1e\+308, too large to standardize"),
    ("label not binary", _with(G, y=np.arange(len(G)) % 3), H, {}, DataError, r"label column 'y' must have exactly two distinct values, found 3"),
    ("no feature columns", G[["id", "y"]], H, {}, DataError, r"no feature columns besides the id and the label"),
    ("empty intersection", G, _with(H, id=[f"z{i}" for i in range(len(H))]), {}, DataError, r"the parties share no ids: the private set intersection is empty"),
    ("batch size too small", G, H, {"batch_size": 8}, ConfigError, r"batch_size 8 is too small for party 'guest' with 3 columns.* above 12"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("guest", "host", "options", "error", "match"),
    [row[1:] for row in SIMULATED],
    ids=[row[0] for row in SIMULATED],
)
def test_simulated_mistake(tmp_path, guest, host, options, error, match):
    out = tmp_path / "out"
    with pytest.raises(error, match=match) as info:
        vfl.simulate(guest, host, id="id", label="y", key_bits=1024, max_epochs=1, output_dir=out, **options)
    assert type(info.value) is error and "\n" not in str(info.value)
    assert not out.exists(), "a failed job wrote outputs"


def test_simulate_option_of_the_wrong_type(tmp_path):
    with pytest.raises(ConfigError, match="learning_rate"):
        vfl.simulate(G, H, id="id", label="y", key_bits=1024, learning_rate="fast", output_dir=tmp_path / "o")


# --------------------------------------------------------------------------- command line rows


def cli(*args: object) -> tuple[int, str, str]:
    result = CliRunner().invoke(app, [str(a) for a in args])
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result.exit_code, ANSI.sub("", result.stdout), ANSI.sub("", result.stderr)


def cli_run_bad_job(fed: Fed) -> list:
    fed.write_job(job_text('[train]\noptimizer = "adagrad"\n'))
    return ["run", fed.job, "--party", fed.ws["guest"], "--quiet"]


def cli_run_wrong_label(fed: Fed) -> list:
    edit_party(fed, "guest", label_column="converted")
    return ["run", fed.job, "--party", fed.ws["guest"], "--quiet"]


def cli_run_data_override_missing(fed: Fed) -> list:
    return ["run", fed.job, "--party", fed.ws["guest"], "--data", fed.base / "none.parquet", "--quiet"]


def cli_run_missing_job(fed: Fed) -> list:
    return ["run", fed.base / "nope.toml", "--party", fed.ws["guest"]]


def cli_init_bad_listen(fed: Fed) -> list:
    return ["init", fed.base / "new", "--id", "bank", "--role", "host", "--listen", "localhost", "--data", fed.base / "data" / "host.csv"]  # fmt: skip


def cli_init_existing(fed: Fed) -> list:
    return ["init", fed.ws["host"], "--id", "host", "--role", "host", "--listen", "127.0.0.1:7470", "--data", fed.base / "data" / "host.csv"]  # fmt: skip


def cli_init_guest_without_label(fed: Fed) -> list:
    return ["init", fed.base / "new", "--id", "shop", "--role", "guest", "--listen", "127.0.0.1:7470", "--data", fed.base / "data" / "guest.csv"]  # fmt: skip


def cli_init_wrong_id_column(fed: Fed) -> list:
    return ["init", fed.base / "new", "--id", "shop", "--role", "host", "--listen", "127.0.0.1:7470", "--data", fed.base / "data" / "host.csv", "--id-column", "cust"]  # fmt: skip


def cli_federation_add_damaged_card(fed: Fed) -> list:
    card = fed.base / "bad-card.toml"
    text = (fed.ws["host"] / "card.toml").read_text()
    card.write_text(text.replace("MII", "MIJ", 1))
    return ["federation", "add", card, "--file", fed.ws["guest"] / "federation.toml"]


def cli_inspect_not_vfl(fed: Fed) -> list:
    path = fed.base / "other.json"
    path.write_text('{"hello": 1}')
    return ["inspect", path]


def cli_report_at_host(fed: Fed) -> list:
    return ["report", "--party", fed.ws["host"], "--job", "job-1"]


CLI = [
    ("run: bad option value", cli_run_bad_job, r"\[train\]: job option optimizer must be one of"),
    ("run: wrong label column", cli_run_wrong_label, r"has no column 'converted'"),
    ("run: --data file missing", cli_run_data_override_missing, r"none\.parquet does not exist"),
    ("run: job file missing", cli_run_missing_job, r"job file .*nope\.toml does not exist"),
    ("init: bad --listen", cli_init_bad_listen, r"--listen: address 'localhost' must look like HOST:PORT"),
    ("init: workspace exists", cli_init_existing, r"is already a workspace .* use --force"),
    ("init: guest without label", cli_init_guest_without_label, r"a guest holds the labels: give --label-column"),
    ("init: wrong --id-column", cli_init_wrong_id_column, r"has no id column 'cust'; its columns are: id, c, d"),
    ("federation add: damaged card", cli_federation_add_damaged_card, r"bad-card\.toml"),
    ("inspect: not a vfl file", cli_inspect_not_vfl, r"other\.json is not a vfl model shard, ledger or metrics file"),
    ("report: at a host", cli_report_at_host, r"only the guest has labels and metrics; 'host' is a host"),
]  # fmt: skip


@pytest.mark.parametrize(("setup", "match"), [c[1:] for c in CLI], ids=[c[0] for c in CLI])
def test_cli_mistake(fed, setup, match):
    args = setup(fed)
    before = snapshot(fed.base)
    code, out, err = cli(*args)
    assert code == 2, (code, out, err)
    assert "Traceback" not in out + err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert re.search(match, lines[0]), lines[0]
    assert snapshot(fed.base) == before, "a failed command created or changed files"
