"""Latency of what ships: the written artifacts, loaded the way a serving process loads them.

:func:`time_artifact` loads a file written by :func:`atmc_plugin.artifacts.export_model` (or a
tool's format) with the runtime a user would use and times forward passes at each batch size:

- ``pt2``: ``torch.export.load(path).module()``, eager, and ``torch.compile``d once (inductor,
  ``freezing=True``, as INC recommends for int8) and then called at every batch size in
  increasing order, as a server does. A compile or call that fails at a batch size is recorded
  for that size (``errors``), not hidden and not retried with a fresh compilation;
- ``onnx``: an ONNX Runtime CPU session (``runtime``).

Times are medians of ``repeats`` calls after 3 warm-up calls, in milliseconds, on the CPU, with
the process's torch thread count (``threads``).
"""

from __future__ import annotations

import importlib
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor

from .artifacts import INT8_LOAD_HINT, Artifact, check_batches
from .errors import InputError, describe

REPEATS = 30


def median_call_seconds(call: Callable[[Any], Any], batch: Any, repeats: int = REPEATS) -> float:
    """Median seconds of ``call(batch)`` over ``repeats`` calls after 3 warm-up calls."""
    with torch.no_grad():
        for _ in range(3):
            call(batch)
        samples = []
        for _ in range(repeats):
            start = time.perf_counter()
            call(batch)
            samples.append(time.perf_counter() - start)
    return sorted(samples)[len(samples) // 2]


@contextmanager
def deployment_compile() -> Iterator[None]:
    """``torch.compile`` as deployed: inductor with ``freezing=True`` (PT2E int8 graphs then run
    oneDNN int8 kernels), without inductor's own warning about copying zero points."""
    import torch._inductor.config as inductor_config

    with inductor_config.patch(freezing=True), warnings.catch_warnings():
        warnings.filterwarnings("ignore", "To copy construct from a tensor", UserWarning)
        yield


def time_artifact(
    artifact: Artifact,
    example: Tensor,
    batches: Sequence[int],
    *,
    compiled: bool = True,
    repeats: int = REPEATS,
) -> dict[str, Any]:
    """``{"eager": {batch: ms}, "compiled": {batch: ms}, "runtime": {batch: ms}, "errors":
    {kind@batch: message}, "threads": n, "device": "cpu"}`` for one artifact (see the module
    docstring); keys that do not apply to the format are empty.

    :raises InputError: a format this function cannot load.
    """
    inputs = check_batches(example, sorted(set(batches)))
    if not artifact.dynamic_batch:
        inputs = [x for x in inputs if x.shape[0] in artifact.checked_batches]
    out: dict[str, Any] = {
        "eager": {},
        "compiled": {},
        "runtime": {},
        "errors": {},
        "threads": torch.get_num_threads(),
        "device": "cpu",
    }
    if artifact.format == "onnx":
        import onnxruntime as ort

        session = ort.InferenceSession(artifact.path, providers=["CPUExecutionProvider"])
        feed = session.get_inputs()[0].name

        def run(array: Any) -> Any:
            return session.run(None, {feed: array})

        for x in inputs:
            seconds = median_call_seconds(run, x.numpy(), repeats)
            out["runtime"][int(x.shape[0])] = 1e3 * seconds
        return out
    if artifact.format != "pt2":
        raise InputError(f"time_artifact loads pt2 and onnx files, not {artifact.format!r}.")
    if INT8_LOAD_HINT in artifact.load:
        importlib.import_module("torch.ao.quantization.fx._decomposed")  # the int8 ops
    module = torch.export.load(artifact.path).module()
    for x in inputs:
        out["eager"][int(x.shape[0])] = 1e3 * median_call_seconds(module, x, repeats)
    if compiled:
        _time_compiled(module, inputs, repeats, out)
    return out


def _time_compiled(
    module: torch.nn.Module, inputs: Sequence[Tensor], repeats: int, out: dict[str, Any]
) -> None:
    with deployment_compile():
        try:
            fast = torch.compile(module)
        except Exception as exc:  # inductor fails in many ways (no compiler, unsupported op)
            out["errors"]["compile"] = describe(exc)
            return
        for x in inputs:
            size = int(x.shape[0])
            try:
                out["compiled"][size] = 1e3 * median_call_seconds(fast, x, repeats)
            except Exception as exc:
                out["errors"][f"compiled@{size}"] = describe(exc)
