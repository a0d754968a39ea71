"""Ship a compressed model as files a serving stack loads without atmc-plugin.

::

    from atmc_plugin.artifacts import export_model

    records = export_model(model, example_inputs, "deploy/", formats=("pt2", "onnx"))

Formats:

- ``"pt2"``: a :func:`torch.export.export` program saved with :func:`torch.export.save`. Load it
  with plain PyTorch: ``torch.export.load(path).module()(x)``. The batch dimension is dynamic
  where the graph allows it; otherwise the program is exported for the example's batch size
  and :attr:`Artifact.dynamic_batch` is ``False`` with the reason in :attr:`Artifact.note`. A
  PT2E int8 graph (INC static int8) references ``torch.ops.quantized_decomposed``: run
  ``import torch.ao.quantization.fx._decomposed`` (plain torch, it registers those ops) before
  ``torch.export.load``. The same works for a pruned fp32 model and INC weight-only models.
- ``"onnx"``: :func:`torch.onnx.export` with the dynamo exporter (needs the ``onnx`` extra:
  ``pip install 'atmc-plugin[onnx]'``); checked in ONNX Runtime.

Every file is written beside its target, reloaded from there and run on the check batches
before it is renamed into place: a file that does not reproduce the model (outputs further than
:data:`FP32_TOLERANCE` for float models, predictions agreeing on fewer than
:data:`INT8_AGREEMENT` of the points for int8 graphs, whose runtimes may round differently) is
never left behind, and nothing is overwritten. A ``manifest.json`` beside the files lists what
was written, its size and how it was checked.

The tool-specific formats (INC's own save format) live in the tools' adapters.
"""

from __future__ import annotations

import inspect
import io
import json
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from .errors import ATMCError, InputError, describe
from .io import replace_atomically, write_text_atomically
from .modes import preserved_modes

FORMATS = ("pt2", "onnx")
FP32_TOLERANCE = 1e-4
INT8_AGREEMENT = 0.99
INT8_LOAD_HINT = "import torch.ao.quantization.fx._decomposed"  # registers the int8 ops


@dataclass(frozen=True)
class Artifact:
    """One written file and how it was checked.

    :param name: the model's name (e.g. ``"int8"``).
    :param format: ``"pt2"``, ``"onnx"`` or a tool's format.
    :param path: the file or folder written.
    :param bytes: its size on disk.
    :param dynamic_batch: whether it accepts any batch size.
    :param checked_batches: the batch sizes it was run at after reloading.
    :param max_abs_diff: the largest output difference to the in-process model.
    :param agreement: the share of points whose predicted class matches the model's.
    :param load: how to load it without atmc-plugin.
    :param note: what else a user should know (why the batch is frozen, ...).
    :param latency: its latency once loaded (:func:`atmc_plugin.serving.time_artifact`).
    """

    name: str
    format: str
    path: str
    bytes: int
    dynamic_batch: bool
    checked_batches: tuple[int, ...]
    max_abs_diff: float
    agreement: float
    load: str
    note: str = ""
    latency: dict[str, Any] | None = None


def is_quantized_graph(model: nn.Module) -> bool:
    """Whether ``model`` is a PT2E graph with quantize/dequantize ops (an int8 model)."""
    if not isinstance(model, torch.fx.GraphModule):
        return False
    return any(
        "quantize_per" in str(node.target) for node in model.graph.nodes if node.op != "output"
    )


def check_batches(example: Tensor, batches: Sequence[int]) -> list[Tensor]:
    """Inputs of each batch size in ``batches``, made from ``example`` (repeated if needed)."""
    if example.dim() == 0 or example.shape[0] == 0:
        raise InputError(f"example inputs of shape {tuple(example.shape)}: give a batch (N, ...).")
    out = []
    for size in batches:
        if isinstance(size, bool) or not isinstance(size, int) or size < 1:
            raise InputError(f"batch size {size!r}: expected a positive integer.")
        reps = -(-size // example.shape[0])
        # a copy with its own storage: a slice would carry its whole source into saved files
        out.append(example.repeat(reps, *([1] * (example.dim() - 1)))[:size].clone())
    return out


def export_model(
    model: nn.Module,
    example_inputs: Tensor,
    folder: str | Path,
    *,
    formats: Sequence[str] = ("pt2",),
    name: str = "model",
    batches: Sequence[int] = (1, 8),
) -> list[Artifact]:
    """Write ``model`` in each of ``formats`` into ``folder`` as ``{name}.{format}``, check each
    file after reloading it, and add them to ``folder/manifest.json``.

    :param model: the model as it runs in process (a pruned ``nn.Module``, an INC int8 graph,
        an INC weight-only model). It is not changed; it is run in eval mode.
    :param example_inputs: one batch of inputs (any batch size; the batch dimension is
        exported dynamic where the graph allows).
    :param batches: batch sizes every artifact is run at after reloading.
    :raises InputError: an unknown format, an existing file, bad example inputs.
    :raises ATMCError: the model cannot be exported, or the file does not reproduce it
        (nothing is left behind).
    """
    unknown = [f for f in formats if f not in FORMATS]
    if unknown or not formats:
        raise InputError(f"formats = {list(formats)!r}: choose from {', '.join(FORMATS)}.")
    out = Path(folder)
    targets = {fmt: out / f"{name}.{fmt}" for fmt in formats}
    existing = [str(p) for p in targets.values() if p.exists()]
    if existing:
        raise InputError(
            f"{existing[0]} exists; nothing was overwritten. Remove it or export elsewhere."
        )
    inputs = check_batches(example_inputs, batches)
    exporters: dict[str, Callable[..., Artifact]] = {"pt2": _export_pt2, "onnx": _export_onnx}
    records = [exporters[f](model, example_inputs, targets[f], name, inputs) for f in formats]
    record_artifacts(out, records)
    return records


def record_artifacts(folder: Path, records: Sequence[Artifact]) -> None:
    """Add ``records`` to ``folder/manifest.json`` (replacing entries for the same paths)."""
    manifest = folder / "manifest.json"
    entries = json.loads(manifest.read_text(encoding="utf-8")) if manifest.exists() else []
    paths = {r.path for r in records}
    entries = [e for e in entries if e.get("path") not in paths]
    entries += [asdict(r) for r in records]
    write_text_atomically(json.dumps(entries, indent=1) + "\n", manifest)


def compare(
    reference: Callable[[Tensor], Tensor],
    candidate: Callable[[Tensor], Tensor],
    inputs: Sequence[Tensor],
    *,
    quantized: bool,
    what: str,
) -> tuple[float, float]:
    """The largest output difference and the prediction agreement of ``candidate`` against
    ``reference`` over ``inputs``.

    :raises ATMCError: beyond :data:`FP32_TOLERANCE` (float) or below :data:`INT8_AGREEMENT`
        (int8).
    """
    diff, same, total, scale = 0.0, 0, 0, 1.0
    with torch.no_grad():
        for x in inputs:
            want, got = reference(x).float(), candidate(x).float()
            if want.shape != got.shape:
                raise ATMCError(f"{what} returns {tuple(got.shape)} for {tuple(want.shape)}.")
            diff = max(diff, float((want - got).abs().max()))
            if want.dim() >= 2:
                same += int((want.argmax(1) == got.argmax(1)).sum())
                total += want.shape[0]
            scale = max(scale, float(want.abs().max()))
    agreement = same / total if total else 1.0
    if not quantized and diff > FP32_TOLERANCE * scale:
        raise ATMCError(f"{what} differs from the model by {diff:.3g}; it was not kept.")
    if quantized and agreement < INT8_AGREEMENT:
        raise ATMCError(
            f"{what} predicts like the model on only {agreement:.1%} of the points; it was not "
            "kept."
        )
    return diff, agreement


def first_argument(model: nn.Module) -> str:
    """The name of ``model.forward``'s first input (the key of ``dynamic_shapes``)."""
    forward = model.forward
    params = [p for p in inspect.signature(forward).parameters.values() if p.name != "self"]
    if not params:
        raise InputError(f"{type(model).__name__}.forward takes no input.")
    return params[0].name


def _exported_program(
    model: nn.Module, example: Tensor, inputs: Sequence[Tensor]
) -> tuple[torch.export.ExportedProgram, bool, str]:
    """The program with a dynamic batch if the graph allows it (its guards hold at every check
    batch), else one for the example's batch size, with the reason."""
    # two examples: export specializes a dimension of size 1, and the program keeps its
    # example inputs (a large batch would bloat the file)
    pair = check_batches(example, [2])[0]
    dims = {first_argument(model): {0: torch.export.Dim("batch")}}
    try:
        program = torch.export.export(model, (pair,), dynamic_shapes=dims)
        module = program.module()
        with torch.no_grad():
            for x in inputs:  # the program's shape guards hold at every batch size asked for
                module(x)
        return program, True, ""
    except Exception as exc:  # torch.export and the guards raise many types
        reason = f"batch frozen at {example.shape[0]}: {describe(exc, 200)}"
    fixed = check_batches(example, [example.shape[0]])[0]
    try:
        return torch.export.export(model, (fixed,)), False, reason
    except Exception as exc:
        raise ATMCError(
            f"{type(model).__name__} cannot be exported with torch.export "
            f"({describe(exc)}); a model without "
            "data-dependent control flow is needed (https://pytorch.org/docs/stable/export.html)."
        ) from exc


def _usable(inputs: Sequence[Tensor], dynamic: bool, example: Tensor) -> list[Tensor]:
    if dynamic:
        return list(inputs)
    size = example.shape[0]
    return [x for x in inputs if x.shape[0] == size] or check_batches(example, [size])


def _export_checked(
    model: nn.Module,
    example: Tensor,
    target: Path,
    name: str,
    inputs: Sequence[Tensor],
    fmt: str,
    save_and_load: Callable[[torch.export.ExportedProgram, str], Callable[[Tensor], Tensor]],
    *,
    exact: bool,
    load: str,
) -> Artifact:
    """Export ``model``, save it with ``save_and_load(program, tmp)`` (which returns the
    reloaded runnable), compare, then rename into place; the record of what was written.

    :param exact: float tolerance even for int8 graphs (the same runtime reloaded).
    """
    quantized = is_quantized_graph(model) and not exact
    result: dict[str, tuple[float, float]] = {}
    with _eval(model):
        program, dynamic, note = _exported_program(model, example, inputs)
        checked = _usable(inputs, dynamic, example)

        def write(tmp: str) -> None:
            runnable = save_and_load(program, tmp)
            result["cmp"] = compare(model, runnable, checked, quantized=quantized, what=str(target))

        try:
            replace_atomically(target, write)
        except ATMCError:
            raise
        except Exception as exc:  # the exporters and the runtimes raise many types
            raise ATMCError(
                f"{fmt} export of {name} failed ({describe(exc)}); nothing was written."
            ) from exc
    diff, agreement = result["cmp"]
    return Artifact(
        name=name,
        format=fmt,
        path=str(target),
        bytes=target.stat().st_size,
        dynamic_batch=dynamic,
        checked_batches=tuple(int(x.shape[0]) for x in checked),
        max_abs_diff=diff,
        agreement=agreement,
        load=load,
        note=note,
    )


def _export_pt2(
    model: nn.Module, example: Tensor, target: Path, name: str, inputs: Sequence[Tensor]
) -> Artifact:
    def save_and_load(program: torch.export.ExportedProgram, tmp: str) -> Any:
        buffer = io.BytesIO()  # not the file name: it would name the archive's folder
        torch.export.save(program, buffer)
        Path(tmp).write_bytes(buffer.getvalue())
        return torch.export.load(io.BytesIO(Path(tmp).read_bytes())).module()

    load = "torch.export.load(path).module()"
    if is_quantized_graph(model):
        load = f"{INT8_LOAD_HINT}; {load}"
    return _export_checked(
        model, example, target, name, inputs, "pt2", save_and_load, exact=True, load=load
    )


def _export_onnx(
    model: nn.Module, example: Tensor, target: Path, name: str, inputs: Sequence[Tensor]
) -> Artifact:
    try:
        import onnxruntime as ort
    except ImportError as exc:
        raise InputError(
            "the onnx format needs onnx, onnxscript and onnxruntime: "
            "pip install 'atmc-plugin[onnx]'."
        ) from exc

    def save_and_load(program: torch.export.ExportedProgram, tmp: str) -> Any:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the exporter's own chatter
            onnx_program = torch.onnx.export(program, dynamo=True, verbose=False)
        if onnx_program is None:
            raise ATMCError(f"torch.onnx.export returned nothing for {name}.")
        onnx_program.save(tmp)
        session = ort.InferenceSession(tmp, providers=["CPUExecutionProvider"])
        feed = session.get_inputs()[0].name
        return lambda x: torch.from_numpy(session.run(None, {feed: x.numpy()})[0])

    load = "onnxruntime.InferenceSession(path)"
    return _export_checked(
        model, example, target, name, inputs, "onnx", save_and_load, exact=False, load=load
    )


@contextmanager
def _eval(model: nn.Module) -> Iterator[None]:
    """Run ``model`` in eval mode, flag by flag (a PT2E graph refuses ``.eval()``), and
    restore every module's mode afterwards."""
    with preserved_modes(model):
        for module in model.modules():
            module.training = False
        yield
