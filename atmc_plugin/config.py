"""ATMC configuration: frozen, keyword-only dataclasses validated on construction.

The dict / TOML shape mirrors the ``[atmc]`` section of a recipe::

    [atmc.attack]      # name = "pgd", eps = 0.1, steps = 7, alpha = 0.025, random_start = true
    [atmc.constraint]  # density = 0.01, bits = 8, quantizer = "codebook" | "int", factorize = false
    [atmc.admm]        # rho = 0.1, interval = 10

Every invalid value raises :class:`~atmc_plugin.errors.ConfigError` naming the field, the value
and the fix. Attack names that are not built in are resolved later, against the installed
plugins, when an :class:`~atmc_plugin.ATMC` object is built.
"""

from __future__ import annotations

import dataclasses
import json
import math
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import nn

from .engine.allocation import ALLOCATIONS, BUDGET_SCHEDULES
from .errors import ConfigError, did_you_mean

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on Python 3.10 only
    import tomli as tomllib  # type: ignore[import-not-found,unused-ignore]

CONFIG_VERSION = 1

TRAINING_ATTACKS = ("pgd", "fgsm", "ffgsm", "nfgsm", "tpgd")
SINGLE_STEP_ATTACKS = ("fgsm", "ffgsm", "nfgsm")
"""One forward-backward pass per example: cheap, and watched by the overfitting guard."""
ATTACK_PRESETS: dict[str, dict[str, Any]] = {
    "fast": {"name": "nfgsm"},
    "standard": {"name": "pgd", "steps": 7},
}
"""Named training attacks (:meth:`AttackConfig.preset`, ``preset = "..."`` in ``[atmc.attack]``).

``fast``: N-FGSM (one attack pass per step, the paper's noise 2 eps and step eps), watched by
the overfitting guard; measured against ``standard`` (PGD-7) in the README's fast robust
compression benchmark. ``standard``: PGD-7 with step ``2.5 eps / 7``.
"""
EVALUATION_ONLY_ATTACKS = ("apgd", "apgdt", "fab", "square", "autoattack")
QUANTIZERS = ("codebook", "int")
GRANULARITIES = ("tensor", "channel", "group")
SCALE_RULES = ("rtn", "pt2e")

LayerFilter = Callable[[nn.Module, str], bool]


def preset_key(value: Any) -> str | None:
    """The :data:`ATTACK_PRESETS` key ``value`` names (any case, spaces around), else ``None``."""
    key = value.strip().lower() if isinstance(value, str) else None
    return key if key in ATTACK_PRESETS else None


def _fail(section: str, name: str, value: Any, fix: str) -> ConfigError:
    return ConfigError(f"{section}.{name} = {value!r} is invalid: {fix}")


def _number(
    section: str,
    name: str,
    value: Any,
    *,
    integer: bool = False,
    low: float | None = None,
    high: float | None = None,
    low_open: bool = False,
) -> Any:
    """Validate a numeric field and return it (ints stay ints, floats become floats)."""
    kind = "an integer" if integer else "a number"
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise _fail(section, name, value, f"expected {kind}.")
    if integer and not isinstance(value, int):
        if not float(value).is_integer():
            raise _fail(section, name, value, "expected an integer.")
        value = int(value)
    if not math.isfinite(value):
        raise _fail(section, name, value, "expected a finite number.")
    too_low = low is not None and (value <= low if low_open else value < low)
    too_high = high is not None and value > high
    if too_low or too_high:
        if low is not None and high is not None:
            rng = f"{'(' if low_open else '['}{low}, {high}]"
            raise _fail(section, name, value, f"must lie in {rng}.")
        bound = (f"> {low}" if low_open else f">= {low}") if too_low else f"<= {high}"
        raise _fail(section, name, value, f"must be {bound}.")
    return value if integer else float(value)


def _choice(section: str, name: str, value: Any, choices: tuple[str, ...]) -> str:
    if not isinstance(value, str) or value.lower() not in choices:
        hint = did_you_mean(value, choices) if isinstance(value, str) else ""
        raise _fail(section, name, value, f"choose one of {', '.join(choices)}.{hint}")
    return value.lower()


def _bool(section: str, name: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise _fail(section, name, value, "expected true or false.")
    return value


def _set(obj: Any, name: str, value: Any) -> None:
    object.__setattr__(obj, name, value)


@dataclass(frozen=True, kw_only=True)
class AttackConfig:
    """How adversarial training examples are generated.

    :param name: attack name. Built in: ``pgd``, ``fgsm``, ``ffgsm`` (FGSM with a random start,
        Wong et al. 2020), ``nfgsm`` (N-FGSM, de Jorge et al. 2022: a larger noise and no
        projection of the training perturbation to the eps-ball), ``tpgd`` (TRADES-style).
        Other names are looked up in installed plugins.
    :param eps: l_inf radius in input units ([0, 1] pixels, before any normalization).
    :param steps: iterations (ignored by single-step attacks).
    :param alpha: step size; ``None`` means ``2.5 * eps / steps`` (Madry et al.) for iterative
        attacks, ``1.25 * eps`` for FFGSM and ``eps`` for N-FGSM (the papers').
    :param noise: N-FGSM only: the uniform noise's magnitude as a multiple of ``eps``
        (``None``: 2, the paper's). The training perturbation then reaches up to
        ``noise * eps + alpha`` (:attr:`radius`); only the image is clipped to [0, 1].
    :param random_start: start from a uniform point in the eps-ball.
    :param mean: per-channel mean for a model that expects normalized inputs: batches stay in
        [0, 1] pixel space and the attack normalizes them before calling the model
        (torchattacks' ``set_normalization_used``); give ``std`` too.
    :param std: per-channel standard deviation, see ``mean``.
    :param options: extra keyword arguments handed to the attack plugin.
    """

    name: str = "pgd"
    eps: float = 8 / 255
    steps: int = 7
    alpha: float | None = None
    random_start: bool = True
    noise: float | None = None
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    options: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        s = "attack"
        if not isinstance(self.name, str) or not self.name.strip():
            raise _fail(s, "name", self.name, f"give an attack name such as {TRAINING_ATTACKS}.")
        name = self.name.strip().lower()
        if name in EVALUATION_ONLY_ATTACKS:
            raise _fail(
                s,
                "name",
                self.name,
                "this attack is for evaluation only: it returns the clean input where it fails "
                "and reseeds the global random number generator, which corrupts training. "
                f"Train with one of {', '.join(TRAINING_ATTACKS)}; evaluate with it instead.",
            )
        _set(self, "name", name)
        if not isinstance(self.eps, bool) and isinstance(self.eps, (int, float)) and self.eps > 1:
            raise _fail(
                s,
                "eps",
                self.eps,
                "eps is in the units of the inputs, pixels in [0, 1] (before any "
                f"normalization): {self.eps:g} pixel levels out of 255 is eps = "
                f"{self.eps:g}/255 = {self.eps / 255:.4f} (8/255 = 0.0314).",
            )
        _set(self, "eps", _number(s, "eps", self.eps, low=0.0, low_open=True, high=1.0))
        _set(self, "steps", _number(s, "steps", self.steps, integer=True, low=1, high=10_000))
        if self.alpha is not None:
            _set(self, "alpha", _number(s, "alpha", self.alpha, low=0.0, low_open=True))
        _set(self, "random_start", _bool(s, "random_start", self.random_start))
        if self.noise is not None:
            if name != "nfgsm":
                raise _fail(s, "noise", self.noise, "only N-FGSM takes it; set name = 'nfgsm'.")
            _set(self, "noise", _number(s, "noise", self.noise, low=0.0, high=16.0))
        if (self.mean is None) != (self.std is None):
            raise _fail(s, "mean/std", (self.mean, self.std), "give both mean and std, or neither.")
        if self.mean is not None and self.std is not None:
            mean = tuple(_number(s, "mean", v) for v in self.mean)
            std = tuple(_number(s, "std", v, low=0.0, low_open=True) for v in self.std)
            if len(mean) != len(std) or not mean:
                raise _fail(s, "mean/std", (self.mean, self.std), "use one value per channel.")
            _set(self, "mean", mean)
            _set(self, "std", std)
        if not isinstance(self.options, Mapping):
            raise _fail(s, "options", self.options, "expected a table of keyword arguments.")
        _set(self, "options", dict(self.options))

    @classmethod
    def preset(cls, preset: str, **settings: Any) -> AttackConfig:
        """The training attack named ``preset`` in :data:`ATTACK_PRESETS` (``"fast"`` or
        ``"standard"``), with ``settings`` (``eps`` and any other field but ``name``) on top.

        :raises ConfigError: an unknown preset, or a ``name`` given with it.
        """
        key = preset_key(preset)
        if key is None:
            raise _fail("attack", "preset", preset, f"choose one of {', '.join(ATTACK_PRESETS)}.")
        if "name" in settings:
            raise _fail(
                "attack",
                "name",
                settings["name"],
                f"preset {preset!r} already names the attack; give name or preset, not both.",
            )
        return cls(**{**ATTACK_PRESETS[key], **settings})

    @property
    def step_size(self) -> float:
        """The effective step size: ``alpha`` or its documented default."""
        if self.alpha is not None:
            return self.alpha
        if self.name == "ffgsm":
            return 1.25 * self.eps
        if self.name == "nfgsm":
            return self.eps
        return 2.5 * self.eps / self.steps

    @property
    def noise_magnitude(self) -> float:
        """N-FGSM's noise bound in input units: ``noise * eps`` (``noise`` defaults to 2)."""
        return (2.0 if self.noise is None else self.noise) * self.eps

    @property
    def radius(self) -> float:
        """The l_inf bound of the training perturbation: ``eps``, except N-FGSM's
        ``noise * eps + alpha`` (its perturbation is not projected back to the eps-ball)."""
        if self.name == "nfgsm":
            return self.noise_magnitude + self.step_size
        return self.eps


@dataclass(frozen=True, kw_only=True)
class ConstraintConfig:
    """ATMC's joint constraint: global sparsity budget, per-tensor quantization, factorization.

    :param density: fraction of the dense conv/linear weights that may stay non-zero, in (0, 1].
    :param nnz: absolute non-zero budget instead of ``density`` (give at most one of the two).
        With neither, there is no sparsity constraint.
    :param bits: quantization bits in 1..16; ``None`` means no quantization (32-bit floats).
    :param quantizer: ``"codebook"`` (the paper: 2**bits learned non-zero values plus an exact
        zero, per tensor) or ``"int"`` (a uniform integer grid in INC's conventions).
    :param symmetric: integer grid only: symmetric (zero point 0) or asymmetric.
    :param granularity: integer grid only: one scale per ``tensor``, per output ``channel`` or
        per ``group`` of ``group_size`` input elements.
    :param group_size: elements per group when ``granularity="group"``.
    :param scale_rule: integer grid only: ``"rtn"`` (INC weight-only: ``amax / (2**(b-1) - 1)``)
        or ``"pt2e"`` (PyTorch observers used by INC static int8: ``amax / ((2**b - 1) / 2)``).
    :param factorize: learn ``W = U V + C`` (low rank plus sparse, identity offset) per layer.
    :param allocation: how the layers compete for the one global budget: ``"lamp"`` (default:
        LAMP scores of the effective weights, comparable across layers), ``"effective"``
        (magnitude of the weight with the following BatchNorm's ``gamma / sqrt(var + eps)``
        folded in) or ``"magnitude"`` (raw ``|w|``, the paper's).
    :param min_per_layer: guard: every compressed tensor keeps at least this many non-zeros
        (its best-scored ones), counted against the budget; 0 turns the guard off.
    :param schedule: how the budget reaches its target: ``"cubic"`` (from dense to the target
        over the ramp, Zhu & Gupta 2017) or ``"constant"`` (the target from the first step, the
        paper's).
    :param ramp_steps: optimizer steps of the cubic anneal. ``None`` (default) ties the ramp to
        the loop it is in: ``ramp_fraction`` of the loop's length, which the loop states
        (``ATMC(..., total_steps=...)``, a Torch-Pruning pruner's ``iterative_steps``,
        ``ATMCQuantConfig(total_steps=...)``, the command's compression stage). With neither a
        ramp nor a known length the budget is at its target from the first step, as
        ``"constant"``, and ATMC warns once. ``finalize()`` always projects onto the target and
        warns when that is a jump (see ``docs/constraint.md``).
    :param ramp_fraction: the share of the loop's length the cubic anneal takes when
        ``ramp_steps`` is ``None``, in (0, 1]; the rest trains at the target.
    :param include: fnmatch patterns of module names to compress (default: all conv/linear).
    :param exclude: fnmatch patterns of module names to leave dense.
    :param layer_filter: optional ``filter(module, name) -> bool``; not serializable.
    """

    density: float | None = None
    nnz: int | None = None
    bits: int | None = None
    quantizer: str = "codebook"
    symmetric: bool = True
    granularity: str = "tensor"
    group_size: int | None = None
    scale_rule: str = "rtn"
    factorize: bool = False
    allocation: str = "lamp"
    min_per_layer: int = 4
    schedule: str = "cubic"
    ramp_steps: int | None = None
    ramp_fraction: float = 0.5
    include: tuple[str, ...] = ("*",)
    exclude: tuple[str, ...] = ()
    layer_filter: LayerFilter | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        s = "constraint"
        if self.density is not None and self.nnz is not None:
            raise _fail(s, "density/nnz", (self.density, self.nnz), "give one budget, not both.")
        if self.density is not None:
            d = _number(s, "density", self.density, low=0.0, low_open=True, high=1.0)
            _set(self, "density", d)
        if self.nnz is not None:
            _set(self, "nnz", _number(s, "nnz", self.nnz, integer=True, low=1))
        if self.bits is not None:
            _set(self, "bits", _number(s, "bits", self.bits, integer=True, low=1, high=16))
        _set(self, "quantizer", _choice(s, "quantizer", self.quantizer, QUANTIZERS))
        _set(self, "symmetric", _bool(s, "symmetric", self.symmetric))
        _set(self, "granularity", _choice(s, "granularity", self.granularity, GRANULARITIES))
        _set(self, "scale_rule", _choice(s, "scale_rule", self.scale_rule, SCALE_RULES))
        if self.quantizer == "codebook" and self.granularity != "tensor":
            raise _fail(
                s,
                "granularity",
                self.granularity,
                'the codebook quantizer is per tensor; granularity applies to quantizer = "int".',
            )
        if self.granularity == "group":
            if self.group_size is None:
                raise _fail(s, "group_size", None, 'set group_size when granularity = "group".')
            _set(self, "group_size", _number(s, "group_size", self.group_size, integer=True, low=1))
        elif self.group_size is not None:
            raise _fail(s, "group_size", self.group_size, 'only valid with granularity = "group".')
        if self.quantizer == "int" and self.symmetric and self.bits == 1:
            raise _fail(
                s, "bits", 1, "a symmetric integer grid needs bits >= 2; use symmetric = false."
            )
        _set(self, "factorize", _bool(s, "factorize", self.factorize))
        _set(self, "allocation", _choice(s, "allocation", self.allocation, ALLOCATIONS))
        mpl = _number(s, "min_per_layer", self.min_per_layer, integer=True, low=0, high=2**31)
        _set(self, "min_per_layer", mpl)
        _set(self, "schedule", _choice(s, "schedule", self.schedule, BUDGET_SCHEDULES))
        if self.ramp_steps is not None:
            ramp = _number(s, "ramp_steps", self.ramp_steps, integer=True, low=0, high=2**31)
            _set(self, "ramp_steps", ramp)
        fraction = _number(s, "ramp_fraction", self.ramp_fraction, low=0.0, low_open=True, high=1.0)
        _set(self, "ramp_fraction", fraction)
        for key in ("include", "exclude"):
            patterns = getattr(self, key)
            if isinstance(patterns, str) or not all(isinstance(p, str) for p in patterns):
                raise _fail(s, key, patterns, "expected a list of module-name patterns.")
            _set(self, key, tuple(patterns))
        if self.layer_filter is not None and not callable(self.layer_filter):
            raise _fail(
                s, "layer_filter", self.layer_filter, "expected filter(module, name) -> bool."
            )

    def budget_for(self, dense_numel: int) -> int | None:
        """Non-zero budget over ``dense_numel`` compressible weights (``None``: no sparsity).

        :raises ConfigError: ``nnz`` exceeds ``dense_numel``.
        """
        if self.nnz is not None:
            if self.nnz > dense_numel:
                raise ConfigError(
                    f"constraint.nnz = {self.nnz} exceeds the {dense_numel} weights of the "
                    "selected layers; lower it or use density."
                )
            return self.nnz
        if self.density is not None:
            return max(1, round(self.density * dense_numel))
        return None

    @property
    def sparse(self) -> bool:
        return self.density is not None or self.nnz is not None

    @property
    def quantized(self) -> bool:
        return self.bits is not None


@dataclass(frozen=True, kw_only=True)
class ADMMConfig:
    """Schedule of the constraint solver.

    :param rho: ADMM penalty weight (the paper uses 0.1, fixed).
    :param interval: optimizer steps between ADMM ``Z``/``U`` updates (the paper: 10).
    :param projection_interval: optimizer steps between sparsity projections (1 = every step).
    """

    rho: float = 0.1
    interval: int = 10
    projection_interval: int = 1

    def __post_init__(self) -> None:
        s = "admm"
        _set(self, "rho", _number(s, "rho", self.rho, low=0.0, low_open=True))
        _set(self, "interval", _number(s, "interval", self.interval, integer=True, low=1))
        pi = _number(s, "projection_interval", self.projection_interval, integer=True, low=1)
        _set(self, "projection_interval", pi)


_SECTIONS: dict[str, type] = {
    "attack": AttackConfig,
    "constraint": ConstraintConfig,
    "admm": ADMMConfig,
}


def _section_from_dict(name: str, cls: type, data: Any) -> Any:
    if not isinstance(data, Mapping):
        raise ConfigError(f"[atmc.{name}] must be a table of settings, got {data!r}.")
    names = {f.name for f in dataclasses.fields(cls) if f.name != "layer_filter"}
    if cls is AttackConfig:
        names.add("preset")
    for key in data:
        if key not in names:
            raise ConfigError(
                f"[atmc.{name}] has an unknown key {key!r}.{did_you_mean(key, names)} "
                f"Valid keys: {', '.join(sorted(names))}."
            )
    kwargs = dict(data)
    for key in ("mean", "std", "include", "exclude"):
        if isinstance(kwargs.get(key), list):
            kwargs[key] = tuple(kwargs[key])
    if "preset" in kwargs:
        return AttackConfig.preset(kwargs.pop("preset"), **kwargs)
    return cls(**kwargs)


@dataclass(frozen=True, kw_only=True)
class ATMCConfig:
    """The whole ATMC configuration.

    :param attack: the training attack, or ``None`` for clean training.
    :param constraint: the compression constraint.
    :param admm: the solver schedule.
    :param version: format version of serialized configs.
    """

    attack: AttackConfig | None = field(default_factory=AttackConfig)
    constraint: ConstraintConfig = field(default_factory=ConstraintConfig)
    admm: ADMMConfig = field(default_factory=ADMMConfig)
    version: int = CONFIG_VERSION

    def __post_init__(self) -> None:
        if self.attack is not None and not isinstance(self.attack, AttackConfig):
            raise ConfigError(f"attack = {self.attack!r}: expected an AttackConfig or None.")
        if not isinstance(self.constraint, ConstraintConfig):
            raise ConfigError(f"constraint = {self.constraint!r}: expected a ConstraintConfig.")
        if not isinstance(self.admm, ADMMConfig):
            raise ConfigError(f"admm = {self.admm!r}: expected an ADMMConfig.")
        if self.version != CONFIG_VERSION:
            raise ConfigError(
                f"version = {self.version!r} is not supported by this atmc-plugin; "
                f"it reads version {CONFIG_VERSION}. Upgrade atmc-plugin or rewrite the config."
            )

    # -- serialization -------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """Plain-data form (JSON/TOML friendly). ``layer_filter`` cannot be serialized.

        A disabled attack is written as ``"attack": false``.
        """
        if self.constraint.layer_filter is not None:
            raise ConfigError(
                "constraint.layer_filter is a Python function and cannot be serialized; "
                "use constraint.include / constraint.exclude name patterns instead."
            )
        out: dict[str, Any] = {"version": self.version}
        for name in _SECTIONS:
            section = getattr(self, name)
            if section is None:
                out[name] = False  # TOML has no null: `attack = false` disables the attack
                continue
            values = {}
            for f in dataclasses.fields(section):
                if f.name == "layer_filter":
                    continue
                v = getattr(section, f.name)
                values[f.name] = list(v) if isinstance(v, tuple) else v
            out[name] = values
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ATMCConfig:
        """Build from the dict shape of the ``[atmc]`` recipe section.

        A missing ``attack`` section means the default attack; ``attack = false`` (or ``None``)
        disables adversarial training. Unknown keys raise :class:`ConfigError`.
        """
        if not isinstance(data, Mapping):
            raise ConfigError(f"an ATMC config must be a table/dict, got {type(data).__name__}.")
        allowed = {*_SECTIONS, "version"}
        for key in data:
            if key not in allowed:
                raise ConfigError(
                    f"[atmc] has an unknown key {key!r}.{did_you_mean(key, allowed)} "
                    f"Valid keys: {', '.join(sorted(allowed))}."
                )
        kwargs: dict[str, Any] = {}
        if "version" in data:
            kwargs["version"] = data["version"]
        for name, section_cls in _SECTIONS.items():
            if name not in data:
                continue
            value = data[name]
            if name == "attack" and (value is None or value is False):
                kwargs["attack"] = None
            else:
                kwargs[name] = _section_from_dict(name, section_cls, value)
        return cls(**kwargs)

    @classmethod
    def from_file(cls, path: str | Path) -> ATMCConfig:
        """Load a ``.toml`` or ``.json`` file; a TOML recipe's ``[atmc]`` section is used."""
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"config file {str(p)!r} does not exist.")
        suffix = p.suffix.lower()
        try:
            if suffix == ".toml":
                data: Any = tomllib.loads(p.read_text(encoding="utf-8"))
            elif suffix == ".json":
                data = json.loads(p.read_text(encoding="utf-8"))
            else:
                raise ConfigError(
                    f"{str(p)!r}: unsupported extension {suffix!r}; use .toml or .json."
                )
        except (tomllib.TOMLDecodeError, json.JSONDecodeError) as exc:
            raise ConfigError(f"{str(p)!r} is not valid {suffix[1:].upper()}: {exc}") from exc
        if isinstance(data, Mapping) and "atmc" in data:
            data = data["atmc"]
        try:
            return cls.from_dict(data)
        except ConfigError as exc:
            raise ConfigError(f"{p}: {exc}") from exc

    def to_json(self, path: str | Path) -> None:
        """Write the config as JSON (``from_file`` reads it back)."""
        Path(path).write_text(json.dumps(self.to_dict(), indent=2) + "\n", encoding="utf-8")
