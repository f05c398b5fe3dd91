"""The Dask compute backend on a real ``distributed.LocalCluster`` (2 worker processes, 1 thread each).

The same chunk functions run on the local pool and on Dask, so every decrypted result, PSI
alignment and trained model is identical; key material is scattered once, not shipped per task;
a worker killed mid-epoch is retried; a wrong scheduler address is one line before any peer.
"""

from __future__ import annotations

import os
import signal
import socket
import threading
import time

import numpy as np
import pandas as pd
import pytest

import vfl
from vfl.compute import BackendSpec, DaskBackend, describe, open_backend, parse_backend
from vfl.crypto import (
    WorkerPool,
    decrypt,
    decrypt_packed,
    encrypt,
    generate_keypair,
    mask_and_pack,
    prepare_matrix,
    randomizers,
)
from vfl.errors import ConfigError
from vfl.parties.simulation import run_parties
from vfl.protocols.psi import run_guest, run_host
from vfl.psi import PsiOptions, ScalarMultiplier
from vfl.transport.local import LocalNetwork

distributed = pytest.importorskip("distributed")


@pytest.fixture(scope="module")
def cluster():
    with distributed.LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0", silence_logs=40
    ) as c:
        yield c


@pytest.fixture(scope="module")
def dask_url(cluster) -> str:
    return "dask://" + cluster.scheduler_address.removeprefix("tcp://")


@pytest.fixture()
def backend(dask_url, cluster):
    with open_backend(dask_url) as b:
        b.client.wait_for_workers(2, timeout=30)
        b.workers = 2
        yield b


@pytest.fixture(scope="module")
def keypair():
    return generate_keypair(1024)


# --- configuration --------------------------------------------------------------------------------


def test_backend_spec_parses_local_and_dask_and_names_bad_values():
    assert parse_backend("local") == BackendSpec("local")
    assert parse_backend(" dask://10.0.0.5:8786 ").address == "tcp://10.0.0.5:8786"
    assert parse_backend("dask://[::1]:8786").text == "dask://[::1]:8786"
    for bad in ("dask", "tcp://h:1", "dask://host", "dask://h:0", "dask://h:99999", "ray://h:1"):
        with pytest.raises(ConfigError) as info:
            parse_backend(bad, "party.toml [compute] backend")
        assert "party.toml [compute] backend" in str(info.value) and "\n" not in str(info.value)


def test_party_toml_compute_section(tmp_path):
    from tests.faults.helpers import make_federation
    from vfl.config import PartyConfig

    fed = make_federation(tmp_path / "fed")
    path = fed.ws["host"] / "party.toml"
    assert PartyConfig.load(fed.ws["host"]).compute == "local"
    path.write_text(path.read_text() + '\n[compute]\nbackend = "dask://127.0.0.1:8786"\nworkers = 3\n')
    party = PartyConfig.load(fed.ws["host"])
    assert (party.compute, party.compute_workers) == ("dask://127.0.0.1:8786", 3)
    assert PartyConfig.load(party.save().parent).compute == "dask://127.0.0.1:8786"  # round trip
    path.write_text(path.read_text().replace("dask://127.0.0.1:8786", "spark://x:1"))
    with pytest.raises(ConfigError, match=r"\[compute\] backend must be"):
        PartyConfig.load(fed.ws["host"])


def test_a_wrong_scheduler_address_is_one_line_quickly():
    port = _free_port()
    started = time.monotonic()
    with pytest.raises(ConfigError) as info:
        open_backend(f"dask://127.0.0.1:{port}", connect_timeout=2, where="p/party.toml [compute] backend")
    message = str(info.value)
    assert "\n" not in message and f"dask://127.0.0.1:{port}" in message and "party.toml" in message
    assert time.monotonic() - started < 30


def test_run_party_refuses_a_wrong_scheduler_before_contacting_any_peer(tmp_path):
    """The guest's peers are real sockets listening at their federation addresses: none is connected to."""
    from tests.faults.helpers import make_federation
    from vfl.parties.runner import run_party
    from vfl.transport.address import parse_address

    fed = make_federation(tmp_path / "fed")
    path = fed.ws["guest"] / "party.toml"
    path.write_text(path.read_text() + f'\n[compute]\nbackend = "dask://127.0.0.1:{_free_port()}"\n')
    listeners = []
    for name in ("host", "arbiter"):
        host, port = parse_address(fed.cards[name].address)
        sock = socket.socket()
        sock.bind((host, port))
        sock.listen()
        sock.settimeout(0.2)
        listeners.append(sock)
    try:
        with pytest.raises(ConfigError, match="cannot reach the Dask scheduler"):
            run_party(fed.ws["guest"], fed.job)
        for sock in listeners:
            with pytest.raises(socket.timeout):
                sock.accept()
    finally:
        for sock in listeners:
            sock.close()
    assert not (fed.party("guest").output_dir / "job-1" / "ledger.json").exists()


def test_describe_names_backend_workers_and_cores(backend):
    info = describe(backend)
    assert (info.kind, info.workers, info.cores) == ("dask", 2, 2)
    assert info.address == f"dask://{backend.address.removeprefix('tcp://')}"
    local = describe(WorkerPool(3))
    assert (local.kind, local.workers, local.cores) == ("local", 3, 3)


# --- the engine: same results on both backends -------------------------------------------------------


def test_encrypt_rdot_pack_decrypt_equal_the_local_pool(backend, keypair):
    pk, sk = keypair
    rng = np.random.default_rng(3)
    d = rng.normal(size=300)
    x = rng.normal(size=(300, 6))
    prepared = prepare_matrix(x)
    backend.min_items = 4  # split even these small vectors (rdot too), on both backends
    with WorkerPool(2, min_items=4) as local:
        assert local.should_split(300 * 6, weight=0.015) and backend.should_split(300 * 6, weight=0.015)
        results = {}
        for name, workers in (("local", local), ("dask", backend)):
            enc = encrypt(pk, d, workers=workers)
            grad = enc.rdot(prepared, workers=workers)
            packed, state = mask_and_pack(grad, bound=10**9, workers=workers)
            results[name] = (
                decrypt(sk, enc, workers=workers),
                decrypt(sk, grad, workers=workers),
                state.unmask(decrypt_packed(sk, packed, workers=workers)),
                decrypt(sk, enc.rerandomize(workers=workers), workers=workers),
                decrypt(sk, encrypt(sk, d, workers=workers), workers=workers),  # key owner's CRT path
            )
    for a, b in zip(results["local"], results["dask"], strict=True):
        assert np.array_equal(np.asarray(a), np.asarray(b))
    assert np.allclose(results["dask"][0], d, atol=1e-9)
    assert np.allclose(results["dask"][1], prepared.dequantized.T @ d, atol=1e-6)


def test_key_material_is_scattered_once_and_randomness_never_repeats(backend, keypair):
    pk, _ = keypair
    first = randomizers(pk, 600, workers=backend)
    scattered = dict(backend._scattered)
    second = randomizers(pk, 600, workers=backend)
    assert backend._scattered == scattered and len(scattered) == 2  # h_s and n^2, once for both calls
    assert len(set(first) | set(second)) == 1200  # identical tasks are not merged (pure=False)


def test_the_tasks_of_one_call_go_to_every_worker(backend, keypair):
    """Tasks sharing a scattered key (which Dask may keep on one worker only) still spread over both."""
    from vfl.crypto import _kernels

    pk, _ = keypair
    values = [pk.n + i for i in range(64)]
    backend.submit(_kernels.product, values, pk.n_square).result()  # scatters n^2 to both workers
    time.sleep(2.5)  # Dask's memory manager drops the extra replica (every 2 s): n^2 is on one worker
    for _ in range(3):
        futures = [backend.submit(_kernels.product, values, pk.n_square) for _ in range(4)]
        results = {f.result() for f in futures}
        assert results == {_kernels.product(values, pk.n_square)}
        holders = backend.client.who_has([f._future for f in futures])
        assert len({w for ws in holders.values() for w in ws}) == 2, holders


def test_psi_on_dask_aligns_like_the_local_pool(backend):
    rng = np.random.default_rng(0)
    guest_ids = [f"u{i}" for i in rng.permutation(3000)]
    host_ids = [f"u{i}" for i in rng.permutation(np.arange(1500, 4500))]
    options = PsiOptions(parallel_threshold=64, chunk_size=256)

    def run(make):
        network = LocalNetwork(["guest", "host"])
        results = run_parties(
            network,
            {
                "guest": lambda: run_guest(
                    network.channel("guest"), pd.Series(guest_ids), ["host"], options, multiplier=make()
                ),
                "host": lambda: run_host(
                    network.channel("host"), pd.Series(host_ids), "guest", options, multiplier=make()
                ),
            },
        )
        g, h = results["guest"], results["host"]
        return {guest_ids[r]: p for p, r in enumerate(g.rows)}, {host_ids[r]: p for p, r in enumerate(h.rows)}

    dask_guest, dask_host = run(
        lambda: ScalarMultiplier(workers=2, chunk_size=256, parallel_threshold=64, executor=backend)
    )
    local_guest, local_host = run(lambda: ScalarMultiplier(workers=2, chunk_size=256, parallel_threshold=64))
    assert set(dask_guest) == set(local_guest) == {f"u{i}" for i in range(1500, 3000)}
    assert dask_guest == dask_host and local_guest == local_host  # both parties agree on the shared order


def test_streamed_column_statistics_on_dask_equal_the_local_pool(backend, tmp_path):
    from vfl.streaming import column_moments

    rng = np.random.default_rng(2)
    frame = pd.DataFrame({"a": rng.lognormal(size=3000), "b": rng.integers(0, 5, 3000)})
    path = tmp_path / "data.parquet"
    frame.to_parquet(path, index=False)
    with WorkerPool(2) as local:
        expected = column_moments(path, ["a", "b"], batch_rows=256, workers=local)
    assert column_moments(path, ["a", "b"], batch_rows=256, workers=backend) == expected
    assert expected["a"].skew == pytest.approx(frame["a"].skew(), rel=1e-10)


# --- training --------------------------------------------------------------------------------------


def _frames(n: int = 700, seed: int = 5) -> tuple[pd.DataFrame, pd.DataFrame]:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 5))
    y = (x @ np.array([1.0, -0.5, 0.8, 0.3, -1.2]) + rng.normal(size=n) > 0).astype(int)
    ids = [f"c{i}" for i in range(n)]
    guest = pd.DataFrame({"id": ids, "y": y, "a": x[:, 0], "b": x[:, 1]})
    host = pd.DataFrame({"id": ids, "c": x[:, 2], "d": x[:, 3], "e": x[:, 4]})
    return guest, host.sample(frac=1.0, random_state=1)


TRAIN = dict(key_bits=1024, max_epochs=2, batch_size=256, seed=11, tol=0.0)


def _weights(result) -> dict[str, np.ndarray]:
    return {name: np.asarray(shard.weight_vector) for name, shard in result.shards.items()}


@pytest.fixture(scope="module")
def local_model():
    guest, host = _frames()
    return vfl.simulate(guest, host, id="id", label="y", workers=2, **TRAIN)


def test_training_on_dask_gives_the_local_model(backend, local_model):
    guest, host = _frames()
    result = vfl.simulate(guest, host, id="id", label="y", workers=backend, **TRAIN)
    for name, w in _weights(local_model).items():
        np.testing.assert_allclose(_weights(result)[name], w, rtol=0, atol=1e-9)
    assert result.losses == pytest.approx(local_model.losses, abs=1e-9)
    pd.testing.assert_frame_equal(result.scores, local_model.scores)


@pytest.mark.slow
def test_a_worker_killed_mid_epoch_still_yields_the_same_model(backend, cluster):
    guest, host = _frames()
    train = {**TRAIN, "max_epochs": 8}  # long enough (several seconds) that the kill lands inside training
    local_model = vfl.simulate(guest, host, id="id", label="y", workers=2, **train)
    pids_before = set(backend.worker_pids().values())
    killed: list[int] = []

    def kill_one() -> None:
        time.sleep(1.0)  # inside training (the run takes several seconds)
        pid = sorted(pids_before)[0]
        os.kill(pid, signal.SIGKILL)
        killed.append(pid)

    killer = threading.Thread(target=kill_one)
    started = time.monotonic()
    killer.start()
    result = vfl.simulate(guest, host, id="id", label="y", workers=backend, **train)
    elapsed = time.monotonic() - started
    killer.join()
    assert killed and elapsed > 1.0, "the worker must die while the job runs"
    for name, w in _weights(local_model).items():
        np.testing.assert_allclose(_weights(result)[name], w, rtol=0, atol=1e-9)
    backend.client.wait_for_workers(2, timeout=60)  # the nanny restarted the killed worker
    assert set(backend.worker_pids().values()) != pids_before


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_vfl_info_shows_backend_workers_and_cores(tmp_path, dask_url, cluster):
    from typer.testing import CliRunner

    from tests.faults.helpers import make_federation
    from vfl.cli import app

    cluster.wait_for_workers(2, timeout=60)
    fed = make_federation(tmp_path / "fed")
    runner = CliRunner()
    local = runner.invoke(app, ["info", "--party", str(fed.ws["host"])])
    assert local.exit_code == 0, local.output
    assert "backend" in local.output and "local" in local.output
    path = fed.ws["host"] / "party.toml"
    path.write_text(path.read_text() + f'\n[compute]\nbackend = "{dask_url}"\n')
    shown = runner.invoke(app, ["info", "--party", str(fed.ws["host"])])
    assert shown.exit_code == 0, shown.output
    lines = {line.split()[0]: line.split()[1:] for line in shown.output.splitlines() if line.strip()}
    assert lines["backend"] == [dask_url] and lines["workers"] == ["2"] and lines["cores"] == ["2"]
    assert DaskBackend.remote is True


def test_a_scheduler_that_goes_away_mid_job_is_one_line(keypair):
    """A real ``dask scheduler`` and ``dask worker`` processes; the scheduler is killed mid-encryption."""
    import shutil
    import subprocess

    from vfl.errors import ComputeError

    if shutil.which("dask") is None:
        pytest.skip("the dask command line is not installed")
    port = _free_port()
    quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}
    scheduler = subprocess.Popen(["dask", "scheduler", "--port", str(port), "--no-dashboard"], **quiet)
    worker = subprocess.Popen(
        ["dask", "worker", f"tcp://127.0.0.1:{port}", "--nthreads", "1", "--nworkers", "2", "--no-dashboard"],
        **quiet,
    )
    try:
        backend = open_backend(f"dask://127.0.0.1:{port}", connect_timeout=30)
        backend.client.wait_for_workers(2, timeout=60)
        backend.workers = 2
        threading.Timer(1.0, scheduler.kill).start()
        with pytest.raises(ComputeError) as info:
            encrypt(keypair[0], np.zeros(60_000), workers=backend)
        message = str(info.value)
        assert "\n" not in message and f"dask://127.0.0.1:{port}" in message and "resumes" in message
        backend.close()
    finally:
        for proc in (worker, scheduler):  # SIGTERM: the worker command stops the processes it started
            proc.terminate()
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(30)
