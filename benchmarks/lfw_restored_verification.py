"""LFW verification of restored pairs: does restoring degraded faces help dlib recognise people?

Issue 16 ("a second identity view"): the restorer trains with an identity loss from a torch port of
dlib's ResNet and the bench scores identity with dlib's descriptor per image, so the loss could
game that score. Here the question is a recognition task instead: on held-in real test people
(LFW people I-L, ``flipnet.splits``), same-person and different-person pairs are drawn as
``flipnet.metrics.lfw.make_pairs`` does; every image is aligned to the 128 px flipnet template
(``flipnet prepare``'s ``crop_face``, the settings of ``out/prepared/lfw-128``), degraded with a
preset scaled to 128 px (``preset_for_size``; ``none`` keeps the real LFW face), restored with each
method (``flipnet bench`` method specs, ``NAME@WEIGHTS``), and embedded with the bench's ID column
embedder (``IdentityEmbedder(aligned=True)``: dlib's own ResNet through its python API, batched).
Reported per row (clean crops, then each method on the degraded crops, all on the same pairs):
10-fold LFW-protocol accuracy (threshold fitted on the other folds, ``metrics.lfw.kfold_accuracy``),
its fold-wise difference to the ``input`` row (same pairs and folds, so a paired comparison),
TAR at a fixed FAR, mean same / different-pair cosine. A restorer that helps recognition lifts
accuracy above the ``input`` row towards the clean row; one that games a per-image score need not.

Usage:
    nice python benchmarks/lfw_restored_verification.py --pairs 300 --preset codeformer \
        --methods input,classical,restorer --out out/lfw_restored_verification.json
Aligned and degraded crops are cached under ``--cache`` (default ``out/lfw_restored_verification``),
so a rerun only restores and embeds.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import multiprocessing
import sys
import time
import zlib
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from flipnet.errors import FlipnetError
from flipnet.faces.identity import DLIB_SAME_PERSON_DISTANCE, IdentityEmbedder
from flipnet.io import list_images, load_image, save_image, to_tensor, to_uint8, write_bytes_atomic
from flipnet.metrics.lfw import accuracy_at, kfold_accuracy, make_pairs
from flipnet.splits import in_split

REPO = Path(__file__).resolve().parents[1]
SIZE = 128  # the restorers' crop size (flipnet template)
NO_FACE = ".noface"  # marker file: the detector found no face in this LFW image
CHUNK = 64  # images per degradation / restoration / embedding call


def tar_at_far(distances: np.ndarray, same: np.ndarray, far: float) -> tuple[float, float]:
    """True accept rate at the largest threshold whose false accept rate is <= ``far``.

    "Same person" means distance < threshold (as ``metrics.lfw.accuracy_at``). Returns
    ``(tar, threshold)``; the threshold is the k-th smallest different-pair distance, k =
    floor(far * n_different), so at most k different pairs fall below it.
    """
    distances, same = np.asarray(distances, np.float64), np.asarray(same, bool)
    neg = np.sort(distances[~same])
    k = int(np.floor(far * len(neg) + 1e-9))
    threshold = float(neg[k]) if k < len(neg) else float("inf")
    return float(np.mean(distances[same] < threshold)), threshold


def verification_scores(a: np.ndarray, b: np.ndarray, same: np.ndarray, *, far: float,
                        folds: int = 10) -> dict:
    """Verification figures of paired descriptors a, b (P, 128) with labels ``same`` (P,)."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    same = np.asarray(same, bool)
    distances = np.linalg.norm(a - b, axis=1)  # (P,) dlib's euclidean rule
    cos = np.sum(a * b, 1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1) + 1e-12)
    cv = kfold_accuracy(distances, same, folds=folds)
    tar, threshold = tar_at_far(distances, same, far)
    return {"accuracy_mean": cv["mean"], "accuracy_std": cv["std"],
            "fold_accuracies": cv["fold_accuracies"], "thresholds": cv["thresholds"],
            "accuracy_at_0.6": accuracy_at(distances, same, DLIB_SAME_PERSON_DISTANCE),
            "far": far, "tar": tar, "tar_threshold": threshold,
            "cos_same": float(cos[same].mean()), "cos_different": float(cos[~same].mean()),
            "distance_same": float(distances[same].mean()),
            "distance_different": float(distances[~same].mean()),
            "n_same": int(same.sum()), "n_different": int((~same).sum())}


def people_view(lfw: Path, cache: Path) -> Path:
    """A folder of links to LFW's test-split (I-L) person folders, for ``make_pairs``."""
    people = sorted({p.parent for p in in_split(list_images(lfw), "test")})
    view = cache / "lfw-test-people"
    view.mkdir(parents=True, exist_ok=True)
    wanted = {d.name: d.resolve() for d in people}
    for link in view.iterdir():  # a view from another LFW folder or split rule: redo it
        if link.name not in wanted or link.resolve() != wanted[link.name]:
            link.unlink()
    for name, target in wanted.items():
        if not (view / name).exists():
            (view / name).symlink_to(target, target_is_directory=True)
    return view


def _align(src: Path) -> np.ndarray | None:
    """``flipnet prepare``'s aligned 128 px crop of one LFW photo (its LFW settings), or None."""
    from flipnet.pipelines.prepare import PrepareSettings, crop_face

    face = crop_face(load_image(src).rgb, PrepareSettings(size=SIZE, template="flipnet",
                                                          pad=0.0, min_sharpness=0.0))
    return None if face is None else face.crop


def aligned_crops(sources: dict[str, Path], cache: Path, prepared: Path | None, pool=None
                  ) -> dict[str, np.ndarray]:
    """``person/stem`` -> 128 px aligned crop of its source; images without a face are left out.

    Crops come from ``prepared`` (``flipnet prepare`` output) when it has them, else from the
    cache, else they are made by ``_align`` (in ``pool``'s processes when given) and cached."""
    out, todo = {}, []
    for key in sorted(sources):
        done = [f for f in ((prepared / f"{key}.png") if prepared else None,
                            cache / "aligned" / f"{key}.png") if f is not None and f.exists()]
        if done:
            out[key] = load_image(done[0]).rgb
        elif not (cache / "aligned" / f"{key}{NO_FACE}").exists():
            todo.append(key)
    jobs = [sources[k] for k in todo]
    crops = pool.map(_align, jobs, chunksize=8) if pool is not None else map(_align, jobs)
    for key, crop in zip(todo, tqdm(crops, total=len(todo), desc="align", unit="img")):
        if crop is None:
            write_bytes_atomic(cache / "aligned" / f"{key}{NO_FACE}", b"")
            continue
        save_image(cache / "aligned" / f"{key}.png", crop)
        out[key] = crop
    return out


def image_seed(seed: int, key: str) -> int:
    """Per-image degradation seed: fixed by the run seed and the image, whatever pairs are drawn."""
    return (seed * 1_000_003 + zlib.crc32(key.encode())) % 2**31


def degraded_crops(clean: dict[str, np.ndarray], preset: str, seed: int, cache: Path
                   ) -> dict[str, np.ndarray]:
    """The crops degraded with ``preset`` at 128 px (cached); ``none`` returns them as they are."""
    from flipnet.degradations.pipeline import degrade_seeded
    from flipnet.degradations.presets import preset_for_size

    if preset == "none":
        return dict(clean)
    cfg = preset_for_size(preset, SIZE)
    folder = cache / "degraded" / f"{preset}-seed{seed}"
    out = {k: load_image(folder / f"{k}.png").rgb for k in clean
           if (folder / f"{k}.png").exists()}
    todo = [k for k in clean if k not in out]
    for i in tqdm(range(0, len(todo), CHUNK), desc=f"degrade ({preset})", unit="chunk"):
        keys = todo[i:i + CHUNK]
        with torch.no_grad():
            lq, _ = degrade_seeded(to_tensor(np.stack([clean[k] for k in keys])), cfg,
                                   [image_seed(seed, k) for k in keys])
        for k, img in zip(keys, to_uint8(lq)):
            save_image(folder / f"{k}.png", img)
            out[k] = img
    return out


def _embed_chunk(crops: list[np.ndarray]) -> np.ndarray:
    """(N, 128) dlib descriptors of aligned crops (a worker's share of ``embed_all``)."""
    return IdentityEmbedder(aligned=True).embed_batch(crops)


def embed_all(crops: dict[str, np.ndarray], keys: list[str], desc: str, pool=None
              ) -> dict[str, np.ndarray]:
    """dlib descriptors of aligned crops, as the bench's ID column computes them.

    dlib's ResNet runs on one core here (built without BLAS), so chunks go to ``pool``'s
    processes when one is given."""
    chunks = [keys[i:i + CHUNK // 2] for i in range(0, len(keys), CHUNK // 2)]
    jobs = [[crops[k] for k in chunk] for chunk in chunks]
    results = pool.map(_embed_chunk, jobs) if pool is not None else map(_embed_chunk, jobs)
    out = {}
    for chunk, vecs in zip(chunks, tqdm(results, total=len(chunks), desc=f"embed {desc}",
                                        unit="chunk")):
        out.update(zip(chunk, vecs))
    return out


def restore_all(spec: str, lq: dict[str, np.ndarray], keys: list[str], *, seed: int,
                steps: int) -> tuple[dict[str, np.ndarray], float]:
    """Restore every crop with the method ``spec`` (``NAME`` or ``NAME@WEIGHTS``, as in bench)."""
    from flipnet.pipelines.methods import make_method_from_spec

    method = make_method_from_spec(spec, steps=steps, seed=seed)
    if method.size != SIZE:
        raise FlipnetError(f"{spec}: works on {method.size} px crops, this benchmark on {SIZE}")
    out, t0 = {}, time.perf_counter()
    for i in tqdm(range(0, len(keys), CHUNK), desc=f"restore {spec}", unit="chunk"):
        chunk = keys[i:i + CHUNK]
        out.update(zip(chunk, method.restore(np.stack([lq[k] for k in chunk]))))
    return out, (time.perf_counter() - t0) / max(len(keys), 1)


def add_paired_gains(rows: dict[str, dict], baseline: str) -> None:
    """Give each row ``gain_vs_input``: mean and std over folds of its fold accuracy minus the
    ``baseline`` row's (same pairs, same folds, so the fold-to-fold spread cancels)."""
    if baseline not in rows:
        return
    base = np.asarray(rows[baseline]["fold_accuracies"])
    for r in rows.values():
        diff = np.asarray(r["fold_accuracies"]) - base
        r["gain_vs_input"] = {"mean": float(diff.mean()), "std": float(diff.std()),
                              "folds_better": int((diff > 0).sum()),
                              "folds_worse": int((diff < 0).sum())}


def markdown(result: dict) -> str:
    """The result as a markdown table (one row per clean / method)."""
    far = result["far"]
    lines = [f"| row | accuracy ({result['folds']}-fold) | vs input (paired folds) | "
             f"TAR@FAR={far:g} | cos same | cos different | pairs | no face |",
             "|---|---|---|---|---|---|---|---|"]
    for name, r in result["rows"].items():
        g = r.get("gain_vs_input")
        gain = (f"{g['mean']:+.3f} +- {g['std']:.3f} ({g['folds_better']} up, "
                f"{g['folds_worse']} down)" if g else "-")
        lines.append(f"| {name} | {r['accuracy_mean']:.3f} +- {r['accuracy_std']:.3f} | {gain} | "
                     f"{r['tar']:.3f} | {r['cos_same']:.3f} | {r['cos_different']:.3f} | "
                     f"{r['n_same']}+{r['n_different']} | {result['no_face_images']} |")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> dict:
    """Draw pairs, align, degrade, restore, embed and score (see module doc)."""
    start = time.perf_counter()
    lfw, cache = Path(args.lfw), Path(args.cache)
    prepared = Path(args.prepared) if args.prepared and Path(args.prepared).is_dir() else None
    view = people_view(lfw, cache)
    pairs = make_pairs(view, args.pairs, args.pairs, rng=np.random.default_rng(args.seed))

    def key(p: Path) -> str:
        return f"{p.parent.name}/{p.stem}"

    sources = {key(p): p for pair in pairs for p in (pair.path_a, pair.path_b)}
    keys = sorted(sources)
    with contextlib.ExitStack() as stack:
        pool = None if args.workers <= 1 else stack.enter_context(ProcessPoolExecutor(
            args.workers, mp_context=multiprocessing.get_context("spawn")))
        t0 = time.perf_counter()
        clean = aligned_crops(sources, cache, prepared, pool)
        t_align = time.perf_counter() - t0
        no_face = [k for k in keys if k not in clean]
        # pairs with a face-less image are left out of every row, so all rows share their pairs
        kept = [p for p in pairs if key(p.path_a) in clean and key(p.path_b) in clean]
        keys = sorted({key(p) for pair in kept for p in (pair.path_a, pair.path_b)})
        same = np.array([p.same for p in kept])
        a_keys, b_keys = [key(p.path_a) for p in kept], [key(p.path_b) for p in kept]
        far = args.far if args.far else (1e-2 if (~same).sum() >= 200 else 1e-1)
        t0 = time.perf_counter()
        lq = degraded_crops(clean, args.preset, args.seed, cache)
        t_degrade = time.perf_counter() - t0

        def scores(emb: dict[str, np.ndarray]) -> dict:
            return verification_scores(np.stack([emb[k] for k in a_keys]),
                                       np.stack([emb[k] for k in b_keys]), same, far=far,
                                       folds=args.folds)

        t0 = time.perf_counter()
        rows = {"clean (no degradation)": scores(embed_all(clean, keys, "clean", pool))}
        rows["clean (no degradation)"]["seconds"] = time.perf_counter() - t0
        for spec in [m for m in args.methods.split(",") if m]:
            t0 = time.perf_counter()
            restored, per_face = restore_all(spec, lq, keys, seed=args.seed,
                                             steps=args.prior_steps)
            row = rows[f"{spec} on {args.preset}"] = scores(embed_all(restored, keys, spec, pool))
            row["seconds_per_face_restore"] = per_face
            row["seconds"] = time.perf_counter() - t0
    add_paired_gains(rows, f"input on {args.preset}")
    return {"lfw": str(lfw), "split": "test (people I-L)", "preset": args.preset,
            "seed": args.seed, "pairs_asked": args.pairs, "folds": args.folds, "far": far,
            "embedder": "dlib ResNet (IdentityEmbedder(aligned=True), as the bench's ID column)",
            "n_images": len(keys), "no_face_images": len(no_face), "no_face": no_face,
            "pairs_dropped": len(pairs) - len(kept), "rows": rows,
            "pairs": [[a, b, bool(s)] for a, b, s in zip(a_keys, b_keys, same)],
            "threads": torch.get_num_threads(), "workers": args.workers,
            "seconds_align": t_align, "seconds_degrade": t_degrade,
            "seconds": time.perf_counter() - start}


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print / save its result."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--lfw", default=str(REPO.parent / "shared" / "data" / "lfw"),
                        help="LFW folder, one sub-folder per person (people I-L are used)")
    parser.add_argument("--pairs", type=int, default=300,
                        help="same-person and different-person pairs each")
    parser.add_argument("--preset", default="codeformer",
                        help="degradation preset scaled to 128 px (gfpgan, codeformer, raw, ...), "
                             "or 'none' for the real LFW faces as they are")
    parser.add_argument("--methods", default="input,classical,restorer",
                        help="comma list of method specs NAME or NAME@WEIGHTS (as flipnet bench)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the pairs and degradations")
    parser.add_argument("--folds", type=int, default=10)
    parser.add_argument("--far", type=float, default=None,
                        help="false accept rate of the TAR column (default: 1e-2 with >= 200 "
                             "different pairs, else 1e-1)")
    parser.add_argument("--prior-steps", type=int, default=25,
                        help="respaced steps of diffusion methods (as flipnet bench)")
    parser.add_argument("--prepared", default="out/prepared/lfw-128",
                        help="aligned LFW crops to reuse when present (flipnet prepare output)")
    parser.add_argument("--cache", default="out/lfw_restored_verification",
                        help="folder for aligned and degraded crops (reused by reruns)")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--workers", type=int, default=2,
                        help="processes for face alignment and dlib's descriptor (both "
                             "single-threaded); 1 = in this process")
    parser.add_argument("--out", default=None, help="write the result as JSON here")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    try:
        result = run(args)
    except FlipnetError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"\nLFW people I-L, {args.pairs}+{args.pairs} pairs asked, {result['n_images']} images, "
          f"preset {args.preset}, seed {args.seed}, {result['pairs_dropped']} pairs dropped "
          f"(no face), {result['seconds']:.0f} s\n")
    print(markdown(result))
    if args.out:
        write_bytes_atomic(args.out, json.dumps(result, indent=1).encode())
    return 0


if __name__ == "__main__":
    sys.exit(main())
