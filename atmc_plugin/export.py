"""Storage-honest size and a compact export of ATMC-compressed models (safetensors, no pickle).

A compressed tensor is stored as:

- its support: a packed bitmap (1 bit per element) or sorted int32 positions, whichever is
  smaller;
- its non-zero values as ``bits``-bit codes, bit-packed;
- its quantization set: the float32 codebook (codebook quantizer) or per-block float32 scales and
  zero points (integer grid); with no quantization the non-zeros are stored as float32.

Every other tensor of the state dict (biases, BatchNorm, buffers, uncompressed layers) is stored
as it is. :func:`storage_bits` counts exactly what :func:`save_compact` writes (the safetensors
header aside), and :func:`load_compact` rebuilds a state dict with identical values.
"""

from __future__ import annotations

import itertools
import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from .costs import layer_costs  # where it lived before: kept importable from here
from .engine.intgrid import GridSpec, element_grid, grid_codes, grid_values
from .errors import InputError
from .io import replace_atomically

FORMAT = "atmc-compact/1"
__all__ = ["StorageReport", "layer_costs", "load_compact", "save_compact", "storage_report"]


@dataclass(frozen=True)
class StorageReport:
    """Bits per part: codes, support indices, quantization sets and everything uncompressed."""

    codes: int
    indices: int
    quant_sets: int
    uncompressed: int
    dense_bits: int

    @property
    def total_bits(self) -> int:
        return self.codes + self.indices + self.quant_sets + self.uncompressed

    @property
    def total_bytes(self) -> int:
        return math.ceil(self.total_bits / 8)

    @property
    def ratio(self) -> float:
        """Storage-honest size over the dense float32 state dict."""
        return self.total_bits / self.dense_bits if self.dense_bits else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "codes_bits": self.codes,
            "index_bits": self.indices,
            "quant_set_bits": self.quant_sets,
            "uncompressed_bits": self.uncompressed,
            "total_bytes": self.total_bytes,
            "dense_bytes": self.dense_bits // 8,
            "storage_ratio": self.ratio,
        }


def _pack_bits(values: np.ndarray, width: int) -> np.ndarray:
    """Pack non-negative integers < 2**width into a uint8 array, ``width`` bits each."""
    if values.size == 0:
        return np.zeros(0, dtype=np.uint8)
    shifts = np.arange(width - 1, -1, -1, dtype=np.uint32)
    bits = ((values.astype(np.uint32)[:, None] >> shifts) & 1).astype(np.uint8)
    return np.packbits(bits.reshape(-1))


def _unpack_bits(packed: np.ndarray, width: int, count: int) -> np.ndarray:
    bits = np.unpackbits(packed)[: count * width].reshape(count, width).astype(np.uint32)
    weights = 1 << np.arange(width - 1, -1, -1, dtype=np.uint32)
    return (bits * weights).sum(axis=1)


def _support(flat: Tensor) -> tuple[str, np.ndarray]:
    """The cheaper encoding of the non-zero positions: bitmap or int32 positions."""
    mask = (flat != 0).cpu().numpy()
    nnz = int(mask.sum())
    if nnz * 32 < mask.size:
        return "positions", np.flatnonzero(mask).astype(np.int32)
    return "bitmap", np.packbits(mask.astype(np.uint8))


def _compress(
    tensor: Tensor, bits: int | None, qstate: Any, quantizer: str, spec: Any = None
) -> dict[str, Any]:
    flat = tensor.detach().reshape(-1)
    kind, support = _support(flat)
    values = flat[flat != 0]
    entry: dict[str, Any] = {
        "support_kind": kind,
        "support": support,
        "numel": flat.numel(),
        "shape": list(tensor.shape),
        "nnz": int(values.numel()),
    }
    if bits is None or qstate is None:
        entry["values"] = values.float().cpu().numpy()
        return entry
    if quantizer == "codebook":
        book = qstate.double().cpu()
        nonzero_book = book[book != 0].float()
        idx = torch.bucketize(values.float().cpu(), nonzero_book)
        idx = idx.clamp_(max=len(nonzero_book) - 1)
        exact = nonzero_book[idx] == values.float().cpu()
        if not bool(exact.all()):
            raise InputError(
                "a compressed tensor holds values outside its codebook; finalize() first."
            )
        entry.update(codes=_pack_bits(idx.numpy(), bits), codebook=nonzero_book.numpy(), bits=bits)
        return entry
    return _compress_grid(entry, tensor, flat, bits, qstate, spec)


def _compress_grid(
    entry: dict[str, Any], tensor: Tensor, flat: Tensor, bits: int, qstate: Any, spec: Any
) -> dict[str, Any]:
    """Integer grid: b-bit codes (offset to unsigned) of the non-zeros + per-block scales/zeros."""
    scale, zero = element_grid(tensor.shape, spec, qstate)
    nonzero = (flat != 0).cpu()
    values = flat.detach().float().cpu()[nonzero]
    codes = grid_codes(values, scale[nonzero], zero[nonzero], spec)
    if not torch.equal(grid_values(codes, scale[nonzero], zero[nonzero]), values):
        raise InputError("a compressed tensor holds values off its integer grid; finalize() first.")
    qmin = spec.code_range[0]
    entry.update(
        codes=_pack_bits((codes - qmin).to(torch.int64).numpy(), bits),
        grid_scale=torch.cat([s.float().cpu() for s, _ in qstate]).numpy(),
        grid_zero=torch.cat([z.float().cpu() for _, z in qstate]).numpy(),
        grid_blocks=[int(s.numel()) for s, _ in qstate],
        grid=dict(asdict(spec)),
        bits=bits,
    )
    return entry


def storage_bits(entry: dict[str, Any]) -> tuple[int, int, int]:
    """(code bits, index bits, quantization-set bits) of one compressed entry."""
    index_bits = entry["support"].size * (8 if entry["support_kind"] == "bitmap" else 32)
    if "codebook" in entry:
        return entry["codes"].size * 8, index_bits, entry["codebook"].size * 32
    if "grid_scale" in entry:
        sets = (entry["grid_scale"].size + entry["grid_zero"].size) * 32
        return entry["codes"].size * 8, index_bits, sets
    return entry["values"].size * 32, index_bits, 0


def _entries(atmc: Any) -> tuple[dict[str, dict[str, Any]], dict[str, Tensor]]:
    from .projection import ATMCProjection

    bits = atmc.config.constraint.bits
    if not isinstance(atmc.projection, ATMCProjection):
        bits = None  # another projection's quantization sets are its own: store the values
    quantizer = atmc.config.constraint.quantizer
    spec = atmc.projection.grid if bits is not None else None
    compressed = {
        name: _compress(p, bits, atmc.qstates.get(name), quantizer, spec)
        for name, p in atmc.parameters().items()
    }
    rest = {k: v for k, v in atmc.module.state_dict().items() if k not in compressed}
    return compressed, rest


def storage_report(model: nn.Module, atmc: Any) -> StorageReport:
    """Storage-honest size of ``model`` compressed by ``atmc`` (call after ``finalize()``)."""
    return _report(*_entries(atmc))


def _report(compressed: dict[str, dict[str, Any]], rest: dict[str, Tensor]) -> StorageReport:
    codes = indices = sets = 0
    for entry in compressed.values():
        c, i, s = storage_bits(entry)
        codes, indices, sets = codes + c, indices + i, sets + s
    uncompressed = sum(t.numel() * t.element_size() * 8 for t in rest.values())
    dense = uncompressed + sum(e["numel"] * 32 for e in compressed.values())
    return StorageReport(codes, indices, sets, uncompressed, dense)


def save_compact(path: str | Path, model: nn.Module, atmc: Any) -> StorageReport:
    """Write the compact file; returns its :class:`StorageReport`."""
    from safetensors.numpy import save_file

    compressed, rest = _entries(atmc)
    arrays: dict[str, np.ndarray] = {}
    layout: dict[str, Any] = {}
    for name, entry in compressed.items():
        arrays[f"{name}::support"] = entry["support"]
        meta = {key: entry[key] for key in ("support_kind", "numel", "shape", "nnz")}
        if "codebook" in entry:
            arrays[f"{name}::codes"] = entry["codes"]
            arrays[f"{name}::codebook"] = entry["codebook"]
            meta["bits"] = entry["bits"]
        elif "grid_scale" in entry:
            arrays[f"{name}::codes"] = entry["codes"]
            arrays[f"{name}::grid_scale"] = entry["grid_scale"]
            arrays[f"{name}::grid_zero"] = entry["grid_zero"]
            meta.update(bits=entry["bits"], grid=entry["grid"], grid_blocks=entry["grid_blocks"])
        else:
            arrays[f"{name}::values"] = entry["values"]
        layout[name] = meta
    for name, tensor in rest.items():
        arrays[name] = tensor.detach().cpu().numpy()
    metadata = {"format": FORMAT, "layout": json.dumps(layout), "sha256": _arrays_digest(arrays)}
    replace_atomically(path, lambda tmp: save_file(arrays, tmp, metadata=metadata))
    return _report(compressed, rest)


def load_compact(path: str | Path) -> dict[str, Tensor]:
    """Rebuild the full state dict written by :func:`save_compact` (load it into the model)."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="numpy") as handle:
            meta = handle.metadata() or {}
            if meta.get("format") != FORMAT:
                raise InputError(f"{str(path)!r} is not an atmc-plugin compact file ({FORMAT}).")
            layout = json.loads(meta["layout"])
            arrays = {k: handle.get_tensor(k) for k in handle.keys()}  # noqa: SIM118
    except InputError:
        raise
    except Exception as exc:  # safetensors raises its own types for corrupt headers
        raise InputError(
            f"{str(path)!r} is corrupt or not a compact file ({type(exc).__name__}: "
            f"{str(exc).splitlines()[0][:200] if str(exc) else ''})."
        ) from exc
    if not isinstance(layout, dict):
        raise InputError(f"{str(path)!r}: the layout is not a table of tensors.")
    digest = meta.get("sha256")
    if digest is not None and digest != _arrays_digest(arrays):
        raise InputError(
            f"{str(path)!r} is corrupt: its arrays do not match the sha256 written with them."
        )
    for name, info in layout.items():
        _check_entry(str(path), name, info, arrays)
    state: dict[str, Tensor] = {}
    for name, info in layout.items():
        numel, nnz = info["numel"], info["nnz"]
        support = arrays[f"{name}::support"]
        if info["support_kind"] == "positions":
            positions = support.astype(np.int64)
        else:
            positions = np.flatnonzero(np.unpackbits(support)[:numel])
        if f"{name}::codebook" in arrays:
            idx = _unpack_bits(arrays[f"{name}::codes"], info["bits"], nnz)
            values = arrays[f"{name}::codebook"][idx]
        elif f"{name}::grid_scale" in arrays:
            values = _grid_values(info, arrays, name, positions)
        else:
            values = arrays[f"{name}::values"]
        flat = np.zeros(numel, dtype=np.float32)
        flat[positions] = values
        state[name] = torch.from_numpy(flat.reshape(info["shape"]))
    for key, array in arrays.items():
        if "::" not in key:
            state[key] = torch.from_numpy(np.ascontiguousarray(array))
    return state


MAX_NUMEL = 2**31 - 1


def _arrays_digest(arrays: dict[str, np.ndarray]) -> str:
    """sha256 over every array's name, dtype, shape and bytes, in name order."""
    import hashlib

    h = hashlib.sha256()
    for name in sorted(arrays):
        a = np.ascontiguousarray(arrays[name])
        h.update(f"{name}|{a.dtype.str}|{a.shape}|".encode())
        h.update(a.tobytes())
    return h.hexdigest()


def _check_entry(path: str, name: str, info: Any, arrays: dict[str, np.ndarray]) -> None:
    """Refuse a layout entry that does not describe what its arrays hold (crafted or corrupt
    files), before anything is allocated from it."""

    def bad(why: str) -> InputError:
        return InputError(f"{path!r}: tensor {name!r} is malformed: {why}; the file is refused.")

    if not isinstance(info, dict):
        raise bad("its layout entry is not a table")
    shape, numel, nnz = info.get("shape"), info.get("numel"), info.get("nnz")
    if not (isinstance(shape, list) and all(isinstance(d, int) and d >= 0 for d in shape)):
        raise bad(f"shape {shape!r} is not a list of sizes")
    if not isinstance(numel, int) or numel != int(np.prod(shape, dtype=np.int64)):
        raise bad(f"numel {numel!r} does not match shape {shape}")
    if numel > MAX_NUMEL:
        raise bad(f"numel {numel} exceeds {MAX_NUMEL}")
    if not isinstance(nnz, int) or not 0 <= nnz <= numel:
        raise bad(f"nnz {nnz!r} is not in 0..{numel}")
    support = arrays.get(f"{name}::support")
    if support is None:
        raise bad("its support array is missing")
    if info.get("support_kind") == "positions":
        if support.ndim != 1 or support.size != nnz or support.dtype.kind not in "iu":
            raise bad(f"{support.size} positions for {nnz} non-zeros")
        if nnz and (int(support.min()) < 0 or int(support.max()) >= numel):
            raise bad("a position lies outside the tensor")
    elif info.get("support_kind") == "bitmap":
        if support.dtype != np.uint8 or support.size != -(-numel // 8):
            raise bad(f"a bitmap of {support.size} bytes for {numel} entries")
        if int(np.unpackbits(support)[:numel].sum()) != nnz:
            raise bad(f"the bitmap does not hold {nnz} non-zeros")
    else:
        raise bad(f"support_kind {info.get('support_kind')!r} is unknown")
    if f"{name}::values" in arrays:
        values = arrays[f"{name}::values"]
        if values.size != nnz or not np.isfinite(values).all():
            raise bad("its values are not nnz finite numbers")
        return
    bits = info.get("bits")
    if not isinstance(bits, int) or not 1 <= bits <= 16:
        raise bad(f"bits {bits!r} is not in 1..16")
    codes = arrays.get(f"{name}::codes")
    if codes is None or codes.dtype != np.uint8 or codes.size < -(-nnz * bits // 8):
        raise bad(f"its codes do not hold {nnz} codes of {bits} bits")
    if f"{name}::codebook" in arrays:
        book = arrays[f"{name}::codebook"]
        if book.ndim != 1 or not 1 <= book.size <= 2**bits or not np.isfinite(book).all():
            raise bad(f"its codebook is not 1..{2**bits} finite values")
        if nnz and int(_unpack_bits(codes, bits, nnz).max()) >= book.size:
            raise bad("a code points past the codebook")
        return
    scale, zero = arrays.get(f"{name}::grid_scale"), arrays.get(f"{name}::grid_zero")
    blocks = info.get("grid_blocks")
    if scale is None or zero is None or not isinstance(info.get("grid"), dict):
        raise bad("it has neither values, a codebook nor a grid")
    if not (np.isfinite(scale).all() and (scale > 0).all() and np.isfinite(zero).all()):
        raise bad("its grid scales are not finite and positive")
    if not isinstance(blocks, list) or sum(blocks) != scale.size or zero.size != scale.size:
        raise bad("its grid blocks do not match its scales")
    try:
        spec = GridSpec(**info["grid"])
    except (TypeError, ValueError) as exc:
        raise bad(f"its grid {info['grid']!r} is invalid ({exc})") from exc
    if spec.bits != bits:
        raise bad(f"its grid has {spec.bits} bits, its codes {bits}")


def _grid_values(
    info: dict[str, Any], arrays: dict[str, np.ndarray], name: str, positions: np.ndarray
) -> np.ndarray:
    spec = GridSpec(**info["grid"])
    bounds = np.cumsum([0, *info["grid_blocks"]])
    scales, zeros = arrays[f"{name}::grid_scale"], arrays[f"{name}::grid_zero"]
    params = [
        (torch.from_numpy(scales[a:b].copy()), torch.from_numpy(zeros[a:b].copy()))
        for a, b in itertools.pairwise(bounds)
    ]
    scale, zero = element_grid(tuple(info["shape"]), spec, params)
    codes = _unpack_bits(arrays[f"{name}::codes"], info["bits"], info["nnz"]).astype(np.int64)
    index = torch.from_numpy(positions)
    code_values = torch.from_numpy(codes + spec.code_range[0]).float()
    values: np.ndarray = grid_values(code_values, scale[index], zero[index]).numpy()
    return values
