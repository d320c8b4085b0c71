"""Network interpolation of two restorer folders (ESRGAN): write a restorer whose weights are
(1 - alpha) x FIDELITY + alpha x TEXTURE, with a model card saying what it is made of.

    python scripts/interpolate_restorer.py weights/restorer-128 out/restorer-128-leg6-gan/restorer \\
        0.5 out/restorer-128-interp-0.5
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

from flipnet.io import write_bytes_atomic
from flipnet.models.restorer import interpolate_restorers, load_restorer, save_restorer


def main() -> None:
    """Load both folders, interpolate, write the new folder atomically (a temp folder, moved)."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("fidelity", type=Path, help="the fidelity-oriented restorer folder")
    ap.add_argument("texture", type=Path, help="the GAN-heavier restorer folder")
    ap.add_argument("alpha", type=float, help="weight of TEXTURE, 0 to 1")
    ap.add_argument("out", type=Path)
    args = ap.parse_args()
    if args.out.exists():
        raise SystemExit(f"{args.out}: exists; choose a new folder")
    fidelity, cfg = load_restorer(args.fidelity)
    texture, _ = load_restorer(args.texture)
    mixed = interpolate_restorers(fidelity, texture, args.alpha)
    tmp = args.out.with_name(args.out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    save_restorer(tmp, mixed, cfg)
    write_bytes_atomic(tmp / "MODEL_CARD.md", (
        f"# flipnet fast restorer: network interpolation\n\n"
        f"- weights: (1 - {args.alpha}) x `{args.fidelity}` + {args.alpha} x `{args.texture}` "
        f"(ESRGAN's network interpolation; no training of its own)\n"
        f"- command: `python scripts/interpolate_restorer.py {args.fidelity} {args.texture} "
        f"{args.alpha} {args.out}`\n"
        f"- the two sources' cards give their data, losses and CPU-hours\n").encode())
    tmp.rename(args.out)
    print(args.out)


if __name__ == "__main__":
    main()
