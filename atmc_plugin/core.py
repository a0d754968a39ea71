"""The ATMC object: adversarial examples plus the joint constraint, for any training loop.

::

    atmc = atmc_plugin.ATMC(model, atmc_plugin.ATMCConfig(...), optimizer=optimizer)
    for x, y in loader:
        x_adv = atmc.perturb(x, y)
        loss = criterion(model(x_adv), y) + atmc.penalty()
        optimizer.zero_grad(); loss.backward(); optimizer.step()  # projections run here
    atmc.finalize()          # hard projection; later steps keep mask and codebook fixed
    report = atmc.report()
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import warnings
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn

from .adversary import Adversary, unwrap_model
from .config import ATMCConfig, AttackConfig
from .engine.admm import ADMMState
from .engine.allocation import scheduled_budget
from .engine.factorize import FACTOR_NAMES, factorize, is_factorized
from .errors import ConfigError, InputError, PluginError, ScheduleWarning, TrainingModeWarning
from .layers import following_norms, layer_weight, norm_scale, select_layers
from .plugins import default_plugin_manager
from .report import CompressionReport, build_report

logger = logging.getLogger(__name__)
STATE_VERSION = 1


class ATMC:
    """Adversarially trained model compression on a plain PyTorch model.

    Construction validates everything before touching the model: on error the model is
    unchanged. With ``constraint.factorize`` the selected weights are re-parametrized as
    ``U V + C`` (create the optimizer afterwards and :meth:`attach` it).

    :param model: the model (a ``DistributedDataParallel`` wrapper is looked through).
    :param config: the ATMC configuration (default: PGD attack, no constraint).
    :param optimizer: optional optimizer; projections and ADMM updates then run after each of
        its steps. Otherwise call :meth:`after_optimizer_step` yourself.
    :param plugin_manager: plugin manager to use (default: :func:`default_plugin_manager`).
    :param dense_numel: number of dense weights the density budget refers to (default: the
        selected layers' weights now). Adapters pass the pre-pruning count.
    :param total_steps: how many optimizer steps your loop will take (``epochs * len(loader)``).
        With ``constraint.ramp_steps`` unset, the cubic budget anneal takes
        ``constraint.ramp_fraction`` of it; see :attr:`ramp_steps`.
    """

    def __init__(
        self,
        model: nn.Module,
        config: ATMCConfig | None = None,
        *,
        optimizer: torch.optim.Optimizer | None = None,
        plugin_manager: Any = None,
        dense_numel: int | None = None,
        total_steps: int | None = None,
    ) -> None:
        self.config = config if config is not None else ATMCConfig()
        if not isinstance(self.config, ATMCConfig):
            raise ConfigError(f"config must be an ATMCConfig, got {type(config).__name__}.")
        if not isinstance(model, nn.Module):
            raise InputError(f"model must be a torch.nn.Module, got {type(model).__name__}.")
        self.model = model
        self.module = unwrap_model(model)
        self.plugin_manager = (
            plugin_manager if plugin_manager is not None else default_plugin_manager()
        )
        constraint = self.config.constraint
        layers = select_layers(self.module, constraint)
        if not layers and (constraint.sparse or constraint.quantized):
            raise ConfigError(
                f"constraint.include = {list(constraint.include)!r} / exclude = "
                f"{list(constraint.exclude)!r} select no Conv or Linear layer of "
                f"{type(self.module).__name__}; widen the patterns."
            )
        weights = {f"{name}.weight": layer_weight(module) for name, module in layers}
        for name, weight in weights.items():
            _check_finite(name, weight)
        self.dense_numel = (
            int(dense_numel)
            if dense_numel is not None
            else sum(w.numel() for w in weights.values())
        )
        self.target_budget = constraint.budget_for(self.dense_numel)
        self.total_steps = _check_total_steps(total_steps)
        self._budget_floor: int | None = None
        self._floor_reason = ""
        self._mode_warned = False
        projection = self.plugin_manager.hook.atmc_build_projection(config=constraint)
        if projection is None:
            raise PluginError("no installed plugin builds a projection for this constraint.")
        self.projection = projection
        self.adversary = (
            Adversary(model, self.config.attack, self.plugin_manager)
            if self.config.attack
            else None
        )
        # Validation is over: from here on the model may be changed.
        self.names = self._compressed_names(layers)
        self._norms = (
            following_norms(self.module, [n for n, _ in layers])
            if constraint.allocation != "magnitude"
            else {}
        )
        self._batch_norms = [
            m for m in self.module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)
        ]
        self.step_count = 0
        self.frozen = False
        self.qstates: dict[str, Any] = {}
        self.masks: dict[str, Tensor] = {}
        self.admm = ADMMState(self.config.admm.rho)
        if constraint.quantized:
            params = self.parameters()
            self.admm.init(params, self._admm_projector(params))
        self._hook: Any = None
        self.optimizer: torch.optim.Optimizer | None = None
        if optimizer is not None:
            self.attach(optimizer)

    # -- setup -------------------------------------------------------------------------------
    def _compressed_names(self, layers: list[tuple[str, nn.Module]]) -> list[str]:
        names = []
        self._rows_of: dict[str, str] = {}  # tensor name -> layer whose output rows it holds
        for name, module in layers:
            prefix = f"{name}." if name else ""
            if self.config.constraint.factorize:
                if not is_factorized(module):
                    factorize(module)
                factors = [f"{prefix}parametrizations.weight.{n}" for n in FACTOR_NAMES]
                names += factors
                # W = L (R + I) + C or (L + I) R + C: L and C always have output rows; R does
                # only when the identity sits on the left.
                weight = layer_weight(module)
                right_identity = weight.shape[0] >= weight[0].numel()
                for factor in factors[:: 2 if right_identity else 1]:
                    self._rows_of[factor] = name
            else:
                names.append(f"{prefix}weight")
                self._rows_of[f"{prefix}weight"] = name
        return names

    # -- the budget --------------------------------------------------------------------------
    @property
    def ramp_steps(self) -> int | None:
        """Optimizer steps of the cubic anneal: ``constraint.ramp_steps`` when set, else
        ``constraint.ramp_fraction`` of :attr:`total_steps`; ``None`` when neither is known
        (the budget is then at its target from the first step, unless an outer schedule set
        with :meth:`set_budget_floor` holds it higher)."""
        c = self.config.constraint
        if c.ramp_steps is not None:
            return c.ramp_steps
        if self.total_steps is not None:
            return max(1, round(c.ramp_fraction * self.total_steps))
        return None

    def set_total_steps(self, total_steps: int | None) -> None:
        """Say how many optimizer steps the loop takes (see ``total_steps`` of the class)."""
        self.total_steps = _check_total_steps(total_steps)

    @property
    def budget(self) -> int | None:
        """The non-zero budget of the next projection (``None``: no sparsity constraint).

        ``constraint.schedule = "cubic"`` anneals it from the dense count to
        :attr:`target_budget` over :attr:`ramp_steps` optimizer steps; a floor set with
        :meth:`set_budget_floor` holds it higher; after :meth:`finalize` it is the target.
        """
        target = self.target_budget
        if target is None or self.frozen:
            return target
        c = self.config.constraint
        ramp = self.ramp_steps
        budget = (
            target
            if ramp is None
            else scheduled_budget(target, self.dense_numel, self.step_count, ramp, c.schedule)
        )
        if self._budget_floor is not None:
            budget = max(budget, min(self._budget_floor, self.dense_numel))
        return budget

    def set_budget_floor(self, floor: int | None, reason: str = "") -> None:
        """Keep the budget at ``floor`` or above (``None`` removes the floor).

        For an outer schedule, such as the structural steps of a Torch-Pruning pruner, that
        must not be overtaken by ATMC's own anneal. The target budget is unchanged. An outer
        schedule is a length for the anneal: ATMC's own ramp may then stay unset.

        :param reason: what holds the floor, said in :meth:`finalize`'s warning when the floor
            is still above the target there (e.g. ``"Torch-Pruning took 3 of its 5 steps"``).
        """
        if floor is not None and (isinstance(floor, bool) or not isinstance(floor, int)):
            raise InputError(f"budget floor = {floor!r}: expected an integer or None.")
        self._budget_floor = floor
        self._floor_reason = reason

    def attach(self, optimizer: torch.optim.Optimizer) -> None:
        """Run projections and ADMM updates after every ``optimizer.step()``.

        :raises InputError: the optimizer does not train every compressed tensor.
        """
        trained = {id(p) for g in optimizer.param_groups for p in g["params"]}
        missing = [n for n, p in self.parameters().items() if id(p) not in trained]
        if missing:
            raise InputError(
                f"the optimizer does not train {missing[:3]}{'...' if len(missing) > 3 else ''}; "
                "create it from model.parameters() after ATMC(...) (factorization replaces the "
                "weights) and attach it with atmc.attach(optimizer)."
            )
        self.detach()
        self.optimizer = optimizer
        self._hook = optimizer.register_step_post_hook(
            lambda _opt, _args, _kwargs: self.after_optimizer_step()
        )

    def detach(self) -> None:
        """Stop reacting to the attached optimizer's steps."""
        if self._hook is not None:
            self._hook.remove()
            self._hook = None
        self.optimizer = None

    def __deepcopy__(self, memo: dict[int, Any]) -> ATMC:
        """A copy for a copy of the model (``copy.deepcopy(model)`` with this ATMC in reach).

        The plugin manager is shared, not copied; the copy is attached to no optimizer (call
        :meth:`attach` with the copy's optimizer).
        """
        memo[id(self.plugin_manager)] = self.plugin_manager
        new = type(self).__new__(type(self))
        memo[id(self)] = new
        for key, value in self.__dict__.items():
            setattr(new, key, None if key in ("_hook", "optimizer") else copy.deepcopy(value, memo))
        return new

    # -- per-batch API -----------------------------------------------------------------------
    def parameters(self) -> dict[str, nn.Parameter]:
        """The compressed tensors, by name (resolved anew: survives parameter replacement)."""
        available = dict(self.module.named_parameters())
        missing = [n for n in self.names if n not in available]
        if missing:
            raise InputError(
                f"compressed parameters {missing} are no longer in the model; was the model "
                "changed outside ATMC? Rebuild ATMC for the new model."
            )
        params = {n: available[n] for n in self.names}
        for name, p in params.items():
            if name in self.admm and self.admm.z[name].device != p.device:
                self.admm.to(p.device)
                break
        return params

    def perturb(self, x: Tensor, y: Tensor) -> Tensor:
        """Adversarial version of the batch (``x`` itself when no attack is configured)."""
        if self.adversary is None:
            return x
        return self.adversary(x, y)

    def set_attack(self, attack: AttackConfig | None) -> None:
        """Train on ``attack`` from the next :meth:`perturb` on (``None``: no attack); the
        overfitting guard's switch to PGD. The config's other sections are kept."""
        if attack is not None and not isinstance(attack, AttackConfig):
            raise ConfigError(f"attack must be an AttackConfig or None, got {attack!r}.")
        adversary = Adversary(self.model, attack, self.plugin_manager) if attack else None
        self.config = dataclasses.replace(self.config, attack=attack)
        self.adversary = adversary

    def penalty(self) -> Tensor:
        """ADMM term ``rho / 2 * sum ||W - Z + U||^2`` to add to the loss (0 when unused)."""
        params = self.parameters()
        if not self.config.constraint.quantized or self.frozen:
            device = next(iter(params.values())).device if params else None
            return torch.zeros((), device=device)
        return self.admm.penalty(params)

    def after_optimizer_step(self) -> None:
        """Advance the schedule: sparsity projection and ADMM update when they are due."""
        params = self.parameters()
        for name, p in params.items():
            _check_finite(name, p, step=self.step_count + 1)
        self.step_count += 1
        self._check_training_mode()
        if self.frozen:
            self._snap_frozen(params)
            return
        c, a = self.config.constraint, self.config.admm
        if c.sparse and c.schedule == "cubic" and self.step_count == 1:
            self._check_schedule_has_length()
        if c.sparse and self.step_count % a.projection_interval == 0:
            self.project_sparsity(params)
        if c.quantized and self.step_count % a.interval == 0:
            stats = self.admm.update(params, self._admm_projector(params))
            self.plugin_manager.hook.atmc_after_admm_update(
                atmc=self, step=self.step_count, stats=stats
            )

    def _check_training_mode(self) -> None:
        """Warn once when a step trains a model left in eval mode with BatchNorm layers."""
        if self._mode_warned or self.module.training or not self._batch_norms:
            return
        frozen = [m for m in self._batch_norms if not m.training]
        if not frozen:
            return
        self._mode_warned = True
        warnings.warn(
            f"optimizer.step() on a model in eval mode: {len(frozen)} of its BatchNorm layers "
            "normalize with running statistics and never update them, so the weights train "
            "for statistics that do not match the batches (accuracy can fall to chance). "
            "Call model.train() before your training loop (Torch-Pruning's pruner constructor "
            "and INC's export leave the model in eval mode). To freeze BatchNorm on purpose, "
            "call model.train() and then .eval() on those layers only. Said once.",
            TrainingModeWarning,
            stacklevel=4,
        )

    def _check_schedule_has_length(self) -> None:
        if self.ramp_steps is not None or self._budget_floor is not None:
            return
        warnings.warn(
            "constraint.schedule = 'cubic' anneals the sparsity budget over your loop, but "
            "ATMC does not know how long it is: the budget is at its target "
            f"({self.target_budget:,} non-zeros of {self.dense_numel:,}) from the first step, "
            "as schedule = 'constant'. Pass ATMC(..., total_steps=epochs * len(loader)) (or "
            "atmc.set_total_steps(n)) to anneal over the first "
            f"{self.config.constraint.ramp_fraction:g} of it, set constraint.ramp_steps, or "
            "set schedule = 'constant' to silence this.",
            ScheduleWarning,
            stacklevel=4,
        )

    def _warn_if_final_jump(self) -> None:
        """Warn when :meth:`finalize` has to cut the budget by more than 10% in one projection."""
        before, target = self.budget, self.target_budget
        if target is None or before is None or self.step_count == 0 or before <= 1.1 * target:
            return
        c = self.config.constraint
        ramp = self.ramp_steps
        floor = self._budget_floor if self._budget_floor is not None else 0
        if floor >= before and self._floor_reason:
            why = f"{self._floor_reason}, which holds the budget at {floor:,}"
            fix = "finish the outer schedule before finalize()"
        elif c.ramp_steps is not None:
            why = f"constraint.ramp_steps = {c.ramp_steps} is longer than the {self.step_count} "
            why += "steps your loop took"
            fix = (
                f"set ramp_steps to about half your loop ({max(1, self.step_count // 2)}), or "
                f"leave it unset and pass total_steps={self.step_count}"
            )
        elif ramp is not None and self.total_steps is not None:
            why = (
                f"total_steps = {self.total_steps} (ramp {ramp} steps) but the loop took "
                f"{self.step_count}"
            )
            fix = f"pass the loop's real length (total_steps={self.step_count})"
        else:
            why = "an outer schedule holds the budget higher"
            fix = "finish it before finalize()"
        warnings.warn(
            f"finalize() cuts the sparsity budget from {before:,} to {target:,} non-zeros in one "
            f"projection after {self.step_count} optimizer steps: {why}. Nothing trains after "
            f"this cut, so accuracy can fall sharply. Fix: {fix}; then fine-tune after "
            "finalize() if accuracy still drops.",
            ScheduleWarning,
            stacklevel=3,
        )

    # -- projections -------------------------------------------------------------------------
    def project_sparsity(
        self, params: Mapping[str, nn.Parameter] | None = None, *, final: bool = False
    ) -> dict[str, Any]:
        """Global top-k projection of the compressed tensors, in place, onto the scheduled
        :attr:`budget` (the target budget with ``final=True``)."""
        params = self.parameters() if params is None else params
        budget = self.target_budget if final else self.budget
        if budget is None:
            return {}
        masks, threshold = self.projection.sparsity_masks(self._ranking(params), budget)
        with torch.no_grad():
            for p, m in zip(params.values(), masks, strict=True):
                p.mul_(m)
        stats = {
            "nnz": sum(int(torch.count_nonzero(p)) for p in params.values()),
            "budget": budget,
            "threshold": threshold,
        }
        self.plugin_manager.hook.atmc_after_projection(atmc=self, step=self.step_count, stats=stats)
        return stats

    def _ranking(self, params: Mapping[str, nn.Parameter]) -> list[Tensor]:
        """What the projection ranks: the weights, with each output row scaled by the following
        BatchNorm's ``|gamma| / sqrt(var + eps)`` unless ``allocation = "magnitude"``."""
        scales = self._norm_scales()
        out = []
        for name, p in params.items():
            tensor = p.detach()
            scale = scales.get(self._rows_of.get(name, ""))
            if scale is not None and scale.numel() == tensor.shape[0]:
                shape = (-1,) + (1,) * (tensor.dim() - 1)
                tensor = tensor * scale.to(tensor.device, tensor.dtype).view(shape)
            out.append(tensor)
        return out

    def _norm_scales(self) -> dict[str, Tensor]:
        """``{layer: |gamma| / sqrt(var + eps)}`` of the following norms, the same on every rank.

        Under ``torch.distributed`` (a process group of more than one rank) each rank updates
        its BatchNorm statistics from its own batch, so the scales are averaged over the ranks
        with one all-reduce to keep the masks identical everywhere: every rank must then step
        together, as data-parallel training does.
        """
        scales = {}
        for layer, norm in self._norms.items():
            scale = norm_scale(self.module.get_submodule(norm))
            if scale is not None:
                scales[layer] = scale
        if scales and torch.distributed.is_available():
            dist = torch.distributed
            if dist.is_initialized() and dist.get_world_size() > 1:
                flat = torch.cat(list(scales.values()))
                dist.all_reduce(flat)
                flat /= dist.get_world_size()
                sizes = [s.numel() for s in scales.values()]
                scales = dict(zip(scales, flat.split(sizes), strict=True))
        return scales

    def _admm_projector(self, params: Mapping[str, nn.Parameter]) -> Any:
        """``Z``-projection: quantize onto the current support of ``W`` (joint feasibility)."""
        sparse = self.config.constraint.sparse

        def project(name: str, value: Tensor) -> Tensor:
            mask = (params[name] != 0) if sparse else None
            projected: Tensor = self.projection.quantize(value, mask)[0]
            return projected

        return project

    def finalize(self) -> CompressionReport:
        """Hard projection ``W <- Quantize(H_k(W))``; afterwards mask and codebooks stay fixed.

        Further optimizer steps (adversarial fine-tuning) snap the weights back onto the frozen
        support and quantization set. Returns :meth:`report`.
        """
        params = self.parameters()
        for name, p in params.items():
            _check_finite(name, p)
        c = self.config.constraint
        if c.sparse and not self.frozen:
            self._warn_if_final_jump()
        if c.sparse:
            self.project_sparsity(params, final=True)
        with torch.no_grad():
            for name, p in params.items():
                mask = p != 0 if c.sparse else None
                if mask is not None:
                    self.masks[name] = mask
                if c.quantized:
                    q, qstate = self.projection.quantize(p, mask)
                    p.copy_(q)
                    self.qstates[name] = qstate
        self.frozen = True
        return self.report()

    def _snap_frozen(self, params: Mapping[str, nn.Parameter]) -> None:
        with torch.no_grad():
            for name, p in params.items():
                if name in self.qstates:
                    p.copy_(self.projection.snap(p, self.qstates[name]))
                if name in self.masks:
                    p.mul_(self.masks[name].to(p.device))

    def report(self) -> CompressionReport:
        """Non-zeros, distinct values, bits and size ratio of the compressed tensors now."""
        return build_report(
            self.parameters(), self.config.constraint.bits, self.dense_numel, self.target_budget
        )

    def proxy(self, name: str) -> Tensor | None:
        """ADMM's proxy ``Z`` of compressed tensor ``name`` (its projection onto the constraint
        set as of the last ADMM update), or ``None`` before quantization has started."""
        return self.admm.z.get(name)

    def reset(self, name: str) -> None:
        """Start ``name``'s state afresh (``Z = Proj(W)``, ``U = 0``, no frozen mask/set).

        For structural changes that cannot be traced index by index.
        """
        if name not in self.names:
            raise InputError(f"{name!r} is not compressed by this ATMC; known: {self.names}.")
        self.masks.pop(name, None)
        self.qstates.pop(name, None)
        if self.config.constraint.quantized:
            params = self.parameters()
            self.admm.init({name: params[name]}, self._admm_projector(params))

    def index_select(self, name: str, dim: int, index: Tensor) -> None:
        """Follow a structural change: keep only ``index`` along ``dim`` of ``name``'s state.

        Slices the ADMM ``Z``/``U`` and, after :meth:`finalize`, the frozen mask and the frozen
        quantization set (through the projection's ``select_state``). The sparsity budget stays
        defined against the dense model. Call it right after the parameter itself was sliced.

        :raises InputError: unknown name, or a frozen quantization set that cannot be sliced.
        """
        if name not in self.names:
            raise InputError(f"{name!r} is not compressed by this ATMC; known: {self.names}.")
        if self.qstates.get(name) is not None:
            select = getattr(self.projection, "select_state", None)
            if not callable(select):
                raise InputError(
                    f"{name!r} has a frozen quantization set that this projection "
                    f"({type(self.projection).__name__}) cannot slice (it has no select_state); "
                    "remove channels before atmc.finalize()."
                )
            try:
                self.qstates[name] = select(self.qstates[name], dim, index)
            except InputError as exc:
                raise InputError(f"{name!r}: {exc}") from exc
        if name in self.admm:
            self.admm.index_select(name, dim, index)
        if name in self.masks:
            mask = self.masks[name]
            self.masks[name] = mask.index_select(dim, index.to(mask.device)).contiguous()

    # -- checkpoints -------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Plain tensors and containers: loadable with ``torch.load(weights_only=True)``."""
        return {
            "version": STATE_VERSION,
            "names": list(self.names),
            "step": self.step_count,
            "budget": self.target_budget,
            "budget_floor": self._budget_floor,
            "total_steps": self.total_steps,
            "dense_numel": self.dense_numel,
            "frozen": self.frozen,
            "admm": self.admm.state_dict(),
            "qstates": dict(self.qstates),
            "masks": dict(self.masks),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict`; the compressed tensor names must match."""
        if not isinstance(state, Mapping) or state.get("version") != STATE_VERSION:
            raise InputError(
                "not an ATMC state dict of this version (expected the output of ATMC.state_dict())."
            )
        if list(state["names"]) != self.names:
            raise InputError(
                f"the checkpoint compresses {list(state['names'])[:3]}..., this ATMC compresses "
                f"{self.names[:3]}...; build ATMC with the same model and config."
            )
        self.admm.load_state_dict(state["admm"])
        self.step_count = int(state["step"])
        self.target_budget = state["budget"]
        self._budget_floor = state.get("budget_floor")
        self.total_steps = state.get("total_steps", self.total_steps)
        self.dense_numel = int(state["dense_numel"])
        self.frozen = bool(state["frozen"])
        self.qstates = dict(state["qstates"])
        self.masks = dict(state["masks"])
        # A checkpoint read with map_location="cpu" resumes on the model's device.
        devices = {name: p.device for name, p in self.parameters().items()}
        for table in (self.admm.z, self.admm.u, self.qstates, self.masks):
            for name in table:
                if name in devices:
                    table[name] = _to_device(table[name], devices[name])


def _to_device(value: Any, device: torch.device) -> Any:
    """``value`` (a tensor, or lists/tuples/dicts of them) with every tensor on ``device``."""
    if isinstance(value, Tensor):
        return value.to(device)
    if isinstance(value, (list, tuple)):
        return type(value)(_to_device(v, device) for v in value)
    if isinstance(value, dict):
        return {k: _to_device(v, device) for k, v in value.items()}
    return value


def _check_total_steps(total_steps: Any) -> int | None:
    if total_steps is None:
        return None
    if isinstance(total_steps, bool) or not isinstance(total_steps, int) or total_steps < 1:
        raise InputError(
            f"total_steps = {total_steps!r}: expected the number of optimizer steps your loop "
            "takes, a positive integer (epochs * len(loader)), or None."
        )
    return total_steps


def _check_finite(name: str, tensor: Tensor, step: int | None = None) -> None:
    if not bool(torch.isfinite(tensor.detach()).all()):
        when = f" at step {step}" if step is not None else ""
        raise InputError(
            f"parameter {name!r} contains NaN or inf{when}; nothing was projected or modified. "
            "Training diverged: lower the learning rate or the attack eps."
        )
