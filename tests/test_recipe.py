"""Recipe validation: every error names the file, the key, the value and the fix."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest
import torch

from atmc_plugin.app.build import resolve_device
from atmc_plugin.app.plan import check_recipe
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
        ("[modle]\nname='mlp'\n", ["[model] section is missing", "[modle] is not a section"]),
        ("[run]\nseed=1\n", ["[model] section is missing"]),
        ("[model]\nname='vgg'\n", ["[model] name = 'vgg'", "digits_cnn"]),
        ("[model]\nname='mlp'\n[train]\nlr=-1\n", ["[train] lr = -1", "expected a number"]),
        ("[model]\nname='mlp'\n[train]\nepochs=3\n", ["unknown key 'epochs'", "Valid keys"]),
        ("[model]\nname='mlp'\n[data]\ndataset='cifar10'\n", ["[data] path", "data_batch"]),
        ("[model]\nname='mlp'\n[atmc.constraint]\ndensity=2\n", ["[atmc]", "density = 2"]),
        ("[model]\nname='mlp'\n[eval]\npreset='strong'\n", ["[eval] preset = 'strong'"]),
        ("[model]\nname='mlp'\n[atmc.attack]\npreset='fastest'\n", ["preset = 'fastest'", "fast"]),
        ("[model]\nname='mlp'\n[eval]\nchannels_last='yes'\n", ["[eval] channels_last = 'yes'"]),
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


@pytest.mark.parametrize(
    ("text", "needles"),
    [
        (
            "[torch_pruning]\npruner='GroupNormPruner'\nignored_layers=['fc']\n[inc.atmc]\nbits=8\nbackend='pt2e'\n",
            ["[torch_pruning] and [inc.atmc] both compress the model", "keep one of them"],
        ),
        ("[inc.smooth]\nalpha=1\n", ["no installed plugin handles the [inc.smooth]", "inc.static"]),
        ("[trian]\nlr=1\n", ["[trian]", "Did you mean 'train'?"]),
        ("[torch_pruning]\npruner='GroupNormPruner'\npruning_ratio=1.5\n", ["pruning_ratio = 1.5"]),
        ("[torch_pruning]\nimportance='GroupMagnitudeImportance'\n", ["[torch_pruning] pruner"]),
        (
            "[torch_pruning]\npruner='GroupNormPruner'\n[atmc.constraint]\ndensity=0.1\n"
            "factorize=true\n",
            ["factorize = true cannot be combined with Torch-Pruning"],
        ),
        (
            "[inc.atmc]\nbits=8\n[atmc.constraint]\ndensity=0.1\n",
            ["[inc.atmc] and [atmc.constraint] both set the constraint"],
        ),
    ],
)
def test_tool_sections_are_checked_by_their_adapters(
    tmp_path: Path, text: str, needles: list[str]
) -> None:
    """The command only splits tool sections off; each adapter's backend checks its own, with
    the file, the key, the value and the fix, before any work."""
    path = write(tmp_path, "[model]\nname='digits_cnn'\nwidth=4\n[data]\ntrain_limit=32\n" + text)
    recipe = load_recipe(path)  # the run's own sections are fine
    with pytest.raises(RecipeError) as info:
        check_recipe(recipe, torch.device("cpu"))
    message = str(info.value)
    assert str(path) in message
    for needle in needles:
        assert needle in message


def test_an_attack_preset_in_a_recipe_is_the_attack_it_names(tmp_path: Path) -> None:
    recipe = load_recipe(
        write(tmp_path, "[model]\nname='mlp'\n[atmc.attack]\npreset='fast'\neps=0.1\n")
    )
    assert recipe.atmc.attack is not None
    assert (recipe.atmc.attack.name, recipe.atmc.attack.eps) == ("nfgsm", 0.1)


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
        (
            "[torch_pruning]\npruner='MagnitudePruner'\npruning_ration=0.5\nignored_layers=['fc']\n",
            "has no argument 'pruning_ration'. Did you mean 'pruning_ratio'?",
        ),
        # the classifier left to Torch-Pruning: refused before pre-training, with the fix
        ("[torch_pruning]\npruner='MagnitudePruner'\n", "Add it: ignored_layers = ['fc']"),
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


CUSTOM = Path(__file__).resolve().parents[1] / "examples" / "custom"


def _custom_recipe(tmp_path: Path, **replace: str) -> Path:
    """The examples/custom recipe, shortened, next to copies of its factory modules."""
    import shutil

    for module in ("my_model.py", "my_data.py"):
        shutil.copy(CUSTOM / module, tmp_path / module)
    text = (CUSTOM / "recipe.toml").read_text()
    for old, new in {
        "pretrain_epochs = 10": "pretrain_epochs = 1",
        "compress_epochs = 10": "compress_epochs = 2",
        "finetune_epochs = 5": "finetune_epochs = 1",
        "steps = 7": "steps = 2",
        '[eval]\npreset = "quick"': "[eval]\nlimit = 40\ncompiled_latency = false",
        **replace,
    }.items():
        assert old in text, old
        text = text.replace(old, new)
    (tmp_path / "recipe.toml").write_text(text)
    return tmp_path / "recipe.toml"


def test_a_user_model_and_data_module_run(tmp_path) -> None:
    import json

    from atmc_plugin.app.cli import main

    recipe = _custom_recipe(tmp_path)
    assert main(["run", str(recipe), "--out", str(tmp_path / "run"), "--no-progress"]) == 0
    lines = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    records = [json.loads(line) for line in lines]
    epochs = [r for r in records if r["kind"] == "epoch"]
    assert epochs and all("val_acc" in r for r in epochs)  # the factory's validation split
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert results["size"]["compression"]["channels"]  # the user's model was pruned


@pytest.mark.parametrize(
    ("old", "new", "match"),
    [
        ('factory = "my_model:build"', 'factory = "my_model"', "expected 'package.module"),
        ('factory = "my_model:build"', 'factory = "nowhere:build"', "cannot import 'nowhere'"),
        ('factory = "my_model:build"', 'factory = "my_model:nothing"', "no function 'nothing'"),
        ("width = 16", "depth = 3", "unexpected keyword argument 'depth'"),
        (
            'factory = "my_data:splits"\nargs = { validation = 0.1, seed = 0 }',
            'factory = "my_model:build"',
            "returned SmallNet; return \\(train, test\\)",
        ),
        ("validation = 0.1, ", "validation = 0.1, colour = 1, ", "\\[data\\] args"),
    ],
)
def test_bad_factories_are_refused_before_training(tmp_path, old, new, match) -> None:
    recipe = load_recipe(_custom_recipe(tmp_path, **{old: new}))
    with pytest.raises(RecipeError, match=match):
        check_recipe(recipe, torch.device("cpu"))


RECIPES_DIR = Path(__file__).resolve().parents[1] / "examples" / "recipes"


def _vit_recipe(tmp_path: Path, **replace: str) -> Path:
    """examples/recipes/digits_vit.toml, shortened, next to a copy of vit_digits.py."""
    import shutil

    shutil.copy(RECIPES_DIR / "vit_digits.py", tmp_path / "vit_digits.py")
    text = (RECIPES_DIR / "digits_vit.toml").read_text()
    for old, new in {
        "pretrain_epochs = 30": "pretrain_epochs = 2",
        "compress_epochs = 20": "compress_epochs = 2",
        "finetune_epochs = 5": "finetune_epochs = 1",
        "steps = 7": "steps = 2",
        'preset = "standard"': "limit = 40\ncompiled_latency = false",
        "[run]": "[data]\ntrain_limit = 256\ntest_limit = 80\n\n[run]",
        **replace,
    }.items():
        assert old in text, old
        text = text.replace(old, new)
    (tmp_path / "recipe.toml").write_text(text)
    return tmp_path / "recipe.toml"


def test_the_transformer_recipe_prunes_and_ships_weight_only(tmp_path, capsys) -> None:
    import json

    from atmc_plugin.app.cli import main

    recipe = _vit_recipe(tmp_path)
    out = tmp_path / "run"
    assert main(["run", str(recipe), "--out", str(out), "--no-progress"]) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["int8"] is True  # shipped: INC weight-only RTN, not the fp32 model
    channels = results["size"]["compression"]["channels"]
    assert channels["blocks.0.fc1"][1] < channels["blocks.0.fc1"][0]  # MLP hidden pruned
    assert channels["blocks.0.attn.qkv"][1] == channels["blocks.0.attn.qkv"][0]
    capsys.readouterr()
    assert main(["eval", str(out / "final.pt"), "--device", "cpu"]) == 0
    evaluated = json.loads(capsys.readouterr().out)  # rebuilt: structure, weights, RTN
    assert evaluated["clean"] == results["evaluation"]["compressed"]["clean"]


@pytest.mark.parametrize(
    ("old", "new", "match"),
    [
        ('["cls_token", 2]', '["cls_tokn", 2]', "unwrapped_parameters entry"),
        ('["cls_token", 2]', '["cls_token", 5]', "unwrapped_parameters entry"),
        ("[inc.rtn]", "[inc.static]\n\n[inc.rtn]", r"\[inc.static\] and \[inc.rtn\] both ship"),
        ('optimizer = "adamw"', 'optimizer = "adam"', "choose one of sgd, adamw"),
        ("group_size = 16\nuse_sym = true", "group_size = 16\nuse_symm = true", "use_sym"),
        (
            "bits = 4\ngroup_size = 16\nuse_sym",
            "bits = 16\ngroup_size = 16\nuse_sym",
            "in \\[1, 8\\]",
        ),
    ],
)
def test_bad_transformer_recipe_values(tmp_path, old, new, match) -> None:
    path = _vit_recipe(tmp_path, **{old: new})
    with pytest.raises(RecipeError, match=match):
        check_recipe(load_recipe(path), torch.device("cpu"))


def test_shift_augmentation_moves_images_by_at_most_an_eighth() -> None:
    from atmc_plugin.app.loader import augment

    x = torch.zeros(64, 1, 8, 8)
    x[:, 0, 4, 4] = 1.0
    torch.manual_seed(0)
    shifted = augment(x, "shift")
    assert shifted.shape == x.shape and torch.equal(shifted.sum(dim=(1, 2, 3)), torch.ones(64))
    where = shifted[:, 0].flatten(1).argmax(1)
    rows, cols = where // 8, where % 8
    assert int((rows - 4).abs().max()) <= 1 and int((cols - 4).abs().max()) <= 1
    assert len(set(where.tolist())) > 1  # not all the same shift
    flipped = augment(x, "flip_shift")
    assert int((flipped[:, 0].flatten(1).argmax(1) % 8).min()) <= 3  # some mirrored to col 3


def test_workers_give_the_same_run(tmp_path) -> None:
    """Shuffling and augmentation are seeded by the run: DataLoader workers change nothing."""
    import json

    from atmc_plugin.app.cli import main

    text = (Path(__file__).parent / "recipes" / "tiny_tp.toml").read_text()
    text = text.replace("batch_size = 64", 'batch_size = 64\naugment = "shift"')
    text = text.replace("compress_epochs = 3", "compress_epochs = 2")
    outs = []
    for workers in (0, 2):
        recipe = tmp_path / f"w{workers}.toml"
        recipe.write_text(
            text.replace('augment = "shift"', f'augment = "shift"\nworkers = {workers}')
        )
        out = tmp_path / f"run{workers}"
        assert main(["run", str(recipe), "--out", str(out), "--no-progress"]) == 0
        lines = (out / "metrics.jsonl").read_text().splitlines()
        outs.append([json.loads(line)["loss"] for line in lines if '"epoch"' in line])
    assert outs[0] == outs[1]


def test_the_users_training_dataset_is_streamed_as_it_is(tmp_path) -> None:
    """Training reads the factory's Dataset item by item in shuffled order (its own transforms
    apply), not only the in-order copy made when the recipe is checked."""
    from atmc_plugin.app.cli import main

    recipe = _custom_recipe(tmp_path, **{'"my_data:splits"': '"counting_data:splits"'})
    (tmp_path / "counting_data.py").write_text(
        "import torch\n"
        "from my_data import splits as digits\n"
        "READS = []\n"
        "class Recorded(torch.utils.data.Dataset):\n"
        "    def __init__(self, inner):\n"
        "        self.inner = inner\n"
        "    def __len__(self):\n"
        "        return len(self.inner)\n"
        "    def __getitem__(self, i):\n"
        "        READS.append(int(i))\n"
        "        return self.inner[i]\n"
        "def splits(validation=0.1, seed=0):\n"
        "    train, val, test = digits(validation, seed)\n"
        "    return Recorded(train), val, test\n"
    )
    assert main(["run", str(recipe), "--out", str(tmp_path / "run"), "--no-progress"]) == 0
    import counting_data

    reads = counting_data.READS
    shuffled = sum(1 for a, b in itertools.pairwise(reads) if b < a and b != 0)
    assert shuffled > 100  # in-order copies only step back to 0; training reads shuffled


def test_augmentation_of_non_images_is_refused(tmp_path) -> None:
    (tmp_path / "flat_data.py").write_text(
        "import torch\n"
        "def splits():\n"
        "    x, y = torch.rand(40, 64), torch.randint(0, 10, (40,))\n"
        "    return (x[:32], y[:32]), (x[32:], y[32:])\n"
    )
    path = tmp_path / "r.toml"
    path.write_text(
        "[model]\nname = 'mlp'\nhidden = [8]\n"
        "[data]\nfactory = 'flat_data:splits'\naugment = 'shift'\n"
    )
    with pytest.raises(RecipeError, match=r"augment = 'shift' shifts and flips images"):
        check_recipe(load_recipe(path), torch.device("cpu"))
