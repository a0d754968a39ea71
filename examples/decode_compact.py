"""Decode an atmc-plugin compact file (``model.safetensors``) without atmc-plugin.

The compact file carries a compressed model at its true size: for each compressed tensor its
non-zero positions (a bitmap or int32 positions), its non-zero values as bit-packed b-bit codes
and its quantization set (a float32 codebook, or per-block float32 scales and zero points of
an integer grid); every other tensor as it is. This file needs only NumPy and the Python
standard library (it reads the safetensors container itself)::

    python examples/decode_compact.py runs/digits-tp-inc/model.safetensors   # prints shapes

    from decode_compact import decode
    state = {k: torch.from_numpy(v) for k, v in decode("model.safetensors").items()}
    model.load_state_dict(state)  # the same values as atmc_plugin.export.load_compact

Copy it next to your serving code; ``tests/test_export.py`` checks it against
``atmc_plugin.export.load_compact`` on every quantizer and grid.
"""

from __future__ import annotations

import json
import struct
import sys
from pathlib import Path

import numpy as np

FORMAT = "atmc-compact/1"
DTYPES = {
    "F32": np.float32,
    "F64": np.float64,
    "F16": np.float16,
    "I64": np.int64,
    "I32": np.int32,
    "I16": np.int16,
    "I8": np.int8,
    "U8": np.uint8,
    "BOOL": np.bool_,
}


def read_safetensors(path: str | Path) -> tuple[dict[str, str], dict[str, np.ndarray]]:
    """The metadata and the arrays of a safetensors file."""
    raw = Path(path).read_bytes()
    (size,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + size])
    meta = header.pop("__metadata__", {}) or {}
    body = raw[8 + size :]
    arrays = {}
    for name, info in header.items():
        start, end = info["data_offsets"]
        dtype = np.dtype(DTYPES[info["dtype"]]).newbyteorder("<")
        arrays[name] = np.frombuffer(body[start:end], dtype=dtype).reshape(info["shape"])
    return meta, arrays


def unpack_bits(packed: np.ndarray, width: int, count: int) -> np.ndarray:
    """``count`` unsigned integers of ``width`` bits each, most significant bit first."""
    bits = np.unpackbits(packed)[: count * width].reshape(count, width).astype(np.uint32)
    return (bits * (1 << np.arange(width - 1, -1, -1, dtype=np.uint32))).sum(axis=1)


def grid_blocks(shape: list[int], grid: dict, blocks: list[int]) -> list[np.ndarray]:
    """For each block of scales, the flat element positions each of its rows covers."""
    numel = int(np.prod(shape))
    positions = np.arange(numel).reshape(shape)
    if grid["granularity"] == "tensor":
        out = [positions.reshape(1, -1)]
    else:
        mat = positions.reshape(shape[0], -1)
        size = grid.get("group_size") or mat.shape[1]
        if grid["granularity"] == "channel" or size >= mat.shape[1]:
            out = [mat]
        else:
            split = mat.shape[1] // size * size
            out = [mat[:, :split].reshape(-1, size)]
            if split < mat.shape[1]:
                out.append(mat[:, split:])
    if [len(b) for b in out] != blocks:
        raise ValueError(f"grid blocks {blocks} do not match the layout {[len(b) for b in out]}")
    return out


def decode(path: str | Path) -> dict[str, np.ndarray]:
    """Every tensor of the compact file, dense, as float32 (compressed) or as stored."""
    meta, arrays = read_safetensors(path)
    if meta.get("format") != FORMAT:
        raise ValueError(f"{path} is not an atmc-plugin compact file ({FORMAT}).")
    layout = json.loads(meta["layout"])
    state = {}
    for name, info in layout.items():
        numel, nnz = info["numel"], info["nnz"]
        support = arrays[f"{name}::support"]
        if info["support_kind"] == "positions":
            positions = support.astype(np.int64)
        else:
            positions = np.flatnonzero(np.unpackbits(support)[:numel])
        if f"{name}::codebook" in arrays:
            codes = unpack_bits(arrays[f"{name}::codes"], info["bits"], nnz)
            values = arrays[f"{name}::codebook"][codes]
        elif f"{name}::grid_scale" in arrays:
            grid = info["grid"]
            scale = np.empty(numel, dtype=np.float32)
            zero = np.empty(numel, dtype=np.float32)
            starts = np.cumsum([0, *info["grid_blocks"]])
            blocks = grid_blocks(info["shape"], grid, info["grid_blocks"])
            for block, a, b in zip(blocks, starts[:-1], starts[1:], strict=True):
                scale[block] = arrays[f"{name}::grid_scale"][a:b, None]
                zero[block] = arrays[f"{name}::grid_zero"][a:b, None]
            low = -(2 ** (grid["bits"] - 1)) if grid["symmetric"] else 0
            codes = unpack_bits(arrays[f"{name}::codes"], info["bits"], nnz).astype(np.int64)
            code_values = (codes + low).astype(np.float32)
            values = (code_values - zero[positions]) * scale[positions]  # float32, as torch
        else:
            values = arrays[f"{name}::values"]
        flat = np.zeros(numel, dtype=np.float32)
        flat[positions] = values
        state[name] = flat.reshape(info["shape"])
    for key, array in arrays.items():
        if "::" not in key:
            state[key] = np.array(array)
    return state


if __name__ == "__main__":
    for key, value in decode(sys.argv[1]).items():
        print(f"{key}: {value.dtype} {tuple(value.shape)}")
