"""``atmc export RUN_DIR``: the run's models as files a serving stack loads without atmc-plugin.

Two models leave a run: ``compressed`` (the trained fp32 model: pruned structure, sparse
quantized weights) and, when a tool shipped it (``[inc.static]``, ``[inc.rtn]``), ``shipped``
(INC's int8 graph or weight-only model). Each is written in every requested format into
``RUN_DIR/export/`` (or ``--out``) by :func:`atmc_plugin.artifacts.export_model`; a tool's own
format (``inc``) is written by the tool's ship backend. Every file is reloaded and checked at
each ``--batch`` size before it is kept; ``manifest.json`` lists them. Then the pt2 and ONNX
files are loaded as a server loads them and timed at each batch size
(:func:`atmc_plugin.serving.time_artifact`; ``--no-latency`` skips it).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from pathlib import Path

import torch

from ..artifacts import FORMATS, Artifact, export_model, record_artifacts
from ..backend import NativeFormatBackend
from ..errors import InputError
from .final import rebuild_final

log = logging.getLogger(__name__)


def write_artifacts(
    models: dict[str, torch.nn.Module],
    example: torch.Tensor,
    folder: Path,
    formats: Sequence[str],
    batches: Sequence[int],
    *,
    latency: bool = True,
    compiled: bool = True,
) -> list[Artifact]:
    """Write each model in each format (files already listed in ``folder/manifest.json`` are
    kept as they are: they were checked when written), then time the pt2 and ONNX files."""
    listed = _listed(folder)
    records: list[Artifact] = []
    for name, model in models.items():
        todo = [f for f in formats if str(folder / f"{name}.{f}") not in listed]
        records += [listed[str(folder / f"{name}.{f}")] for f in formats if f not in todo]
        if todo:
            records += export_model(
                model, example, folder, formats=todo, name=name, batches=batches
            )
    if latency:
        from ..serving import time_artifact

        timed = [
            dataclasses.replace(r, latency=time_artifact(r, example, batches, compiled=compiled))
            for r in records
            if r.format in ("pt2", "onnx") and r.latency is None
        ]
        record_artifacts(folder, timed)
        by_path = {r.path: r for r in timed}
        records = [by_path.get(r.path, r) for r in records]
    return records


def _listed(folder: Path) -> dict[str, Artifact]:
    """The artifacts ``folder/manifest.json`` lists whose files still exist."""
    import json

    manifest = folder / "manifest.json"
    if not manifest.is_file():
        return {}
    out = {}
    for entry in json.loads(manifest.read_text(encoding="utf-8")):
        entry["checked_batches"] = tuple(entry.get("checked_batches", ()))
        if Path(entry["path"]).exists():
            out[entry["path"]] = Artifact(**entry)
    return out


def export_run(
    run_dir: Path,
    formats: Sequence[str],
    batches: Sequence[int],
    out: Path | None = None,
    *,
    latency: bool = True,
) -> list[Artifact]:
    """Export the models of the run in ``run_dir`` (see the module docstring).

    :raises InputError: no ``final.pt``, an unknown format, a tool format the run has no
        tool for, or files that already exist.
    """
    final_path = run_dir / "final.pt"
    if not final_path.is_file():
        raise InputError(
            f"{str(run_dir)!r} has no final.pt: export a finished run (`atmc run` writes it)."
        )
    final = rebuild_final(final_path, torch.device("cpu"))  # INC int8 is a CPU path
    ship = final.tools.ship
    native = ship.native_format if isinstance(ship, NativeFormatBackend) else None
    unknown = [f for f in formats if f not in FORMATS and f != native]
    if unknown:
        offered = [*FORMATS, *([native] if native else [])]
        raise InputError(
            f"--format {unknown[0]!r}: this run exports {', '.join(offered)} (a tool's own "
            "format, such as INC's, needs the run to ship with that tool)."
        )
    folder = out if out is not None else run_dir / "export"
    example = final.data.example.cpu()
    models = {"compressed": final.model}
    if final.shipped is not final.model:
        models["shipped"] = final.shipped
    generic = [f for f in formats if f in FORMATS]
    records = write_artifacts(models, example, folder, generic, batches, latency=latency)
    target = folder / f"shipped.{native}"
    if native in formats and isinstance(ship, NativeFormatBackend):
        listed = _listed(folder)
        if str(target) in listed:
            records.append(listed[str(target)])
        else:
            record = ship.save_native(final.shipped, final.model, example, target, batches)
            record_artifacts(folder, [record])
            records.append(record)
    for r in records:
        log.info(
            "%s %s: %s (%d bytes, batch %s, max |diff| %.3g, agreement %.4f)",
            r.name,
            r.format,
            r.path,
            r.bytes,
            "dynamic" if r.dynamic_batch else "frozen",
            r.max_abs_diff,
            r.agreement,
        )
    return records
