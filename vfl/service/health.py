"""A ``GET /health`` endpoint on loopback for systemd, a container orchestrator or a monitor.

Off by default (``port=None``). When on, a tiny ``http.server`` in a daemon thread answers
``GET /health`` (and ``HEAD``) with JSON and status 200 when healthy, 503 when not::

    {"status": "ok", "version": "0.1.0", "uptime": 12.5, "running_jobs": 1}
    {"status": "unhealthy", "version": "0.1.0", "uptime": 80.2, "running_jobs": 0,
     "reason": "job database busy"}

It binds loopback only (127.0.0.1, ::1 or localhost): the endpoint is not authenticated, so it
is for the machine itself. An orchestrator that probes from outside the machine or container
uses ``vfl health`` as an exec probe instead (``probe(url)`` is its exit code: 0 healthy, 1 not,
as Docker's HEALTHCHECK and Kubernetes exec probes expect).

What "healthy" means is the service's business: it passes ``check``, a function returning a
``HealthStatus``; ``store_check(store)`` is one (healthy while the job database answers, and
counts the running jobs). A ``check`` that raises makes the answer 503 with its message.
"""

from __future__ import annotations

import json
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from vfl import __version__
from vfl.errors import ConfigError

HEALTH_PATH = "/health"
DEFAULT_PORT: int | None = None  # off unless configured
LOOPBACK = ("127.0.0.1", "::1", "localhost")
HEALTHY_EXIT_CODE = 0
UNHEALTHY_EXIT_CODE = 1


@dataclass(frozen=True)
class HealthStatus:
    healthy: bool = True
    running_jobs: int = 0
    reason: str = ""


def store_check(store: Any) -> Callable[[], HealthStatus]:
    """Healthy while ``store`` (a ``JobStore``) answers; reports how many jobs are running."""

    def check() -> HealthStatus:
        return HealthStatus(True, len(store.list(states=["running"])))

    return check


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], check: Callable[[], HealthStatus], started: float) -> None:
        if ":" in address[0]:
            import socket

            self.address_family = socket.AF_INET6
        super().__init__(address, _Handler)
        self.check = check
        self.started = started


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    server_version = f"vfl/{__version__}"

    def log_message(self, format: str, *args: Any) -> None:  # the base class's names
        pass  # a probe every few seconds is not worth a log line

    def _answer(self, code: int, body: dict[str, Any], *, head: bool = False) -> None:
        data = (json.dumps(body) + "\n").encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        if not head:
            self.wfile.write(data)

    def _health(self, head: bool) -> None:
        if self.path.split("?", 1)[0] != HEALTH_PATH:
            self._answer(404, {"error": f"no such path {self.path!r}; ask {HEALTH_PATH}"}, head=head)
            return
        body: dict[str, Any] = {
            "status": "ok",
            "version": __version__,
            "uptime": round(time.monotonic() - self.server.started, 3),
            "running_jobs": 0,
        }
        try:
            status = self.server.check()
        except Exception as exc:  # a failing check is an unhealthy service, not a crashed probe
            status = HealthStatus(False, 0, f"health check failed: {exc}")
        body["running_jobs"] = status.running_jobs
        if not status.healthy:
            body["status"] = "unhealthy"
            body["reason"] = status.reason or "unhealthy"
        self._answer(200 if status.healthy else 503, body, head=head)

    def do_GET(self) -> None:
        self._health(head=False)

    def do_HEAD(self) -> None:
        self._health(head=True)

    def _not_allowed(self) -> None:
        self._answer(405, {"error": "only GET and HEAD"})

    do_POST = do_PUT = do_DELETE = do_PATCH = _not_allowed


class HealthServer:
    """The endpoint, running in a daemon thread until ``close()`` (or the end of a ``with``)."""

    def __init__(
        self,
        port: int = 0,
        check: Callable[[], HealthStatus] = HealthStatus,
        *,
        host: str = "127.0.0.1",
        started: float | None = None,
    ) -> None:
        if host not in LOOPBACK:
            raise ConfigError(
                f"the health endpoint listens on loopback only ({', '.join(LOOPBACK)}), not {host!r}; "
                "probe from elsewhere with 'vfl health' run on the machine"
            )
        if not isinstance(port, int) or isinstance(port, bool) or not 0 <= port < 65536:
            raise ConfigError(f"health port must be 0-65535, got {port!r}")
        try:
            self._server = _Server((host, port), check, time.monotonic() if started is None else started)
        except OSError as exc:
            raise ConfigError(
                f"the health endpoint cannot listen on {host}:{port}: {exc.strerror or exc}"
            ) from exc
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.2}, name="vfl-health", daemon=True
        )
        self._thread.start()

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    @property
    def url(self) -> str:
        host = self._server.server_address[0]
        host = f"[{host}]" if ":" in host else host
        return f"http://{host}:{self.port}{HEALTH_PATH}"

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    def __enter__(self) -> HealthServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def start_health_server(
    port: int | None = DEFAULT_PORT,
    check: Callable[[], HealthStatus] = HealthStatus,
    *,
    host: str = "127.0.0.1",
    started: float | None = None,
) -> HealthServer | None:
    """The endpoint on ``host:port``, or None when ``port`` is None (the default: off).

    ``started`` is the service's start time (``time.monotonic()``) for the uptime; default now.
    """
    if port is None:
        return None
    return HealthServer(port, check, host=host, started=started)


def health_url(target: str | int) -> str:
    """``7480``, ``127.0.0.1:7480`` or a full URL -> ``http://127.0.0.1:7480/health``."""
    text = str(target).strip()
    if text.isdigit():
        return f"http://127.0.0.1:{text}{HEALTH_PATH}"
    if "://" not in text:
        text = f"http://{text}"
    scheme, _, rest = text.partition("://")
    if "/" not in rest:
        text = f"{scheme}://{rest}{HEALTH_PATH}"
    return text


def probe(url: str | int, timeout: float = 5.0, report: Callable[[str], None] | None = None) -> int:
    """Ask the endpoint once: 0 when it answers 200 with status ok, else 1 (``vfl health``'s exit code).

    ``report`` (e.g. ``print``) receives one line saying what was found.
    """
    url = health_url(url)
    say = report or (lambda _line: None)
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            code, raw = response.status, response.read()
    except urllib.error.HTTPError as exc:
        code, raw = exc.code, exc.read()
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        say(f"unreachable: {url}: {reason}")
        return UNHEALTHY_EXIT_CODE
    try:
        body = json.loads(raw)
    except ValueError:
        say(f"not a vfl health answer: {url} returned HTTP {code}")
        return UNHEALTHY_EXIT_CODE
    if code == 200 and isinstance(body, dict) and body.get("status") == "ok":
        say(
            f"ok: vfl {body.get('version')}, up {body.get('uptime')} s, "
            f"{body.get('running_jobs')} running job(s)"
        )
        return HEALTHY_EXIT_CODE
    reason = (body.get("reason") or body.get("error")) if isinstance(body, dict) else None
    say(f"unhealthy: HTTP {code}: {reason or body}")
    return UNHEALTHY_EXIT_CODE
