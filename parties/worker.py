"""``python -m vfl.parties.worker WORKSPACE JOB_ID``: one served job, started by the party's service.

The service keeps one spare worker started with ``--warm`` (Python and vfl imported, waiting for a
job id on stdin), so a job does not wait for the interpreter and its imports (seconds on a busy
machine), and with the party's most recent trained models loaded (``vfl.service.models``), so a
scoring job does not read its model either: scoring latency is mostly the job itself. While it waits, ``service/warm/<pid>`` says it is ready.

Runs the party's role of the job with the normal ``run_party`` on the job's own inbox port, logs
to ``logs/jobs/<id>.log`` and writes ``service/jobs/<id>/result.json`` for the service to record.
SIGTERM cancels the job (every peer is told); SIGINT is ignored (a Ctrl-C at the service's
terminal stops the service, which decides about its workers).
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
from pathlib import Path

os.environ.setdefault("GRPC_VERBOSITY", "ERROR")
MODELS_KEPT = 4  # trained models a warm worker loads while it waits (``--models N``; 0: none)


def warm_marker(workspace: str, pid: int) -> Path:
    """``service/warm/<pid>``: there while a warm worker is ready and waits for a job."""
    return Path(workspace) / "service" / "warm" / str(pid)


def main(argv: list[str]) -> int:
    """``[--models N] WORKSPACE JOB_ID``, or ``[--models N] --warm WORKSPACE``: import everything,
    load the N most recent models, then read the job id on stdin."""
    import vfl.parties.jobs  # noqa: F401 - the imports a job needs, before it is known
    from vfl.config import PartyConfig
    from vfl.errors import VflError
    from vfl.parties.service import JobFiles, run_job
    from vfl.service.logs import add_job_log
    from vfl.service.models import ModelCache

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    kept = MODELS_KEPT
    if argv[0] == "--models":
        kept, argv = int(argv[1]), argv[2:]
    models = ModelCache(kept) if kept > 0 else None
    if argv[0] == "--warm":
        with contextlib.suppress(VflError):  # a broken workspace is the job's to report
            if models is not None:
                models.preload(PartyConfig.load(argv[1]).output_dir)  # while no job waits for us
        ready = warm_marker(argv[1], os.getpid())
        ready.parent.mkdir(parents=True, exist_ok=True)
        ready.write_text(f"{len(models) if models is not None else 0} models loaded\n")
        try:
            workspace, job_id = argv[1], sys.stdin.readline().strip()
        finally:
            ready.unlink(missing_ok=True)
        if not job_id:
            return 0  # the service stopped before it needed this worker
    else:
        workspace, job_id = argv
    add_job_log(logging.getLogger("vfl"), workspace, job_id)
    files = JobFiles.of(workspace, job_id)
    result = run_job(workspace, files, listen=files.listen(), models=models)
    if models is not None and models.hits:
        logging.getLogger("vfl.parties.worker").info("job %s scored with a model loaded in advance", job_id)
    return 0 if result["state"] == "completed" else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
