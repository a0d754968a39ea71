"""One ``atmc run``: check the recipe, train (or resume), quantize, evaluate, export, report."""

from __future__ import annotations

import logging
import platform
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..adversary import model_device, unwrap_model
from ..errors import ATMCError, InputError, describe
from . import latency
from .build import Data, build_model, check_recipe, resolve_device
from .evaluation import evaluate_pair
from .final import FINAL_FORMAT, Final, load_final, rebuild_final, ship
from .recipe import Recipe, RecipeError
from .rundir import RunDir, load_checkpoint, read_json
from .runner import Trainer

log = logging.getLogger(__name__)
__all__ = ["Final", "evaluate_pair", "finish", "load_final", "rebuild_final", "run_recipe", "ship"]


def run_recipe(
    recipe: Recipe,
    out: Path,
    *,
    device: str | None = None,
    resume: bool = False,
    progress: bool = False,
) -> dict[str, Any]:
    """Run ``recipe`` into the folder ``out``; returns the results (also in results.json).

    Every check on the recipe, the data, the device and the output folder runs before training.
    """
    from . import distributed

    dev = distributed.local_device(resolve_device(device or recipe.device))
    ctx = distributed.context(dev)
    try:
        return _run(recipe, out, dev, ctx, resume, progress)
    finally:
        ctx.close()


def _run(
    recipe: Recipe,
    out: Path,
    dev: torch.device,
    ctx: Any,
    resume: bool,
    progress: bool,
) -> dict[str, Any]:
    failure: Exception | None = None
    checkpoint: dict[str, Any] | None = None
    run: RunDir | None = None
    try:
        data = check_recipe(recipe, dev)
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
    if run is None:
        raise ATMCError("internal: the run folder was not prepared.")
    try:
        return _train_and_finish(recipe, run, dev, ctx, data, checkpoint, progress, resume)
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
    recipe: Recipe,
    run: RunDir,
    dev: torch.device,
    ctx: Any,
    data: Data,
    checkpoint: dict[str, Any] | None,
    progress: bool,
    resume: bool,
) -> dict[str, Any]:
    if ctx.is_writer:
        if checkpoint is not None:
            run.truncate_metrics(int(checkpoint["metrics_count"]))
        else:
            if resume:
                log.info("%s has no checkpoint yet: the run starts from scratch", run.root)
                run.truncate_metrics(0)
            run.write_json(run.root / "run.json", _run_info(recipe, dev, ctx.world_size))
    data = ctx.shard(data)
    torch.manual_seed(recipe.seed)
    model = build_model(recipe, data)
    if recipe.model_weights is not None and checkpoint is None:
        from .weights import load_weights

        load_weights(model, recipe.model_weights, f"{recipe.path}: [model] weights")
        log.info("the model starts from %s", recipe.model_weights)
    model = model.to(dev)
    trainer = Trainer(recipe, data, model, dev, run if ctx.is_writer else None, progress, ctx)
    started = time.perf_counter()
    trainer.run(checkpoint)
    ctx.check_identical(trainer.model)
    if not ctx.is_writer:
        return {}
    results = finish(trainer, run, time.perf_counter() - started)
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


def _size(trainer: Trainer, run: RunDir, dense: nn.Module) -> dict[str, Any]:
    """Paper-convention size ratio, storage-honest bytes (and the compact file), params, MACs."""
    from ..costs import total_macs
    from ..export import save_compact

    model = unwrap_model(trainer.model)
    dense_bytes = sum(t.numel() * t.element_size() for t in dense.state_dict().values())
    out: dict[str, Any] = {"dense_state_bytes": dense_bytes}
    atmc = trainer.atmc
    if atmc is not None:
        elementwise, whole = trainer.backend.report()
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
    example = trainer.data.example[:1].to(trainer.device)
    merged = _merged(model, trainer.recipe, trainer.data)
    out["params"] = sum(p.numel() for p in model.parameters())
    out["macs"] = total_macs(merged, example)
    out["dense_params"] = sum(p.numel() for p in dense.parameters())
    out["dense_macs"] = total_macs(dense, example)
    return out


def _merged(model: nn.Module, recipe: Recipe, data: Data) -> nn.Module:
    """The deployed form of ``model``: factorized weights merged into one tensor per layer."""
    from torch.nn.utils import parametrize

    from ..engine.factorize import merged_state_dict

    plain = unwrap_model(model)
    if not any(parametrize.is_parametrized(m) for m in plain.modules()):
        return plain
    device = next(plain.parameters()).device
    merged = build_model(recipe, data).to(device)  # factorized models are never pruned
    merged.load_state_dict(merged_state_dict(plain))
    return merged.eval()


def finish(trainer: Trainer, run: RunDir, train_seconds: float) -> dict[str, Any]:
    """INC conversion, evaluation of dense vs compressed, sizes, latency, artifacts."""
    from ..io import save_atomically
    from .rundir import sealed

    recipe, data, dev = trainer.recipe, trainer.data, trainer.device
    unwrap_model(trainer.model).eval()
    shipped = ship(recipe, unwrap_model(trainer.model), data, trainer.tools)
    dense = build_model(recipe, data).to(dev)
    dense.load_state_dict(load_checkpoint(run.dense, recipe)["model"])
    dense.eval()
    models = {"dense": dense, "compressed": shipped}
    evaluation, seconds = evaluate_pair(recipe, data, models, recipe.preset, dev, trainer.progress)
    results: dict[str, Any] = {
        "recipe": recipe.name,
        "train_seconds": train_seconds,
        "int8": shipped is not unwrap_model(trainer.model),
        "evaluation": evaluation,
        "evaluation_seconds": seconds,
        "guard": trainer.guard.summary(),
        "size": _size(trainer, run, dense),
    }
    batch = data.x_test[: recipe.latency_batch].to(dev)
    measured = latency.measure(models, batch, compiled=recipe.compiled_latency)
    results["latency_ms"] = measured["compiled"] or measured["eager"]
    results["latency_kind"] = "compiled" if measured["compiled"] else "eager"
    results["latency_eager_ms"] = measured["eager"]
    results["latency_compile_error"] = measured["compile_error"]
    results["latency_batch"] = len(batch)
    results["devices"] = {name: str(model_device(m)) for name, m in models.items()}
    results["artifacts"] = _artifacts(trainer, run, shipped)
    final = {
        "format": FINAL_FORMAT,
        "recipe": recipe.raw,
        "recipe_path": str(recipe.path.resolve()),
        "recipe_digest": recipe.digest,
        "model": unwrap_model(trainer.model).state_dict(),
        "tools": trainer.backend.state_dict() if trainer.atmc is not None else None,
    }
    save_atomically(sealed(final), run.final)
    run.write_json(run.results, results)
    run.log_metrics({"kind": "final", **_headline(results)})
    return results


def _artifacts(trainer: Trainer, run: RunDir, shipped: nn.Module) -> dict[str, Any]:
    """The compressed model (and the shipped one) as pt2 files in ``RUN_DIR/export``, checked
    and timed at batch 1 and the recipe's latency batch on the CPU, as a server loads them.

    A failure is recorded, not raised: the run's results stand without the files.
    """
    import copy
    from dataclasses import asdict

    from .exporting import write_artifacts

    recipe = trainer.recipe
    fp32 = copy.deepcopy(unwrap_model(trainer.model)).cpu().eval()
    models = {"compressed": fp32}
    if shipped is not unwrap_model(trainer.model):
        models["shipped"] = shipped
    batches = sorted({1, recipe.latency_batch})
    example = trainer.data.example.cpu()
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
