"""Benchmark of ATMC's projections against the original dense-distance Lloyd quantizer.

Measures, on random He-initialised weights split into ResNet-like tensors of 0.27M
(ResNet-20), 11M (ResNet-18) and 25.6M (ResNet-50) parameters:

- the global l0 projection (one top-k over all tensors, density 0.01);
- the per-tensor codebook quantization projection at b = 4 and b = 8 (sorted 1-D Lloyd);
- the original method: Lloyd with a dense N x (2**b + 1) distance matrix per tensor, from the
  same start, where that matrix fits in ``--baseline-memory-gb``.

Times are medians of ``--repeats`` runs in this one process; the ratio and squared errors are
side by side. Results go to ``benchmarks/results/projection.json``.

    python benchmarks/projection.py [--repeats 3] [--sizes 0.27 11 25.6]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path
from typing import Any

import torch

from atmc_plugin.engine.codebook import codebook_quantize, companding_init, sorted_values
from atmc_plugin.engine.sparsity import global_topk_masks

RESULTS = Path(__file__).parent / "results" / "projection.json"
MAX_TENSOR = 512 * 512 * 9  # the largest conv of a ResNet
BASELINE_ITERATIONS = 30


def make_tensors(total: int, seed: int = 0) -> list[torch.Tensor]:
    """Random weights of ``total`` elements in tensors no larger than a ResNet's largest conv."""
    g = torch.Generator().manual_seed(seed)
    out, left, size = [], total, 64 * 64 * 9
    while left > 0:
        n = min(size, left, MAX_TENSOR)
        fan_in = max(1, n // 64)
        out.append(torch.randn(n, generator=g) * (2.0 / fan_in) ** 0.5)
        left -= n
        size = min(size * 2, MAX_TENSOR)
    return out


def dense_lloyd(x: torch.Tensor, init: torch.Tensor, iterations: int) -> torch.Tensor:
    """The original method: full distance matrix, argmin, means; a centre frozen at 0."""
    centres = torch.cat([init.float(), torch.zeros(1)])
    k = centres.numel() - 1
    for _ in range(iterations):
        assign = torch.argmin((x[:, None] - centres[None, :]) ** 2, dim=1)
        sums = torch.zeros(k + 1).index_add_(0, assign, x)
        counts = torch.bincount(assign, minlength=k + 1).float()
        centres = torch.where(counts > 0, sums / counts.clamp(min=1), centres)
        centres[k] = 0.0
    assign = torch.argmin((x[:, None] - centres[None, :]) ** 2, dim=1)
    return centres[assign]


def topk_masks(tensors: list[torch.Tensor], k: int) -> list[torch.Tensor]:
    """Baseline global l0 projection: ``torch.topk`` on all magnitudes, scattered back."""
    mags = torch.cat([t.abs().reshape(-1) for t in tensors])
    keep = torch.zeros_like(mags, dtype=torch.bool)
    keep[torch.topk(mags, k).indices] = True
    return list(torch.split(keep, [t.numel() for t in tensors]))


def timed(fn, repeats: int) -> tuple[float, Any]:
    times: list[float] = []
    result: Any = None
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


def sse(a: list[torch.Tensor], b: list[torch.Tensor]) -> float:
    return float(sum(((x.double() - y.double()) ** 2).sum() for x, y in zip(a, b, strict=True)))


def run(sizes_m: list[float], repeats: int, baseline_memory_gb: float) -> dict:
    rows = []
    for size_m in sizes_m:
        tensors = make_tensors(int(size_m * 1e6))
        total = sum(t.numel() for t in tensors)
        k = int(0.01 * total)
        global_topk_masks(tensors, k)  # warm-up (allocator, thread pool)
        t_l0, _ = timed(lambda tensors=tensors, k=k: global_topk_masks(tensors, k), repeats)
        t_topk, _ = timed(lambda tensors=tensors, k=k: topk_masks(tensors, k), repeats)
        rows.append(
            {
                "params": total,
                "op": "l0 projection (density 0.01)",
                "ours_s": t_l0,
                "baseline": "torch.topk over the concatenated magnitudes",
                "baseline_s": t_topk,
                "speedup": t_topk / t_l0,
            }
        )
        for bits in (4, 8):

            def ours(tensors=tensors, bits=bits):
                return [codebook_quantize(t, bits)[0] for t in tensors]

            t_ours, q = timed(ours, repeats)
            row: dict[str, Any] = {
                "params": total,
                "op": f"codebook quantization b={bits}",
                "ours_s": t_ours,
                "ours_sse": sse(q, tensors),
            }
            need_gb = max(t.numel() for t in tensors) * (2**bits + 1) * 4 * 3 / 1e9
            if need_gb <= baseline_memory_gb:
                inits = [companding_init(sorted_values(t), 2**bits) for t in tensors]
                start = time.perf_counter()
                ref = [
                    dense_lloyd(t, i, BASELINE_ITERATIONS)
                    for t, i in zip(tensors, inits, strict=True)
                ]
                row["baseline_s"] = time.perf_counter() - start
                row["baseline_sse"] = sse(ref, tensors)
                row["speedup"] = row["baseline_s"] / t_ours
                row["sse_ratio"] = row["ours_sse"] / row["baseline_sse"]
            else:
                row["baseline_skipped"] = f"distance matrices need ~{need_gb:.1f} GB"
            rows.append(row)
    return {
        "machine": {
            "platform": platform.platform(),
            "processor": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__,
        },
        "repeats": repeats,
        "baseline": f"dense-distance Lloyd, {BASELINE_ITERATIONS} iterations, same start",
        "rows": rows,
    }


def table(result: dict) -> str:
    lines = [
        "| params | operation | ours (s) | baseline (s) | speed-up | SSE ours / baseline |",
        "|---:|---|---:|---:|---:|---:|",
    ]
    for r in result["rows"]:
        base = f"{r['baseline_s']:.3f}" if "baseline_s" in r else "does not fit"
        speed = f"{r['speedup']:.1f}x" if "speedup" in r else "-"
        ratio = f"{r['sse_ratio']:.4f}" if "sse_ratio" in r else "-"
        size = f"{r['params'] / 1e6:.2f}M"
        lines.append(f"| {size} | {r['op']} | {r['ours_s']:.3f} | {base} | {speed} | {ratio} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=float, nargs="+", default=[0.27, 11.0, 25.6])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--baseline-memory-gb", type=float, default=4.0)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    result = run(args.sizes, args.repeats, args.baseline_memory_gb)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(table(result))
    print(f"\nmachine: {result['machine']}; median of {args.repeats} runs; written to {args.out}")


if __name__ == "__main__":
    main()
