"""Measurement helpers of the benchmarks: CPU seconds of a process tree, modmul and decryption costs.

The caller puts the repository root on ``sys.path`` before importing this (for ``vfl``).
"""

from __future__ import annotations

import os
import secrets
import statistics
import time
from pathlib import Path

import numpy as np
from gmpy2 import mpz

from vfl.crypto import encrypt


def tree_cpu_seconds() -> float | None:
    """CPU seconds of this process and every descendant (live ones, and reaped ones via cutime/cstime)."""
    proc = Path("/proc")
    if not proc.exists():
        return None
    tick = os.sysconf("SC_CLK_TCK")
    stats: dict[int, tuple[int, float]] = {}
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            raw = (entry / "stat").read_text()
        except OSError:
            continue
        fields = raw[raw.rindex(")") + 2 :].split()
        # after the command: state ppid ... utime(12) stime(13) cutime(14) cstime(15) (0-based here)
        stats[int(entry.name)] = (int(fields[1]), sum(int(f) for f in fields[11:15]) / tick)
    me = os.getpid()
    total = 0.0
    for pid, (_, cpu) in stats.items():
        p = pid
        while p in stats and p != me and p > 1:
            p = stats[p][0]
        if p == me:
            total += cpu
    return total


def modmul_cost(modulus: mpz, count: int) -> float:
    """Seconds per ``x * y % modulus`` on random residues (median of 5 rounds)."""
    a = [mpz(secrets.randbelow(int(modulus))) for _ in range(64)]
    b = a[1:] + a[:1]
    rounds = []
    for _ in range(5):
        t = time.perf_counter()
        for _ in range(max(1, count // 64)):
            for x, y in zip(a, b, strict=True):
                _ = x * y % modulus
        rounds.append((time.perf_counter() - t) / (max(1, count // 64) * 64))
    return statistics.median(rounds)


def decrypt_cost(private_key, public_key, count: int) -> float:
    cts = encrypt(public_key, np.arange(count, dtype=float)).ciphertexts.tolist()
    rounds = []
    for _ in range(3):
        t = time.perf_counter()
        private_key.decrypt_raw(cts)
        rounds.append((time.perf_counter() - t) / count)
    return statistics.median(rounds)


def fmt_s(seconds: float) -> str:
    if seconds >= 100:
        return f"{seconds:,.0f} s"
    if seconds >= 1:
        return f"{seconds:.2f} s"
    return f"{seconds * 1e3:.1f} ms"
