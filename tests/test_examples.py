"""The README's main example runs end to end (shortened) and saves a weights-only checkpoint."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import torch

from atmc_plugin import ATMC, ATMCConfig
from atmc_plugin.app.models import DigitsCNN

ROOT = Path(__file__).resolve().parents[1]


def test_digits_example_runs_and_checkpoint_loads(tmp_path) -> None:
    out = tmp_path / "atmc.pt"
    cmd = [
        sys.executable,
        str(ROOT / "examples" / "digits_atmc.py"),
        "--dense-epochs",
        "2",
        "--atmc-epochs",
        "2",
        "--finetune-epochs",
        "1",
        "--density",
        "0.1",
        "--bits",
        "3",
        "--save",
        str(out),
    ]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=3600)
    assert done.returncode == 0, done.stderr
    assert "| ATMC |" in done.stderr  # logging goes to stderr
    state = torch.load(out, weights_only=True)
    model = DigitsCNN()
    model.load_state_dict(state["model"])
    atmc = ATMC(model, ATMCConfig.from_dict(state["config"]))
    atmc.load_state_dict(state["atmc"])
    report = atmc.report()
    assert report.nnz <= atmc.budget
    assert all(t.distinct <= 8 for t in report.tensors)
    assert not list(tmp_path.glob("*.tmp"))
