"""Throughput of batch restoration with the shipped restorer (issue 8): faces/s vs batch size.

For each batch size, ``RestorerMethod.restore`` (uint8 crops in, uint8 out, as ``flipnet restore
--aligned`` runs it) is timed on random aligned-size crops, best of several repeats. Beside it:
the model FLOPs per face (``torch.utils.flop_counter.FlopCounterMode``; one multiply-add = 2
FLOPs) and the theoretical limit = the device's measured peak fp32 FLOP/s (a big matmul) /
FLOPs per face. Prints a table and writes JSON.

    python benchmarks/restore_throughput.py                       # CPU, all threads
    python benchmarks/restore_throughput.py --device cuda --batch-sizes 1,4,16,32,64,128,256
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import numpy as np
import torch


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def peak_matmul_flops(device: torch.device, *, n: int = 2048, seconds: float = 3.0) -> float:
    """Best measured fp32 FLOP/s of an n x n matmul (2 n^3 FLOPs each), TF32 off."""
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = False
        n = max(n, 8192)
    g = torch.Generator().manual_seed(0)
    a, b = (torch.randn(n, n, generator=g).to(device) for _ in range(2))
    torch.mm(a, b)
    _sync(device)
    best, t_end = 0.0, time.perf_counter() + seconds
    while time.perf_counter() < t_end:
        t0 = time.perf_counter()
        torch.mm(a, b)
        _sync(device)
        best = max(best, 2 * n ** 3 / (time.perf_counter() - t0))
    return best


def flops_per_face(model: torch.nn.Module, size: int, device: torch.device) -> int:
    """Forward FLOPs of one (1, 3, size, size) face counted by FlopCounterMode."""
    from torch.utils.flop_counter import FlopCounterMode

    x = torch.zeros(1, 3, size, size, device=device)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(x)
    return int(counter.get_total_flops())


def time_batches(method, batch_sizes: list[int], *, min_seconds: float, seed: int = 0) -> list:
    """Faces/s of ``method.restore`` for each batch size (best repeat of >= ``min_seconds``)."""
    rng = np.random.default_rng(seed)
    rows = []
    for bs in batch_sizes:
        crops = rng.integers(0, 256, (bs, method.size, method.size, 3), dtype=np.uint8)
        method.batch_size = bs
        method.restore(crops)  # warm-up (allocator, kernels)
        _sync(method.device)
        times, t_end = [], time.perf_counter() + min_seconds
        while time.perf_counter() < t_end or len(times) < 2:
            t0 = time.perf_counter()
            method.restore(crops)
            _sync(method.device)
            times.append(time.perf_counter() - t0)
        rows.append({"batch_size": bs, "faces_per_s": bs / min(times),
                     "ms_per_batch": 1000 * min(times), "repeats": len(times)})
        print(f"  batch {bs:4d}: {rows[-1]['faces_per_s']:9.1f} faces/s", flush=True)
    return rows


def main() -> None:
    """Run the benchmark and write the JSON report."""
    from flipnet.pipelines.methods import RestorerMethod
    from flipnet.weights import resolve_weights

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--weights", default="restorer-128", help="restorer folder or shipped name")
    ap.add_argument("--device", default="cpu", help="cpu | cuda")
    ap.add_argument("--threads", type=int, default=0, help="CPU threads; 0 = all cores")
    ap.add_argument("--batch-sizes", default="1,4,16,32,64")
    ap.add_argument("--min-seconds", type=float, default=3.0, help="timing per batch size")
    ap.add_argument("--out", default="out/throughput-cpu.json")
    args = ap.parse_args()

    torch.set_num_threads(args.threads or os.cpu_count() or 1)
    method = RestorerMethod(resolve_weights(args.weights), device=args.device)
    device = method.device
    flops = flops_per_face(method.model, method.size, device)
    peak = peak_matmul_flops(device)
    name = (torch.cuda.get_device_name(device) if device.type == "cuda"
            else f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} "
                 f"thread(s) of {os.cpu_count()} cores")
    print(f"{args.weights} on {name}: {flops / 1e9:.3f} GFLOP/face, peak fp32 matmul "
          f"{peak / 1e9:.1f} GFLOP/s -> limit {peak / flops:.1f} faces/s")
    rows = time_batches(method, [int(b) for b in args.batch_sizes.split(",")],
                        min_seconds=args.min_seconds)
    for r in rows:
        r["fraction_of_limit"] = r["faces_per_s"] / (peak / flops)
    print("\n| batch | faces/s | ms/batch | % of limit |\n|---|---|---|---|")
    for r in rows:
        print(f"| {r['batch_size']} | {r['faces_per_s']:.1f} | {r['ms_per_batch']:.1f} | "
              f"{100 * r['fraction_of_limit']:.1f} |")
    report = {"weights": args.weights, "face_size": method.size, "device": name,
              "torch": torch.__version__, "flops_per_face": flops, "peak_flops": peak,
              "limit_faces_per_s": peak / flops, "rows": rows}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
