"""The model cache of a serving party: loaded once, read again when the file changes, bounded."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from vfl.errors import DataError
from vfl.model import ModelShard
from vfl.service.models import ModelCache


def save(out: Path, job: str, weight: float, mtime: int = 0) -> Path:
    path = out / job / "model.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    ModelShard(job, "bank", "host", ["a"], [weight], {}, {}).save(path)
    if mtime:
        os.utime(path, ns=(mtime, mtime))
    return path


def test_a_model_is_loaded_once_and_again_after_it_changed(tmp_path: Path) -> None:
    cache = ModelCache(2)
    path = save(tmp_path, "m", 0.5)
    first = cache.get(path)
    assert cache.get(path) is first and (cache.hits, cache.loads) == (1, 1)
    save(tmp_path, "m", 0.75, mtime=path.stat().st_mtime_ns + 10**9)  # a new model, same job id
    again = cache.get(path)
    assert again.weights == [0.75] and cache.loads == 2
    assert cache.digests() == [again.digest()] and again.digest() != first.digest()


def test_the_cache_is_bounded_least_recently_used_out(tmp_path: Path) -> None:
    cache = ModelCache(2)
    a, b, c = (save(tmp_path, j, w) for j, w in (("a", 0.1), ("b", 0.2), ("c", 0.3)))
    shard_a = cache.get(a)
    cache.get(b)
    cache.get(a)  # a is now the most recent
    cache.get(c)  # b goes
    assert len(cache) == 2 and cache.digests() == [shard_a.digest(), cache.get(c).digest()]
    loads = cache.loads
    cache.get(b)
    assert cache.loads == loads + 1  # b was read again


def test_preload_takes_the_most_recent_models_and_skips_damaged_ones(tmp_path: Path) -> None:
    for i, job in enumerate(("old", "mid", "new")):
        save(tmp_path, job, 0.1 * i, mtime=(i + 1) * 10**9)
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "model.json").write_text("{not json")
    os.utime(tmp_path / "bad" / "model.json", ns=(5 * 10**9, 5 * 10**9))
    cache = ModelCache(3)
    assert cache.preload(tmp_path) == 2  # 'bad' is the newest but cannot be read; 'old' is beyond 3
    assert cache.get(tmp_path / "new" / "model.json").weights == [0.2] and cache.hits == 1
    with pytest.raises(DataError, match="not valid JSON"):
        cache.get(tmp_path / "bad" / "model.json")  # the job that wants it gets the usual message
