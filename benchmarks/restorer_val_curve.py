"""The restorer's held-in validation curve across training legs, as one PNG.

Each leg's ``val.jsonl`` (written by ``flipnet.training.restorer`` at every checkpoint: PSNR of
the 256 held-in train-split pairs) is placed after the previous leg's last step, so the x axis is
the total number of steps; ``--start-step`` and ``--start-psnr`` add the point where the first
leg given begins (for a leg whose own log is gone).

    python benchmarks/restorer_val_curve.py "leg 2=out/restorer-128-v3/val.jsonl" \\
        "leg 3 (deeper)=out/restorer-128-v4/val.jsonl" --start-step 5500 --start-psnr 25.28 \\
        --out docs/figures/restorer-128-val-curve.png
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from flipnet.viz import save_curve


def read_leg(path: str) -> list[tuple[int, float]]:
    """(step, PSNR) of one leg's val.jsonl, later lines winning (a resumed leg rewrites them)."""
    rows = {}
    for line in Path(path).read_text().splitlines():
        if line.strip():
            row = json.loads(line)
            rows[int(row["step"])] = float(row["psnr"])
    return sorted(rows.items())


def main() -> None:
    """Plot the legs one after the other and print each leg's first and last point."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("legs", nargs="+", help="LABEL=path/to/val.jsonl, in training order")
    ap.add_argument("--start-step", type=int, default=0)
    ap.add_argument("--start-psnr", type=float, default=None)
    ap.add_argument("--out", default="docs/figures/restorer-128-val-curve.png")
    args = ap.parse_args()
    offset, steps, series = args.start_step, [], {}
    if args.start_psnr is not None:
        steps.append(offset)
    for spec in args.legs:
        label, _, path = spec.rpartition("=")
        points = read_leg(path)
        before = len(steps)
        steps += [offset + s for s, _ in points]
        for name in list(series):
            series[name] += [float("nan")] * len(points)
        first = [args.start_psnr] if args.start_psnr is not None and not series else []
        series[label] = [float("nan")] * (before - len(first)) + first + [p for _, p in points]
        print(f"{label}: step {points[0][0]} {points[0][1]:.2f} dB -> step {points[-1][0]} "
              f"{points[-1][1]:.2f} dB")
        offset += points[-1][0]
    save_curve(args.out, steps, series, xlabel="restorer steps (all legs)",
               ylabel="held-in PSNR (dB)", title="restorer-128: held-in validation by leg")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
