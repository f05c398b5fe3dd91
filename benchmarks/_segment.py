"""What the segmentation benchmarks share: their common options and how they print a table."""

from __future__ import annotations

import argparse
import os
from collections.abc import Sequence


def segment_parser(doc: str, rows: Sequence[int]) -> argparse.ArgumentParser:
    """``--rows`` (sizes to measure), ``--k`` (joint segments) and ``--seed``, described by ``doc``."""
    ap = argparse.ArgumentParser(description=doc.splitlines()[0])
    ap.add_argument("--rows", type=int, nargs="+", default=list(rows))
    ap.add_argument("--k", type=int, default=8)
    ap.add_argument("--seed", type=int, default=0)
    return ap


def print_header(title: str, header: str) -> None:
    """The run's title (with the machine's cores and load: only same-run ratios count), the column header."""
    print(f"{title}; {os.cpu_count()} cores on the machine, load {os.getloadavg()[0]:.1f}")
    print(header)
    print("-" * len(header), flush=True)
