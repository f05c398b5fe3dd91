"""Benchmark: on-demand scoring through the party services (``vfl score``) for 1, 1,000 and 100,000 ids.

A guest and a host on loopback mTLS, the host running ``vfl serve`` with a trained model. Each
size is timed twice in the same run:

* **served**: ``score_ids`` at the guest (what ``vfl score ids.csv`` runs): propose a predict job to
  the host's service, which starts a worker process for it; PSI on the new ids; masked joint
  scoring; the score file written. Timed from the call to the score file.
* **per-job baseline**: the path without a service, ``vfl predict`` at both parties: the host's
  ``vfl predict`` process and the guest's run started together, timed from their start to the
  guest's score file.

The ratio served / per-job shows what the service costs or saves; both include one process start
at the host (the worker, or the ``vfl predict`` process).

A second table times scoring 1 id ``--repeat`` times with the host's models kept loaded (``vfl
serve``, its warm worker loads the most recent models while it waits) and again with the host
restarted with ``--models 0`` (every job reads its model), in the same run; it reports the
medians and their ratio.

    python benchmarks/bench_score.py            # 1, 1,000 and 100,000 ids
    python benchmarks/bench_score.py --quick    # 1, 1,000 and 10,000 ids
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from _common import parse_sizes  # noqa: E402

from vfl.cli.workspace import DataSpec, create_workspace  # noqa: E402
from vfl.config import Federation, JobConfig  # noqa: E402


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def vfl_env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT), "GRPC_VERBOSITY": "ERROR"}


def setup(base: Path, n_host: int, n_train: int) -> dict[str, Path]:
    rng = np.random.default_rng(0)
    ids = [f"c{i:07d}" for i in range(n_host)]
    x = rng.normal(size=(n_host, 4))
    y = (x[:, 0] - x[:, 2] + 0.5 * rng.normal(size=n_host) > 0).astype(int)
    data = base / "data"
    data.mkdir(parents=True)
    everyone = pd.DataFrame({"id": ids, "y": y, "a": x[:, 0], "b": x[:, 1]})
    everyone.iloc[:n_train].to_csv(data / "guest.csv", index=False)
    everyone.drop(columns=["y"]).to_csv(data / "guest_all.csv", index=False)
    pd.DataFrame({"id": ids, "c": x[:, 2], "d": x[:, 3]}).to_csv(data / "host.csv", index=False)
    specs = {
        "guest": DataSpec(data / "guest.csv", "id", "y", None),
        "host": DataSpec(data / "host.csv", "id", None, None),
        "arbiter": None,
    }
    federation = Federation()
    ws = {}
    for name, spec in specs.items():
        _, card, _ = create_workspace(
            base / name, party_id=name, role=name, listen=f"127.0.0.1:{free_port()}", data=spec
        )
        federation.add(card)
        ws[name] = base / name
    for path in ws.values():
        federation.save(path / "federation.toml")
    for name in ("host", "arbiter"):
        (ws[name] / "policy.toml").write_text('[defaults]\napproval = "auto"\n')
    return ws


def serve(ws: Path, log: Path, *extra: str) -> subprocess.Popen:
    info = ws / "service" / "service.json"
    info.unlink(missing_ok=True)
    proc = subprocess.Popen(
        [sys.executable, "-m", "vfl.cli", "serve", "--party", str(ws), *extra], env=vfl_env(), cwd=ROOT,
        stdout=log.open("a"), stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    while not info.exists():
        if proc.poll() is not None:
            raise SystemExit(log.read_text())
        time.sleep(0.1)
    return proc


def wait_warm(ws: Path, timeout: float = 300) -> None:
    """Until the service's next warm worker has its imports and models loaded (``service/warm/<pid>``)."""
    deadline = time.monotonic() + timeout
    while not any((ws / "service" / "warm").glob("*")):
        if time.monotonic() > deadline:
            raise SystemExit(f"no warm worker at {ws} after {timeout:g} s")
        time.sleep(0.1)


def stop(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="1, 1,000 and 10,000 ids")
    parser.add_argument("--sizes", type=str, default=None, help="comma-separated id counts")
    parser.add_argument(
        "--repeat", type=int, default=3, help="1-id scorings with and without the model cache"
    )
    args = parser.parse_args()
    sizes = parse_sizes(args.sizes, args.quick, [1, 1000, 10_000], [1, 1000, 100_000])
    from vfl.parties.control import score_ids, submit_job
    from vfl.parties.runner import run_party

    with tempfile.TemporaryDirectory(prefix="vfl-bench-score-") as tmp:
        base = Path(tmp)
        ws = setup(base, max(sizes) + 10, 600)
        services = {p: serve(ws[p], base / f"{p}.log") for p in ("host", "arbiter")}
        job = base / "train.toml"
        job.write_text(JobConfig(id="m", kind="train", train={"key_bits": 1024, "max_epochs": 3}).to_toml())
        submit_job(ws["guest"], job)
        stop(services.pop("arbiter"))
        everyone = pd.read_csv(base / "data" / "guest_all.csv")
        rows = []
        served: dict[int, float] = {}
        for n in sizes:
            new = everyone.sample(n, random_state=n)
            new.to_csv(base / f"ids-{n}.csv", index=False)
            wait_warm(ws["host"])
            t = time.perf_counter()
            score_ids(ws["guest"], base / f"ids-{n}.csv", model="m", output=base / f"served-{n}.csv")
            served[n] = time.perf_counter() - t
        one = everyone.sample(1, random_state=7)
        one.to_csv(base / "ids-one.csv", index=False)
        cached = _score_times(ws["guest"], ws["host"], base / "ids-one.csv", args.repeat, score_ids)
        stop(services.pop("host"))
        services["host"] = serve(ws["host"], base / "host.log", "--models", "0")
        uncached = _score_times(ws["guest"], ws["host"], base / "ids-one.csv", args.repeat, score_ids)
        stop(services.pop("host"))
        for n in sizes:
            job = base / f"predict-{n}.toml"
            job.write_text(JobConfig(id=f"p{n}", kind="predict", predict={"model": "m"}).to_toml())
            t = time.perf_counter()
            host = subprocess.Popen(
                [sys.executable, "-m", "vfl.cli", "run", str(job), "--party", str(ws["host"]), "-q"],
                env=vfl_env(), cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            )  # fmt: skip
            run_party(ws["guest"], job, data=base / f"ids-{n}.csv")
            direct = time.perf_counter() - t
            assert host.wait(timeout=600) == 0
            a = pd.read_csv(base / f"served-{n}.csv").set_index("id").sort_index()
            b = pd.read_csv(ws["guest"] / "out" / f"p{n}" / "scores.csv").set_index("id").sort_index()
            same = bool(np.allclose(a["score"], b.loc[a.index, "score"], rtol=1e-9))
            rows.append((n, served[n], direct, served[n] / direct, same))
    print(
        f"\nload average {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores; 1024-bit training key, one host"
    )
    print(f"{'ids':>8}  {'served s':>9}  {'per-job s':>9}  {'ratio':>6}  same scores")
    for n, s, d, r, same in rows:
        print(f"{n:>8,}  {s:9.2f}  {d:9.2f}  {r:6.2f}  {same}")
    a, b = float(np.median(uncached)), float(np.median(cached))
    print(
        f"\n1 id, median of {args.repeat}: model read per job {a:.2f} s, model kept loaded {b:.2f} s, ratio {a / b:.2f}"
    )
    print("  each run (s): per job " + ", ".join(f"{t:.2f}" for t in uncached)
          + "; kept loaded " + ", ".join(f"{t:.2f}" for t in cached))  # fmt: skip


def _score_times(guest: Path, host: Path, ids: Path, repeat: int, score_ids) -> list[float]:  # noqa: ANN001
    """Seconds of ``repeat`` scorings of ``ids`` through the services, each once the host's warm worker is ready."""
    times = []
    for _ in range(repeat):
        wait_warm(host)
        t = time.perf_counter()
        score_ids(guest, ids, model="m")
        times.append(time.perf_counter() - t)
    return times


if __name__ == "__main__":
    main()
