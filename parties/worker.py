"""``python -m vfl.parties.worker WORKSPACE JOB_ID``: one served job, started by the party's service.

The service keeps one spare worker started with ``--warm`` (Python and vfl imported, waiting for a
job id on stdin), so a job does not wait for the interpreter and its imports (seconds on a busy
machine): scoring latency is mostly the job itself.

Runs the party's role of the job with the normal ``run_party`` on the job's own inbox port, logs
to ``logs/jobs/<id>.log`` and writes ``service/jobs/<id>/result.json`` for the service to record.
SIGTERM cancels the job (every peer is told); SIGINT is ignored (a Ctrl-C at the service's
terminal stops the service, which decides about its workers).
"""

from __future__ import annotations

import logging
import os
import signal
import sys

os.environ.setdefault("GRPC_VERBOSITY", "ERROR")


def main(argv: list[str]) -> int:
    """``WORKSPACE JOB_ID``, or ``--warm WORKSPACE``: import everything, then read the job id on stdin."""
    import vfl.parties.jobs  # noqa: F401 - the imports a job needs, before it is known
    from vfl.parties.service import JobFiles, run_job
    from vfl.service.logs import add_job_log

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if argv[0] == "--warm":
        workspace, job_id = argv[1], sys.stdin.readline().strip()
        if not job_id:
            return 0  # the service stopped before it needed this worker
    else:
        workspace, job_id = argv
    add_job_log(logging.getLogger("vfl"), workspace, job_id)
    files = JobFiles.of(workspace, job_id)
    result = run_job(workspace, files, listen=files.listen())
    return 0 if result["state"] == "completed" else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
