"""``atmc run``: a recipe's three training stages, safe to interrupt and to resume.

Stages (epochs from ``[train]``):

1. ``pretrain``: dense adversarial training with ``[atmc.attack]`` at ``lr``;
2. ``compress``: ATMC at ``lr / 2`` through the recipe's compression backend (the
   ``[torch_pruning]`` or ``[inc.atmc]`` adapter's, found through the plugins, or plain
   :class:`~atmc_plugin.ATMC`; see :mod:`atmc_plugin.app.backends`);
3. ``finetune``: the backend's hard projection (``finalize``), then adversarial fine-tuning
   at ``lr / 10`` with masks and quantization sets fixed.

After every epoch a checkpoint (model, optimizer, scheduler, backend state, RNG streams,
number of metric records) is written atomically, so ``--resume`` after a kill at any point ends
with the same final figures as an uninterrupted run. A non-finite loss or weight stops the run
(:class:`DivergedError`) and keeps the last good checkpoint.
"""

from __future__ import annotations

import logging
import time
import warnings
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from ..adversary import unwrap_model
from ..backend import CompressionBackend
from ..config import ATMCConfig
from ..core import ATMC
from ..errors import ATMCError, InputError, InternalError, ScheduleWarning
from .guarding import RunGuard
from .plan import Plan
from .precision import Precision, cuda_throughput
from .rundir import RunDir

log = logging.getLogger(__name__)
ROBUST_CURVE_POINTS = 128
STAGE_LR = {"pretrain": 1.0, "compress": 0.5, "finetune": 0.1}


class DivergedError(ATMCError):
    """Training produced a non-finite loss or weight; the last good checkpoint is kept."""


@dataclass(frozen=True)
class Trained:
    """What training hands to the end of the run (:func:`atmc_plugin.app.job.finish`).

    :param model: the trained, compressed model (fp32, on the training device).
    :param backend: the compression backend that trained it (its report and state).
    :param atmc: the ATMC session of the compression and fine-tuning stages.
    :param guard: the overfitting guard's record (``results.json``'s ``"guard"``).
    :param seconds: training wall time.
    """

    model: nn.Module
    backend: CompressionBackend
    atmc: ATMC | None
    guard: dict[str, Any]
    seconds: float


class Trainer:
    """Holds the model and the tools of the current stage; :meth:`run` drives the stages.

    :param plan: the run's plan (recipe, device, distributed context, data, tools).
    :param model: the model to train (a copy of the plan's, with ``[model] weights``).
    :param run: the run folder (``None`` on ranks that do not write).
    :param progress: show tqdm progress bars.
    """

    def __init__(
        self,
        plan: Plan,
        model: nn.Module,
        run: RunDir | None,
        progress: bool = False,
    ) -> None:
        recipe, data, device, ctx = plan.recipe, plan.data, plan.device, plan.ctx
        self.recipe = recipe
        self.data = data
        self.device = device
        self.run_dir = run
        self.progress = progress
        self.model = model
        self.ctx = ctx
        self.plugin_manager = plan.plugin_manager
        self.guard = RunGuard(recipe, data, reduce=ctx.mean if ctx.distributed else None)
        self.train_set = self.guard.training_part(data.train_set())
        self.precision = Precision(recipe.train.precision, device)
        self.channels_last = cuda_throughput(model, device)
        self.gen = torch.Generator().manual_seed(recipe.seed)
        self.metrics_count = 0
        self.atmc: ATMC | None = None  # the ATMC of the compress/finetune stages
        self.backend = plan.tools.compress
        self.optimizer: torch.optim.Optimizer | None = None
        self.scheduler: Any = None
        self.perturb: Any = None
        self.penalty: Any = None
        self._ddp: tuple[tuple[int, ...], nn.Module] | None = None

    def forward_model(self) -> nn.Module:
        """The model training forwards go through: DDP under torchrun, rebuilt whenever
        pruning has replaced parameters; the model itself in one process."""
        if not self.ctx.distributed:
            return self.model
        key = tuple(id(p) for p in self.model.parameters())
        if self._ddp is None or self._ddp[0] != key:
            self._ddp = (key, self.ctx.wrap(self.model))
        return self._ddp[1]

    # -- stage set-up ------------------------------------------------------------------------
    def _new_optimizer(self, stage: str, model: nn.Module) -> torch.optim.Optimizer:
        """The stage's optimizer over ``model``'s parameters (nothing else is touched)."""
        spec = self.recipe.train
        lr = spec.lr * STAGE_LR[stage]
        params = model.parameters()
        decay = spec.weight_decay if stage != "finetune" else 0.0
        if spec.optimizer == "adamw":
            return torch.optim.AdamW(params, lr=lr, weight_decay=decay)
        return torch.optim.SGD(params, lr=lr, momentum=spec.momentum, weight_decay=decay)

    def _use_optimizer(self, optimizer: torch.optim.Optimizer, epochs: int) -> None:
        """Train the stage with ``optimizer`` and its learning-rate schedule."""
        spec, sched = self.recipe.train, torch.optim.lr_scheduler
        self.optimizer = optimizer
        if spec.schedule == "cosine":
            self.scheduler = sched.CosineAnnealingLR(optimizer, max(1, epochs))
        elif spec.schedule == "step":
            self.scheduler = sched.StepLR(optimizer, max(1, -(-epochs // 3)), gamma=0.1)
        else:
            self.scheduler = sched.ConstantLR(optimizer, factor=1.0, total_iters=0)

    def _build_compress(self) -> None:
        """Create the compress stage's tools on the current model (fresh or pre-trained)."""
        recipe = self.recipe
        epochs = dict(recipe.stages)["compress"]
        self.model, self.atmc, optimizer = self.backend.prepare(
            self.model, lambda model: self._new_optimizer("compress", model)
        )
        self._use_optimizer(optimizer, epochs)
        self.perturb, self.penalty = self.atmc.perturb, self.atmc.penalty
        stage_steps = epochs * -(-len(self.data.y_train) // recipe.batch_size)
        # The stage's length is the horizon of the budget anneal (ramp_fraction of it unless
        # constraint.ramp_steps is set); ATMC warns in finalize() if the budget must jump.
        self.atmc.set_total_steps(max(1, stage_steps))
        c = self.atmc.config.constraint
        if c.sparse and c.schedule == "cubic" and (c.ramp_steps or 0) > stage_steps:
            log.warning(
                "constraint.ramp_steps = %d is longer than the compression stage (%d optimizer "
                "steps): the budget reaches its target only in the hard projection at the end. "
                "Leave ramp_steps unset (the ramp is then ramp_fraction of the stage) or raise "
                "compress_epochs.",
                c.ramp_steps,
                stage_steps,
            )

    def _finalize(self) -> None:
        """End of compression: hard projection onto the constraint set."""
        with warnings.catch_warnings():
            # The command checked the ramp against the stage before training (see
            # _build_compress) and its stage always runs the pruner's steps to the end.
            warnings.simplefilter("ignore", ScheduleWarning)
            self.model = self.backend.finalize(self.model)

    def _require_optimizer(self) -> torch.optim.Optimizer:
        if self.optimizer is None:
            raise InternalError("no optimizer for the current stage.")
        return self.optimizer

    def enter(self, stage: str, restore: dict[str, Any] | None) -> None:
        """Build ``stage``'s tools; with ``restore`` (a checkpoint of this stage) load states."""
        epochs = dict(self.recipe.stages)[stage]
        if stage == "pretrain":
            dense = ATMC(
                self.model,
                ATMCConfig(attack=self.recipe.atmc.attack),
                plugin_manager=self.plugin_manager,
            )
            self.perturb, self.penalty = dense.perturb, None
            self._use_optimizer(self._new_optimizer("pretrain", self.model), epochs)
            self._watch(stage, dense, restore)
        else:
            if stage == "compress" or restore is not None:
                # A finetune restart rebuilds the compress tools, then loads their frozen state.
                self._build_compress()
                if restore is not None:
                    self._load_tools(restore)
        if stage == "finetune":
            if restore is None:
                self._finalize()
            atmc = self._require_atmc()
            self._use_optimizer(self._new_optimizer("finetune", self.model), epochs)
            atmc.attach(self._require_optimizer())
            self.perturb, self.penalty = atmc.perturb, None
        if stage != "pretrain":
            self._watch(stage, self._require_atmc(), restore)
        if restore is not None:
            self.model.load_state_dict(restore["model"])
            self._require_optimizer().load_state_dict(restore["optimizer"])
            self.scheduler.load_state_dict(restore["scheduler"])
            self.precision.load_state_dict(restore.get("scaler", {}))
            torch.set_rng_state(restore["rng"]["torch"])
            self.gen.set_state(restore["rng"]["data"])
            if restore["rng"].get("cuda") is not None and torch.cuda.is_available():
                torch.cuda.set_rng_state(restore["rng"]["cuda"])
            self.metrics_count = int(restore["metrics_count"])

    def _watch(self, stage: str, atmc: ATMC, restore: dict[str, Any] | None) -> None:
        """Start the overfitting guard on ``stage`` (its restore covers the model, the
        optimizer and, after pre-training, the ATMC state; not Torch-Pruning's step count: a
        state from before a structural step is not restored, see :mod:`atmc_plugin.guard`)."""
        if atmc.config.attack is None:
            return

        def states() -> dict[str, Any]:
            out: dict[str, Any] = {
                "model": unwrap_model(self.model),
                "optimizer": self._require_optimizer(),
            }
            if stage != "pretrain":
                out["atmc"] = atmc
            return out

        per_epoch = -(-len(self.train_set) // self.recipe.batch_size)
        self.guard.start(stage, atmc, per_epoch, states)
        if restore is not None and "guard" in restore:
            self.guard.load_state_dict(restore["guard"], atmc)

    def _require_atmc(self) -> ATMC:
        if self.atmc is None:
            raise InternalError("the compress stage has not been built.")
        return self.atmc

    def _load_tools(self, restore: dict[str, Any]) -> None:
        if "tools" not in restore:
            raise InputError(
                "the checkpoint holds no compression state in the form this atmc-plugin writes "
                "(written by an older version?); start a new run in a new folder."
            )
        self.backend.load_state_dict(restore["tools"])

    # -- training ----------------------------------------------------------------------------

    def train_epoch(self, stage: str, epoch: int) -> dict[str, Any]:
        """One epoch; raises :class:`DivergedError` on a non-finite loss or weight."""
        spec = self.recipe.train
        model, opt = self.forward_model(), self._require_optimizer()
        from .loader import augment, train_loader

        cuda = self.device.type == "cuda"
        batches: Any = train_loader(
            self.train_set, self.recipe.batch_size, self.gen, self.recipe.workers, pin_memory=cuda
        )
        if self.progress:
            from tqdm.auto import tqdm

            batches = tqdm(batches, desc=f"{stage} {epoch + 1}", unit="batch", leave=False)
        total = correct = adv_correct = 0
        loss_sum = 0.0
        for step, (x_cpu, y_cpu) in enumerate(batches):
            x = augment(x_cpu.to(self.device, non_blocking=cuda), self.recipe.augment)
            y = y_cpu.to(self.device, non_blocking=cuda)
            if self.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            model.train()
            with self.precision.autocast():  # the attack's passes too
                logits = model(x)
                loss = F.cross_entropy(logits, y)
                if self.perturb is not None and self.recipe.atmc.attack is not None:
                    adv_logits = model(self.perturb(x, y))
                    loss = spec.clean_weight * loss + (1 - spec.clean_weight) * F.cross_entropy(
                        adv_logits, y
                    )
                    adv_correct += int((adv_logits.argmax(1) == y).sum())
            loss = loss.float()
            if self.penalty is not None:  # ADMM's term in fp32, outside autocast
                loss = loss + self.penalty()
            if not self.ctx.all_ok(bool(torch.isfinite(loss))):
                raise self._diverged(stage, epoch, step, f"loss = {float(loss.detach())}")
            opt.zero_grad()
            self.precision.backward(loss)
            if stage == "compress":
                self.precision.unscale(opt)  # the tool's regularizer reads true gradients
                self.backend.before_step(self.model, loss)
            try:
                self.precision.step(opt)
            except InputError as exc:  # ATMC refuses NaN/inf weights before projecting
                raise self._diverged(stage, epoch, step, str(exc)) from exc
            fired = self.guard.after_step(epoch)
            if fired is not None:
                self._record(fired)
            total += len(y)
            correct += int((logits.argmax(1) == y).sum())
            loss_sum += float(loss.detach()) * len(y)
        bad = [n for n, p in model.named_parameters() if not bool(torch.isfinite(p).all())]
        if bad:
            raise self._diverged(stage, epoch, len(batches), f"non-finite weights in {bad[:3]}")
        return {
            "loss": loss_sum / max(1, total),
            "train_acc": correct / max(1, total),
            "train_adv_acc": (
                adv_correct / max(1, total) if self.recipe.atmc.attack is not None else None
            ),
        }

    def _diverged(self, stage: str, epoch: int, step: int, what: str) -> DivergedError:
        if self.run_dir is not None and self.run_dir.last.exists():
            kept = f"The last good checkpoint is kept at {self.run_dir.last}."
        else:
            kept = "No epoch had finished, so there is no checkpoint to go back to."
        eps = self.recipe.atmc.attack.eps if self.recipe.atmc.attack else None
        fixes = [f"[train] lr (now {self.recipe.train.lr:g})", f"[atmc.attack] eps (now {eps})"]
        atmc = self.atmc.config if self.atmc is not None else self.recipe.atmc
        if stage != "pretrain" and atmc.constraint.quantized:
            fixes.append(f"[atmc.admm] rho (now {atmc.admm.rho:g})")
        return DivergedError(
            f"training diverged in stage {stage!r}, epoch {epoch + 1}, step {step + 1}: {what}. "
            f"{kept} Lower {', '.join(fixes[:-1])} or {fixes[-1]} in a new recipe."
        )

    def test_accuracy(self) -> float:
        return self.accuracy(self.data.x_test, self.data.y_test)

    def robust_accuracy(self, n: int = ROBUST_CURVE_POINTS) -> float:
        """PGD-20 (2 restarts) accuracy on the first ``n`` test points at the recipe's eps: the
        robust curve of ``training.png``. Nothing is selected on it; the global RNG stream, the
        modes and the weights are left as they were (:func:`atmc_plugin.evaluate`)."""
        from ..modes import preserved_modes
        from ..robustness import evaluate

        x, y = self.data.x_test[:n].to(self.device), self.data.y_test[:n].to(self.device)
        model = unwrap_model(self.model)
        with preserved_modes(model):
            model.eval()
            report = evaluate(model, (x, y), eps=self.recipe.eps, preset="quick", sanity=False)
        return report.robust

    def _validation(self) -> dict[str, float]:
        """``val_acc`` when the data has a validation split (the user's data factory)."""
        if self.data.x_val is None or self.data.y_val is None:
            return {}
        return {"val_acc": self.accuracy(self.data.x_val, self.data.y_val)}

    def accuracy(self, x: Tensor, y: Tensor) -> float:
        """Clean accuracy of the current model on ``(x, y)`` (its modes are restored)."""
        from ..modes import preserved_modes

        x, y = x.to(self.device), y.to(self.device)
        correct = 0
        with preserved_modes(self.model), torch.no_grad():
            self.model.eval()
            for start in range(0, len(y), 512):
                out = self.model(x[start : start + 512])
                correct += int((out.argmax(1) == y[start : start + 512]).sum())
        return correct / max(1, len(y))

    # -- checkpoints -------------------------------------------------------------------------
    def state(self, stage_index: int, epoch: int) -> dict[str, Any]:
        state: dict[str, Any] = {
            "stage": stage_index,
            "epoch": epoch,
            "model": self.model.state_dict(),
            "optimizer": self._require_optimizer().state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "rng": {
                "torch": torch.get_rng_state(),
                "data": self.gen.get_state(),
                "cuda": torch.cuda.get_rng_state() if self.device.type == "cuda" else None,
            },
            "metrics_count": self.metrics_count,
            "guard": self.guard.state_dict(),
            "scaler": self.precision.state_dict(),
        }
        if self.atmc is not None:
            state["tools"] = self.backend.state_dict()
        return state

    def run(self, checkpoint: dict[str, Any] | None) -> Trained:
        """Run (or continue from ``checkpoint``) the three stages."""
        started = time.perf_counter()
        self._stages(checkpoint)
        return Trained(
            model=self.model,
            backend=self.backend,
            atmc=self.atmc,
            guard=self.guard.summary(),
            seconds=time.perf_counter() - started,
        )

    def _stages(self, checkpoint: dict[str, Any] | None) -> None:
        start_stage = int(checkpoint["stage"]) if checkpoint else 0
        start_epoch = int(checkpoint["epoch"]) if checkpoint else 0
        offset = sum(e for _, e in self.recipe.stages[:start_stage])
        for index, (stage, epochs) in enumerate(self.recipe.stages):
            if index < start_stage:
                continue
            resuming = checkpoint is not None and index == start_stage
            self.enter(stage, checkpoint if resuming else None)
            first = start_epoch if resuming else 0
            if resuming:
                log.info("resuming stage %s at epoch %d/%d", stage, first, epochs)
            else:
                log.info("stage %s: %d epochs", stage, epochs)
            for epoch in range(first, epochs):
                started = time.perf_counter()
                if stage == "compress":
                    self.backend.on_epoch(epoch, epochs)
                stats = self.train_epoch(stage, epoch)
                self.scheduler.step()
                record = {
                    "kind": "epoch",
                    "stage": stage,
                    "epoch": epoch + 1,
                    "global_epoch": offset + epoch + 1,
                    **stats,
                    "test_acc": self.test_accuracy(),
                    "test_robust": self.robust_accuracy(),
                    **self._validation(),
                    **{f"guard_{k}": v for k, v in self.guard.last_check().items()},
                    "params": sum(p.numel() for p in self.model.parameters()),
                    "lr": self._require_optimizer().param_groups[0]["lr"],
                    "seconds": time.perf_counter() - started,
                }
                self._record(record)
                log.info(
                    "%s %d/%d  loss %.4f  train acc %.3f  test acc %.3f  (%.1f s)",
                    stage,
                    epoch + 1,
                    epochs,
                    record["loss"],
                    record["train_acc"],
                    record["test_acc"],
                    record["seconds"],
                )
                if self.run_dir is not None:
                    self.run_dir.save_checkpoint(
                        self.run_dir.last, self.state(index, epoch + 1), self.recipe
                    )
            if stage == "compress":
                self.backend.on_epoch(epochs, epochs)  # structural steps left by a short stage
            if stage == "pretrain" and self.run_dir is not None:
                self.run_dir.save_checkpoint(
                    self.run_dir.dense, {"model": self.model.state_dict()}, self.recipe
                )
            offset += epochs

    def _record(self, record: dict[str, Any]) -> None:
        self.metrics_count += 1
        if self.run_dir is not None:
            self.run_dir.log_metrics(record)


def train_batches(x: Tensor, y: Tensor, size: int) -> list[tuple[Tensor, Tensor]]:
    """``(x, y)`` batches in order (calibration and evaluation helpers)."""
    return [(x[i : i + size], y[i : i + size]) for i in range(0, len(y), size)]
