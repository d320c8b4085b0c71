"""Whole-photo restoration speed on CPU: seconds per photo, split into detect / align / restore /
paste, for a one-face photo (scikit-image's astronaut) and a five-face photo (five astronaut face
crops on a 1024 x 768 canvas).

    python benchmarks/photo_speed.py --method restorer --repeats 3 --out out/bench_photo.json

Each configuration is run once to warm up (dlib models, weights), then ``--repeats`` times; the
median of each stage is reported. Prints a table and writes JSON.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from flipnet.io import write_bytes_atomic
from flipnet.pipelines.methods import make_method
from flipnet.pipelines.restore import STAGES, restore_photo

FACE_BOX = (130, 30, 320, 220)  # x0, y0, x1, y1 of a crop around the astronaut's face (190 px)
SLOTS = ((40, 40), (417, 40), (794, 40), (228, 478), (606, 478))  # five crops on 1024 x 768


def astronaut() -> np.ndarray:
    """The one-face test photo: uint8 (512, 512, 3)."""
    from skimage import data

    return np.ascontiguousarray(data.astronaut())


def five_faces() -> np.ndarray:
    """Five astronaut face crops (two mirrored) on a grey canvas: uint8 (768, 1024, 3)."""
    photo = astronaut()
    x0, y0, x1, y1 = FACE_BOX
    face = photo[y0:y1, x0:x1]
    canvas = np.full((768, 1024, 3), 128, np.uint8)
    for i, (x, y) in enumerate(SLOTS):
        canvas[y:y + face.shape[0], x:x + face.shape[1]] = face[:, ::-1] if i % 2 else face
    return canvas


def time_photo(rgb: np.ndarray, method, repeats: int) -> dict:
    """Median seconds per stage and in total over ``repeats`` runs (after one warm-up run)."""
    res = restore_photo(rgb, method)  # warm-up
    runs = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        res = restore_photo(rgb, method)
        runs.append({**res.timings, "total": time.perf_counter() - t0})
    keys = (*STAGES, "total")
    return {"size": [int(rgb.shape[1]), int(rgb.shape[0])],
            "faces": sum(f.restored is not None for f in res.faces),
            **{k: round(statistics.median(r.get(k, 0.0) for r in runs), 4) for k in keys}}


def main() -> None:
    """Run the benchmark and print / write the results."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--method", default="restorer", help="restorer | finetuned | prior | ...")
    parser.add_argument("--weights", default=None)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--out", default="out/bench_photo.json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    method = make_method(args.method, args.weights, device="cpu")
    results = {name: time_photo(photo, method, args.repeats)
               for name, photo in (("one face", astronaut()), ("five faces", five_faces()))}

    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"whole-photo seconds on CPU ({args.method}, {args.threads} thread(s))")
    for col in ("photo", "size", "faces", *STAGES, "total"):
        table.add_column(col, justify="left" if col == "photo" else "right")
    for name, r in results.items():
        table.add_row(name, "x".join(map(str, r["size"])), str(r["faces"]),
                      *(f"{r[k]:.3f}" for k in (*STAGES, "total")))
    Console().print(table)
    record = {"method": method.name, "threads": args.threads, "repeats": args.repeats,
              "cpu": platform.processor() or platform.machine(), "torch": torch.__version__,
              "photos": results}
    write_bytes_atomic(Path(args.out), json.dumps(record, indent=1).encode())
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
