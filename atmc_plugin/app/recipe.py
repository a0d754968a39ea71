"""Recipes: one TOML file from a model and data to a trusted, compressed model.

A recipe holds the existing tools' settings in their own vocabulary: ``[torch_pruning]`` names a
Torch-Pruning pruner class and its keyword arguments, ``[inc]`` is INC's dict form of a
quantization config (``{"static": {...}}``, ``{"atmc": {...}}``), and ``[atmc]`` is
:class:`~atmc_plugin.ATMCConfig`. The run's own sections are validated by :func:`load_recipe`;
every other section belongs to a tool and is validated by that tool's backend (its adapter),
in :func:`atmc_plugin.app.plan.make_plan`, still before any work. Either way a
:class:`RecipeError` names the file, the key, the bad value and the fix.

Sections (all but ``[model]`` optional)::

    [run]    name, seed, device ("auto" | "cpu" | "cuda")
    [data]   dataset ("digits" | "cifar10"), path (cifar10: folder of data_batch_*.bin),
             batch_size, train_limit, test_limit, augment ("none" | "shift" | "flip_shift"),
             workers (DataLoader processes); or factory = "package.module:function"
             with args = {...}: your data (see atmc_plugin.app.factories)
    [model]  name ("digits_cnn" | "mlp" | "resnet"), and the model's keyword arguments; or
             factory = "package.module:function" and its keyword arguments: your model;
             weights = "path": start from your trained weights (a state_dict file, or a
             run's checkpoints/dense.pt); pretrain_epochs then defaults to 0
    [train]  pretrain_epochs, compress_epochs, finetune_epochs, lr, momentum, weight_decay,
             clean_weight, optimizer ("sgd" | "adamw"), schedule ("cosine" | "step" |
             "constant"), precision ("fp32" | "bf16" | "fp16")
    [torch_pruning]  pruner, importance, pruning_ratio, iterative_steps, ignored_layers, ...
    [inc]    INC's dict form: atmc = {...} (compress through INC), and static = {...} (ship
             static int8) or rtn = {...} (ship weight-only RTN)
    [atmc]   attack, constraint, admm (see ATMCConfig)
    [guard]  the catastrophic-overfitting guard of single-step attacks: enabled ("auto" |
             "on" | "off"), points, every, pgd_steps, drop, min_drop, gap, keep,
             fallback_steps
             (see atmc_plugin.guard)
    [eval]   preset ("quick" | "standard"), eps, limit, latency_batch, compiled_latency,
             cascade (default true: each attack only on the points still robust; the same
             worst case, per-attack columns cumulative; false: every attack on every point),
             channels_last (default true: CNNs on images are attacked in channels_last)
"""

from __future__ import annotations

import functools
import hashlib
import json
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..config import ATMCConfig
from ..guard import GuardConfig

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib  # type: ignore[import-not-found,unused-ignore]
from ..errors import ConfigError, did_you_mean
from ..settings import Settings

DATASETS = ("digits", "cifar10")
MODELS = ("digits_cnn", "mlp", "resnet")
MAX_COUNT = 10**6  # epochs, batch sizes, limits: anything larger is a typo, not a plan
MAX_SEED = 2**63 - 1
# every argument each built-in model takes: (kind, low, high)
MODEL_ARGS: dict[str, dict[str, tuple[str, int, int]]] = {
    "digits_cnn": {"width": ("int", 1, 4096), "num_classes": ("int", 2, 100_000)},
    "mlp": {
        "hidden": ("ints", 1, 65_536),
        "in_features": ("int", 1, 10**7),
        "num_classes": ("int", 2, 100_000),
    },
    "resnet": {"depth": ("int", 8, 1202), "num_classes": ("int", 2, 100_000)},
}
DEVICES = ("auto", "cpu", "cuda")
PRESETS = ("quick", "standard")
RUN_SECTIONS = ("run", "data", "model", "train", "atmc", "guard", "eval")
"""The run's own sections; every other table is a tool's section (see :func:`_tool_sections`)."""
OPTIMIZERS = ("sgd", "adamw")
AUGMENTATIONS = ("none", "shift", "flip_shift")
LR_SCHEDULES = ("cosine", "step", "constant")
PRECISIONS = ("fp32", "bf16", "fp16")


class RecipeError(ConfigError):
    """A recipe is unusable; the message names the file, the key, the value and the fix."""


@dataclass(frozen=True)
class TrainSpec:
    """The three training stages, in epochs, and the optimizer settings.

    ``optimizer``: ``"sgd"`` (with ``momentum``) or ``"adamw"``; ``schedule`` per stage:
    ``"cosine"`` to 0, ``"step"`` (x0.1 after each third of the stage) or ``"constant"``.
    ``precision``: ``"fp32"``, or autocast to ``"bf16"`` / ``"fp16"`` (with a gradient scaler)
    for the forward passes and the attack; weights, optimizer, ATMC's projections and ADMM
    state stay fp32 (:mod:`atmc_plugin.app.precision`).
    """

    pretrain_epochs: int = 10
    compress_epochs: int = 20
    finetune_epochs: int = 5
    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 5e-4
    clean_weight: float = 0.5
    optimizer: str = "sgd"
    schedule: str = "cosine"
    precision: str = "fp32"


@dataclass(frozen=True)
class Recipe:
    """A validated recipe. ``raw`` is the parsed TOML (what the run directory snapshots)."""

    path: Path
    raw: dict[str, Any]
    name: str
    seed: int
    device: str
    dataset: str
    data_path: Path | None
    batch_size: int
    augment: str
    workers: int
    train_limit: int | None
    test_limit: int | None
    model_name: str
    model_kwargs: dict[str, Any]
    model_factory: str | None
    model_weights: Path | None
    data_factory: str | None
    data_args: dict[str, Any]
    train: TrainSpec
    atmc: ATMCConfig
    guard: GuardConfig
    tools: tuple[tuple[str, dict[str, Any]], ...]
    preset: str
    eps: float
    eval_limit: int | None
    latency_batch: int
    compiled_latency: bool
    cascade: bool
    channels_last: bool = True

    @property
    def stages(self) -> tuple[tuple[str, int], ...]:
        """``(name, epochs)`` of the pretrain, compress and finetune stages."""
        t = self.train
        return (
            ("pretrain", t.pretrain_epochs),
            ("compress", t.compress_epochs),
            ("finetune", t.finetune_epochs),
        )

    @property
    def digest(self) -> str:
        """Hash of the recipe's content (and of the ``[model] weights`` file it starts from):
        a checkpoint from another recipe, or from other starting weights, is refused."""
        return _digest(json.dumps(self.raw, sort_keys=True, default=str), self.model_weights)


@functools.lru_cache(maxsize=32)
def _file_sha256(path: Path, size: int, mtime_ns: int) -> str:
    """sha256 of a file, cached per (path, size, mtime): checkpoints ask for the digest often."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _digest(text: str, weights: Path | None) -> str:
    h = hashlib.sha256(text.encode())
    if weights is not None and weights.is_file():
        stat = weights.stat()
        h.update(_file_sha256(weights.resolve(), stat.st_size, stat.st_mtime_ns).encode())
    return h.hexdigest()[:16]


def _section(path: Path, name: str, data: Any, keys: tuple[str, ...] | None) -> Settings:
    """A recipe section: :class:`~atmc_plugin.settings.Settings` whose errors are
    :class:`RecipeError` naming the file."""
    return Settings(name, data, keys, error=RecipeError, where=f"{path}: ")


def load_recipe(path: str | Path) -> Recipe:
    """Read and validate a TOML recipe (nothing else is touched).

    :raises RecipeError: unreadable file, invalid TOML, unknown section or key, bad value.
    """
    p = Path(path)
    if not p.is_file():
        raise RecipeError(f"recipe {str(p)!r} does not exist; see examples/recipes/ for examples.")
    try:
        raw = tomllib.loads(p.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise RecipeError(f"{p}: not a valid TOML file: {exc}") from exc
    return recipe_from_dict(raw, p)


def recipe_from_dict(raw: Mapping[str, Any], path: Path) -> Recipe:
    """Validate the parsed form of a recipe (``path`` is used in messages and for ``data.path``)."""
    if "model" not in raw:
        typo = did_you_mean("model", [str(k) for k in raw])
        hint = f" ([{typo.split(chr(39))[1]}] is not a section: a typo?)" if typo else ""
        raise RecipeError(
            f"{path}: the [model] section is missing{hint}; add e.g. name = 'digits_cnn'."
        )
    run = _section(path, "run", raw.get("run"), ("name", "seed", "device"))
    data = _section(
        path,
        "data",
        raw.get("data"),
        (
            "dataset",
            "path",
            "batch_size",
            "train_limit",
            "test_limit",
            "factory",
            "args",
            "augment",
            "workers",
        ),
    )
    model = _section(path, "model", raw["model"], None)
    train = _section(path, "train", raw.get("train"), tuple(TrainSpec.__dataclass_fields__))
    ev = _section(
        path,
        "eval",
        raw.get("eval"),
        (
            "preset",
            "eps",
            "limit",
            "latency_batch",
            "compiled_latency",
            "cascade",
            "channels_last",
        ),
    )

    data_factory = data.string("factory", "") if "factory" in data.data else None
    data_args = data.data.get("args", {})
    if not isinstance(data_args, dict):
        raise data.error("args", data_args, "expected a table of keyword arguments")
    if data_factory is not None and "dataset" in data.data:
        raise data.error("factory", data_factory, "give either dataset or factory, not both")
    if data_factory is None and data_args:
        raise data.error("args", data_args, "args are the arguments of [data] factory; set it")
    dataset = data.choice("dataset", "digits", DATASETS) if data_factory is None else "factory"
    data_path = None
    if dataset == "cifar10":
        if "path" not in data.data:
            raise data.error("path", None, "cifar10 needs the folder holding data_batch_*.bin")
        data_path = (path.parent / data.string("path", "")).expanduser()
    model_weights = None
    if "weights" in model.data:
        model_weights = (path.parent / model.string("weights", "")).expanduser()
        del model.data["weights"]
    model_factory = model.string("factory", "") if "factory" in model.data else None
    if model_factory is not None:
        if "name" in model.data:
            raise model.error("factory", model_factory, "give either name or factory, not both")
        model_name = model_factory
        model_kwargs = {k: v for k, v in model.data.items() if k != "factory"}
    else:
        model_name = model.choice("name", "digits_cnn", MODELS)
        model_kwargs = _model_kwargs(model, model_name)
    spec = TrainSpec(
        # your weights are the pre-trained model unless you ask for more pre-training
        pretrain_epochs=train.integer(
            "pretrain_epochs", 0 if model_weights is not None else TrainSpec.pretrain_epochs
        ),
        compress_epochs=train.integer("compress_epochs", TrainSpec.compress_epochs),
        finetune_epochs=train.integer("finetune_epochs", TrainSpec.finetune_epochs),
        lr=train.number("lr", TrainSpec.lr, low=1e-12, high=1e6),
        momentum=train.number("momentum", TrainSpec.momentum, high=1.0),
        weight_decay=train.number("weight_decay", TrainSpec.weight_decay, high=1.0),
        clean_weight=train.number("clean_weight", TrainSpec.clean_weight, high=1.0),
        optimizer=train.choice("optimizer", TrainSpec.optimizer, OPTIMIZERS),
        schedule=train.choice("schedule", TrainSpec.schedule, LR_SCHEDULES),
        precision=train.choice("precision", TrainSpec.precision, PRECISIONS),
    )
    try:
        atmc = ATMCConfig.from_dict(raw.get("atmc", {}))
    except ConfigError as exc:
        raise RecipeError(f"{path}: [atmc] {exc}") from exc
    try:
        guard = GuardConfig.from_dict(raw.get("guard", {}))
    except ConfigError as exc:
        raise RecipeError(f"{path}: [guard] {exc}") from exc
    tools = _tool_sections(path, raw)
    default_eps = atmc.attack.eps if atmc.attack is not None else 8 / 255
    return Recipe(
        path=path,
        raw=dict(raw),
        name=_plain_name(run, run.string("name", path.stem)),
        seed=run.integer("seed", 0, high=MAX_SEED),
        device=run.choice("device", "auto", DEVICES),
        dataset=dataset,
        data_path=data_path,
        batch_size=data.integer("batch_size", 64, low=1),
        augment=data.choice("augment", "none", AUGMENTATIONS),
        workers=data.integer("workers", 0, high=64),
        train_limit=data.integer("train_limit", None, low=1),
        test_limit=data.integer("test_limit", None, low=1),
        model_name=model_name,
        model_kwargs=model_kwargs,
        model_factory=model_factory,
        model_weights=model_weights,
        data_factory=data_factory,
        data_args=dict(data_args),
        train=spec,
        atmc=atmc,
        guard=guard,
        tools=tools,
        preset=ev.choice("preset", "quick", PRESETS),
        eps=ev.number("eps", default_eps, low=1e-12, high=1.0),
        eval_limit=ev.integer("limit", None, low=1),
        latency_batch=ev.integer("latency_batch", 256, low=1),
        compiled_latency=ev.boolean("compiled_latency", True),
        cascade=ev.boolean("cascade", True),
        channels_last=ev.boolean("channels_last", True),
    )


def _tool_sections(path: Path, raw: Mapping[str, Any]) -> tuple[tuple[str, dict[str, Any]], ...]:
    """Every section that is not the run's own, as ``(name, settings)`` in file order: a
    table of tables (``[inc.static]``, ``[inc.rtn]``) gives one section per inner table
    (``"inc.static"``), any other table one section (``"torch_pruning"``). Their settings are
    the tools' to check: each tool's backend validates its own section."""
    out = []
    for name, value in raw.items():
        if name in RUN_SECTIONS:
            continue
        if not isinstance(value, Mapping):
            raise RecipeError(f"{path}: [{name}] must be a table, got {value!r}.")
        if value and all(isinstance(v, Mapping) for v in value.values()):
            out += [(f"{name}.{inner}", dict(v)) for inner, v in value.items()]
        else:
            out.append((name, dict(value)))
    return tuple(out)


def _plain_name(section: Settings, name: str) -> str:
    """A run name is a folder name under ``runs/``, never a path."""
    bad = (
        not name
        or name in (".", "..")
        or any(c in name for c in "/\\\0:")
        or name != name.strip()
        or name.startswith("-")
    )
    if bad:
        raise section.error(
            "name",
            name,
            "use a plain folder name (letters, digits, '-', '_', '.'; no path separators); "
            "choose another folder with --out",
        )
    return name


def _model_kwargs(section: Settings, model_name: str) -> dict[str, Any]:
    """The model's keyword arguments, each checked against what the model takes."""
    known = MODEL_ARGS[model_name]
    out: dict[str, Any] = {}
    for key, value in section.data.items():
        if key == "name":
            continue
        if key not in known:
            raise section.error(
                key,
                value,
                f"{model_name} takes {', '.join(sorted(known))}"
                + (f". {hint.strip().rstrip('?')}" if (hint := did_you_mean(key, known)) else ""),
            )
        kind, low, high = known[key]
        items = value if kind == "ints" else [value]
        ok = isinstance(items, list) and 0 < len(items) <= 64
        ok = ok and all(
            isinstance(v, int) and not isinstance(v, bool) and low <= v <= high for v in items
        )
        if not ok:
            what = "a list of integers" if kind == "ints" else "an integer"
            raise section.error(key, value, f"expected {what} in [{low}, {high}]")
        out[key] = value
    return out
