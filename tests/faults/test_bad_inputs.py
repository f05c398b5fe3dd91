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


def wrong_id_column(fed: Fed, _mp) -> Callable:
    edit_party(fed, "guest", id_column="customer_id")
    return run_guest(fed)


def wrong_label_column(fed: Fed, _mp) -> Callable:
    edit_party(fed, "guest", label_column="converted")
    return run_guest(fed)


def _guest_file(fed: Fed, name: str, content: bytes) -> Callable:
    path = fed.base / "data" / name
    path.write_bytes(content)
    edit_party(fed, "guest", data=path)
    return run_guest(fed)


def empty_csv(fed: Fed, _mp) -> Callable:
    return _guest_file(fed, "empty.csv", b"")


def header_only_csv(fed: Fed, _mp) -> Callable:
    return _guest_file(fed, "header.csv", b"id,y,a,b\n")


def ragged_csv(fed: Fed, _mp) -> Callable:
    return _guest_file(fed, "ragged.csv", b"id,y,a\nc1,1,0.5\nc2,0,0.1,9,9,9\n")


def corrupt_parquet(fed: Fed, _mp) -> Callable:
    good = fed.base / "data" / "good.parquet"
    guest_frame().to_parquet(good)
    damaged = good.read_bytes()
    return _guest_file(fed, "guest.parquet", damaged[: len(damaged) // 2] + b"PAR1")


def unknown_extension(fed: Fed, _mp) -> Callable:
    return _guest_file(fed, "guest.xlsx", (fed.base / "data" / "guest.csv").read_bytes())


def load_unknown_extension(fed: Fed, _mp) -> Callable:
    path = fed.base / "data" / "guest.json"
    path.write_text("{}")
    return lambda: load_table(path)


def offered_column_missing(fed: Fed, _mp) -> Callable:
    edit_party(fed, "guest", columns=["a", "income"])
    return run_guest(fed)


def job_invalid_toml(fed: Fed, _mp) -> Callable:
    fed.write_job('[job]\nid = "job-1"\nkind = train\n')
    return run_guest(fed)


def job_unknown_section(fed: Fed, _mp) -> Callable:
    fed.write_job(job_text("[model]\nlayers = 3\n"))
    return run_guest(fed)


def job_unknown_train_option(fed: Fed, _mp) -> Callable:
    fed.write_job(job_text("[train]\nlerning_rate = 0.1\n"))
    return run_guest(fed)


def job_bad_optimizer(fed: Fed, _mp) -> Callable:
    fed.write_job(job_text('[train]\noptimizer = "adagrad"\n'))
    return run_guest(fed)


def job_negative_learning_rate(fed: Fed, _mp) -> Callable:
    fed.write_job(job_text("[train]\nlearning_rate = -0.1\n"))
    return run_guest(fed)


def job_text_learning_rate(fed: Fed, _mp) -> Callable:
    fed.write_job(job_text('[train]\nlearning_rate = "fast"\n'))
    return lambda: JobConfig.load(fed.job)


def job_bad_key_bits(fed: Fed, _mp) -> Callable:
    fed.write_job(job_text("[train]\nkey_bits = 1000\n"))
    return run_guest(fed)


def job_missing_kind(fed: Fed, _mp) -> Callable:
    fed.write_job('[job]\nid = "job-1"\n')
    return run_guest(fed)


def job_unknown_kind(fed: Fed, _mp) -> Callable:
    fed.write_job('[job]\nid = "job-1"\nkind = "deep-learning"\n')
    return run_guest(fed)


def job_id_escapes_output_dir(fed: Fed, _mp) -> Callable:
    fed.write_job('[job]\nid = "../../elsewhere"\nkind = "psi"\n')
    return run_guest(fed)


def job_unknown_psi_option(fed: Fed, _mp) -> Callable:
    fed.write_job(job_text("[psi]\nlowercase = true\n"))
    return run_guest(fed)


def missing_federation_file(fed: Fed, _mp) -> Callable:
    (fed.ws["guest"] / "federation.toml").unlink()
    return run_guest(fed)


def wrong_role(fed: Fed, _mp) -> Callable:
    edit_party(fed, "guest", role="host", label_column=None)
    return run_guest(fed)


def unknown_peer(fed: Fed, _mp) -> Callable:
    edit_party(fed, "guest", id="mallory")
    return run_guest(fed)


def own_certificate_expired(fed: Fed, mp) -> Callable:
    tls = fed.ws["guest"] / "tls"
    expired_identity(tls / "key.pem", tls / "cert.pem", "guest", mp)
    federation = fed.federation()
    federation.add(card_of(fed, "guest"))  # pinned correctly: the only problem is the date
    fed.save_federation(federation)
    return run_guest(fed)


def peer_certificate_expired(fed: Fed, mp) -> Callable:
    tls = fed.ws["host"] / "tls"
    expired_identity(tls / "key.pem", tls / "cert.pem", "host", mp)
    federation = fed.federation()
    federation.add(card_of(fed, "host"))
    fed.save_federation(federation)
    return run_guest(fed)


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
    setup: Callable[[Fed, pytest.MonkeyPatch], Callable[[], Any]]
    error: type[VflError]
    match: str


LIBRARY = [
    Case("missing data file", missing_data_file, DataError, r"data file .*nowhere\.csv does not exist; check the path"),
    Case("data path is a directory", data_path_is_a_directory, DataError, r"data path .* is a directory"),
    Case("wrong id column", wrong_id_column, DataError, r"has no column 'customer_id'; columns present: id, y, a, b"),
    Case("wrong label column", wrong_label_column, DataError, r"has no column 'converted'"),
    Case("empty CSV", empty_csv, DataError, r"empty\.csv is empty; it needs a header row"),
    Case("header-only CSV", header_only_csv, DataError, r"header\.csv has no data rows"),
    Case("ragged CSV", ragged_csv, DataError, r"ragged\.csv could not be read: .*Expected 3 fields"),
    Case("corrupt Parquet", corrupt_parquet, DataError, r"guest\.parquet could not be read"),
    Case("unknown file extension", unknown_extension, DataError, r"has an unknown type '\.xlsx'; use \.csv or \.parquet"),
    Case("unknown extension (load_table)", load_unknown_extension, DataError, r"unknown type '\.json'"),
    Case("offered column missing", offered_column_missing, DataError, r"has no column 'income'"),
    Case("job: invalid TOML", job_invalid_toml, ConfigError, r"job file .*job\.toml is not valid TOML"),
    Case("job: unknown section", job_unknown_section, ConfigError, r"unknown section\(s\) model; expected job, psi"),
    Case("job: unknown train option", job_unknown_train_option, ConfigError, r"\[train\]: unknown job option\(s\) lerning_rate"),
    Case("job: optimizer adagrad", job_bad_optimizer, ConfigError, r"\[train\]: job option optimizer must be one of sgd, momentum, adam, got 'adagrad'"),
    Case("job: negative learning rate", job_negative_learning_rate, ConfigError, r"\[train\]: job option learning_rate must be a float in \(0, inf\), got -0\.1"),
    Case("job: learning rate is text", job_text_learning_rate, ConfigError, r"\[train\]: job option learning_rate must be a float in \(0, inf\), got 'fast'"),
    Case("job: key_bits 1000", job_bad_key_bits, ConfigError, r"job option key_bits must be one of 1024, 2048, 3072, got 1000"),
    Case("job: missing [job] kind", job_missing_kind, ConfigError, r"job\.toml \[job\]: missing key kind; it must be one of psi, train, predict"),
    Case("job: unknown kind", job_unknown_kind, ConfigError, r"kind must be one of psi, train, predict(, [a-z-]+)*, got 'deep-learning'"),
    Case("job: id escapes the output folder", job_id_escapes_output_dir, ConfigError, r"\[job\]: key id must be a folder name .*\(it names the job's output folder\), got '\.\./\.\./elsewhere'"),
    Case("job: unknown PSI option", job_unknown_psi_option, ConfigError, r"\[psi\]: unknown PSI option\(s\) lowercase"),
    Case("missing federation file", missing_federation_file, ConfigError, r"federation file .*federation\.toml does not exist; create it with 'vfl federation add CARD\.\.\.'"),
    Case("wrong role", wrong_role, ConfigError, r"party 'guest' is a host in party\.toml but a guest in the federation file"),
    Case("unknown peer", unknown_peer, ConfigError, r"party 'mallory' is not in the federation \(known: guest, host, arbiter\); add its card"),
    Case("own certificate expired", own_certificate_expired, KeyFileError, r"certificate .*cert\.pem for 'guest' expired on \d{4}-\d\d-\d\d; create a new identity"),
    Case("peer certificate expired", peer_certificate_expired, KeyFileError, r"certificate of peer 'host' for 'host' expired on"),
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
