"""Trained model shards kept loaded by a serving party (DESIGN.md §11, "on-demand scoring").

A ``ModelCache`` holds at most ``capacity`` shards, least recently used out first, each keyed by
its file's identity (path, size, modification time) and its model digest. A shard whose file
changed (a new model under the same job id) is read again and its old entry dropped; a shard is
only ever returned after ``ModelShard.load`` checked its digest. The service's warm worker fills a
cache with the most recent models while it waits for a job, so a scoring job finds its model
loaded.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

from vfl.errors import VflError
from vfl.model import ModelShard

MODEL_FILE = "model.json"


@dataclass(frozen=True)
class _Entry:
    stamp: tuple[int, int]  # (size, mtime_ns) of the file when it was read
    digest: str
    shard: ModelShard


class ModelCache:
    """A bounded cache of model shards by path; ``hits`` and ``loads`` count what it saved."""

    def __init__(self, capacity: int = 4) -> None:
        if capacity < 1:
            raise ValueError("a model cache holds at least one model")
        self.capacity = capacity
        self.hits = 0
        self.loads = 0
        self._entries: OrderedDict[Path, _Entry] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._entries)

    def digests(self) -> list[str]:
        """The digests of the shards held, least recently used first."""
        with self._lock:
            return [e.digest for e in self._entries.values()]

    def get(self, path: str | Path) -> ModelShard:
        """The shard in ``path``: the loaded one if its file is unchanged, else read (and checked) again."""
        path = Path(path).resolve()
        stat = path.stat()
        stamp = (stat.st_size, stat.st_mtime_ns)
        with self._lock:
            entry = self._entries.get(path)
            if entry is not None and entry.stamp == stamp:
                self._entries.move_to_end(path)
                self.hits += 1
                return entry.shard
        shard = ModelShard.load(path)
        with self._lock:
            self.loads += 1
            self._entries[path] = _Entry(stamp, shard.digest(), shard)
            self._entries.move_to_end(path)
            while len(self._entries) > self.capacity:
                self._entries.popitem(last=False)
        return shard

    def preload(self, output_dir: str | Path) -> int:
        """Load the ``capacity`` most recent shards under ``output_dir``; returns how many it holds."""
        shards = sorted(Path(output_dir).glob(f"*/{MODEL_FILE}"), key=lambda p: p.stat().st_mtime)
        for path in shards[-self.capacity :]:
            try:
                self.get(path)
            except (OSError, VflError):
                continue  # a damaged or vanished model fails in its own job, with its own message
        return len(self._entries)


__all__ = ["ModelCache"]
