"""``make demo``: the main job on a real photo with the shipped weights.

1. take a real photo (scikit-image's astronaut unless one is given);
2. make it an "old photo" with the project's own degradation pipeline (fixed, recorded
   parameters: blur, down-sampling, noise, JPEG), as users' inputs look;
3. restore it as a user would (`flipnet restore`): detect, align, restore each face with the
   best shipped method, paste back; GFPGAN's four output folders plus report.json;
4. write ``demo.png``: original | degraded | restored, whole photo.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from flipnet.io import load_image, save_image, to_tensor, to_uint8, write_bytes_atomic
from flipnet.viz import side_by_side

# An old-photo degradation for a 512 px photo, in the degradation pipeline's parameter format.
OLD_PHOTO = {"seed": 0, "raw": None, "color": None, "quantize": True,
             "blur": {"kernel": "iso", "sigma_x": 1.5, "sigma_y": 1.5, "theta": 0.0,
                      "kernel_size": 13},
             "resize": {"scale": 4.0, "down_mode": "bilinear", "up_mode": "bilinear"},
             "noise": {"kind": "gaussian", "sigma": 6.0, "gray": False, "seed": 0},
             "jpeg": {"quality": 45}}
PREFERRED = ("restorer", "finetuned", "prior")  # finetuned: made from the old restorer


def old_photo(rgb: np.ndarray, *, seed: int = 0) -> np.ndarray:
    """Degrade a uint8 photo with the fixed OLD_PHOTO parameters (noise seeded by ``seed``)."""
    from flipnet.degradations.pipeline import apply_params

    params = json.loads(json.dumps(OLD_PHOTO))
    params["seed"] = params["noise"]["seed"] = seed
    with torch.no_grad():
        return to_uint8(apply_params(to_tensor(rgb), [params]))[0]


def pick_method():
    """The best restoration method whose weights are shipped, else the bicubic baseline."""
    from flipnet.pipelines.methods import available_methods, make_method

    have = available_methods()
    for name in PREFERRED:
        if name in have:
            return make_method(name, device="cpu")
    return make_method("bicubic")


def run_demo(input_path: str | None, out: Path, *, seed: int = 0) -> str:
    """Run the demo end to end; returns a one-paragraph summary."""
    from flipnet.pipelines.restore import restore_files

    if input_path:
        photo, name = load_image(input_path).rgb, Path(input_path).stem
    else:
        from skimage import data

        photo, name = np.ascontiguousarray(data.astronaut()), "astronaut"
    out = Path(out)
    degraded = old_photo(photo, seed=seed)
    inputs = out / "inputs"
    save_image(inputs / f"{name}.png", photo)
    lq_path = save_image(inputs / f"{name}_old.png", degraded)
    method = pick_method()
    final = out / "restored_imgs" / f"{name}_old.png"
    if final.exists():
        final.unlink()  # the demo always recomputes its result
    report = restore_files([lq_path], out, method, progress=False,
                           settings={"degradation": OLD_PHOTO, "seed": seed})
    restored = load_image(final).rgb
    save_image(out / "demo.png", side_by_side(photo, degraded, restored))
    info = report["images"].get(str(lq_path), {})
    summary = (f"demo: method={method.name}, faces restored={info.get('faces', 0)}, "
               f"seconds={report['seconds']}; wrote {out}/demo.png (original | degraded | "
               f"restored) and {out}/{{cropped_faces,restored_faces,cmp,restored_imgs}}/")
    write_bytes_atomic(out / "demo.json", json.dumps({"summary": summary, **report},
                                                     indent=1, default=str).encode())
    return summary
