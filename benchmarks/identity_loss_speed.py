"""Speed of the differentiable dlib identity loss: forward + backward on a batch of aligned crops.

    python benchmarks/identity_loss_speed.py --batch 16 --size 128 --threads 1
"""

from __future__ import annotations

import argparse
import time

import torch

from flipnet.faces.dlib_resnet import IdentityLoss


def time_loss(batch: int, size: int, repeats: int, device: str) -> list[float]:
    """Seconds per forward + backward of IdentityLoss (pred and target random crops)."""
    loss = IdentityLoss().to(device)
    gen = torch.Generator().manual_seed(0)
    target = (torch.rand(batch, 3, size, size, generator=gen) * 2 - 1).to(device)
    pred = (torch.rand(batch, 3, size, size, generator=gen) * 2 - 1).to(device)
    times = []
    for _ in range(repeats + 1):  # the first run warms up
        p = pred.clone().requires_grad_(True)
        if device == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        loss(p, target).backward()
        if device == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return times[1:]


def main() -> None:
    """Print one line: median ms per forward + backward."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=16, help="crops per batch")
    ap.add_argument("--size", type=int, default=128, help="crop side in pixels")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    ap.add_argument("--repeats", type=int, default=3, help="timed runs after one warm-up")
    ap.add_argument("--device", default="cpu", help="cpu or cuda")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    times = sorted(time_loss(args.batch, args.size, args.repeats, args.device))
    print(f"IdentityLoss fwd+bwd, batch {args.batch} x {args.size}px, {args.threads} thread(s), "
          f"{args.device}: median {1000 * times[len(times) // 2]:.0f} ms "
          f"(min {1000 * times[0]:.0f} ms, {args.repeats} runs)")


if __name__ == "__main__":
    main()
