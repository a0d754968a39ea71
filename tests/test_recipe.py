"""Recipe validation: every error names the file, the key, the value and the fix."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from atmc_plugin.app.build import check_recipe, resolve_device
from atmc_plugin.app.recipe import RecipeError, load_recipe

EXAMPLES = Path(__file__).parents[1] / "examples" / "recipes"


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "r.toml"
    path.write_text(text)
    return path


def test_example_recipes_validate() -> None:
    recipes = sorted(EXAMPLES.glob("*.toml"))
    assert len(recipes) >= 5
    for path in recipes:
        recipe = load_recipe(path)
        assert recipe.name and recipe.stages


@pytest.mark.parametrize(
    ("text", "needles"),
    [
        ("[modle]\nname='mlp'\n", ["unknown section [modle]", "Did you mean 'model'"]),
        ("[run]\nseed=1\n", ["[model] section is missing"]),
        ("[model]\nname='vgg'\n", ["[model] name = 'vgg'", "digits_cnn"]),
        ("[model]\nname='mlp'\n[train]\nlr=-1\n", ["[train] lr = -1", "expected a number"]),
        ("[model]\nname='mlp'\n[train]\nepochs=3\n", ["unknown key 'epochs'", "Valid keys"]),
        ("[model]\nname='mlp'\n[data]\ndataset='cifar10'\n", ["[data] path", "data_batch"]),
        ("[model]\nname='mlp'\n[atmc.constraint]\ndensity=2\n", ["[atmc]", "density = 2"]),
        (
            "[model]\nname='mlp'\n[torch_pruning]\npruner='GroupNormPruner'\n[inc.atmc]\nbits=8\n",
            ["[inc] atmc", "not both"],
        ),
        ("[model]\nname='mlp'\n[inc.rtn]\nbits=4\n", ["[inc] has an unknown key 'rtn'"]),
        ("[model]\nname='mlp'\n[eval]\npreset='strong'\n", ["[eval] preset = 'strong'"]),
        ("[model\nname='mlp'\n", ["not a valid TOML file"]),
    ],
)
def test_bad_recipes_name_file_key_and_fix(tmp_path: Path, text: str, needles: list[str]) -> None:
    path = write(tmp_path, text)
    with pytest.raises(RecipeError) as info:
        load_recipe(path)
    message = str(info.value)
    assert str(path) in message
    for needle in needles:
        assert needle in message


def test_missing_recipe_file(tmp_path: Path) -> None:
    with pytest.raises(RecipeError, match="does not exist"):
        load_recipe(tmp_path / "nope.toml")


@pytest.mark.parametrize(
    ("extra", "needle"),
    [
        ("[torch_pruning]\npruner='NoSuchPruner'\n", "not a torch_pruning.pruner class"),
        ("[torch_pruning]\npruner='MagnitudePruner'\nignored_layers=['head']\n", "'head'"),
        ("[torch_pruning]\npruner='MagnitudePruner'\nimportance='Nope'\n", "importance = 'Nope'"),
        ("[torch_pruning]\npruner='MagnitudePruner'\nround_too=8\n", "round_too"),
        ("[inc.static]\nw_dtype='int3'\n", "[inc.static]"),
    ],
)
def test_tool_settings_are_checked_before_training(tmp_path: Path, extra: str, needle: str) -> None:
    path = write(tmp_path, "[model]\nname='digits_cnn'\nwidth=4\n" + extra)
    recipe = load_recipe(path)
    with pytest.raises(RecipeError) as info:
        check_recipe(recipe, torch.device("cpu"))
    assert needle in str(info.value)


def test_missing_cifar_folder_is_reported_before_training(tmp_path: Path) -> None:
    path = write(
        tmp_path, "[model]\nname='resnet'\ndepth=8\n[data]\ndataset='cifar10'\npath='nowhere'\n"
    )
    with pytest.raises(RecipeError, match=r"nowhere.*does not exist"):
        check_recipe(load_recipe(path), torch.device("cpu"))


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_without_cuda_is_a_clear_error() -> None:
    with pytest.raises(RecipeError, match="no CUDA device"):
        resolve_device("cuda")
    assert resolve_device("auto").type == "cpu"


def test_digest_changes_with_content(tmp_path: Path) -> None:
    a = load_recipe(write(tmp_path, "[model]\nname='mlp'\n"))
    b = load_recipe(write(tmp_path, "[model]\nname='mlp'\n[train]\nlr=0.01\n"))
    assert a.digest != b.digest


@pytest.mark.parametrize(
    ("section", "line", "match"),
    [
        ("model", "width = -1", r"width = -1: expected an integer in \[1, 4096\]"),
        ("model", 'width = "wide"', "width = 'wide'"),
        ("model", "width = 1000000", "width = 1000000"),
        ("model", "widht = 8", "Did you mean 'width'"),
        ("model", "hidden = [-5]", "hidden"),
        ("train", "lr = 1e308", "lr = 1e"),
        ("train", "pretrain_epochs = 9223372036854775807", "pretrain_epochs"),
        ("run", "seed = -1", "seed = -1"),
    ],
)
def test_values_that_used_to_crash_later_are_refused(tmp_path, section, line, match) -> None:
    text = {
        "run": "[run]\nname = 'x'\n",
        "model": "[model]\nname = 'digits_cnn'\n",
        "train": "[train]\n",
    }
    text[section] += line + "\n"
    path = tmp_path / "r.toml"
    path.write_text("".join(text.values()))
    with pytest.raises(RecipeError, match=match):
        load_recipe(path)


@pytest.mark.parametrize("name", ["Importance", "ATMCConfig", "OrderedDict"])
def test_importance_names_must_be_importances(tmp_path, name) -> None:
    path = tmp_path / "r.toml"
    path.write_text(
        "[model]\nname = 'digits_cnn'\nwidth = 4\n[data]\ntrain_limit = 32\ntest_limit = 8\n"
        f"[torch_pruning]\npruner = 'BasePruner'\nimportance = '{name}'\n"
    )
    with pytest.raises(RecipeError, match=r"r\.toml: \[torch_pruning\] importance"):
        check_recipe(load_recipe(path), torch.device("cpu"))


@pytest.mark.parametrize(
    ("section", "match"),
    [
        ("[atmc.constraint]\nnnz = 1000000000\n", "exceeds the"),
        ("[atmc.constraint]\ndensity = 0.1\ninclude = ['nothing*']\n", "select no Conv or Linear"),
    ],
)
def test_the_constraint_is_checked_against_the_model_before_training(
    tmp_path, section, match
) -> None:
    path = tmp_path / "r.toml"
    path.write_text(
        "[model]\nname = 'digits_cnn'\nwidth = 4\n[data]\ntrain_limit = 32\ntest_limit = 8\n"
        + section
    )
    with pytest.raises(RecipeError, match=match):
        check_recipe(load_recipe(path), torch.device("cpu"))


def test_seed_override_out_of_range(tmp_path) -> None:
    from atmc_plugin.app.cli import main

    path = tmp_path / "r.toml"
    path.write_text("[model]\nname = 'digits_cnn'\nwidth = 4\n")
    assert main(["run", str(path), "--out", str(tmp_path / "o"), "--seed", str(2**70)]) == 2
    assert not (tmp_path / "o").exists()
