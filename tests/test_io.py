"""Outputs are valid JSON: no NaN or Infinity in any file vfl writes."""

from __future__ import annotations


def test_json_outputs_never_hold_nan_or_infinity(tmp_path):
    import json

    from vfl.io import atomic_write_json

    path = atomic_write_json(tmp_path / "m.json", {"auc": float("nan"), "x": [1.0, float("inf")], "n": 3})
    text = path.read_text()
    assert "NaN" not in text and "Infinity" not in text
    assert json.loads(text) == {"auc": None, "x": [1.0, None], "n": 3}
