"""Restore photos and videos in files and folders into GFPGAN's output layout.

The per-photo work (detect -> align -> restore -> paste) lives in ``pipelines.photo`` and the
per-video work in ``pipelines.video``; this module only walks the inputs, shards them across
processes, writes the outputs and the report. Imports go one way: restore -> video -> photo.

Output layout follows GFPGAN: ``cropped_faces/``, ``restored_faces/``, ``cmp/`` (before | after)
and ``restored_imgs/`` under the output folder, plus ``report.json`` for the run.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from flipnet.errors import FlipnetError, OutputPathError
from flipnet.io import (
    BatchLog,
    check_distinct,
    load_image,
    remove_partial_files,
    save_image,
    write_bytes_atomic,
)
from flipnet.pipelines.photo import (
    DETECT_MAX_SIDE,
    FRAMINGS,
    RESTORED_PASS_SIDE,
    STAGES,
    FaceMethod,
    FaceResult,
    PhotoResult,
    detect_restored,
    ffhq_aligned_face,
    find_faces,
    restore_aligned,
    restore_frames,
    restore_photo,
    scale_alpha,
)
from flipnet.pipelines.video import is_video, restore_video
from flipnet.viz import side_by_side

# re-exported: callers (cli, serve, api, tests, benchmarks) import these from here
__all__ = ["DETECT_MAX_SIDE", "FRAMINGS", "RESTORED_PASS_SIDE", "STAGES", "SUBFOLDERS",
           "FaceMethod", "FaceResult", "PhotoResult", "detect_restored", "distributed_state",
           "ffhq_aligned_face", "find_faces", "restore_aligned", "restore_files",
           "restore_frames", "restore_photo", "scale_alpha"]

SUBFOLDERS = ("cropped_faces", "restored_faces", "cmp", "restored_imgs", "restored_videos")


def distributed_state():
    """Accelerate's ``PartialState`` when launched with several processes (``accelerate launch
    --multi_gpu``, torchrun), else None; without CUDA (or with ``--cpu``) it uses gloo on CPU."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return None
    import torch
    from accelerate import PartialState

    cpu = os.environ.get("ACCELERATE_USE_CPU", "").lower() in ("1", "true") \
        or not torch.cuda.is_available()
    return PartialState(cpu=cpu)


def _shard(inputs: list[Path]):
    """This process's share of ``inputs`` (index modulo world size) and the state, or all."""
    state = distributed_state()
    if state is None:
        return list(inputs), None
    return list(inputs)[state.process_index::state.num_processes], state


def _previous_images(out_dir: Path) -> dict:
    """Per-image entries of an earlier run's report.json (so a resumed run still reports faces)."""
    try:
        return json.loads((out_dir / "report.json").read_text()).get("images", {})
    except (OSError, ValueError, AttributeError):
        return {}


def _write_report(path: Path, report: dict) -> None:
    write_bytes_atomic(path, json.dumps(report, indent=1, default=str).encode())


def _merge_parts(out_dir: Path, world: int) -> dict:
    """Merge the per-process report parts of a sharded run into one report."""
    parts = [json.loads((out_dir / f"report.part{r}.json").read_text()) for r in range(world)]
    merged = {**parts[0], "images": {}, "skipped_files": {}, "done": 0, "processes": world}
    for p in parts:
        merged["images"].update(p["images"])
        merged["skipped_files"].update(p["skipped_files"])
        merged["done"] += p["done"]
    merged["seconds"] = max(p["seconds"] for p in parts)
    return merged


def restore_files(inputs: list[Path], out_dir: Path, method: FaceMethod, *, ext: str = "auto",
                  suffix: str | None = None, progress: bool = True, settings: dict | None = None,
                  video_options: dict | None = None, **photo_kwargs) -> dict:
    """Restore photos and videos into the GFPGAN output layout; bad files are skipped, finished
    outputs kept, and a rerun skips inputs whose final output already exists.

    ``suffix`` (GFPGAN's ``--suffix``) is appended to the restored names of photos:
    ``restored_imgs/NAME_SUFFIX.EXT`` and ``restored_faces/NAME_00_SUFFIX.png``.

    ``photo_kwargs`` go to ``restore_photo`` and ``restore_video``; ``video_options`` (e.g.
    ``smooth``, ``detect_every``) to ``restore_video`` only.

    Under ``accelerate launch --num_processes N`` each process takes inputs ``i % N == rank``
    and the main process merges the per-process reports after a barrier.
    """
    from rich.progress import Progress

    out_dir = Path(out_dir)
    try:
        for sub in SUBFOLDERS[:4]:
            (out_dir / sub).mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise OutputPathError(f"{out_dir}: cannot create the output folders "
                              f"({e.strerror or e})") from None
    mine, state = _shard(inputs)
    if state is None or state.is_main_process:  # temp files of a killed run's writes
        for folder in (out_dir, *(out_dir / sub for sub in SUBFOLDERS)):
            remove_partial_files(folder)
    if state is not None:
        state.wait_for_everyone()
    previous = _previous_images(out_dir)
    log = BatchLog()
    per_image: dict[str, dict] = {}
    t_start = time.perf_counter()
    show = progress and (state is None or state.is_main_process)
    with Progress(disable=not show, transient=True) as bar:
        task = bar.add_task("restoring", total=len(mine))
        for path in mine:
            bar.advance(task)
            path = Path(path)
            if is_video(path):
                try:
                    per_image[str(path)] = restore_video(path, out_dir, method, bar=bar,
                                                         **photo_kwargs,
                                                         **(video_options or {}))
                    log.done += 1
                except FlipnetError as e:
                    log.skip(path, getattr(e, "problem", str(e)))
                continue
            entry = _restore_one(path, out_dir, method, ext, log, photo_kwargs, suffix)
            if entry is not None:
                if entry.get("resumed"):
                    entry = {**previous.get(str(path), {}), "resumed": True}
                per_image[str(path)] = entry
            if state is not None and str(path) in per_image:
                per_image[str(path)]["rank"] = state.process_index
    report = {"method": method.name, "settings": settings or {}, "images": per_image,
              "done": log.done, "skipped_files": log.skipped,
              "seconds": round(time.perf_counter() - t_start, 2)}
    if state is None:
        _write_report(out_dir / "report.json", report)
        return report
    part = out_dir / f"report.part{state.process_index}.json"
    write_bytes_atomic(part, json.dumps(report, default=str).encode())
    state.wait_for_everyone()
    if state.is_main_process:
        report = _merge_parts(out_dir, state.num_processes)
        _write_report(out_dir / "report.json", report)
        for r in range(state.num_processes):
            (out_dir / f"report.part{r}.json").unlink(missing_ok=True)
    state.wait_for_everyone()
    return report


def _restore_one(path: Path, out_dir: Path, method: FaceMethod, ext: str, log: BatchLog,
                 photo_kwargs: dict, name_suffix: str | None = None) -> dict | None:
    """Restore one photo into the output layout; returns its report entry (None if skipped)."""
    stem = path.stem
    tag = f"_{name_suffix}" if name_suffix else ""  # GFPGAN's --suffix
    suffix = path.suffix.lower() if ext == "auto" else "." + ext.lstrip(".")
    final = out_dir / "restored_imgs" / f"{stem}{tag}{suffix}"
    try:
        check_distinct(final, path)
    except FlipnetError as e:
        log.skip(path, str(e))
        return None
    alpha_alt = final.with_suffix(".png") if ext == "auto" and suffix in (".webp", ".tif",
                                                                          ".tiff") else final
    if final.exists() or alpha_alt.exists():
        log.done += 1
        return {"resumed": True}
    t0 = time.perf_counter()
    try:
        img = load_image(path)
        if img.alpha is not None and ext == "auto":
            final = final.with_suffix(".png")
        res = restore_photo(img.rgb, method, is_gray=img.is_gray, alpha=img.alpha,
                            **photo_kwargs)
        for i, face in enumerate(res.faces):
            if face.restored is None:
                continue
            save_image(out_dir / "cropped_faces" / f"{stem}_{i:02d}.png", face.crop)
            save_image(out_dir / "restored_faces" / f"{stem}_{i:02d}{tag}.png", face.restored)
            save_image(out_dir / "cmp" / f"{stem}_{i:02d}.png",
                       side_by_side(face.crop, face.restored))
        save_image(final, res.image, res.alpha)  # last: its presence marks the photo done
    except FlipnetError as e:
        log.skip(path, getattr(e, "problem", str(e)))
        return None
    log.done += 1
    return {"faces": sum(f.restored is not None for f in res.faces),
            "skipped_faces": [{"box": f.box, "why": f.skipped} for f in res.faces if f.skipped],
            "boxes": [f.box for f in res.faces if f.restored is not None],
            "size": [int(img.rgb.shape[1]), int(img.rgb.shape[0])],
            "timings": {k: round(v, 4) for k, v in res.timings.items()},
            "seconds": round(time.perf_counter() - t0, 3), "output": str(final)}
