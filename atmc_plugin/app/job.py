"""One ``atmc run``: check the recipe, train (or resume), quantize, evaluate, export, report."""

from __future__ import annotations

import logging
import platform
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..adversary import model_device, unwrap_model
from ..errors import ATMCError, InputError, InternalError, describe
from . import latency
from .build import resolve_device
from .evaluation import evaluate_pair
from .final import FINAL_FORMAT, Final, load_final, rebuild_final, ship
from .plan import Plan, make_plan
from .recipe import Recipe, RecipeError
from .rundir import RunDir, load_checkpoint, read_json
from .runner import Trained, Trainer

log = logging.getLogger(__name__)
__all__ = ["Final", "evaluate_pair", "finish", "load_final", "rebuild_final", "run_recipe", "ship"]


def run_recipe(
    recipe: Recipe,
    out: Path,
    *,
    device: str | None = None,
    resume: bool = False,
    progress: bool = False,
    plugin_manager: Any = None,
) -> dict[str, Any]:
    """Run ``recipe`` into the folder ``out``; returns the results (also in results.json).

    Every check on the recipe, the data, the device and the output folder runs before training.

    :param plugin_manager: where the tools' backends and the attacks are looked up (default:
        the process's :func:`~atmc_plugin.default_plugin_manager`).
    """
    from . import distributed

    dev = distributed.local_device(resolve_device(device or recipe.device))
    ctx = distributed.context(dev)
    try:
        return _run(recipe, out, dev, ctx, resume, progress, plugin_manager)
    finally:
        ctx.close()


def _run(
    recipe: Recipe,
    out: Path,
    dev: torch.device,
    ctx: Any,
    resume: bool,
    progress: bool,
    plugin_manager: Any,
) -> dict[str, Any]:
    failure: Exception | None = None
    checkpoint: dict[str, Any] | None = None
    run: RunDir | None = None
    plan: Plan | None = None
    try:
        plan = make_plan(recipe, dev, ctx, plugin_manager=plugin_manager)
        run = RunDir.prepare(out, recipe, resume, is_writer=ctx.is_writer)
        if resume and run.last.exists():
            checkpoint = load_checkpoint(run.last, recipe)
            if run.dense.exists():  # needed at the end: a corrupt one must fail now
                load_checkpoint(run.dense, recipe)
        elif resume:
            _check_same_recipe(run, recipe)
    except ATMCError as exc:
        failure = exc
    if not ctx.all_ok(failure is None):
        if run is not None:
            run.release()
        raise failure or ATMCError("another rank could not start the run; see rank 0's log.")
    if run is None or plan is None:
        raise InternalError("the run folder or the plan was not prepared.")
    try:
        return _train_and_finish(plan, run, checkpoint, progress, resume)
    finally:
        run.release()


def _check_same_recipe(run: RunDir, recipe: Recipe) -> None:
    """Resuming a run killed before its first checkpoint: it must be the same recipe."""
    info = run.root / "run.json"
    if not info.exists():
        return  # killed before run.json was written: nothing to compare against
    digest = read_json(info).get("recipe_digest")
    if digest is not None and digest != recipe.digest:
        raise RecipeError(
            f"--resume: {str(run.root)!r} was started with a different recipe (digest {digest} "
            f"vs {recipe.digest}); resume with RUN_DIR/recipe.toml or start a new run."
        )


def _train_and_finish(
    plan: Plan,
    run: RunDir,
    checkpoint: dict[str, Any] | None,
    progress: bool,
    resume: bool,
) -> dict[str, Any]:
    recipe, dev, ctx = plan.recipe, plan.device, plan.ctx
    if ctx.is_writer:
        if checkpoint is not None:
            run.truncate_metrics(int(checkpoint["metrics_count"]))
        else:
            if resume:
                log.info("%s has no checkpoint yet: the run starts from scratch", run.root)
                run.truncate_metrics(0)
            run.write_json(run.root / "run.json", _run_info(recipe, dev, ctx.world_size))
    plan = plan.sharded()
    torch.set_rng_state(plan.rng_after_build)  # the stream a freshly built model leaves
    model = plan.new_model()
    if recipe.model_weights is not None and checkpoint is None:
        from .weights import load_weights

        load_weights(model, recipe.model_weights, f"{recipe.path}: [model] weights")
        log.info("the model starts from %s", recipe.model_weights)
    trainer = Trainer(plan, model, run if ctx.is_writer else None, progress)
    trained = trainer.run(checkpoint)
    ctx.check_identical(trained.model)
    if not ctx.is_writer:
        return {}
    results = finish(plan, trained, run, progress)
    from .report_md import write_report

    write_report(run)
    return results


def _run_info(recipe: Recipe, device: torch.device, world_size: int) -> dict[str, Any]:
    from importlib.metadata import version

    versions: dict[str, str | None] = {}
    # key: the distributions that provide it (INC's torch part installs as neural-compressor-pt)
    tools = {
        "atmc-plugin": ("atmc-plugin",),
        "torch": ("torch",),
        "torch-pruning": ("torch-pruning",),
        "neural-compressor": ("neural-compressor-pt", "neural-compressor"),
        "torchao": ("torchao",),
        "torchattacks": ("torchattacks",),
        "pluggy": ("pluggy",),
        "onnxruntime": ("onnxruntime",),
    }
    for key, dists in tools.items():
        versions[key] = None
        for dist in dists:
            try:
                versions[key] = version(dist)
                break
            except Exception:  # not installed under this name
                continue
    return {
        "recipe": str(recipe.path),
        "recipe_digest": recipe.digest,
        "name": recipe.name,
        "seed": recipe.seed,
        "device": str(device),
        "world_size": world_size,
        "machine": f"{platform.machine()} {platform.system()}, {torch.get_num_threads()} threads",
        "versions": versions,
    }


def _size(plan: Plan, trained: Trained, run: RunDir, dense: nn.Module) -> dict[str, Any]:
    """Paper-convention size ratio, storage-honest bytes (and the compact file), params, MACs."""
    from ..costs import total_macs
    from ..export import save_compact

    model = unwrap_model(trained.model)
    dense_bytes = sum(t.numel() * t.element_size() for t in dense.state_dict().values())
    out: dict[str, Any] = {"dense_state_bytes": dense_bytes}
    atmc = trained.atmc
    if atmc is not None:
        elementwise, whole = trained.backend.report()
        # one MAC figure per model: atmc_plugin.costs' conv/linear MACs below (a tool's own
        # counter, such as Torch-Pruning's, also counts other ops and would disagree)
        out["compression"] = {k: v for k, v in whole.items() if k not in ("macs", "dense_macs")}
        out["size_ratio"] = elementwise.size_ratio
        try:
            storage = save_compact(run.root / "model.safetensors", model, atmc)
        except InputError as exc:  # values off their quantization set: nothing to export
            log.info("no compact export: %s", exc)
        else:
            out["storage"] = {
                **storage.to_dict(),
                "ratio_vs_dense": storage.total_bytes / dense_bytes,
            }
            out["compact_file_bytes"] = (run.root / "model.safetensors").stat().st_size
    example = plan.data.example[:1].to(plan.device)
    merged = _merged(model, plan)
    out["params"] = sum(p.numel() for p in model.parameters())
    out["macs"] = total_macs(merged, example)
    out["dense_params"] = sum(p.numel() for p in dense.parameters())
    out["dense_macs"] = total_macs(dense, example)
    return out


def _merged(model: nn.Module, plan: Plan) -> nn.Module:
    """The deployed form of ``model``: factorized weights merged into one tensor per layer."""
    from torch.nn.utils import parametrize

    from ..engine.factorize import merged_state_dict

    plain = unwrap_model(model)
    if not any(parametrize.is_parametrized(m) for m in plain.modules()):
        return plain
    merged = plan.new_model()  # factorized models are never pruned
    merged.load_state_dict(merged_state_dict(plain))
    return merged.eval()


def finish(plan: Plan, trained: Trained, run: RunDir, progress: bool = False) -> dict[str, Any]:
    """INC conversion, evaluation of dense vs compressed, sizes, latency, artifacts: from the
    plan and what training returned, nothing else."""
    from ..io import save_atomically
    from .rundir import sealed

    recipe, data, dev = plan.recipe, plan.data, plan.device
    model = unwrap_model(trained.model)
    model.eval()
    shipped = ship(plan, model)
    dense = plan.new_model()
    dense.load_state_dict(load_checkpoint(run.dense, recipe)["model"])
    dense.eval()
    models = {"dense": dense, "compressed": shipped}
    evaluation, seconds = evaluate_pair(recipe, data, models, recipe.preset, dev, progress)
    results: dict[str, Any] = {
        "recipe": recipe.name,
        "train_seconds": trained.seconds,
        "int8": shipped is not model,
        "evaluation": evaluation,
        "evaluation_seconds": seconds,
        "guard": trained.guard,
        "size": _size(plan, trained, run, dense),
    }
    batch = data.x_test[: recipe.latency_batch].to(dev)
    measured = latency.measure(models, batch, compiled=recipe.compiled_latency)
    results["latency_ms"] = measured["compiled"] or measured["eager"]
    results["latency_kind"] = "compiled" if measured["compiled"] else "eager"
    results["latency_eager_ms"] = measured["eager"]
    results["latency_compile_error"] = measured["compile_error"]
    results["latency_batch"] = len(batch)
    results["devices"] = {name: str(model_device(m)) for name, m in models.items()}
    results["artifacts"] = _artifacts(plan, model, run, shipped)
    final = {
        "format": FINAL_FORMAT,
        "recipe": recipe.raw,
        "recipe_path": str(recipe.path.resolve()),
        "recipe_digest": recipe.digest,
        "model": model.state_dict(),
        "tools": trained.backend.state_dict() if trained.atmc is not None else None,
    }
    save_atomically(sealed(final), run.final)
    run.write_json(run.results, results)
    run.log_metrics({"kind": "final", **_headline(results)})
    return results


def _artifacts(plan: Plan, model: nn.Module, run: RunDir, shipped: nn.Module) -> dict[str, Any]:
    """The compressed model (and the shipped one) as pt2 files in ``RUN_DIR/export``, checked
    and timed at batch 1 and the recipe's latency batch on the CPU, as a server loads them.

    A failure is recorded, not raised: the run's results stand without the files.
    """
    import copy
    from dataclasses import asdict

    from .exporting import write_artifacts

    recipe = plan.recipe
    fp32 = copy.deepcopy(model).cpu().eval()
    models = {"compressed": fp32}
    if shipped is not model:
        models["shipped"] = shipped
    batches = sorted({1, recipe.latency_batch})
    example = plan.data.example.cpu()
    try:
        records = write_artifacts(
            models,
            example,
            run.root / "export",
            ["pt2"],
            batches,
            compiled=recipe.compiled_latency,
        )
    except Exception as exc:  # the files are extra: any failure is said, the run stands
        log.warning("the pt2 files could not be written: %s", describe(exc))
        return {"error": describe(exc)}
    return {"files": [asdict(r) for r in records], "batches": batches}


def _headline(results: dict[str, Any]) -> dict[str, Any]:
    ev = results["evaluation"]
    return {
        "dense_clean": ev["dense"]["clean"],
        "dense_robust": ev["dense"]["robust"],
        "clean": ev["compressed"]["clean"],
        "robust": ev["compressed"]["robust"],
        "size_ratio": results["size"].get("size_ratio"),
    }
