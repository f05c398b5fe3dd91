"""A full disk gives a clear error and never leaves a half-written file (a real, tiny tmpfs)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

import vfl
from vfl import datasets
from vfl.errors import OutputError
from vfl.io import atomic_write_bytes
from vfl.model import ModelShard


@pytest.fixture
def tiny_disk(tmp_path) -> Path:
    mount = tmp_path / "tiny"
    mount.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=96k", "tmpfs", str(mount)], capture_output=True
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here: {done.stderr.decode().strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", str(mount)], capture_output=True)


def test_atomic_write_on_a_full_disk_leaves_nothing(tiny_disk):
    with pytest.raises(OutputError, match="the disk is full; nothing was written"):
        atomic_write_bytes(tiny_disk / "model.json", b"x" * 200_000)
    assert list(tiny_disk.iterdir()) == []


def test_training_outputs_on_a_full_disk_are_whole_or_absent(tiny_disk):
    out = tiny_disk / "out"
    with pytest.raises(OutputError, match="disk is full"):
        vfl.simulate(
            datasets.breast_guest(), [datasets.breast_host()], id="id", label="y",
            key_bits=1024, max_epochs=2, output_dir=out,
        )  # fmt: skip
    files = [p for p in out.rglob("*") if p.is_file()]
    assert not [p for p in files if p.name.endswith(".tmp")], "a temporary file was left behind"
    for path in files:  # whatever was written before the disk filled up is complete
        if path.name == "model.json":
            ModelShard.load(path)
        elif path.suffix == ".json":
            json.loads(path.read_text())
