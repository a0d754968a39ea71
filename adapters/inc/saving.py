"""INC's own save format for the models INC shipped, checked by reloading them with INC's load.

- static int8 (a PT2E graph): the graph's ``save((example,), folder)`` (``torch.export`` of the
  graph plus ``qconfig.json``); ``neural_compressor.torch.quantization.load(folder)`` restores
  it with the batch dimension dynamic.
- weight-only RTN: ``neural_compressor.torch.quantization.save(model, folder)``;
  ``load(folder, original_model=fp32_model)`` restores it into the fp32 architecture.

The folder is written beside its target and renamed into place only after the reloaded model
reproduced the shipped one on the check batches; an existing folder is never overwritten.
"""

from __future__ import annotations

import copy
import os
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from torch import Tensor, fx, nn

from atmc_plugin import InputError
from atmc_plugin.artifacts import Artifact, check_batches, compare

FORMAT = "inc"


def save_inc(
    shipped: nn.Module,
    fp32: nn.Module,
    example: Tensor,
    folder: str | Path,
    *,
    name: str = "shipped",
    batches: Sequence[int] = (1, 8),
) -> Artifact:
    """Save an INC-quantized model in INC's format into ``folder`` and check it.

    :param shipped: INC's static int8 graph or its weight-only RTN model (left unchanged).
    :param fp32: the fp32 model it was quantized from (RTN's load rebuilds into a copy of it).
    :raises InputError: ``folder`` exists, or ``shipped`` is not an INC-quantized model.
    :raises ATMCError: the reloaded model does not reproduce ``shipped`` (nothing is kept).
    """
    from neural_compressor.torch.quantization import load, save

    target = Path(folder)
    if target.exists():
        raise InputError(f"{target} exists; nothing was overwritten. Remove it or save elsewhere.")
    inputs = check_batches(example, batches)
    graph = isinstance(shipped, fx.GraphModule)
    if (graph and not callable(getattr(shipped, "save", None))) or not hasattr(shipped, "qconfig"):
        raise InputError(
            f"{type(shipped).__name__} was not quantized by INC (no qconfig): the inc format "
            "saves INC's static int8 graphs and weight-only models."
        )
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}."))
    try:
        # INC's save turns the model's qconfig entries into dicts in place: put them back
        qconfig = getattr(shipped, "qconfig", None)
        kept = dict(qconfig) if isinstance(qconfig, dict) else None
        try:
            if graph:
                probe = check_batches(example, [2])[0]  # small, and not a size-1 batch
                graph_save: Any = shipped.save  # the PT2E graph's own save (INC's API)
                graph_save((probe,), str(tmp))
                restored = load(str(tmp))
            else:
                save(shipped, str(tmp))
                restored = load(str(tmp), original_model=copy.deepcopy(fp32).eval())
        finally:
            if kept is not None and isinstance(qconfig, dict):
                qconfig.clear()
                qconfig.update(kept)
        diff, agreement = compare(shipped, restored, inputs, quantized=False, what=str(target))
        os.replace(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    load_hint = (
        "neural_compressor.torch.quantization.load(path)"
        if graph
        else "neural_compressor.torch.quantization.load(path, original_model=fp32_model)"
    )
    return Artifact(
        name=name,
        format=FORMAT,
        path=str(target),
        bytes=sum(p.stat().st_size for p in target.rglob("*") if p.is_file()),
        dynamic_batch=True,
        checked_batches=tuple(int(x.shape[0]) for x in inputs),
        max_abs_diff=diff,
        agreement=agreement,
        load=load_hint,
        note="needs neural-compressor to load",
    )
