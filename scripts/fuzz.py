"""Long fuzz run (issue 8): mutated image files, tampered weights folders, odd config.json values and
random CLI options, for a fixed time; counts cases tried and distinct failures found.

A case fails when it ends in anything other than success or flipnet's own error (an exception of
another type, a traceback from the CLI, an exit status other than 0/2) or takes longer than the
per-case time limit (a hang). ``tests/test_fuzz.py`` is the bounded CI version.

    python scripts/fuzz.py --minutes 5 --out out/fuzz-report.json
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import random
import signal
import sys
import tempfile
import time
import traceback
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from flipnet.errors import FlipnetError, ImageReadError, WeightsError


class Hang(Exception):
    """The case ran past the per-case time limit."""


def _on_alarm(*_):
    raise Hang("no answer within the time limit")


def _valid_images() -> dict[str, bytes]:
    rng = np.random.default_rng(0)
    out = {}
    for fmt, size in (("PNG", 12), ("JPEG", 16), ("WEBP", 10), ("BMP", 8), ("TIFF", 9),
                      ("GIF", 7)):
        buf = io.BytesIO()
        Image.fromarray(rng.integers(0, 255, (size, size + 3, 3), dtype=np.uint8)).save(
            buf, format=fmt)
        out[fmt] = buf.getvalue()
    return out


def mutate(data: bytes, rng: random.Random) -> bytes:
    """Flip, overwrite, truncate, duplicate or insert bytes."""
    b = bytearray(data)
    for _ in range(rng.randint(1, 8)):
        op = rng.choice(["flip", "set", "cut", "insert", "dup"])
        if not b:
            b = bytearray(rng.randbytes(rng.randint(0, 16)))
            continue
        i = rng.randrange(len(b))
        if op == "flip":
            b[i] ^= 1 << rng.randrange(8)
        elif op == "set":
            b[i] = rng.choice([0, 255, 0x7F, 0x80, rng.randrange(256)])
        elif op == "cut":
            b = b[:i]
        elif op == "insert":
            b[i:i] = rng.randbytes(rng.randint(1, 64))
        else:
            j = rng.randrange(len(b))
            b[i:i] = b[min(i, j):max(i, j)][:256]
    return bytes(b)


def case_image(rng, work: Path, valid: dict) -> None:
    """load_image on mutated bytes: an image or ImageReadError naming the file."""
    from flipnet.io import load_image

    data = mutate(valid[rng.choice(sorted(valid))], rng) if rng.random() < 0.9 else \
        rng.randbytes(rng.randint(0, 300))
    path = work / f"x{rng.choice(['.png', '.jpg', '.webp', '.tif', '.bmp', '.gif'])}"
    path.write_bytes(data)
    try:
        img = load_image(path)
    except ImageReadError as e:
        assert str(path) in str(e), f"error does not name the file: {e}"
        return
    assert img.rgb.dtype == np.uint8 and img.rgb.ndim == 3 and img.rgb.shape[2] == 3


def case_weights(rng, work: Path, valid: dict) -> None:
    """load_state_dict on a tampered shard / index: tensors or WeightsError."""
    from flipnet.weights import load_state_dict, save_state_dict

    folder = work / "w"
    if not folder.exists():
        torch.manual_seed(0)
        save_state_dict(folder, torch.nn.Linear(5, 3).state_dict())
    shard, index = folder / "model-00001.safetensors", folder / "model.index.json"
    keep = {p: p.read_bytes() for p in (shard, index)}
    target = shard if rng.random() < 0.8 else index
    target.write_bytes(mutate(keep[target], rng))
    try:
        load_state_dict(folder)
    except WeightsError as e:
        assert str(folder) in str(e), f"error does not name the folder: {e}"
    finally:
        for p, b in keep.items():
            p.write_bytes(b)


def case_config(rng, work: Path, valid: dict) -> None:
    """load_restorer with odd config.json values: a model or a flipnet error."""
    from flipnet.models.restorer import Restorer, RestorerConfig, load_restorer, save_restorer

    folder = work / "r"
    if not folder.exists():
        cfg = RestorerConfig(image_size=16, width=8, enc_blocks=(1,), middle_blocks=1,
                             dec_blocks=(1,))
        save_restorer(folder, Restorer(cfg), cfg)
        (work / "r.json").write_bytes((folder / "config.json").read_bytes())
    meta = json.loads((work / "r.json").read_text())
    for _ in range(rng.randint(1, 3)):
        key = rng.choice(list(meta) + ["bogus"])
        meta[key] = rng.choice([-1, 0, 1, 3, 64, 10 ** 6, 1.5, "", "x", None, [], [1, 2], {},
                                True])
    (folder / "config.json").write_text(json.dumps(meta))
    try:
        load_restorer(folder)
    except FlipnetError:
        pass


ODD = ["", "-1", "0", "1", "2", "3", "nan", "inf", "-inf", "1e400", "abc", "../x", "\x00",
       "99999999999999999999", "0.5", "png", "jpg", "cpu", "cuda", "restorer", "prior", "ddim"]
OPTIONS = ["--upscale", "--batch-size", "--steps", "--fidelity", "--ext", "--method", "--size",
           "--seed", "--preset", "--n", "--eta", "--sampler", "--weights", "--device", "--config",
           "--bogus", "--aligned", "--dry-run", "--detector"]
BOUNDED = {"--n": 2, "--steps": 3, "--batch-size": 8, "--size": 64, "--upscale": 4}


def case_cli(rng, work: Path, valid: dict) -> None:
    """``flipnet restore|degrade|sample`` with random options: exit 0, or 2 (restore: 1 when
    some files were skipped) with ``error:`` lines, never a traceback."""
    from flipnet.cli import main
    from flipnet.io import save_image

    if not (work / "in" / "face.png").exists():
        save_image(work / "in" / "face.png",
                   np.random.default_rng(0).integers(0, 255, (32, 32, 3), dtype=np.uint8))
    cmd = rng.choice(["restore", "degrade", "sample"])
    args = {"restore": ["restore", str(work / "in"), "-o", str(work / "o"), "--aligned",
                        "--device", "cpu"],
            "degrade": ["degrade", str(work / "in"), str(work / "d")],
            "sample": ["sample", "-o", str(work / "s.png"), "--n", "1", "--steps", "2",
                       "--device", "cpu"]}[cmd]
    for _ in range(rng.randint(0, 3)):
        name = rng.choice(OPTIONS)
        value = rng.choice(ODD) if rng.random() < 0.8 else rng.randbytes(4).decode("latin-1")
        with contextlib.suppress(ValueError):
            if name in BOUNDED and abs(float(value)) > BOUNDED[name]:
                continue  # a huge valid workload is not bad input
        args += [name, value] if name not in ("--aligned", "--dry-run") else [name]
    err = io.StringIO()
    old_argv = sys.argv
    sys.argv = ["flipnet", *args]
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            main()
        code = 0
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else 1
    finally:
        sys.argv = old_argv
    text = err.getvalue()
    assert "Traceback" not in text, text[-500:]
    # 0 = done, 2 = refused with one error line; restore exits 1 when some files were skipped
    ok = (0, 1, 2) if cmd == "restore" else (0, 2)
    assert code in ok, f"exit {code}: {args}: {text[-300:]}"
    if code:
        assert "error:" in text.lower(), f"exit {code} without an error line: {args}"


TARGETS = {"image": case_image, "weights": case_weights, "config": case_config, "cli": case_cli}


def main() -> None:
    """Fuzz every target in turn until the time is up; print and write the counts."""
    import warnings

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--minutes", type=float, default=5.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--case-timeout", type=int, default=30, help="seconds before a case is a hang")
    ap.add_argument("--targets", default=",".join(TARGETS))
    ap.add_argument("--out", default="out/fuzz-report.json")
    args = ap.parse_args()
    torch.set_num_threads(1)
    warnings.simplefilter("ignore")
    rng, valid = random.Random(args.seed), _valid_images()
    names = args.targets.split(",")
    tried = dict.fromkeys(names, 0)
    failures: dict[str, dict] = {}
    signal.signal(signal.SIGALRM, _on_alarm)
    t_end = time.time() + 60 * args.minutes
    with tempfile.TemporaryDirectory() as d:
        while time.time() < t_end:
            for name in names:
                work = Path(d) / name
                work.mkdir(exist_ok=True)
                case_rng = random.Random(rng.getrandbits(64))
                signal.alarm(args.case_timeout)
                try:
                    TARGETS[name](case_rng, work, valid)
                except Exception as e:  # noqa: BLE001 - every other outcome is a finding
                    tb = traceback.extract_tb(e.__traceback__)[-1]
                    key = f"{name}: {type(e).__name__} at {Path(tb.filename).name}:{tb.lineno}"
                    found = failures.setdefault(key, {"count": 0, "example": str(e)[:300]})
                    found["count"] += 1
                finally:
                    signal.alarm(0)
                tried[name] += 1
    report = {"minutes": args.minutes, "seed": args.seed, "cases": tried,
              "total_cases": sum(tried.values()), "distinct_failures": len(failures),
              "failed_cases": sum(f["count"] for f in failures.values()), "failures": failures}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=1))
    print(json.dumps({k: v for k, v in report.items() if k != "failures"}))
    for key, f in failures.items():
        print(f"  {f['count']:5d} x {key}: {f['example'][:160]}")


if __name__ == "__main__":
    main()
