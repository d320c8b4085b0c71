"""Pack a split of a prepared face folder into tar shards small enough to carry to the GPU machine.

The device tool carries at most 64 MiB per call, so aligned crops travel as JPEG (quality 95,
4:4:4 chroma) inside tar files of at most ``--max-mib``. On the device, ``tar xf`` a shard into
``out/prepared/<name>`` and train from that folder as usual (``flipnet.training.data.FaceFolder``).

    python scripts/pack_shards.py out/prepared/utkface-128 out/shards/utkface-128 --split train
"""

from __future__ import annotations

import argparse
import io
import tarfile
from pathlib import Path

from PIL import Image
from tqdm import tqdm

from flipnet.io import list_images, load_image
from flipnet.splits import in_split


def jpeg_bytes(path: Path, quality: int) -> bytes:
    """The image at ``path`` re-encoded as a JPEG (no chroma subsampling)."""
    buf = io.BytesIO()
    Image.fromarray(load_image(path).rgb).save(buf, "JPEG", quality=quality, subsampling=0)
    return buf.getvalue()


def main() -> None:
    """Write ``<dst>/<name>-NNN.tar`` shards; prints how many faces each holds."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("src")
    ap.add_argument("dst")
    ap.add_argument("--split", default="train", help="train | test | all")
    ap.add_argument("--quality", type=int, default=95)
    ap.add_argument("--max-mib", type=float, default=58.0)
    args = ap.parse_args()
    src, dst = Path(args.src), Path(args.dst)
    dst.mkdir(parents=True, exist_ok=True)
    paths = in_split(list_images(src), None if args.split == "all" else args.split)
    limit, shard, size, count, tar = args.max_mib * 2**20, 0, 0, 0, None
    for path in tqdm(paths, desc="packing"):
        data = jpeg_bytes(path, args.quality)
        blocks = 512 + -(-len(data) // 512) * 512  # tar header + data padded to 512-byte blocks
        if tar is None or size + blocks + 10240 > limit:  # 10240: the end-of-archive record
            if tar is not None:
                tar.close()
                print(f"shard {shard - 1}: {count} faces, {size / 2**20:.1f} MiB")
            tar = tarfile.open(dst / f"{src.name}-{shard:03d}.tar", "w")
            shard, size, count = shard + 1, 0, 0
        info = tarfile.TarInfo(f"{src.name}/{path.relative_to(src).with_suffix('.jpg')}")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
        size, count = size + blocks, count + 1
    if tar is not None:
        tar.close()
        print(f"shard {shard - 1}: {count} faces, {size / 2**20:.1f} MiB")


if __name__ == "__main__":
    main()
