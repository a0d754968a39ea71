"""INC static int8 (PT2E) around ATMC: export, adversarial calibration, convert, attackable copy.

- :func:`quantize_static_int8`: INC's own ``export -> prepare(StaticQuantConfig) -> calibrate ->
  convert`` with a dynamic batch dimension; calibration can mix clean and adversarial batches
  (attacks run on an fp32 copy, with gradients enabled). The user's model is not modified.
- :func:`straight_through_copy`: the converted graph with every quantize -> dequantize pair
  replaced by ``torch.fake_quantize_per_{tensor,channel}_affine`` - identical outputs, but
  input gradients flow (straight-through), so white-box attacks evaluate the deployed int8
  model instead of its fp32 parent.
- :func:`weight_movement`: how far INC's int8 conversion moved each weight it was given
  (for an ATMC model trained on the ``pt2e`` grid this is float rounding).
- :func:`robust_eval_fn`: an ``eval_fn`` for ``autotune`` scoring clean and robust accuracy.
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import torch
from torch import Tensor, fx, nn

from atmc_plugin import ATMCConfig, AttackConfig, ConfigError, InputError
from atmc_plugin.adversary import Adversary
from atmc_plugin.artifacts import check_batches, first_argument
from atmc_plugin.errors import did_you_mean
from atmc_plugin.plugins import default_plugin_manager

_QD = torch.ops.quantized_decomposed


def quantize_static_int8(
    model: nn.Module,
    example_inputs: Tensor,
    calibration: Iterable[tuple[Tensor, Tensor]],
    *,
    attack: AttackConfig | str | Mapping[str, Any] | None = None,
    adversarial_fraction: float = 0.5,
    config: Any = None,
    seed: int | None = None,
) -> fx.GraphModule:
    """INC static int8 of ``model`` (left unchanged), calibrated on ``calibration`` batches.

    :param model: the fp32 model (for example after ATMC with ``backend="pt2e"``).
    :param example_inputs: one batch for export; the batch dimension stays dynamic.
    :param calibration: ``(x, y)`` batches.
    :param attack: if given, each batch is calibrated clean and, for ``adversarial_fraction``
        of its examples, adversarially (attack on an fp32 copy): an :class:`AttackConfig`, an
        attack name (``"pgd"``, with :class:`AttackConfig`'s defaults) or a dict of its fields
        (``{"name": "pgd", "eps": 0.1}``).
    :param config: INC's ``StaticQuantConfig`` (default: INC's defaults); see
        :func:`static_config_from_dict` for the validated dict form.
    :param seed: seed of the adversarial calibration's random starts, set after INC's export
        and prepare (which may draw from the global RNG on first use), so the same call gives
        the same int8 model in any process; the global RNG is left as it was.
    :raises InputError: the model cannot be exported (dynamic control flow, unsupported ops).
    """
    from neural_compressor.torch.export import export
    from neural_compressor.torch.quantization import StaticQuantConfig, convert, prepare

    if not 0.0 <= adversarial_fraction <= 1.0:
        raise InputError(f"adversarial_fraction = {adversarial_fraction} must lie in [0, 1].")
    attack = _attack_config(attack)
    fp32 = copy.deepcopy(model).eval()
    name = first_argument(fp32)
    if example_inputs.shape[0] == 1:
        # torch.export specializes a dimension of size 1: a one-example batch would freeze the
        # batch size at 1. Two copies of it trace the same graph with the batch left dynamic.
        example_inputs = check_batches(example_inputs, [2])[0]
    try:
        exported = export(
            copy.deepcopy(fp32),
            (example_inputs,),
            dynamic_shapes={name: {0: torch.export.Dim("batch")}},
        )
    except Exception as exc:  # torch.export raises many types
        raise InputError(
            f"{type(model).__name__} cannot be exported for INC static int8: {exc}. "
            "torch.export needs a model without data-dependent control flow; see "
            "https://pytorch.org/docs/stable/export.html."
        ) from exc
    if exported is None:
        raise InputError(f"INC could not export {type(model).__name__} for static int8.")
    quant_config = config if config is not None else StaticQuantConfig()
    prepared = prepare(exported, quant_config, example_inputs=(example_inputs,))
    adversary = Adversary(fp32, attack, default_plugin_manager()) if attack is not None else None
    with torch.random.fork_rng(enabled=seed is not None), torch.no_grad():
        if seed is not None:
            torch.manual_seed(seed)
        for x, y in calibration:
            prepared(x)
            if adversary is not None and adversarial_fraction > 0:
                n = max(1, round(adversarial_fraction * len(x)))
                prepared(adversary(x[:n], y[:n]))
    converted: fx.GraphModule = convert(prepared)
    return converted


def _attack_config(attack: Any) -> AttackConfig | None:
    """``attack`` as an :class:`AttackConfig` (from a name, a dict or itself)."""
    if attack is None or isinstance(attack, AttackConfig):
        return attack
    if isinstance(attack, str):
        return AttackConfig(name=attack)
    if isinstance(attack, Mapping):
        return ATMCConfig.from_dict({"attack": dict(attack)}).attack
    raise InputError(
        f"attack = {attack!r}: give an AttackConfig, an attack name such as 'pgd', or a dict "
        "such as {'name': 'pgd', 'eps': 0.1}."
    )


STATIC_CHOICES: dict[str, tuple[Any, ...]] = {
    "w_dtype": ("int8",),
    "w_sym": (True, False),
    "w_granularity": ("per_channel", "per_tensor"),
    "w_algo": ("minmax", "kl"),
    "act_dtype": ("uint8", "int8"),
    "act_sym": (True, False),
    "act_granularity": ("per_tensor",),
    "act_algo": ("minmax", "kl"),
}


def static_config_from_dict(settings: dict[str, Any]) -> Any:
    """INC's ``StaticQuantConfig`` from its dict form, with the keys and values checked
    (INC itself ignores unknown keys and takes any value).

    :raises ConfigError: an unknown key or a value outside what PT2E static int8 supports.
    """
    from neural_compressor.torch.quantization import StaticQuantConfig

    for key, value in settings.items():
        if key not in STATIC_CHOICES:
            raise ConfigError(
                f"static quantization has no setting {key!r}.{did_you_mean(key, STATIC_CHOICES)} "
                f"Settings: {', '.join(STATIC_CHOICES)}."
            )
        if value not in STATIC_CHOICES[key] or isinstance(value, bool) != isinstance(
            STATIC_CHOICES[key][0], bool
        ):
            raise ConfigError(
                f"static quantization {key} = {value!r}: choose one of "
                f"{', '.join(map(repr, STATIC_CHOICES[key]))}."
            )
    return StaticQuantConfig(**settings)


def straight_through_copy(graph_module: fx.GraphModule) -> fx.GraphModule:
    """Copy of a converted PT2E graph whose Q/DQ pairs are straight-through fake-quant ops.

    :raises InputError: the graph has a quantize op not followed only by its dequantize.
    """
    with warnings.catch_warnings():
        # torch's own pytree deprecation, raised while copying an exported graph's specs
        warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)")
        gm = copy.deepcopy(graph_module)
    pairs: dict[Any, tuple[Any, Callable[..., Tensor]]] = {
        _QD.quantize_per_tensor.default: (_QD.dequantize_per_tensor.default, _fq_tensor),
        _QD.quantize_per_channel.default: (_QD.dequantize_per_channel.default, _fq_channel),
    }
    for node in list(gm.graph.nodes):
        if node.op != "call_function" or node.target not in pairs:
            continue
        deq_target, build = pairs[node.target]
        users = list(node.users)
        if not users or any(u.target != deq_target for u in users):
            raise InputError(
                f"quantize node {node.name} is not followed by {deq_target}; this graph is not "
                "a converted INC/PT2E model."
            )
        for user in users:
            with gm.graph.inserting_before(user):
                fake = gm.graph.call_function(build, args=node.args)
            user.replace_all_uses_with(fake)
            gm.graph.erase_node(user)
        gm.graph.erase_node(node)
    gm.graph.lint()
    gm.recompile()
    return gm


def _fq_tensor(x: Tensor, scale: Any, zero: Any, qmin: int, qmax: int, _dtype: Any) -> Tensor:
    return torch.fake_quantize_per_tensor_affine(x, float(scale), int(zero), qmin, qmax)


def _fq_channel(
    x: Tensor, scale: Tensor, zero: Tensor, axis: int, qmin: int, qmax: int, _dtype: Any
) -> Tensor:
    return torch.fake_quantize_per_channel_affine(x, scale, zero.int(), axis, qmin, qmax)


def weight_movement(graph_module: fx.GraphModule) -> dict[str, float]:
    """Per weight constant: max |dequantize(quantize(w)) - w| in INC's converted graph.

    The constants are the (BatchNorm-folded) fp32 weights INC received; a weight trained on
    ATMC's ``pt2e`` grid is already on INC's per-channel grid, so it moves by float rounding.
    """
    out = {}
    for node in graph_module.graph.nodes:
        if node.op == "call_function" and node.target == _QD.quantize_per_channel.default:
            w_node, s_node, z_node, axis, qmin, qmax, _ = node.args
            w = _constant(graph_module, w_node)
            scale = _constant(graph_module, s_node)
            zero = _constant(graph_module, z_node)
            moved = _fq_channel(w, scale, zero, axis, qmin, qmax, None) - w
            out[str(w_node)] = float(moved.abs().max())
    return out


def code_agreement(graph_module: fx.GraphModule, atmc: Any) -> dict[str, float]:
    """Per layer: fraction of INC's int8 weight codes equal to the codes ATMC trained with.

    ``atmc`` is the finalized :class:`atmc_plugin.ATMC` (``session_of(model).atmc``) whose
    ``pt2e``-grid scales are frozen. PyTorch's per-channel symmetric observer used by INC
    (``scale = amax / 127.5`` on ``[-128, 127]``) has no non-zero fixed point, so INC re-derives
    each channel's scale about 0.4% off ATMC's; what it must keep are the integer codes (hence
    the sparsity pattern). INC's codes are read from the converted graph (BatchNorm-folded
    constants and their scales), with the per-channel sign aligned (a negative BatchNorm scale
    flips it). Graph constants are matched to parameters by name.
    """
    if not atmc.frozen:
        raise InputError("call this after convert: ATMC's codes are fixed by its finalize().")
    params = atmc.parameters()
    by_graph_name = {name.replace(".", "_"): name for name in params}
    out = {}
    for node in graph_module.graph.nodes:
        if node.op != "call_function" or node.target != _QD.quantize_per_channel.default:
            continue
        w_node, s_node, _z, axis, qmin, qmax, _ = node.args
        target = str(w_node.target if isinstance(w_node, fx.Node) else w_node)
        name = target if target in params else by_graph_name.get(target)
        if name is None or name not in atmc.qstates:
            continue
        folded = _constant(graph_module, w_node)
        scale = _constant(graph_module, s_node)
        shape = [1] * folded.dim()
        shape[axis] = -1
        theirs = torch.clamp(torch.round(folded * (1.0 / scale.reshape(shape))), qmin, qmax)
        theirs = theirs.reshape(theirs.shape[0], -1)
        weight = params[name].detach()
        atmc_scale = atmc.qstates[name][0][0].to(weight.device).unsqueeze(1)
        ours = torch.round(weight.reshape(weight.shape[0], -1) * (1.0 / atmc_scale))
        sign = torch.sign((theirs * ours).sum(1, keepdim=True))
        sign[sign == 0] = 1
        out[name] = float((theirs == ours * sign).float().mean())
    return out


def _constant(gm: fx.GraphModule, node: Any) -> Tensor:
    if isinstance(node, fx.Node) and node.op == "get_attr":
        value = gm
        for part in str(node.target).split("."):
            value = getattr(value, part)
        return value.detach() if isinstance(value, Tensor) else torch.as_tensor(value)
    return torch.as_tensor(node)


def robust_eval_fn(
    x: Tensor,
    y: Tensor,
    *,
    eps: float,
    preset: str = "quick",
    robust_weight: float = 0.5,
    floor: float = 1e-6,
) -> Callable[[nn.Module], float]:
    """An ``eval_fn`` for INC's ``autotune``: ``(1 - w) * clean + w * robust`` accuracy.

    Robust accuracy is :func:`atmc_plugin.evaluate`'s worst case for ``preset`` (int8 graphs
    are attacked through their straight-through copy, as everywhere). The score is never below
    ``floor`` (INC divides by the baseline score, and 0 raises there).
    """
    from atmc_plugin import evaluate

    if not 0.0 <= robust_weight <= 1.0:
        raise InputError(f"robust_weight = {robust_weight} must lie in [0, 1].")
    if floor <= 0:
        raise InputError(f"floor = {floor} must be > 0: autotune divides by the baseline score.")

    def score(model: nn.Module) -> float:
        report = evaluate(model, (x, y), eps=eps, preset=preset, sanity=False, cascade=True)
        return max(floor, (1 - robust_weight) * report.clean + robust_weight * report.robust)

    return score


def _attackable(model: nn.Module) -> nn.Module:
    if isinstance(model, fx.GraphModule) and any(
        n.op == "call_function" and n.target == _QD.quantize_per_tensor.default
        for n in model.graph.nodes
    ):
        return straight_through_copy(model)
    return model
