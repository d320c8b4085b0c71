"""LFW verification accuracy of flipnet's dlib identity embedder (checks the identity metric).

Usage:
    python benchmarks/lfw_verification.py --lfw ../shared/data/lfw --pairs 1000 --seed 0 \
        --out out/lfw_verification.json
Draws ``--pairs`` same-person and ``--pairs`` different-person pairs with the seed, embeds whole
250 px images (dlib HOG detection), and prints 10-fold accuracy +- std and accuracy at 0.6.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from flipnet.errors import FlipnetError
from flipnet.io import write_bytes_atomic
from flipnet.metrics.lfw import evaluate_lfw

REPO = Path(__file__).resolve().parents[1]


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print / save its result."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lfw", default=str(REPO.parent / "shared" / "data" / "lfw"),
                        help="LFW folder, one sub-folder per person")
    parser.add_argument("--pairs", type=int, default=1000, help="positive and negative pairs each")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--folds", type=int, default=10)
    parser.add_argument("--upsample", type=int, default=1, help="dlib HOG upsampling")
    parser.add_argument("--out", default=None, help="write the result as JSON here")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    try:
        result = evaluate_lfw(args.lfw, n_pos=args.pairs, n_neg=args.pairs, seed=args.seed,
                              folds=args.folds, upsample=args.upsample)
    except FlipnetError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"LFW verification, {args.pairs}+{args.pairs} pairs, seed {args.seed}, "
          f"{result['n_images']} images, {result['detector_fallbacks']} detector fallbacks")
    print(f"  {args.folds}-fold accuracy: {result['accuracy_mean']:.4f} "
          f"+- {result['accuracy_std']:.4f}")
    print(f"  accuracy at dlib's 0.6:  {result['accuracy_at_0.6']:.4f}")
    print(f"  mean distance same / different: {result['mean_distance_same']:.3f} / "
          f"{result['mean_distance_different']:.3f}")
    print(f"  time: {result['seconds']:.0f} s")
    if args.out:
        write_bytes_atomic(args.out, json.dumps(result, indent=2).encode())
    return 0


if __name__ == "__main__":
    sys.exit(main())
