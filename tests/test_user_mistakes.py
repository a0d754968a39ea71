"""A new user's mistakes are caught before any work, with the value and the fix; their own
weights start a run; a run folder survives the project moving (issue 20)."""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from atmc_plugin.app.cli import _parser, main
from atmc_plugin.app.plan import check_recipe
from atmc_plugin.app.recipe import RecipeError, load_recipe
from tests.test_recipe import _custom_recipe


@pytest.mark.parametrize(
    ("old", "new", "match"),
    [
        ('factory = "my_model:build"', 'factory = "my_model:bulid"', "Did you mean 'build'"),
        ('factory = "my_model:build"', 'factory = "my_modle:build"', "Did you mean 'my_model'"),
        ('factory = "my_data:splits"', 'factory = "my_data:split"', "Did you mean 'splits'"),
    ],
)
def test_misspelled_factories_get_a_did_you_mean(tmp_path, old, new, match) -> None:
    recipe = load_recipe(_custom_recipe(tmp_path, **{old: new}))
    with pytest.raises(RecipeError, match=match):
        check_recipe(recipe, torch.device("cpu"))


DICT_DATA = """
import torch
from torch.utils.data import Dataset


class Digits(Dataset):
    def __init__(self, n):
        g = torch.Generator().manual_seed(n)
        self.x, self.y = torch.rand(n, 1, 8, 8, generator=g), torch.randint(0, 10, (n,))

    def __len__(self):
        return len(self.y)

    def __getitem__(self, i):
        return {"image": self.x[i], "label": self.y[i]}


def splits():
    return Digits(64), Digits(32)
"""


def test_a_dataset_of_dicts_is_refused_before_work_without_resume_advice(tmp_path, caplog) -> None:
    (tmp_path / "dict_data.py").write_text(DICT_DATA)
    recipe = _custom_recipe(
        tmp_path,
        **{
            'factory = "my_data:splits"\nargs = { validation = 0.1, seed = 0 }': (
                'factory = "dict_data:splits"'
            )
        },
    )
    out = tmp_path / "run"
    with caplog.at_level(logging.ERROR):
        code = main(["run", str(recipe), "--out", str(out), "--no-progress"])
    assert code == 2
    assert "a dict with keys ['image', 'label']" in caplog.text
    assert "return item['image'], item['label']" in caplog.text
    assert "--resume" not in caplog.text
    assert not (out / "checkpoints" / "dense.pt").exists()


FAILING_DATA = """
import torch
from torch.utils.data import Dataset


class Broken(Dataset):
    def __len__(self):
        return 64

    def __getitem__(self, i):
        if i > 3:
            raise ValueError(f"bad record {i}")
        return torch.rand(1, 8, 8), 0


def splits():
    return Broken(), Broken()
"""


def test_an_error_that_would_recur_never_suggests_resume(tmp_path, caplog) -> None:
    (tmp_path / "failing_data.py").write_text(FAILING_DATA)
    recipe = _custom_recipe(
        tmp_path,
        **{
            'factory = "my_data:splits"\nargs = { validation = 0.1, seed = 0 }': (
                'factory = "failing_data:splits"'
            )
        },
    )
    with caplog.at_level(logging.ERROR):
        code = main(["run", str(recipe), "--out", str(tmp_path / "run"), "--no-progress"])
    assert code == 1
    assert "bad record" in caplog.text
    assert "--resume would meet the same error: fix its cause first" in caplog.text
    assert "continue with" not in caplog.text


@pytest.mark.parametrize(
    "argv",
    [["run", "r.toml", "--debug"], ["--debug", "run", "r.toml"], ["eval", "f.pt", "--debug"]],
)
def test_debug_works_before_and_after_the_subcommand(argv) -> None:
    assert _parser().parse_args(argv).debug is True
    assert _parser().parse_args([a for a in argv if a != "--debug"]).debug is False


def _digits_recipe(tmp_path: Path, extra: str = "", model: str = "") -> Path:
    path = tmp_path / "recipe.toml"
    path.write_text(
        "[data]\ntrain_limit = 256\ntest_limit = 60\n"
        f"[model]\nname = 'digits_cnn'\nwidth = 8\n{model}"
        "[train]\ncompress_epochs = 2\nfinetune_epochs = 1\n" + extra + "[atmc.attack]\neps = "
        "0.1\nsteps = 2\n[atmc.constraint]\ndensity = 0.3\nbits = 4\n"
        "[eval]\nlimit = 30\nlatency_batch = 8\ncompiled_latency = false\n"
    )
    return path


def _trained_weights(path: Path) -> torch.nn.Module:
    from atmc_plugin.app.datasets import load_digits
    from atmc_plugin.app.models import DigitsCNN

    x, y, _, _ = load_digits(seed=0)
    torch.manual_seed(0)
    model = DigitsCNN(width=8)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    for _ in range(3):
        for i in range(0, len(y), 64):
            loss = torch.nn.functional.cross_entropy(model(x[i : i + 64]), y[i : i + 64])
            opt.zero_grad()
            loss.backward()
            opt.step()
    torch.save(model.state_dict(), path)
    return model


def test_a_run_starts_from_the_users_weights_and_skips_pretraining(tmp_path) -> None:
    _trained_weights(tmp_path / "mine.pt")
    recipe = _digits_recipe(tmp_path, model="weights = 'mine.pt'\n")
    assert load_recipe(recipe).train.pretrain_epochs == 0
    out = tmp_path / "run"
    assert main(["run", str(recipe), "--out", str(out), "--no-progress"]) == 0
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    stages = {r.get("stage") for r in records if r["kind"] == "epoch"}
    assert stages == {"compress", "finetune"}  # no pre-training: the weights are the dense model
    dense = torch.load(out / "checkpoints" / "dense.pt", weights_only=True)["model"]
    mine = torch.load(tmp_path / "mine.pt", weights_only=True)
    assert all(torch.equal(dense[k], v) for k, v in mine.items())


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (lambda p: torch.save({"conv.weight": torch.zeros(3)}, p), "does not fit.*missing"),
        (lambda p: p.write_bytes(b"not a checkpoint"), "cannot be read with torch.load"),
        (lambda p: torch.save([1, 2], p), "holds no state dict"),
        (lambda p: None, "does not exist"),
    ],
)
def test_weights_that_do_not_fit_are_refused_before_work(tmp_path, make, match) -> None:
    make(tmp_path / "w.pt")
    recipe = load_recipe(_digits_recipe(tmp_path, model="weights = 'w.pt'\n"))
    with pytest.raises(RecipeError, match=match):
        check_recipe(recipe, torch.device("cpu"))


def test_a_fixed_recipe_reuses_a_runs_pretraining(tmp_path) -> None:
    first = _digits_recipe(tmp_path, extra="pretrain_epochs = 1\n")
    out = tmp_path / "first"
    assert main(["run", str(first), "--out", str(out), "--no-progress"]) == 0
    dense = out / "checkpoints" / "dense.pt"
    fixed = tmp_path / "fixed"
    fixed.mkdir()
    recipe = _digits_recipe(fixed, model=f"weights = '{dense}'\n")  # another recipe (digest)
    text = recipe.read_text().replace("density = 0.3", "density = 0.4")
    recipe.write_text(text)
    assert main(["run", str(recipe), "--out", str(fixed / "run"), "--no-progress"]) == 0
    a = torch.load(dense, weights_only=True)["model"]
    b = torch.load(fixed / "run" / "checkpoints" / "dense.pt", weights_only=True)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_a_run_folder_survives_the_project_moving(tmp_path) -> None:
    project = tmp_path / "project"
    project.mkdir()
    recipe = _custom_recipe(project)
    out = project / "runs" / "custom"
    assert main(["run", str(recipe), "--out", str(out), "--no-progress"]) == 0
    assert sorted(p.name for p in (out / "code").iterdir()) == ["my_data.py", "my_model.py"]
    results = json.loads((out / "results.json").read_text())
    moved = tmp_path / "moved"
    shutil.move(str(project), str(moved))
    done = subprocess.run(  # a fresh process: nothing of the project is imported yet
        [sys.executable, "-m", "atmc_plugin", "eval", str(moved / "runs" / "custom" / "final.pt")],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        timeout=3600,  # a guard against a hung child, not a speed check
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads(done.stdout)["clean"] == results["evaluation"]["compressed"]["clean"]


def test_resuming_from_other_starting_weights_is_refused(tmp_path) -> None:
    from atmc_plugin.app.rundir import load_checkpoint
    from atmc_plugin.errors import InputError

    _trained_weights(tmp_path / "mine.pt")
    recipe = _digits_recipe(tmp_path, model="weights = 'mine.pt'\n")
    out = tmp_path / "run"
    assert main(["run", str(recipe), "--out", str(out), "--no-progress"]) == 0
    load_checkpoint(out / "checkpoints" / "last.pt", load_recipe(recipe))  # same weights: fine
    state = torch.load(tmp_path / "mine.pt", weights_only=True)
    state["fc.bias"] = state["fc.bias"] + 1  # the file changes, the recipe text does not
    torch.save(state, tmp_path / "mine.pt")
    with pytest.raises(InputError, match="different recipe"):
        load_checkpoint(out / "checkpoints" / "last.pt", load_recipe(recipe))
