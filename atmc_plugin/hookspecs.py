"""Hook specifications of atmc-plugin.

Hooks are grouped by lifecycle phase: building (attack names, attack, projection, adapter,
an attackable copy of a model for evaluation, the ``atmc`` command's backend for a recipe
section) and notifications (after a projection, an ADMM update, a pruning step). Implement them with
:data:`atmc_plugin.hookimpl` and register the module through the ``atmc_plugin`` entry-point
group. Every hook is documented in ``docs/hooks.md`` under its exact signature.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pluggy

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping

    from torch import Tensor, nn

    from .backend import BackendContext, CompressionBackend, ShipBackend
    from .config import ATMCConfig, AttackConfig, ConstraintConfig
    from .core import ATMC
    from .projection import Projection

PROJECT_NAME = "atmc_plugin"

hookspec = pluggy.HookspecMarker(PROJECT_NAME)


# -- building -------------------------------------------------------------------------------
@hookspec
def atmc_attack_names() -> list[str]:
    """Return the names of the training attacks this plugin can build.

    Used to list installed attacks and to suggest the nearest name when a config asks for an
    unknown one. Every plugin's list is collected.
    """


@hookspec(firstresult=True)
def atmc_build_attack(
    model: nn.Module, config: AttackConfig
) -> Callable[[Tensor, Tensor], Tensor] | None:
    """Return an attack ``attack(x, y) -> x_adv`` for ``config``, or ``None`` if the name is not
    this plugin's.

    The returned callable receives float32 inputs in [0, 1] on the model's device and int64
    labels, and must return a tensor of the same shape within ``config.eps`` of ``x`` in l_inf.
    The core wraps it: module training flags, parameter gradients, ``no_grad`` contexts and input
    validation are handled there, so the plugin only computes the perturbation.

    Stops at first non-None result.

    :param model: the model under attack, already on its device.
    :param config: the validated attack configuration (``config.options`` holds extra kwargs).
    """


@hookspec(firstresult=True)
def atmc_build_projection(config: ConstraintConfig) -> Projection | None:
    """Return the constraint projection for ``config``, or ``None`` to let another plugin do it.

    The result must satisfy :class:`atmc_plugin.projection.Projection`: a global sparsity
    projection over a list of tensors and a per-tensor quantization projection. A plugin
    supplies another budget allocation this way: ``sparsity_masks`` gets the ranking tensors
    (BatchNorm folded in unless ``allocation = "magnitude"``) and the scheduled budget.

    Stops at first non-None result.

    :param config: the validated constraint configuration.
    """


@hookspec(firstresult=True)
def atmc_build_adapter(target: Any, config: ATMCConfig, options: Mapping[str, Any]) -> Any:
    """Return an ATMC adapter wrapping ``target`` (for example a Torch-Pruning pruner), or
    ``None`` when ``target`` is not an object of this plugin's tool.

    Called by :func:`atmc_plugin.wrap`. Stops at first non-None result.

    :param target: the user's tool object to wrap.
    :param config: the ATMC configuration.
    :param options: extra keyword arguments given to ``wrap`` (for example ``optimizer``).
    """


@hookspec(firstresult=True)
def atmc_attackable_model(model: nn.Module) -> nn.Module | None:
    """Return a differentiable copy of ``model`` with the same outputs, for white-box attacks,
    or ``None`` when ``model`` is not of this plugin's kind (it is then attacked as it is).

    Used by :func:`atmc_plugin.evaluate` for models whose gradients are missing or wrong, such as
    INC's int8 graphs. Stops at first non-None result.

    :param model: the model to evaluate.
    """


@hookspec(firstresult=True)
def atmc_command_backend(
    section: str, settings: Mapping[str, Any], context: BackendContext
) -> CompressionBackend | ShipBackend | None:
    """Return the backend the ``atmc`` command drives for recipe section ``section``, or
    ``None`` when the section is not this plugin's tool. See :mod:`atmc_plugin.backend`.

    Stops at first non-None result.

    :param section: ``"torch_pruning"`` or ``"inc.atmc"`` (a
        :class:`~atmc_plugin.backend.CompressionBackend` is wanted), ``"inc.static"`` (a
        :class:`~atmc_plugin.backend.ShipBackend`), or a section a third-party tool defines.
    :param settings: the section's keys and values, as the recipe gives them: the backend
        validates them (raise :class:`~atmc_plugin.ConfigError` naming the key, the value and
        the fix; :class:`atmc_plugin.settings.Settings` does it), the command adds the file.
    :param context: the run's ``[atmc]`` configuration, an example batch, seed, source.
    """


@hookspec
def atmc_command_sections() -> list[str]:
    """The recipe sections this plugin's :func:`atmc_command_backend` serves (e.g.
    ``["inc.atmc", "inc.static", "inc.rtn"]``): listed by ``atmc plugins`` and offered as
    "did you mean" for a section no plugin handles. Results of all plugins are collected.
    """


# -- notifications --------------------------------------------------------------------------
@hookspec
def atmc_after_projection(atmc: ATMC, step: int, stats: Mapping[str, Any]) -> None:
    """Called after every sparsity projection of the weights. Return value is ignored.

    :param atmc: the :class:`atmc_plugin.ATMC` object that projected.
    :param step: optimizer steps seen so far.
    :param stats: ``nnz`` (kept non-zeros), ``budget`` and ``threshold`` (smallest kept magnitude).
    """


@hookspec
def atmc_after_admm_update(atmc: ATMC, step: int, stats: Mapping[str, Any]) -> None:
    """Called after every ADMM ``Z``/``U`` update. Return value is ignored.

    :param atmc: the :class:`atmc_plugin.ATMC` object that updated.
    :param step: optimizer steps seen so far.
    :param stats: ``primal_residual`` (``sqrt(sum ||W - Z||^2)``) and ``dual_residual``
        (``rho * sqrt(sum ||Z - Z_prev||^2)``).
    """


@hookspec
def atmc_after_pruning_step(pruner: Any, step: int, stats: Mapping[str, Any]) -> None:
    """Called by adapters after each structural pruning step. Return value is ignored.

    :param pruner: the wrapped pruner that stepped.
    :param step: pruning steps done so far.
    :param stats: adapter-defined figures, at least ``params`` (remaining parameters).
    """
