"""One training epoch through three real party processes, streamed input (bench_scale.py ``--parts epoch``).

The guest, host and arbiter each run ``vfl.parties.runner.run_party`` in a process of their own (this file
run as a script), over Flight + mutual TLS on loopback, each with its own local pool of ``workers``; the
guest's and host's data are Parquet files read in batches (``[compute] stream_bytes = 0``). This process
samples every party's process tree (the party and its pool workers) twice a second: CPU seconds, resident
memory; a party's own peak is its kernel-reported ``VmHWM``. The guest's progress events, written with
wall-clock times to a file, mark the epoch: from the end of the PSI to the end of training (which includes
reading the aligned rows and standardizing them: both linear in rows too).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
PARTIES = ("guest", "host", "arbiter")
SAMPLE_SECONDS = 0.5


def party_main(workspace: str, job: str, events: str, workers: int) -> None:
    """A party's process: its role of the job, each progress event appended to ``events`` with its time."""
    sys.path.insert(0, str(ROOT))
    from vfl.parties.runner import run_party

    with open(events, "w", buffering=1) as out:

        def note(stage: str, done: int = 0, total: int = 0, text: str = "") -> None:
            out.write(json.dumps([time.time(), stage, done, total, text]) + "\n")

        note("start")
        run_party(workspace, job, progress=note, workers=workers)
        note("end")


def _hwm_mb(pid: int) -> float:
    """The kernel's peak resident memory of ``pid`` (``VmHWM``), MB; 0 if it is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


@dataclass
class Tree:
    """What the sampler saw of one party's process tree."""

    pid: int
    cpu: dict[int, float] = field(default_factory=dict)  # last CPU seconds seen per process
    samples: list[tuple[float, float]] = field(default_factory=list)  # (time, CPU seconds of the tree)
    party_hwm: float = 0.0  # the party process's VmHWM, MB
    worker_hwm: float = 0.0  # the largest VmHWM of its descendants, MB
    tree_rss: float = 0.0  # the largest sampled sum of resident memory over the tree, MB

    def sample(self) -> None:
        import psutil

        try:
            root = psutil.Process(self.pid)
            procs = [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            return
        rss = 0.0
        for proc in procs:
            try:
                times = proc.cpu_times()
                rss += proc.memory_info().rss / 2**20
            except psutil.NoSuchProcess:
                continue
            self.cpu[proc.pid] = times.user + times.system
            hwm = _hwm_mb(proc.pid)
            if proc.pid == self.pid:
                self.party_hwm = max(self.party_hwm, hwm)
            else:
                self.worker_hwm = max(self.worker_hwm, hwm)
        self.tree_rss = max(self.tree_rss, rss)
        self.samples.append((time.time(), sum(self.cpu.values())))

    def cpu_at(self, when: float) -> float:
        """CPU seconds of the tree at the last sample before ``when``."""
        before = [cpu for t, cpu in self.samples if t <= when]
        return before[-1] if before else 0.0


def write_parties(folder: Path, rows: int, workers: int, key_bits: int) -> tuple[dict[str, Path], Path]:
    """Three workspaces, Parquet data (guest: id, y, 10 columns; host: 10 columns, another order), a job file."""
    from vfl.cli.demo import free_port
    from vfl.cli.workspace import DataSpec, create_workspace
    from vfl.config import Federation, JobConfig, PartyConfig

    rng = np.random.default_rng(rows)
    x = rng.normal(size=(rows, 20))
    y = (x[:, :5].sum(axis=1) + rng.normal(size=rows) > 0).astype(int)
    ids = np.array([f"c{i:08d}" for i in range(rows)])
    guest = pd.DataFrame({"id": ids, "y": y, **{f"g{j}": x[:, j] for j in range(10)}})
    order = rng.permutation(rows)
    host = pd.DataFrame({"id": ids[order], **{f"h{j}": x[order, 10 + j] for j in range(10)}})
    guest.to_parquet(folder / "guest.parquet", index=False, row_group_size=65_536)
    host.to_parquet(folder / "host.parquet", index=False, row_group_size=65_536)
    specs = {
        "guest": DataSpec(folder / "guest.parquet", "id", "y", None),
        "host": DataSpec(folder / "host.parquet", "id", None, None),
        "arbiter": None,
    }
    federation, spaces = Federation(), {}
    for party in PARTIES:
        _, card, _ = create_workspace(
            folder / party, party_id=party, role=party, listen=f"127.0.0.1:{free_port()}", data=specs[party]
        )
        federation.add(card)
        spaces[party] = folder / party
        config = PartyConfig.load(spaces[party])
        config.stream_bytes, config.compute_workers = 0, workers  # stream every data file
        config.save()
    for space in spaces.values():
        federation.save(space / "federation.toml")
    job = folder / "job.toml"
    job.write_text(
        JobConfig(id="epoch", kind="train", train={"key_bits": key_bits, "max_epochs": 1}).to_toml()
    )
    return spaces, job


def run_epoch(folder: Path, rows: int, workers: int, key_bits: int = 2048) -> dict[str, Any]:
    """One job of one epoch at ``rows`` x 20; per party: CPU seconds, peak memory; the guest's epoch times."""
    folder.mkdir(parents=True, exist_ok=True)
    spaces, job = write_parties(folder, rows, workers, key_bits)
    env = {**os.environ, "GRPC_VERBOSITY": "ERROR", "PYTHONPATH": str(ROOT)}
    procs, trees = {}, {}
    started = time.time()
    for party in PARTIES:
        command = [
            sys.executable,
            __file__,
            str(spaces[party]),
            str(job),
            str(folder / f"{party}.events"),
            str(workers),
        ]
        log = (folder / f"{party}.log").open("w")
        procs[party] = subprocess.Popen(
            command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env
        )
        trees[party] = Tree(procs[party].pid)
    done = threading.Event()

    def sampler() -> None:
        while not done.is_set():
            for tree in trees.values():
                tree.sample()
            done.wait(SAMPLE_SECONDS)

    thread = threading.Thread(target=sampler, daemon=True)
    thread.start()
    codes = {party: proc.wait(timeout=6 * 3600) for party, proc in procs.items()}
    done.set()
    thread.join()
    wall = time.time() - started
    if any(codes.values()):
        logs = {p: (folder / f"{p}.log").read_text()[-1500:] for p, c in codes.items() if c}
        raise SystemExit(f"a party failed: {codes}\n{logs}")
    events = [json.loads(line) for line in (folder / "guest.events").read_text().splitlines()]
    t_psi = next(e[0] for e in events if e[1] == "psi")
    t_trained = next(e[0] for e in events if e[1] == "train" and str(e[4]).startswith("done"))
    return {
        "rows": rows,
        "workers": workers,
        "wall": wall,
        "setup": t_psi - started,
        "epoch": t_trained - t_psi,
        "after": events[-1][0] - t_trained,
        "cpu": {p: t.cpu_at(t_trained) - t.cpu_at(t_psi) for p, t in trees.items()},
        "cpu_total": {p: sum(t.cpu.values()) for p, t in trees.items()},
        "party_mb": {p: t.party_hwm for p, t in trees.items()},
        "worker_mb": {p: t.worker_hwm for p, t in trees.items()},
        "tree_mb": {p: t.tree_rss for p, t in trees.items()},
        "load": (os.getloadavg()[0]),
    }


def linear_fit(xs: list[float], ys: list[float]) -> tuple[float, float]:
    """(intercept, slope) of the least-squares line through the points (exact for two)."""
    slope, intercept = np.polyfit(np.asarray(xs, float), np.asarray(ys, float), 1)
    return float(intercept), float(slope)


if __name__ == "__main__":
    party_main(sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]))
