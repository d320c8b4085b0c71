"""Seconds per face of FLIPNET in both modes, per step count and batch size (issue 6).

Random 128 px crops go through ``flipnet_restore`` / ``flipnet_degrade`` (the model runs at its
prior's size; crops are resized in and out as ``flipnet restore`` does). Best of ``--repeats``
timings after one warm-up batch. Prints a table and writes JSON.

    python benchmarks/flipnet_speed.py --weights weights/flipnet-64 --steps 10,25,50
    python benchmarks/flipnet_speed.py --weights weights/flipnet-64 --device cuda --batch-sizes 1,32
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch

from flipnet.device import resolve_device
from flipnet.diffusion.flipnet_sampling import flipnet_degrade, flipnet_restore
from flipnet.io import write_bytes_atomic
from flipnet.models.flipnet import load_flipnet
from flipnet.weights import resolve_weights


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def main() -> None:
    """Time both modes for every (steps, batch size); write ``flipnet_speed.json``."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--weights", default="flipnet-64")
    ap.add_argument("--steps", default="10,25,50")
    ap.add_argument("--batch-sizes", default="1,8")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--out", default="out/flipnet-speed")
    args = ap.parse_args()
    device = resolve_device(args.device)
    net = load_flipnet(resolve_weights(args.weights), device=device)
    rows = []
    for mode, fn in (("restore", flipnet_restore), ("degrade", flipnet_degrade)):
        for steps in (int(s) for s in args.steps.split(",")):
            for bs in (int(b) for b in args.batch_sizes.split(",")):
                x = torch.rand(bs, 3, 128, 128, device=device) * 2 - 1
                best = float("inf")
                with torch.no_grad():
                    for i in range(args.repeats + 1):
                        _sync(device)
                        start = time.perf_counter()
                        fn(net, x, steps=steps, seed=0)
                        _sync(device)
                        if i:  # the first batch is a warm-up
                            best = min(best, time.perf_counter() - start)
                rows.append({"mode": mode, "steps": steps, "batch": bs,
                             "seconds_per_face": best / bs})
                print(json.dumps(rows[-1]), flush=True)
    meta = {"weights": args.weights, "device": str(device), "threads": torch.get_num_threads(),
            "machine": platform.processor() or platform.machine(), "rows": rows}
    write_bytes_atomic(Path(args.out) / "flipnet_speed.json", json.dumps(meta, indent=1).encode())
    print("| mode | steps | batch | s/face |\n|---|---|---|---|")
    for r in rows:
        print(f"| {r['mode']} | {r['steps']} | {r['batch']} | {r['seconds_per_face']:.3f} |")


if __name__ == "__main__":
    main()
