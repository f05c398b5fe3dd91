"""Writing outputs atomically: a crash or a full disk never leaves a half-written file behind."""

from __future__ import annotations

import contextlib
import errno
import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any

from vfl.errors import OutputError


def atomic_write_bytes(path: str | Path, data: bytes, *, mode: int | None = None) -> Path:
    """Write ``data`` to a temporary file beside ``path``, flush it to disk, then rename it into place.

    The temporary file is created private (0600); ``mode`` sets other permissions before anything is
    written, so a key is never readable by others, not even briefly.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:
        raise OutputError(
            f"cannot write to {path.parent}: {exc.strerror}; check that it exists and is writable"
        ) from exc
    try:
        if mode is not None:
            os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        Path(tmp).unlink(missing_ok=True)
        reason = "the disk is full" if exc.errno == errno.ENOSPC else exc.strerror
        raise OutputError(f"could not write {path}: {reason}; nothing was written") from exc
    return path


def atomic_write_text(path: str | Path, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | Path, data: Any) -> Path:
    """Write ``data`` as JSON atomically; a NaN or infinite number is written as ``null`` (JSON has neither)."""
    text = json.dumps(_finite(data), indent=2, sort_keys=True, default=_jsonable, allow_nan=False)
    return atomic_write_text(path, text + "\n")


def _finite(value: Any) -> Any:
    """``value`` with every non-finite float replaced by None, so no file holds ``NaN`` or ``Infinity``."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    if type(value).__module__ == "numpy":
        return _finite(_jsonable(value))
    return value


def check_writable(directory: str | Path) -> Path:
    """Fail early (before any long job) when an output directory cannot be created or written.

    Leaves no trace: directories it had to create for the check are removed again (writes create
    them when there is something to write), so a job that fails later leaves no empty folder.
    """
    directory = Path(directory)
    created: list[Path] = []
    missing = directory
    while not missing.exists() and missing.parent != missing:
        created.append(missing)
        missing = missing.parent
    try:
        if missing.exists() and not missing.is_dir():
            raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), str(missing))
        directory.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=directory, prefix=".vfl-write-check."):
            pass
    except OSError as exc:
        blocker = f" ({missing} is a file)" if missing.is_file() else ""
        raise OutputError(
            f"output directory {directory} is not writable: {exc.strerror}{blocker}; "
            "choose another [output] dir in party.toml or fix its permissions"
        ) from exc
    finally:
        for path in created:  # deepest first
            with contextlib.suppress(OSError):
                path.rmdir()
    return directory


def _jsonable(value: Any) -> Any:
    import numpy as np

    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"cannot write {type(value).__name__} as JSON")
