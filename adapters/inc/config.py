"""``ATMCQuantConfig``: ATMC as an Intel Neural Compressor algorithm config (name ``"atmc"``).

Registered in INC's own config registry when this module is imported (the adapter plugin
loads it through the ``atmc_plugin`` entry point), so ``quantize(model, ATMCQuantConfig(...))``,
``prepare``/``convert``, dict configs ``{"atmc": {...}}``, ``set_local``, JSON files and
``autotune(TuningConfig(config_set=[...]))`` all work. As in INC, a list value is a tuning
space.
"""

from __future__ import annotations

import inspect
from collections import OrderedDict
from typing import Any, ClassVar

import torch

from .compat import check_supported, installed_version

check_supported(installed_version())  # before INC's registries are touched

from neural_compressor.common.base_config import (  # noqa: E402
    DEFAULT_WHITE_LIST,
    BaseConfig,
    register_config,
)
from neural_compressor.torch.quantization.config import (  # noqa: E402
    OperatorConfig,
    TorchBaseConfig,
)

from atmc_plugin import (  # noqa: E402
    ADMMConfig,
    ATMCConfig,
    AttackConfig,
    ConfigError,
    ConstraintConfig,
)
from atmc_plugin.config import preset_key  # noqa: E402
from atmc_plugin.errors import did_you_mean  # noqa: E402

ALGO_NAME = "atmc"
PRIORITY_ATMC = 5  # below INC's built-ins: never chosen unless asked for by name
BACKENDS = ("rtn", "pt2e", "none")
SUPPORTED_TYPES = (torch.nn.Linear, torch.nn.Conv2d)


@register_config(framework_name="torch", algo_name=ALGO_NAME, priority=PRIORITY_ATMC)
class ATMCQuantConfig(TorchBaseConfig):
    """Adversarially trained compression onto INC's integer grid.

    :param dtype: ``"int"`` to compress an op, ``"fp32"`` to leave it alone (for ``set_local``).
    :param bits: integer bits of the grid ATMC trains for (1..8).
    :param use_sym: symmetric grid (INC's ``use_sym``).
    :param group_size: ``-1`` per output channel, else elements per group (INC's convention).
    :param backend: what ``convert`` hands the trained model to: ``"rtn"`` (INC weight-only RTN,
        Linear only), ``"pt2e"`` (the model stays fp32 on the int8 grid, for INC static int8:
        see :func:`atmc_plugin_adapters.inc.quantize_static_int8`), or ``"none"``.
    :param density: fraction of the compressed weights kept non-zero (1.0 = no sparsity).
    :param allocation: how layers share the sparsity budget (``"lamp"``, ``"effective"``,
        ``"magnitude"``; see :class:`atmc_plugin.ConstraintConfig`).
    :param min_per_layer: non-zeros every compressed tensor keeps at least.
    :param schedule: ``"cubic"`` anneal of the budget or ``"constant"``.
    :param ramp_steps: optimizer steps of the cubic anneal; ``None`` (default): ``ramp_fraction``
        of ``total_steps``, see :class:`atmc_plugin.ConstraintConfig`.
    :param ramp_fraction: share of ``total_steps`` the anneal takes when ``ramp_steps`` is unset.
    :param total_steps: optimizer steps your ``run_fn`` takes (``epochs * len(loader)``), the
        length the budget anneals over. Without it (and without ``ramp_steps``) a sparsity
        budget is at its target from the first step and ATMC warns once;
        ``session_of(model).set_total_steps(n)`` inside ``run_fn`` works too.
    :param attack: training attack (``pgd``, ``fgsm``, ``ffgsm``, ``nfgsm``, ``tpgd`` or a
        plugin's), or a preset: ``"fast"`` (N-FGSM, guarded) or ``"standard"`` (PGD-7).
    :param eps: l_inf radius in [0, 1] pixel units.
    :param steps: attack iterations.
    :param alpha: attack step (0 = the attack's default, see :class:`atmc_plugin.AttackConfig`).
    :param noise: N-FGSM's noise as a multiple of ``eps`` (0 = the paper's 2).
    :param rho: ADMM penalty weight.
    :param interval: optimizer steps between ADMM updates.
    :param white_list: op types or names INC may assign this config to (INC's default:
        every op :meth:`get_model_info` lists, i.e. Linear and Conv2d).
    """

    name = ALGO_NAME
    supported_configs: ClassVar[list[OperatorConfig]] = []

    def __init__(
        self,
        dtype: str = "int",
        bits: int = 8,
        use_sym: bool = True,
        group_size: int = -1,
        backend: str = "rtn",
        density: float = 1.0,
        allocation: str = "lamp",
        min_per_layer: int = 4,
        schedule: str = "cubic",
        ramp_steps: int | None = None,
        ramp_fraction: float = 0.5,
        total_steps: int | None = None,
        attack: str = "pgd",
        eps: float = 8 / 255,
        steps: int = 7,
        alpha: float = 0.0,
        noise: float = 0.0,
        rho: float = 0.1,
        interval: int = 10,
        white_list: list[Any] | None = DEFAULT_WHITE_LIST,
        **kwargs: Any,
    ) -> None:
        if kwargs:
            # INC builds configs with cls(**dict): a misspelled key would be dropped silently
            known = [n for n in inspect.signature(ATMCQuantConfig).parameters if n != "kwargs"]
            key = sorted(kwargs)[0]
            raise ConfigError(
                f"atmc has no setting {key!r}.{did_you_mean(key, known)} Valid settings: "
                f"{', '.join(known)}."
            )
        super().__init__(white_list=white_list)
        self.dtype = dtype
        self.bits = bits
        self.use_sym = use_sym
        self.group_size = group_size
        self.backend = backend
        self.density = density
        self.allocation = allocation
        self.min_per_layer = min_per_layer
        self.schedule = schedule
        self.ramp_steps = ramp_steps
        self.ramp_fraction = ramp_fraction
        self.total_steps = total_steps
        self.attack = attack
        self.eps = eps
        self.steps = steps
        self.alpha = alpha
        self.noise = noise
        self.rho = rho
        self.interval = interval
        self._post_init()

    @classmethod
    def register_supported_configs(cls) -> None:
        # As everywhere in INC, a list is a tuning space.
        space: dict[str, Any] = {
            "bits": [2, 3, 4, 5, 6, 7, 8],
            "use_sym": [True, False],
            "group_size": [-1, 32, 64, 128],
            "backend": list(BACKENDS),
        }
        cls.supported_configs = [
            OperatorConfig(config=cls(**space), operators=list(SUPPORTED_TYPES))
        ]

    @staticmethod
    def get_model_info(model: torch.nn.Module) -> list[tuple[str, str]]:
        return [
            (name, type(module).__name__)
            for name, module in model.named_modules()
            if isinstance(module, SUPPORTED_TYPES)
        ]

    @classmethod
    def get_config_set_for_tuning(cls) -> ATMCQuantConfig:
        space: dict[str, Any] = {"bits": [8, 4], "density": [1.0, 0.1]}
        return cls(**space)

    # -- JSON (INC 3.10's BaseConfig writes internal fields and unpacks the dict on load) ------
    def get_params_dict(self) -> dict[str, Any]:
        """Only the constructor parameters, so ``to_dict``/JSON round-trip through ``from_dict``."""
        return {name: getattr(self, name) for name in self.params_list if name != "white_list"}

    @classmethod
    def from_json_file(cls, filename: str) -> ATMCQuantConfig:
        """Load a config written by :meth:`to_json_file` (global and ``set_local`` entries)."""
        import json

        with open(filename, encoding="utf-8") as file:
            data = json.load(file)
        config: ATMCQuantConfig = cls.from_dict(data)
        return config

    # -- the bridge to atmc_plugin -------------------------------------------------------------
    def validate(self) -> None:
        """Raise :class:`atmc_plugin.ConfigError` for values INC would accept but ATMC cannot."""
        if self.dtype not in ("int", "fp32"):
            raise ConfigError(
                f'atmc dtype = {self.dtype!r}: use "int" (compress) or "fp32" (skip).'
            )
        if self.backend not in BACKENDS:
            raise ConfigError(
                f"atmc backend = {self.backend!r}: choose one of {', '.join(BACKENDS)}."
            )
        if not isinstance(self.bits, int) or not 1 <= self.bits <= 8:
            raise ConfigError(f"atmc bits = {self.bits!r}: INC's integer grids take 1..8 bits.")
        if self.backend == "pt2e" and (self.bits != 8 or self.group_size != -1):
            raise ConfigError(
                f"atmc backend = 'pt2e' with bits = {self.bits}, group_size = {self.group_size}: "
                "INC static int8 quantizes weights to 8 bits per output channel; set bits = 8 and "
                "group_size = -1, or use backend = 'rtn' for lower bit widths."
            )
        if isinstance(self.density, bool) or not isinstance(self.density, (int, float)):
            raise ConfigError(f"atmc density = {self.density!r}: expected a number in (0, 1].")
        if not 0 < self.density <= 1:
            raise ConfigError(
                f"atmc density = {self.density!r}: the fraction of weights kept must lie in "
                "(0, 1] (1.0 = no sparsity)."
            )
        steps = self.total_steps
        bad_steps = isinstance(steps, bool) or not isinstance(steps, int) or steps < 1
        if steps is not None and bad_steps:
            raise ConfigError(
                f"atmc total_steps = {steps!r}: the number of optimizer steps run_fn takes, a "
                "positive integer (epochs * len(loader)), or None."
            )
        # every other value is ATMC's own: the same classes and rules as ATMCConfig check it
        try:
            self._atmc_config(["-"])
        except ConfigError as exc:
            raise ConfigError(f"atmc: {exc}") from exc

    def grid_key(self) -> tuple[Any, ...]:
        """What every op given to ATMC must share: the grid and the model-wide budget rules."""
        return (
            self.bits,
            self.use_sym,
            self.group_size,
            self.backend,
            self.density,
            self.allocation,
            self.min_per_layer,
            self.schedule,
            self.ramp_steps,
            self.ramp_fraction,
            self.total_steps,
        )

    def to_atmc(self, op_names: list[str]) -> ATMCConfig:
        """The equivalent :class:`atmc_plugin.ATMCConfig` for the given ops."""
        self.validate()
        return self._atmc_config(op_names)

    def _attack_config(self) -> AttackConfig:
        """``attack`` is an attack name or a preset of :data:`atmc_plugin.config.ATTACK_PRESETS`
        (``"fast"``, ``"standard"``); the other attack settings apply on top of either."""
        settings: dict[str, Any] = {
            "eps": self.eps,
            "steps": self.steps,
            "alpha": self.alpha or None,
            "noise": self.noise or None,
        }
        if preset_key(self.attack) is not None:
            return AttackConfig.preset(self.attack, **settings)
        return AttackConfig(name=self.attack, **settings)

    def _atmc_config(self, op_names: list[str]) -> ATMCConfig:
        group = self.group_size
        return ATMCConfig(
            attack=self._attack_config(),
            constraint=ConstraintConfig(
                density=None if self.density >= 1.0 else self.density,
                bits=self.bits,
                quantizer="int",
                symmetric=self.use_sym,
                granularity="channel" if group == -1 else "group",
                group_size=None if group == -1 else group,
                scale_rule="pt2e" if self.backend == "pt2e" else "rtn",
                allocation=self.allocation,
                min_per_layer=self.min_per_layer,
                schedule=self.schedule,
                ramp_steps=self.ramp_steps,
                ramp_fraction=self.ramp_fraction,
                include=tuple(op_names),
            ),
            admm=ADMMConfig(rho=self.rho, interval=self.interval),
        )


def atmc_ops(configs_mapping: OrderedDict[Any, BaseConfig]) -> tuple[list[str], ATMCQuantConfig]:
    """The op names INC assigned to ATMC, and their (single) config.

    :raises ConfigError: ops with different grids (ATMC trains one grid per model).
    """
    chosen = [
        (name, cfg)
        for (name, _type), cfg in configs_mapping.items()
        if cfg.name == ALGO_NAME and getattr(cfg, "dtype", "int") == "int"
    ]
    if not chosen:
        raise ConfigError("no op was assigned to atmc: check white_list and set_local().")
    keys = {cfg.grid_key() for _, cfg in chosen}
    if len(keys) > 1:
        raise ConfigError(
            f"atmc ops use different grids or budget settings {sorted(keys)} (bits, use_sym, "
            "group_size, backend, density, allocation, min_per_layer, schedule, ramp_steps, "
            "ramp_fraction, total_steps); "
            "ATMC trains one grid per model. Give every compressed op the same values, or "
            'exclude ops with set_local(name, ATMCQuantConfig(dtype="fp32")).'
        )
    return [name for name, _ in chosen], chosen[0][1]
