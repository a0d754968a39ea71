"""Show: adversarial pruning on real digits beats the same schedule without the attack."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))
from digits_tp_atmc import run

SCHEDULE = {
    "pruning_ratio": 0.5,
    "density": 0.1,
    "bits": 4,
    "width": 16,
    "warmup_epochs": 4,
    "steps": 2,
    "epochs_per_step": 3,
    "finetune_epochs": 2,
}


@pytest.fixture(scope="module")
def results() -> dict[bool, dict]:
    return {attack: run(attack=attack, **SCHEDULE) for attack in (True, False)}


def test_final_model_meets_the_constraints(results) -> None:
    out = results[True]
    report = out["report"]
    assert report.channel_ratio == pytest.approx(0.5, abs=0.05)
    assert report.elementwise.nnz <= out["pruner"].target_budget
    assert out["pruner"].target_budget == round(0.1 * out["pruner"].dense_numel)
    assert all(t.distinct <= 2**4 and t.bits == 4 for t in report.elementwise.tensors)
    assert report.macs < 0.35 * report.dense_macs


def test_attack_buys_robustness(results) -> None:
    robust, plain = results[True], results[False]
    assert robust["clean"] > 0.85
    assert robust["pgd20"] > plain["pgd20"] + 0.2, (robust["pgd20"], plain["pgd20"])
