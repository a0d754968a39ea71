"""The command's cheap adversarial training: single-step attacks with the overfitting guard,
and mixed precision."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from atmc_plugin.app.cli import main
from atmc_plugin.app.recipe import RecipeError, recipe_from_dict
from atmc_plugin.app.rundir import RunDir

TINY = (Path(__file__).parent / "recipes" / "tiny_tp.toml").read_text()


def _recipe(tmp_path: Path, extra: str, attack: str = "nfgsm") -> Path:
    text = TINY.replace("[atmc.attack]\n", f'[atmc.attack]\nname = "{attack}"\n')
    path = tmp_path / "recipe.toml"
    path.write_text(text + extra)
    return path


def test_guard_and_precision_are_checked_before_any_work(tmp_path: Path) -> None:
    base = {"model": {"name": "digits_cnn"}}
    with pytest.raises(RecipeError, match=r"\[guard\] guard.drop = 2 is invalid.*\(0.0, 1.0\]"):
        recipe_from_dict({**base, "guard": {"drop": 2}}, tmp_path / "r.toml")
    with pytest.raises(RecipeError, match=r"\[guard\].*unknown key 'every_epochs'"):
        recipe_from_dict({**base, "guard": {"every_epochs": 1}}, tmp_path / "r.toml")
    with pytest.raises(RecipeError, match=r"\[train\] precision = 'fp8'.*fp32, bf16, fp16"):
        recipe_from_dict({**base, "train": {"precision": "fp8"}}, tmp_path / "r.toml")


def test_a_single_step_recipe_is_guarded_in_bf16(tmp_path: Path) -> None:
    """N-FGSM with the default guard in bf16: the last 128 training examples are held out,
    every epoch of every stage is checked, and the run records it all."""
    recipe = _recipe(tmp_path, "\n[guard]\npgd_steps = 3\n", attack="nfgsm")
    recipe.write_text(recipe.read_text().replace("lr = 0.05", 'lr = 0.05\nprecision = "bf16"'))
    out = tmp_path / "run"
    assert main(["run", str(recipe), "--out", str(out), "--no-progress"]) == 0
    results = json.loads((out / "results.json").read_text())
    guard = results["guard"]
    assert guard["enabled"] and guard["held_out"] == 128
    assert guard["checks"] == 2 + 3 + 2  # once per epoch (every stage)
    assert guard["seconds"] > 0 and guard["fired"] == [] and guard["fallback"] is None
    epochs = [r for r in RunDir(out).read_metrics() if r["kind"] == "epoch"]
    assert all(0 <= r["guard_robust"] <= 1 and "guard_train_attack_acc" in r for r in epochs)
    state = torch.load(out / "checkpoints" / "last.pt", weights_only=True)
    assert state["guard"]["stage"] == "finetune" and state["guard"]["guard"]["checks"] == 2


def test_a_multi_step_recipe_is_not_guarded_and_trains_on_everything(tmp_path: Path) -> None:
    from atmc_plugin.app.build import load_data
    from atmc_plugin.app.guarding import RunGuard
    from atmc_plugin.app.recipe import load_recipe

    recipe = load_recipe(_recipe(tmp_path, "", attack="pgd"))
    data = load_data(recipe)
    guard = RunGuard(recipe, data)
    assert not guard.on and len(guard.training_part(data.train_set())) == 320
    forced = load_recipe(_recipe(tmp_path, '\n[guard]\nenabled = "on"\npoints = 64\n', "pgd"))
    on = RunGuard(forced, load_data(forced))
    assert on.on and len(on.training_part(data.train_set())) == 320 - 64


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_training_forwards_run_in_the_chosen_precision(tmp_path: Path, precision: str) -> None:
    """The forward passes (clean, adversarial, the attack's) run in low precision; the weights,
    their gradients and ATMC's state stay fp32."""
    from atmc_plugin.app.plan import make_plan
    from atmc_plugin.app.recipe import load_recipe
    from atmc_plugin.app.runner import Trainer

    # (the guard's checks measure in fp32, outside the training step: off here)
    recipe = load_recipe(_recipe(tmp_path, '\n[guard]\nenabled = "off"\n', attack="ffgsm"))
    recipe = recipe_from_dict(
        {**recipe.raw, "train": {**recipe.raw["train"], "precision": precision}}, recipe.path
    )
    plan = make_plan(recipe, torch.device("cpu"))
    trainer = Trainer(plan, plan.new_model(), None)
    seen: list[torch.dtype] = []
    trainer.model.fc.register_forward_hook(lambda m, i, o: seen.append(o.dtype))
    trainer.enter("pretrain", None)
    trainer.train_epoch("pretrain", 0)
    trainer.enter("compress", None)  # Torch-Pruning traces the graph here, in fp32
    seen.clear()
    stats = trainer.train_epoch("compress", 0)
    low = {"bf16": torch.bfloat16, "fp16": torch.float16}[precision]
    assert seen and all(d == low for d in seen)
    assert all(p.dtype == torch.float32 for p in trainer.model.parameters())
    assert trainer.atmc is not None and trainer.atmc.step_count > 0
    assert all(v.dtype == torch.float32 for v in trainer.atmc.admm.z.values())
    assert torch.isfinite(torch.tensor(stats["loss"]))
    if precision == "fp16":
        assert trainer.precision.scaler is not None and trainer.precision.state_dict()


FACTORIES = """
from torch import nn
from torch.nn import functional as F

from atmc_plugin.app.datasets import load_digits


def data():
    x_tr, y_tr, x_te, y_te = load_digits(seed=0)
    x_tr, x_te = (F.interpolate(x, size=28, mode="bilinear") for x in (x_tr, x_te))
    return (x_tr, y_tr), (x_te, y_te)


def mlp():
    return nn.Sequential(
        nn.Flatten(), nn.Linear(784, 512), nn.ReLU(), nn.Linear(512, 512), nn.ReLU(),
        nn.Linear(512, 10),
    )
"""

COLLAPSING = """
[run]
seed = 0
device = "cpu"
[data]
factory = "co_factories:data"
batch_size = 128
[model]
factory = "co_factories:mlp"
weights = "robust.pt"
[train]
compress_epochs = 16
finetune_epochs = 2
lr = 0.2
weight_decay = 0.0
schedule = "constant"
[atmc.attack]
name = "fgsm"
eps = 0.2
[eval]
limit = 120
compiled_latency = false
"""


def test_the_command_recovers_from_a_real_collapse(tmp_path: Path) -> None:
    """The collapse of tests/test_guard.py through ``atmc run``: a PGD-trained MLP on 28x28
    digits, then FGSM training. The guard fires in the compression stage, restores, and the
    rest of the run (fine-tuning included) trains with PGD-7; all of it is on record."""
    import importlib
    import sys

    from torch.nn import functional as F

    from atmc_plugin import ATMC, ATMCConfig, AttackConfig

    (tmp_path / "co_factories.py").write_text(FACTORIES)
    sys.path.insert(0, str(tmp_path))
    try:
        factories = importlib.import_module("co_factories")
        (x_tr, y_tr), _ = factories.data()
    finally:
        sys.path.remove(str(tmp_path))
        sys.modules.pop("co_factories", None)
    x_tr, y_tr = x_tr[:-128], y_tr[:-128]  # what the command trains on (the rest is held out)
    torch.manual_seed(0)
    model = factories.mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    atmc = ATMC(model, ATMCConfig(attack=AttackConfig(name="pgd", eps=0.2, alpha=0.05)))
    order = torch.Generator().manual_seed(1)
    for _ in range(10):  # the user's robust starting point
        perm = torch.randperm(len(y_tr), generator=order)
        for start in range(0, len(y_tr), 128):
            x, y = x_tr[perm[start : start + 128]], y_tr[perm[start : start + 128]]
            model.train()
            loss = F.cross_entropy(model(x), y) + F.cross_entropy(model(atmc.perturb(x, y)), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
    torch.save(model.state_dict(), tmp_path / "robust.pt")
    recipe = tmp_path / "collapse.toml"
    recipe.write_text(COLLAPSING)
    out = tmp_path / "run"
    assert main(["run", str(recipe), "--out", str(out), "--no-progress"]) == 0
    guard = json.loads((out / "results.json").read_text())["guard"]
    assert [e["stage"] for e in guard["fired"]] == ["compress"] and guard["fallback"] == "pgd7"
    (event,) = guard["fired"]
    assert event["restored"] and event["robust"] < 0.5 * event["best"]
    records = RunDir(out).read_metrics()
    assert [r["stage"] for r in records if r["kind"] == "guard"] == ["compress"]
    finetune = [r for r in records if r["kind"] == "epoch" and r["stage"] == "finetune"]
    assert finetune and all("guard_robust" not in r for r in finetune)  # PGD-7: unwatched
