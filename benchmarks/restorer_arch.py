"""Restorer architecture by quality per CPU-hour: short runs at equal minutes, one table.

Each config in ``configs/restorer-arch/`` trains the same data and losses for the same wall
minutes with one thread (the runs went side by side, so each had the same share of the CPU).
This script scores each run's EMA export on the held-in validation pairs of its own config
(the first ``val_count`` faces of the train split, degraded as in training, seeds seed + 2 + i)
and measures inference speed at batch 16 (2 threads, the budget is >= 100 faces/s).

    python benchmarks/restorer_arch.py configs/restorer-arch/*.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from flipnet.config import load_config
from flipnet.io import to_uint8
from flipnet.metrics.psnr_ssim import psnr, ssim
from flipnet.models.restorer import count_parameters, load_restorer
from flipnet.training.pairs import fixed_pairs
from flipnet.training.restorer import RestorerTrainConfig, make_pairs


def faces_per_second(model, size: int, batch: int = 16, reps: int = 5) -> float:
    """Inference faces/s of ``model`` at ``batch`` (after one warm-up pass)."""
    x = torch.rand(batch, 3, size, size) * 2 - 1
    with torch.no_grad():
        model(x)
        t0 = time.perf_counter()
        for _ in range(reps):
            model(x)
    return batch * reps / (time.perf_counter() - t0)


def main() -> None:
    """Score every run and print the Markdown table."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("configs", nargs="+")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    rows = []
    for path in args.configs:
        cfg = load_config(RestorerTrainConfig, path)
        out = Path(cfg.out_dir)
        model, rcfg = load_restorer(out / "restorer")
        model.eval()
        _, val = make_pairs(cfg, progress=False)
        lq, hq = fixed_pairs(val, len(val), seed=cfg.seed + 2)
        with torch.no_grad():
            pred = torch.cat([model(lq[i:i + 32]) for i in range(0, len(lq), 32)])
        p, h, q = to_uint8(pred), to_uint8(hq), to_uint8(lq)
        degraded = np.array([not np.array_equal(a, b) for a, b in zip(q, h)])
        log = [json.loads(s) for s in (out / "log.jsonl").read_text().splitlines() if s]
        rows.append({"run": Path(path).stem, "params_M": count_parameters(model) / 1e6,
                     "steps": log[-1]["step"], "cpu_min": log[-1]["wall_s"] / 60 * cfg.threads,
                     "psnr_lq": float(np.mean(psnr(q[degraded], h[degraded]))),
                     "psnr": float(np.mean(psnr(p[degraded], h[degraded]))),
                     "ssim": float(np.mean(ssim(p[degraded], h[degraded]))),
                     "faces_per_s_b16": faces_per_second(model, rcfg.image_size)})
        print(json.dumps(rows[-1]), flush=True)
    print("\n| run | params (M) | steps | wall min (side by side, 1 thread each) | val PSNR LQ | val PSNR | val SSIM "
          "| faces/s b16 (2 threads) |\n|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['run']} | {r['params_M']:.2f} | {r['steps']} | {r['cpu_min']:.1f} | "
              f"{r['psnr_lq']:.2f} | {r['psnr']:.2f} | {r['ssim']:.4f} | "
              f"{r['faces_per_s_b16']:.0f} |")


if __name__ == "__main__":
    main()
