"""The /health endpoint on a real loopback server, and the probe behind ``vfl health``."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from vfl import __version__
from vfl.errors import ConfigError
from vfl.service import health
from vfl.service.health import HealthServer, HealthStatus, probe, start_health_server
from vfl.service.store import JobStore

ROOT = Path(__file__).resolve().parents[2]


def get(url: str) -> tuple[int, dict]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def test_healthy_and_unhealthy_answers() -> None:
    state = {"status": HealthStatus(True, 2)}
    with HealthServer(0, lambda: state["status"], started=time.monotonic() - 10) as server:
        assert server.port > 0 and server.url == f"http://127.0.0.1:{server.port}/health"
        code, body = get(server.url)
        assert code == 200
        assert body["status"] == "ok" and body["version"] == __version__ and body["running_jobs"] == 2
        assert 10 <= body["uptime"] < 60
        state["status"] = HealthStatus(False, 1, "job database busy")
        code, body = get(server.url)
        assert (code, body["status"], body["reason"], body["running_jobs"]) == (
            503,
            "unhealthy",
            "job database busy",
            1,
        )


def test_a_failing_check_is_unhealthy_not_a_crash() -> None:
    def broken() -> HealthStatus:
        raise RuntimeError("disk gone")

    with HealthServer(0, broken) as server:
        code, body = get(server.url)
        assert code == 503 and body["reason"] == "health check failed: disk gone"
        assert get(server.url)[0] == 503  # still serving


def test_other_paths_and_methods(tmp_path: Path) -> None:
    with HealthServer() as server:
        base = server.url.removesuffix("/health")
        assert get(base + "/nope")[0] == 404
        assert get(server.url + "?verbose=1")[0] == 200
        request = urllib.request.Request(server.url, method="HEAD")
        with urllib.request.urlopen(request, timeout=5) as response:
            assert response.status == 200 and response.read() == b""
        request = urllib.request.Request(server.url, data=b"x", method="POST")
        with pytest.raises(urllib.error.HTTPError) as info:
            urllib.request.urlopen(request, timeout=5)
        assert info.value.code == 405


def test_off_by_default_and_loopback_only() -> None:
    assert start_health_server() is None
    assert health.DEFAULT_PORT is None
    with pytest.raises(ConfigError, match="loopback only"):
        HealthServer(0, host="0.0.0.0")
    with pytest.raises(ConfigError, match="health port must be"):
        HealthServer(70000)
    with (
        HealthServer() as taken,
        pytest.raises(ConfigError, match=f"cannot listen on 127.0.0.1:{taken.port}"),
    ):
        HealthServer(taken.port)


def test_the_store_check_counts_running_jobs(tmp_path: Path) -> None:
    with JobStore(tmp_path / "jobs.db") as store, start_health_server(0, health.store_check(store)) as server:
        assert get(server.url)[1]["running_jobs"] == 0
        store.propose("j", "train", "bank")
        store.approve("j")
        store.start("j", 12345)
        assert get(server.url)[1]["running_jobs"] == 1


def test_probe_exit_codes() -> None:
    state = {"ok": True}
    lines: list[str] = []
    with HealthServer(0, lambda: HealthStatus(state["ok"], 0, "" if state["ok"] else "stuck")) as server:
        assert probe(server.url, report=lines.append) == 0
        assert lines[-1].startswith(f"ok: vfl {__version__}, up ")
        assert probe(server.port) == 0  # a bare port means loopback
        assert probe(f"127.0.0.1:{server.port}") == 0
        state["ok"] = False
        assert probe(server.url, report=lines.append) == 1
        assert lines[-1] == "unhealthy: HTTP 503: stuck"
        url = server.url
    assert probe(url, timeout=2, report=lines.append) == 1  # closed now
    assert lines[-1].startswith(f"unreachable: {url}")


def test_probe_of_something_that_is_not_vfl() -> None:
    # a plain HTTP server answering one request with text
    proc = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import http.server,sys\n"
            "class H(http.server.BaseHTTPRequestHandler):\n"
            "    def do_GET(self):\n"
            "        self.send_response(200); self.end_headers(); self.wfile.write(b'hello')\n"
            "    def log_message(self, *a): pass\n"
            "s = http.server.HTTPServer(('127.0.0.1', 0), H)\n"
            "print(s.server_address[1], flush=True)\n"
            "s.handle_request()\n",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        port = int(proc.stdout.readline())
        lines: list[str] = []
        assert probe(port, report=lines.append) == 1
        assert lines == [f"not a vfl health answer: http://127.0.0.1:{port}/health returned HTTP 200"]
    finally:
        proc.kill()
        proc.wait()


def test_health_url_forms() -> None:
    assert health.health_url(7480) == "http://127.0.0.1:7480/health"
    assert health.health_url("localhost:7480") == "http://localhost:7480/health"
    assert health.health_url("http://[::1]:7480/health") == "http://[::1]:7480/health"
    assert health.health_url("http://127.0.0.1:7480") == "http://127.0.0.1:7480/health"


def test_probe_from_a_real_process() -> None:
    """What ``vfl health`` will do: a separate process probes the server, exit code is the answer."""
    with HealthServer() as server:
        proc = subprocess.run(
            [
                sys.executable,
                "-c",
                f"import sys; from vfl.service.health import probe; sys.exit(probe({server.port}, report=print))",
            ],
            capture_output=True,
            text=True,
            timeout=30,
            env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"},
        )
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout.startswith("ok: vfl ")
