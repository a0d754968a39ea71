"""The robust-compression benchmark's pipeline, on a tiny schedule (``--smoke``)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("torch_pruning")
pytest.importorskip("matplotlib")
SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "robust_compression.py"
NEW_BASELINES = [
    "AP (global) + int4 PTQ",
    "HYDRA",
    "L1 channels + int4, adv. FT",
]


def _smoke(out: Path, methods: list[str], *extra: str) -> dict:
    cmd = [sys.executable, str(SCRIPT), "--smoke", "--out", str(out)]
    cmd += ["--methods", *methods] if methods else []
    subprocess.run([*cmd, *extra], check=True, capture_output=True)
    return json.loads((out / "robust_compression.json").read_text())


def test_new_baselines_and_atmc_at_the_deepest_ratio(tmp_path) -> None:
    result = _smoke(tmp_path, ["DA", *NEW_BASELINES, "ATMC 32-bit"], "--ratios", "0.001")
    rows = {r["method"]: r for r in result["rows"]}
    assert set(rows) == {"DA", *NEW_BASELINES, "ATMC 32-bit"}
    for name in (*NEW_BASELINES, "ATMC 32-bit"):
        assert rows[name]["target_ratio"] == 0.001
        assert rows[name]["size_ratio"] <= 0.0011, (name, rows[name]["size_ratio"])
    assert (tmp_path / "robust_compression.png").stat().st_size > 0
    assert "| HYDRA | 0.001 |" in (tmp_path / "robust_compression.md").read_text()
    # --resume skips what is done and adds the rest
    again = _smoke(tmp_path, ["DA", "AP (global) + int8 PTQ"], "--ratios", "0.001", "--resume")
    assert len(again["runs"]) == len(result["runs"]) + 1


@pytest.mark.slow
def test_every_method_at_every_ratio(tmp_path) -> None:
    result = _smoke(tmp_path, [])
    assert {r["method"] for r in result["rows"]} >= {"DA", "TP + ATMC (wrap)", "HYDRA"}
