"""Extract LPIPS v0.1 linear heads (vgg, alex) from the `lpips` PyPI wheel into safetensors.

The `lpips` package (Zhang et al. 2018, BSD-2-Clause) ships its calibrated 1x1 linear layers as
``lpips/weights/v0.1/{vgg,alex}.pth``. BSD-2 allows redistribution with the copyright notice, so
this copies the two heads (a few KiB) into ``src/flipnet/data/lpips_heads/`` with the licence text.

Usage:
    python scripts/extract_lpips_heads.py                  # runs `pip download --no-deps lpips`
    python scripts/extract_lpips_heads.py --wheel lpips-0.1.4-py3-none-any.whl
"""

from __future__ import annotations

import argparse
import io
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import torch
from safetensors.torch import save_file

REPO = Path(__file__).resolve().parents[1]
OUT_DIR = REPO / "src" / "flipnet" / "data" / "lpips_heads"
LPIPS_VERSION = "0.1.4"
NETS = ("vgg", "alex")


def download_wheel(folder: Path) -> Path:
    """``pip download --no-deps lpips==LPIPS_VERSION`` into ``folder``; the wheel's path."""
    subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
                    f"lpips=={LPIPS_VERSION}", "-d", str(folder)], check=True)
    return next(folder.glob("lpips-*.whl"))


def extract(wheel: Path, out_dir: Path = OUT_DIR) -> list[Path]:
    """Write ``{net}.safetensors`` (keys ``lin0.weight``..``lin4.weight``) and the licence."""
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    with zipfile.ZipFile(wheel) as zf:
        licence = next(n for n in zf.namelist() if n.endswith(".dist-info/LICENSE"))
        for net in NETS:
            raw = zf.read(f"lpips/weights/v0.1/{net}.pth")
            state = torch.load(io.BytesIO(raw), map_location="cpu", weights_only=True)
            heads = {k.replace(".model.1.", "."): v.float().contiguous()
                     for k, v in state.items()}  # lin{k}.model.1.weight -> lin{k}.weight
            if sorted(heads) != [f"lin{k}.weight" for k in range(5)]:
                raise SystemExit(f"{wheel}: unexpected keys in {net}.pth: {sorted(state)}")
            path = out_dir / f"{net}.safetensors"
            save_file(heads, str(path), metadata={
                "source": f"lpips {LPIPS_VERSION} (PyPI) lpips/weights/v0.1/{net}.pth",
                "license": "BSD-2-Clause, see LICENSE-lpips.txt"})
            written.append(path)
        path = out_dir / "LICENSE-lpips.txt"
        path.write_bytes(b"LPIPS linear heads (v0.1) from the lpips package, "
                         b"https://github.com/richzhang/PerceptualSimilarity\n\n"
                         + zf.read(licence))
        written.append(path)
    return written


def main() -> None:
    """Command line entry."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--wheel", type=Path, default=None, help="an lpips wheel already on disk")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        wheel = args.wheel or download_wheel(Path(tmp))
        for path in extract(wheel):
            print(f"wrote {path.relative_to(REPO)}")


if __name__ == "__main__":
    main()
