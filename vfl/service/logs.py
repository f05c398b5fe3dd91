"""Log files of a party service, under its workspace.

- ``logs/vfl.log``: the service's own log, rotated by size (``RotatingFileHandler``: ``max_bytes``
  per file, ``backups`` older files ``vfl.log.1`` ... kept);
- ``logs/jobs/<job id>.log``: one file per job, appended to (a resumed job continues its file),
  read back with ``tail`` (``vfl jobs logs ID``).

No global state: ``add_service_log`` and ``add_job_log`` attach handlers to the logger they are
given and return them; ``remove_handlers`` detaches and closes them (``job_log`` does both around
a block). The ``logs`` folder is made private to the service's user (0700): job logs may name
columns, partners and files.

Times are UTC, ISO 8601: ``2026-12-01T09:30:00Z INFO vfl.service: message``.
"""

from __future__ import annotations

import logging
import logging.handlers
import os
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

from vfl.errors import ConfigError, VflError

LOG_DIR = "logs"
SERVICE_LOG = "vfl.log"
JOB_LOG_DIR = "jobs"
DEFAULT_MAX_BYTES = 10 * 1024 * 1024
DEFAULT_BACKUPS = 5
FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class JobLogError(VflError):
    """A job's log cannot be found or read."""


class UtcFormatter(logging.Formatter):
    """``FORMAT`` with UTC ISO 8601 times."""

    converter = time.gmtime

    def __init__(self, fmt: str = FORMAT) -> None:
        super().__init__(fmt, datefmt="%Y-%m-%dT%H:%M:%SZ")


def log_dir(workspace: str | Path) -> Path:
    return Path(workspace) / LOG_DIR


def service_log_path(workspace: str | Path) -> Path:
    return log_dir(workspace) / SERVICE_LOG


def job_log_path(workspace: str | Path, job_id: str) -> Path:
    """``<workspace>/logs/jobs/<job id>.log``; a job id that is not a plain file name is refused."""
    if not job_id or job_id in (".", "..") or any(c in job_id for c in "/\\:\0"):
        raise JobLogError(f"job id {job_id!r} cannot name a log file (no slashes, colons or empty ids)")
    return log_dir(workspace) / JOB_LOG_DIR / f"{job_id}.log"


def _private_dir(path: Path) -> None:
    path.mkdir(parents=True, exist_ok=True)
    with suppress(OSError):  # not our folder: it still works
        os.chmod(path, 0o700)


def add_service_log(
    logger: logging.Logger,
    workspace: str | Path,
    *,
    max_bytes: int = DEFAULT_MAX_BYTES,
    backups: int = DEFAULT_BACKUPS,
    level: int = logging.INFO,
) -> list[logging.Handler]:
    """Log ``logger`` (and its children) to ``<workspace>/logs/vfl.log``, rotated by size.

    Sets ``logger``'s level to ``level`` if it is less verbose. Returns the handlers added.
    """
    if max_bytes <= 0 or backups < 1:
        raise ConfigError(f"service log: max_bytes must be > 0 and backups >= 1, got {max_bytes}, {backups}")
    path = service_log_path(workspace)
    _private_dir(path.parent)
    handler = logging.handlers.RotatingFileHandler(
        path, maxBytes=max_bytes, backupCount=backups, encoding="utf-8"
    )
    return _attach(logger, handler, level)


def add_job_log(
    logger: logging.Logger, workspace: str | Path, job_id: str, *, level: int = logging.INFO
) -> list[logging.Handler]:
    """Log ``logger`` to ``<workspace>/logs/jobs/<job id>.log`` (appending). Returns the handlers added.

    Attach it in the job's worker process: every record of ``logger`` goes to this job's file.
    """
    path = job_log_path(workspace, job_id)
    _private_dir(path.parent.parent)
    _private_dir(path.parent)
    return _attach(logger, logging.FileHandler(path, encoding="utf-8"), level)


def _attach(logger: logging.Logger, handler: logging.Handler, level: int) -> list[logging.Handler]:
    handler.setFormatter(UtcFormatter())
    handler.setLevel(level)
    logger.addHandler(handler)
    if logger.level == logging.NOTSET or logger.level > level:
        logger.setLevel(level)
    return [handler]


def remove_handlers(logger: logging.Logger, handlers: Iterable[logging.Handler]) -> None:
    """Detach ``handlers`` from ``logger`` and close them (their files are flushed and closed)."""
    for handler in handlers:
        logger.removeHandler(handler)
        handler.close()


@contextmanager
def job_log(
    logger: logging.Logger, workspace: str | Path, job_id: str, *, level: int = logging.INFO
) -> Iterator[Path]:
    """Within the block, ``logger`` also writes to the job's log file (its path is yielded)."""
    handlers = add_job_log(logger, workspace, job_id, level=level)
    try:
        yield job_log_path(workspace, job_id)
    finally:
        remove_handlers(logger, handlers)


def tail(path: str | Path, lines: int = 50, *, block: int = 8192) -> list[str]:
    """The last ``lines`` lines of the text file ``path`` (without line ends), read from its end."""
    path = Path(path)
    if lines <= 0:
        return []
    try:
        with path.open("rb") as handle:
            handle.seek(0, os.SEEK_END)
            position = handle.tell()
            data = b""
            while position > 0 and data.count(b"\n") <= lines:
                step = min(block, position)
                position -= step
                handle.seek(position)
                data = handle.read(step) + data
    except FileNotFoundError as exc:
        raise JobLogError(f"log file {path} does not exist") from exc
    except OSError as exc:
        raise JobLogError(f"log file {path} cannot be read: {exc}") from exc
    text = data.decode("utf-8", errors="replace")
    return text.splitlines()[-lines:]


def job_log_tail(workspace: str | Path, job_id: str, lines: int = 50) -> list[str]:
    """The last ``lines`` lines of a job's log (for ``vfl jobs logs ID``)."""
    path = job_log_path(workspace, job_id)
    if not path.exists():
        raise JobLogError(f"job '{job_id}' has no log ({path} does not exist)")
    return tail(path, lines)
