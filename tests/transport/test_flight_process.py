"""Two parties in two processes over loopback mutual TLS: the guest here, the host in a subprocess.

Run directly (``python tests/transport/test_flight_process.py DIR GUEST_ADDR HOST_ADDR``) this file
is the host: it loads its identity from files, echoes what the guest sends, and exits.
"""

from __future__ import annotations

import logging
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from vfl.transport.flight import FlightChannel, FlightSettings, Peer
from vfl.transport.tls import create_identity, load_certificate, load_identity

log = logging.getLogger(__name__)
ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def peers_from_files(directory: Path, addrs: dict[str, str]) -> list[Peer]:
    """What the federation-file loader will do: certificate path plus pinned fingerprint per party."""
    out = []
    for party, addr in addrs.items():
        cert_path = directory / f"{party}.crt"
        pinned = (directory / f"{party}.fingerprint").read_text().strip()
        out.append(Peer(party, party, addr, cert_path, pinned))
    return out


def host_main(directory: Path, guest_addr: str, host_addr: str) -> int:
    addrs = {"guest": guest_addr, "host": host_addr}
    me = load_identity(directory / "host.key", directory / "host.crt", party_id="host")
    settings = FlightSettings(connect_deadline=20.0)
    with FlightChannel(
        me, peers_from_files(directory, addrs), job_id="proc-job", listen=host_addr, settings=settings
    ) as ch:
        req = ch.recv("guest", "echo/req", timeout=30)
        ch.send("guest", "echo/resp", req.set_column(1, "x", pc.multiply(req["x"], 2.0)))
        big = ch.recv("guest", "echo/big", timeout=30)
        ch.send("guest", "echo/big-back", big)
        ch.recv("guest", "echo/bye", timeout=30)  # keep the inbox up until the guest is done
    return 0


def test_two_processes_round_trip(tmp_path):
    for party in ("guest", "host"):
        ident = create_identity(party, tmp_path / f"{party}.key", tmp_path / f"{party}.crt")
        (tmp_path / f"{party}.fingerprint").write_text(ident.fingerprint)
    addrs = {"guest": f"127.0.0.1:{free_port()}", "host": f"127.0.0.1:{free_port()}"}
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.Popen(
        [sys.executable, __file__, str(tmp_path), addrs["guest"], addrs["host"]],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        me = load_identity(tmp_path / "guest.key", tmp_path / "guest.crt", party_id="guest")
        assert load_certificate(tmp_path / "host.crt")  # the host's card as the guest received it
        settings = FlightSettings(connect_deadline=20.0)
        with FlightChannel(
            me, peers_from_files(tmp_path, addrs), job_id="proc-job", listen=addrs["guest"], settings=settings
        ) as ch:
            req = pa.table({"id": np.arange(1000), "x": np.linspace(0, 1, 1000)})
            ch.send("host", "echo/req", req)  # retried until the host process listens
            resp = ch.recv("host", "echo/resp", timeout=30)
            assert resp["id"].equals(req["id"])
            np.testing.assert_array_equal(resp["x"].to_numpy(), 2 * req["x"].to_numpy())

            n = 30_000
            data = np.random.default_rng(7).integers(0, 256, n * 512, dtype=np.uint8).tobytes()
            big = pa.table(
                {"c": pa.FixedSizeBinaryArray.from_buffers(pa.binary(512), n, [None, pa.py_buffer(data)])}
            )
            start = time.perf_counter()
            ch.send("host", "echo/big", big)
            back = ch.recv("host", "echo/big-back", timeout=30)
            elapsed = time.perf_counter() - start
            assert back.equals(big)
            print(f"\n30k x 512-byte vector there and back between two processes: {elapsed:.3f} s")
            log.warning("30k x 512-byte vector there and back between two processes: %.3f s", elapsed)
            ch.send("host", "echo/bye", pa.table({"ok": [True]}))
        out, _ = proc.communicate(timeout=30)
        assert proc.returncode == 0, out
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING)
    sys.exit(host_main(Path(sys.argv[1]), sys.argv[2], sys.argv[3]))
