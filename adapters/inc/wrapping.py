"""``atmc_plugin.wrap(inc_config, atmc_config)``: the ATMC config for an INC config's grid."""

from __future__ import annotations

from typing import Any

from atmc_plugin import ATMCConfig, ConfigError

from .config import ATMCQuantConfig


def from_inc_config(
    inc_config: Any, config: ATMCConfig, total_steps: int | None = None
) -> ATMCQuantConfig | None:
    """The :class:`ATMCQuantConfig` training for ``inc_config``'s grid, or ``None``.

    :param total_steps: the length of ``run_fn`` in optimizer steps (see ``ATMCQuantConfig``).

    :raises ConfigError: ``config.constraint.bits`` disagrees with the INC config's bits.
    """
    from neural_compressor.torch.quantization import RTNConfig, StaticQuantConfig
    from neural_compressor.torch.quantization.config import INT8StaticQuantConfig

    if isinstance(inc_config, RTNConfig):
        bits, sym, group, backend = (
            inc_config.bits,
            inc_config.use_sym,
            inc_config.group_size,
            "rtn",
        )
    elif isinstance(inc_config, (StaticQuantConfig, INT8StaticQuantConfig)):
        bits, sym, group, backend = 8, True, -1, "pt2e"
    else:
        return None
    wanted = config.constraint.bits
    if wanted is not None and wanted != bits:
        raise ConfigError(
            f"constraint.bits = {wanted} but the {type(inc_config).__name__} quantizes to {bits} "
            f"bits: ATMC must train for the grid INC will use. Set constraint.bits = {bits} or "
            "leave it unset."
        )
    attack = config.attack
    c = config.constraint
    return ATMCQuantConfig(
        bits=bits,
        use_sym=sym,
        group_size=group,
        backend=backend,
        density=c.density if c.density is not None else 1.0,
        allocation=c.allocation,
        min_per_layer=c.min_per_layer,
        schedule=c.schedule,
        ramp_steps=c.ramp_steps,
        ramp_fraction=c.ramp_fraction,
        total_steps=total_steps,
        attack=attack.name if attack else "pgd",
        eps=attack.eps if attack else 8 / 255,
        steps=attack.steps if attack else 7,
        alpha=(attack.alpha or 0.0) if attack else 0.0,
        noise=(attack.noise or 0.0) if attack else 0.0,
        rho=config.admm.rho,
        interval=config.admm.interval,
    )
