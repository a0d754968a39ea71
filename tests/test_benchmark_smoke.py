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
    subprocess.run([*cmd, *extra], check=True, capture_output=True, timeout=3600)
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


def test_plan_holds_only_reachable_sizes(monkeypatch) -> None:
    import importlib.util

    spec = importlib.util.spec_from_file_location("robust_compression", SCRIPT)
    assert spec is not None and spec.loader is not None
    bench = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, bench)  # its dataclasses look themselves up
    spec.loader.exec_module(bench)
    plan = [(m, r) for m, r, _, _ in bench.planned(1, bench.METHODS, False)]
    assert ("ATMC 2-bit", 0.1) not in plan  # would need a density of 1.6
    assert ("ATMC 4-bit", 0.1) in plan and ("ATMC 2-bit", 0.03) in plan
    assert len(plan) == 1 + (len(bench.METHODS) - 1) * len(bench.RATIOS) - 1


def test_fast_benchmark_pipeline(tmp_path) -> None:
    """PGD-7, FGSM-RS and N-FGSM rows side by side, the guard's record, time ratios."""
    script = SCRIPT.with_name("fast_robust_compression.py")
    cmd = [sys.executable, str(script), "--smoke", "--out", str(tmp_path), "--threads", "1"]
    cmd += ["--methods", "ATMC 4-bit", "--ratios", "0.01"]
    subprocess.run(cmd, check=True, capture_output=True, timeout=3600)
    result = json.loads((tmp_path / "fast_robust_compression.json").read_text())
    rows = {r["attack"]: r for r in result["rows"]}
    assert set(rows) == {"pgd7", "ffgsm", "nfgsm"}
    assert rows["pgd7"]["time_ratio"]["mean"] == 1.0 and rows["pgd7"]["passes_per_step"] == 9
    assert rows["nfgsm"]["passes_per_step"] == 3
    lines = (tmp_path / "fast_robust_compression.runs.jsonl").read_text().splitlines()
    runs = [json.loads(line) for line in lines]
    assert all(r["guard"]["seconds"] > 0 for r in runs if r["attack"] != "pgd7")
    assert all(r["threads"] == 1 and r["train_cpu_seconds"] > 0 for r in runs)
    assert {r["attack"]: r["guard"] is None for r in runs} == {
        "pgd7": True,
        "ffgsm": False,
        "nfgsm": False,
    }
    assert (
        "| ATMC 4-bit | 0.01 | nfgsm | 3 |" in (tmp_path / "fast_robust_compression.md").read_text()
    )
    assert (tmp_path / "fast_robust_compression.png").stat().st_size > 0


def _fast_module(monkeypatch):
    import importlib.util

    monkeypatch.syspath_prepend(str(SCRIPT.parent))
    path = SCRIPT.with_name("fast_robust_compression.py")
    spec = importlib.util.spec_from_file_location("fast_robust_compression", path)
    assert spec is not None and spec.loader is not None
    bench = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, bench)
    spec.loader.exec_module(bench)
    return bench


def _fast_run(attack: str, seed: int, wall: float = 60.0, cpu: float = 60.0) -> dict:
    """One row of ``fast_robust_compression.runs.jsonl`` as the benchmark writes it."""
    return {
        "method": "ATMC 4-bit",
        "target_ratio": 0.01,
        "attack": attack,
        "seed": seed,
        "threads": 1,
        "seconds": wall + 40.0,
        "train_seconds": wall,
        "train_cpu_seconds": cpu,
        "passes_per_step": 9 if attack == "pgd7" else 3,
        "ensemble": 0.8,
        "clean": 0.99,
        "pgd20": 0.82,
        "size_ratio": 0.01,
        "guard": None if attack == "pgd7" else {"seconds": wall / 10, "fired": []},
    }


def test_fast_summary_ratios_cpu_time_and_drops_the_wall_clocks_of_stopped_runs(
    monkeypatch,
) -> None:
    bench = _fast_module(monkeypatch)
    runs = [
        _fast_run("pgd7", 0, 100.0, 100.0),
        _fast_run("nfgsm", 0, 60.0, 50.0),
        _fast_run("pgd7", 1, 110.0, 100.0),
        _fast_run("nfgsm", 1, 650.0, 60.0),  # stopped for ten minutes: its wall clocks mean nothing
    ]
    rows = {r["attack"]: r for r in bench.summarize(runs)}
    assert rows["nfgsm"]["time_ratio"]["mean"] == pytest.approx(0.55)  # CPU: 0.5 and 0.6
    assert rows["nfgsm"]["train_seconds"]["mean"] == pytest.approx(60.0)  # seed 1 left out
    assert rows["nfgsm"]["guard_seconds"]["mean"] == pytest.approx(6.0)
    assert rows["nfgsm"]["train_cpu_seconds"]["mean"] == pytest.approx(55.0)


def test_fast_summary_names_the_seeds_it_holds_not_those_asked(tmp_path) -> None:
    """A partial run (seeds 0 and 2 of the default 0, 1, 2) says which seeds its rows are from."""
    runs = tmp_path / "fast_robust_compression.runs.jsonl"
    rows = [
        _fast_run(attack, seed, cpu=60.0 if attack == "nfgsm" else 100.0)
        for seed in (0, 2)
        for attack in ("pgd7", "nfgsm")
    ]
    runs.write_text("".join(json.dumps(r) + "\n" for r in rows))
    script = SCRIPT.with_name("fast_robust_compression.py")
    cmd = [sys.executable, str(script), "--summarize", "--out", str(tmp_path), "--threads", "1"]
    subprocess.run(cmd, check=True, capture_output=True, timeout=600)
    meta = json.loads((tmp_path / "fast_robust_compression.json").read_text())["meta"]
    assert meta["seeds"] == [0, 2] and meta["runs"] == 4


def test_evaluation_cost_splits_the_cpu_time_by_attack(tmp_path) -> None:
    """Every attack of the ensemble gets CPU seconds and a count of points left; the cascade's
    counts never rise; a bad weights file is refused with the fix and writes nothing."""
    import torch

    from atmc_plugin.app.models import DigitsCNN

    torch.manual_seed(0)
    weights, out = tmp_path / "w.pt", tmp_path / "cost.json"
    torch.save(DigitsCNN(width=8).state_dict(), weights)
    script = SCRIPT.with_name("evaluation_cost.py")
    cmd = [sys.executable, str(script), "--weights", str(weights), "--width", "8"]
    cmd += ["--points", "24", "--out", str(out)]
    subprocess.run(cmd, check=True, capture_output=True, timeout=1800)
    result = json.loads(out.read_text())
    attacks = result["attacks"]
    assert list(attacks) == ["pgd20x5", "apgd-ce", "apgd-dlr", "apgd-t", "fab-t", "square"]
    assert all(a["cpu_seconds"] > 0 for a in attacks.values())
    assert abs(sum(a["share"] for a in attacks.values()) - 1) < 1e-9
    left = [a["robust_after"] for a in attacks.values()]
    assert left == sorted(left, reverse=True) and left[-1] == round(result["robust"] * 24)
    assert result["threads"] == 1 and result["machine"]

    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    broken = subprocess.run(
        [*cmd[:2], "--weights", str(bad), "--out", str(tmp_path / "none.json")],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert broken.returncode != 0 and "torch.save(model.state_dict(), path)" in broken.stderr
    assert not (tmp_path / "none.json").exists()
