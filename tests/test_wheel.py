"""The wheel (issue 19): a real, non-editable install outside the checkout restores a photo with
the weights it ships, and carries its web page and data files.

The wheel is built like ``python -m build`` (sdist, then a wheel from the sdist) from a copy of
the working tree, with this environment's setuptools and no downloads. The temporary venv
gets the wheel with ``--no-deps`` and a ``.pth`` line pointing at this environment's
site-packages for torch & co. (a path line only: the editable install's own ``.pth`` there is
not run, so ``import flipnet`` must find the wheel's copy).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
TOP_FILES = ("pyproject.toml", "setup.py", "MANIFEST.in", "README.md")
# the shipped fp16 weights are ~41 MiB compressed (the default latent prior's UNet alone is 14 MiB;
# three 1.8 M-parameter restorer variants, fidelity / default / texture, 3.6 MiB each); the cap
# catches checkpoints, optimizer states or data shipped by mistake
MAX_WHEEL_BYTES = 52 * 2**20
pytestmark = pytest.mark.slow


def _run(cmd: list, **kwargs) -> subprocess.CompletedProcess:
    """Run a command; fail the test with its stderr when it exits non-zero."""
    r = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=900,
                       **kwargs)
    assert r.returncode == 0, f"{' '.join(map(str, cmd))} -> {r.returncode}\n{r.stderr[-3000:]}"
    return r


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """sdist from a copy of the tree, then a wheel from the sdist (no network, no isolation)."""
    root = tmp_path_factory.mktemp("build")
    tree = root / "tree"
    skip = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info", "*.tmp", "*.old")
    for name in ("src", "weights"):
        shutil.copytree(REPO / name, tree / name, ignore=skip)
    for name in TOP_FILES:
        shutil.copy2(REPO / name, tree / name)
    t0 = time.perf_counter()
    _run([sys.executable, "-c", "import sys; from setuptools import build_meta as b; "
          "b.build_sdist(sys.argv[1])", root / "sdist"], cwd=tree)
    (sdist,) = (root / "sdist").glob("flipnet-*.tar.gz")
    _run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
          "--no-index", "-w", root / "dist", sdist])
    (whl,) = (root / "dist").glob("flipnet-*.whl")
    print(f"\nwheel built in {time.perf_counter() - t0:.1f} s: {whl.name}, "
          f"{whl.stat().st_size / 2**20:.1f} MiB")
    return whl


def test_wheel_ships_weights_web_and_data(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    shipped = [d.name for d in sorted((REPO / "weights").iterdir()) if (d / "config.json").is_file()]
    assert {"restorer-128", "restorer-128-finetuned", "prior-64", "prior-latent-128",
            "flipnet-64", "flipnet-latent-128"} <= set(shipped)
    for name in shipped:
        for f in (REPO / "weights" / name).rglob("*"):
            rel = f.relative_to(REPO / "weights")
            if f.is_file() and not any(p.startswith(".") or p.endswith((".tmp", ".old"))
                                       for p in rel.parts):
                assert f"flipnet/data/weights/{rel.as_posix()}" in names, f"{rel} not in wheel"
    for f in ("web/index.html", "web/app.js", "web/style.css", "data/template_utkface.json",
              "data/niqe_pristine.npz", "data/brisque_svr.npz", "data/lpips_heads/vgg.safetensors",
              "data/lpips_heads/alex.safetensors"):
        assert f"flipnet/{f}" in names, f
    assert not [n for n in names if n.endswith((".tmp", ".old", ".pyc")) or "__pycache__" in n]
    assert wheel.stat().st_size < MAX_WHEEL_BYTES


def test_installed_wheel_restores_a_photo_outside_the_checkout(wheel, tmp_path):
    t0 = time.perf_counter()
    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", venv])
    python = venv / ("Scripts" if os.name == "nt" else "bin") / "python"
    _run([sys.executable, "-m", "pip", "--python", python, "install", "-q", "--no-deps",
          "--no-index", wheel])
    purelib = Path(_run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"])
                   .stdout.strip())
    here = {sysconfig.get_paths()[k] for k in ("purelib", "platlib")}  # torch, dlib, ... from here
    (purelib / "_flipnet_test_deps.pth").write_text("\n".join(sorted(here)) + "\n")
    t_install = time.perf_counter() - t0

    # a degraded photo (x4 down, bicubic up, JPEG 40), so the restoration has to show
    work = tmp_path / "work"
    work.mkdir()
    from skimage import data

    lq = Image.fromarray(data.astronaut()).resize((128, 128), Image.BOX)
    lq.resize((512, 512), Image.BICUBIC).save(work / "photo.jpg", quality=40)
    env = {k: v for k, v in os.environ.items()
           if k not in ("FLIPNET_WEIGHTS", "PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}

    # flipnet and its weights come from the temporary venv, not from the checkout
    probe = ("import json, flipnet, flipnet.weights as w; print(json.dumps([flipnet.__file__, "
             "[label for label, _ in w.weights_search_path()], str(w.resolve_weights("
             "w.DEFAULT_WEIGHTS['restorer']))]))")
    module, labels, weights = json.loads(_run([python, "-c", probe], cwd=work, env=env).stdout)
    assert Path(module).is_relative_to(purelib) and labels == ["installed package"]
    assert Path(weights) == purelib / "flipnet" / "data" / "weights" / "restorer-128"

    t1 = time.perf_counter()
    _run([venv / "bin" / "flipnet", "restore", "photo.jpg", "-o", "out"], cwd=work, env=env)
    t_restore = time.perf_counter() - t1
    report = json.loads((work / "out" / "report.json").read_text())["images"]["photo.jpg"]
    assert report["faces"] >= 1
    before = np.asarray(Image.open(work / "photo.jpg"), dtype=float)
    after = np.asarray(Image.open(work / "out" / "restored_imgs" / "photo.jpg"), dtype=float)
    assert after.shape == before.shape
    x0, y0, x1, y1 = report["boxes"][0]
    face = np.abs(after[y0:y1, x0:x1] - before[y0:y1, x0:x1]).mean()
    far = np.abs(after[-60:, -60:] - before[-60:, -60:]).mean()  # only re-encoded there
    print(f"\ninstall {t_install:.1f} s, restore {t_restore:.1f} s; mean |change| face "
          f"{face:.2f}, far corner {far:.2f}")
    assert face > 1.5 and face > 4 * far
