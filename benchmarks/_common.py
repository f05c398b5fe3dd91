"""Helpers the benchmark scripts share (each script puts this folder on ``sys.path``)."""

from __future__ import annotations

from collections.abc import Sequence


def parse_sizes(text: str | None, quick: bool, quick_sizes: Sequence[int], sizes: Sequence[int]) -> list[int]:
    """``--sizes`` as comma-separated numbers if given, else the ``--quick`` or the full default list."""
    return [int(s) for s in text.split(",")] if text else list(quick_sizes if quick else sizes)
