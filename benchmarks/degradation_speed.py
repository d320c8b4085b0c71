"""Images per second of each degradation preset on this CPU, batched and one image at a time.

    python benchmarks/degradation_speed.py --size 128 --batch 32 --threads 2

Prints a markdown table. The input is scikit-image's astronaut photo resized to SIZE (the
degradation cost does not depend on the content, only on the drawn parameters, which differ
per image). Each timing is the best of ``--repeats`` runs after one warm-up run, so a shared,
busy machine shows through as little as possible.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time

import torch
import torch.nn.functional as F

from flipnet.degradations.pipeline import degrade_images
from flipnet.degradations.presets import PRESETS, get_preset
from flipnet.io import to_tensor


def _best_time(fn, repeats: int) -> float:
    """Best wall time of ``repeats`` calls of fn, after one warm-up call."""
    fn()
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def measure(name: str, x: torch.Tensor, repeats: int) -> tuple[float, float]:
    """(batched, per-image) images per second of preset ``name`` on batch x (N,3,H,W)."""
    cfg = get_preset(name)
    n = x.shape[0]
    batched = _best_time(lambda: degrade_images(x, cfg, seed=0), repeats)
    single = _best_time(lambda: [degrade_images(x[i:i + 1], cfg, seed=0, start=i)
                                 for i in range(n)], repeats)
    return n / batched, n / single


def main(argv: list[str] | None = None) -> None:
    """Run the benchmark and print a markdown table."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=128, help="image side in pixels")
    ap.add_argument("--batch", type=int, default=32, help="images per batch")
    ap.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    ap.add_argument("--repeats", type=int, default=3, help="timed runs per setting (best kept)")
    ap.add_argument("--presets", default=",".join(PRESETS), help="comma-separated preset names")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    from skimage import data

    hq = F.interpolate(to_tensor(data.astronaut()), size=(args.size, args.size),
                       mode="bilinear", antialias=True)
    x = hq.expand(args.batch, -1, -1, -1).contiguous()  # (B,3,S,S)
    print(f"command: python {' '.join([os.path.relpath(sys.argv[0])] + sys.argv[1:])}")
    print(f"torch {torch.__version__}, {args.threads} threads, {os.cpu_count()} CPUs, "
          f"{platform.processor() or platform.machine()}; best of {args.repeats}\n")
    print(f"| preset | images/s, batch {args.batch} | images/s, one at a time | "
          f"ms/image (batch) |")
    print("|---|---:|---:|---:|")
    for name in args.presets.split(","):
        batched, single = measure(name, x, args.repeats)
        print(f"| {name} | {batched:.0f} | {single:.0f} | {1000 / batched:.1f} |")


if __name__ == "__main__":
    main()
