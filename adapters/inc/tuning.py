"""``autotune`` for ATMC configs: INC's own autotune, accepting one config or several."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from torch import nn

from atmc_plugin import ConfigError


def autotune(
    model: nn.Module,
    configs: Any,
    *,
    eval_fn: Callable[[nn.Module], float],
    run_fn: Callable[[nn.Module], None] | None = None,
    max_trials: int | None = None,
    **tuning_kwargs: Any,
) -> nn.Module:
    """INC's ``autotune`` over ``configs`` (one config, or a list/tuple of them).

    INC's ``TuningConfig(config_set=...)`` needs a list and crashes on a single config; this
    wraps a single one. Everything else is INC's: trials run on deep copies, ``eval_fn`` is
    higher-is-better (see :func:`atmc_plugin_adapters.inc.pt2e.robust_eval_fn`, never 0).
    """
    from neural_compressor.common.base_config import BaseConfig
    from neural_compressor.torch.quantization import TuningConfig
    from neural_compressor.torch.quantization import autotune as inc_autotune

    config_set = [configs] if isinstance(configs, BaseConfig) else configs
    if not isinstance(config_set, Sequence) or isinstance(config_set, str) or not config_set:
        raise ConfigError(f"configs = {configs!r}: give an INC config or a non-empty list of them.")
    if max_trials is None:
        max_trials = len(config_set)
    tuning = TuningConfig(config_set=list(config_set), max_trials=max_trials, **tuning_kwargs)
    tuned: nn.Module = inc_autotune(model, tuning, eval_fn=eval_fn, run_fn=run_fn)
    return tuned
