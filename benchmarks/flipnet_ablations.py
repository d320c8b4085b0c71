"""FLIPNET conditioning ablations (issue 17): train each config at equal CPU minutes, then score
its restorations on the held-in test split.

For each FLIPNET training config: train it (its ``max_minutes``; skipped when the export exists,
continued when checkpoints do), after its embedder when that is missing (``--embedder-config``
whose export is the configs' ``embedder``). Then restore the bench's gfpgan set (the UTKFace test
split degraded with the size-scaled gfpgan preset, exactly the set ``flipnet bench`` builds in
``--work``) with ``--steps`` sampler steps and score PSNR, SSIM, identity, LMD, NIQE, BRISQUE and
FD-lowlevel with the bench's own ``score``, plus the input-use check of issue 17
(``restoration_uses_input`` on the first 6 faces: correlation of output and LQ differences, and
RMSE to the own versus the other faces' HQ). The input and the fast restorer are scored as the
first rows, then (``--cap-size``) HQ and the restorer's output passed through the prior's size
and back, and on a latent prior HQ through its autoencoder: the ceilings the prior sets.
Writes ``<out>/ablations.json``,
``ablations.md`` and ``grid.png`` (LQ, each row's restorations, HQ). With several ``--fidelities`` or ``--steps`` every FLIPNET gets a row per
setting (``--starts`` too: issue 17's DifFace-style start from the diffused LQ is a sampling
switch of any trained folder), and ``fidelity.png`` plots identity against NIQE per fidelity
(issue 17's curve; the seconds per face column gives the speed per step count).
``--guidances`` adds low-pass (ILVR) guidance toward the LQ as a further sampling switch
(image-space factors, 0 = off), ``--color-fixes`` the pixel colour fix after decoding.
Sampling settings are chosen on held-in *train-split* faces that
FLIPNET did not train on, never on the test split: ``--heldin-first K`` scores train-split faces
K .. K + n instead (K at least the configs' ``max_images``, which FLIPNET trains on), degraded
exactly as the bench's gfpgan set, with the next 200 train faces as the FD reference.

    python benchmarks/flipnet_ablations.py --configs configs/flipnet-64-ablation-*.json \\
        --embedder-config configs/flipnet-embedder-64-cpu.json --n 60 --steps 10
    python benchmarks/flipnet_ablations.py --configs configs/flipnet-64-cpu.json \\
        --fidelities 0,0.25,0.5,0.75,1 --steps 10,50 --out out/flipnet-fidelity
"""

from __future__ import annotations

import argparse
import itertools
import json
import time
from pathlib import Path

import numpy as np
import torch

from flipnet.config import load_config
from flipnet.degradations.model_lq import to_model_size
from flipnet.diffusion.flipnet_sampling import flipnet_restore
from flipnet.faces.identity import IdentityEmbedder
from flipnet.io import load_image, to_tensor, to_uint8, write_bytes_atomic
from flipnet.models.flipnet import load_flipnet
from flipnet.pipelines.bench import BenchConfig, build_sets, degrade_set, score
from flipnet.pipelines.flipnet_method import restoration_uses_input
from flipnet.pipelines.methods import make_method_from_spec
from flipnet.training.face_embedding import EmbedderTrainConfig, train_face_embedding
from flipnet.training.flipnet import FlipNetTrainConfig, train_flipnet
from flipnet.training.pairs import load_faces
from flipnet.viz import save_grid

COLUMNS = ("psnr", "ssim", "identity_deg", "lmd", "niqe", "brisque", "fd_lowlevel")


def ensure_trained(config: Path, embedder_config: Path | None) -> Path:
    """The config's exported FLIPNET folder, training it (and its embedder) when missing."""
    cfg = load_config(FlipNetTrainConfig, config)
    folder = Path(cfg.out_dir) / "flipnet"
    if (folder / "config.json").is_file():
        return folder
    if cfg.embedder and cfg.flipnet.use_embedding and not Path(cfg.embedder).is_dir():
        if embedder_config is None:
            raise SystemExit(f"{config}: its embedder {cfg.embedder} is missing; pass "
                             "--embedder-config")
        ecfg = load_config(EmbedderTrainConfig, embedder_config)
        if Path(ecfg.out_dir) / "embedder" != Path(cfg.embedder):
            raise SystemExit(f"{embedder_config} exports {ecfg.out_dir}/embedder, but {config} "
                             f"reads {cfg.embedder}")
        train_face_embedding(ecfg)
    return train_flipnet(cfg)


def through_size(images: list, size: int) -> list:
    """Images shrunk to ``size`` and back with the sampler's resize: the ceiling a FLIPNET on a
    ``size`` px prior can reach, whatever it learns."""
    x = to_tensor(np.stack(images))
    return list(to_uint8(to_model_size(to_model_size(x, size), images[0].shape[0])))


def through_autoencoder(net, images: list) -> list:
    """Images at the prior's size through its autoencoder and back: the ceiling a FLIPNET on a
    latent prior can reach, whatever its adapters learn."""
    x = to_tensor(np.stack(images))
    with torch.no_grad():
        z = net.encode(to_model_size(x, net.image_size))
        return list(to_uint8(to_model_size(net.decode(z).clamp(-1, 1), images[0].shape[0])))


def card_minutes(folder: Path) -> float | None:
    """Training wall minutes from a FLIPNET folder's train_config.json-side log, if present."""
    log = folder.parent / "log.jsonl"
    if not log.is_file():
        return None
    walls = [json.loads(line).get("wall_s") for line in log.read_text().splitlines()
             if line.strip()]
    walls = [w for w in walls if w is not None]
    return round(max(walls) / 60, 1) if walls else None


def plot_fidelity(curve: dict[str, list[dict]], png: Path) -> Path:
    """Identity angle against NIQE, one line per FLIPNET, each point labelled by fidelity."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 4))
    for name, rows in curve.items():
        ax.plot([r["niqe"] for r in rows], [r["identity_deg"] for r in rows], "o-", label=name)
        for r in rows:
            ax.annotate(f"{r['fidelity']:g}", (r["niqe"], r["identity_deg"]), fontsize=8)
    ax.set_xlabel("NIQE (lower = more natural)")
    ax.set_ylabel("identity angle to HQ (deg, lower = closer)")
    ax.set_title("FLIPNET --fidelity: identity vs NIQE")
    ax.legend(fontsize=8)
    png.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(png, dpi=120)
    plt.close(fig)
    return png


def bench_gfpgan_set(n: int, work: str) -> tuple[list, list, list]:
    """(LQ, HQ, FD reference) of the bench's gfpgan set: the test split, as ``flipnet bench``."""
    sets = build_sets(BenchConfig(n=n, work=work))
    s = sets["gfpgan"]
    lq = [load_image(Path(s["lq"]) / f"{k}.png").rgb for k in s["names"]]
    gt = [load_image(Path(s["gt"]) / f"{k}.png").rgb for k in s["names"]]
    return lq, gt, [load_image(p).rgb for p in sets["_ref"]["paths"]]


def heldin_gfpgan_set(utkface: str, first: int, n: int, n_ref: int = 200
                      ) -> tuple[list, list, list]:
    """(LQ, HQ, FD reference) from train-split faces ``first`` .. ``first + n`` degraded as the
    bench's gfpgan set (seed 0); the reference is the next ``n_ref`` train faces."""
    _, pixels = load_faces(utkface, 128, split="train", limit=first + n + n_ref, progress=False)
    if len(pixels) < first + n + n_ref:
        raise SystemExit(f"{utkface}: the train split has {len(pixels)} faces, fewer than "
                         f"--heldin-first {first} + n {n} + {n_ref} reference faces")
    hq = pixels[first:first + n]
    with torch.no_grad():
        lq, _ = degrade_set(to_tensor(hq), "gfpgan", 0)
    return list(to_uint8(lq)), list(hq), list(pixels[first + n:])


def main() -> None:
    """Train what is missing, score every row, write the table, JSON and grid."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--configs", nargs="+", required=True, type=Path)
    ap.add_argument("--embedder-config", type=Path, default=None)
    ap.add_argument("--restorer", default="weights/restorer-128")
    ap.add_argument("--n", type=int, default=60)
    ap.add_argument("--steps", default="10", help="sampler steps, or a comma list (10,50)")
    ap.add_argument("--fidelities", default="0.5", help="comma list; several draw fidelity.png")
    ap.add_argument("--starts", default="config", help="comma list of sampling starts (1 = pure "
                    "noise, < 1 = the LQ diffused to that fraction, DifFace-style); config = "
                    "each folder's own")
    ap.add_argument("--guidances", default="config", help="comma list of low-pass guidance "
                    "factors (image px; 0 = off); config = each folder's own")
    ap.add_argument("--color-fixes", default="config", help="comma list of pixel colour-fix "
                    "factors after decoding (0 = off); config = each folder's own")
    ap.add_argument("--heldin-first", type=int, default=None, help="score train-split faces "
                    "from this index (not the test split); for choosing sampling settings")
    ap.add_argument("--utkface", default="out/prepared/utkface-128")
    ap.add_argument("--cap-size", type=int, default=64, help="also score HQ and the restorer "
                    "shrunk to this size and back, as FLIPNET's sampler resizes (0 = no rows)")
    ap.add_argument("--work", default="out/bench", help="the bench's folder (its sets)")
    ap.add_argument("--out", type=Path, default=Path("out/flipnet-ablations"))
    args = ap.parse_args()

    if args.heldin_first is None:
        lq, gt, ref = bench_gfpgan_set(args.n, args.work)
    else:
        lq, gt, ref = heldin_gfpgan_set(args.utkface, args.heldin_first, args.n)
    emb = IdentityEmbedder(aligned=True)
    rows, grid = [], []  # grid: one block of 6 faces per row, then the HQ

    def add(name: str, pred: list, extra: dict) -> None:
        r = score(pred, lq, gt, ref, emb)
        r.pop("identity_per_image")
        rows.append({"row": name, **{k: r.get(k) for k in COLUMNS}, **extra})
        grid.append(np.stack(pred[:6]))
        print(json.dumps(rows[-1]), flush=True)

    add("input", lq, {})
    restored = list(make_method_from_spec(f"restorer@{args.restorer}").restore(np.stack(lq)))
    add(f"restorer ({args.restorer})", restored, {})
    if args.cap_size:  # what the prior's resolution alone costs (issue 17: "say by how much")
        add(f"HQ through {args.cap_size} px", through_size(gt, args.cap_size), {})
        add(f"restorer through {args.cap_size} px", through_size(restored, args.cap_size), {})
    fidelities = [float(v) for v in args.fidelities.split(",")]
    step_counts = [int(v) for v in str(args.steps).split(",")]
    starts = [None if v == "config" else float(v) for v in args.starts.split(",")]
    guidances = [None if v == "config" else int(v) for v in args.guidances.split(",")]
    fixes = [None if v == "config" else int(v) for v in args.color_fixes.split(",")]
    curve, capped = {}, set()
    lq_tensor, gt_tensor = to_tensor(np.stack(lq)), to_tensor(np.stack(gt))
    for config in args.configs:
        folder = ensure_trained(config, args.embedder_config)
        net = load_flipnet(folder)
        if args.cap_size and net.factor > 1 and net.config.prior not in capped:
            capped.add(net.config.prior)
            add(f"HQ through {Path(net.config.prior).name}'s autoencoder",
                through_autoencoder(net, gt), {})
        for fidelity, steps, start, guide, fix in itertools.product(
                fidelities, step_counts, starts, guidances, fixes):
            def restore(x, indices=None, f=fidelity, k=steps, s0=start, g=guide, c=fix):
                return flipnet_restore(net, x, steps=k, seed=0, fidelity=f, start=s0,
                                       guidance=g, color_fix=c, indices=indices)

            t0 = time.perf_counter()
            pred = [to_uint8(restore(lq_tensor[i:i + 16],
                                     indices=list(range(i, min(i + 16, len(lq))))))
                    for i in range(0, len(lq), 16)]
            pred = list(np.concatenate(pred))
            seconds = (time.perf_counter() - t0) / len(pred)
            use = restoration_uses_input(restore, lq_tensor[:6], gt_tensor[:6])
            name = config.stem.removeprefix("flipnet-")
            if len(fidelities) > 1 or len(step_counts) > 1 or len(starts) > 1:
                name += (f" (fidelity {fidelity:g}, {steps} steps, start "
                         f"{'config' if start is None else f'{start:g}'})")
            if len(guidances) > 1 or guide:
                name += f" guidance {net.config.guidance_factor if guide is None else guide}"
            if len(fixes) > 1 or fix:
                name += f" colour fix {net.config.color_fix if fix is None else fix}"
            add(name, pred, {
                "fidelity": fidelity, "steps": steps, "start": start or net.config.start,
                "guidance": net.config.guidance_factor if guide is None else guide,
                "color_fix": net.config.color_fix if fix is None else fix,
                "train_minutes": card_minutes(folder), "seconds_per_face": round(seconds, 3),
                "input_correlation": round(use.correlation, 3),
                "rmse_own": round(use.own, 4), "rmse_other": round(use.other, 4),
                "uses_input": use.passes()})
            curve.setdefault(config.stem, []).append(rows[-1])
    if len(fidelities) > 1:
        plot_fidelity(curve, args.out / "fidelity.png")
    grid.append(np.stack(gt[:6]))
    args.out.mkdir(parents=True, exist_ok=True)
    write_bytes_atomic(args.out / "ablations.json", json.dumps(
        {"n": args.n, "set": "gfpgan (scaled), UTKFace " + (
            "test split" if args.heldin_first is None
            else f"train split faces {args.heldin_first}+ (held out of FLIPNET training)"),
         "rows": rows}, indent=1).encode())
    head = ("| row | PSNR | SSIM | ID angle | LMD | NIQE | BRISQUE | FD-low | input r | "
            "own/other RMSE | train min |")
    lines = [head, "|" + "---|" * 11]
    for r in rows:
        cells = [f"{r[k]:.3f}" if isinstance(r.get(k), float) else "-" for k in COLUMNS]
        own = (f"{r['rmse_own']:.3f}/{r['rmse_other']:.3f}" if "rmse_own" in r else "-")
        lines.append(f"| {r['row']} | " + " | ".join(cells)
                     + f" | {r.get('input_correlation', '-')} | {own} | "
                     f"{r.get('train_minutes') or '-'} |")
    write_bytes_atomic(args.out / "ablations.md", ("\n".join(lines) + "\n").encode())
    save_grid(args.out / "grid.png", [x for face in zip(*grid) for x in face], ncol=len(grid))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
