"""Sharded batch restoration: two processes (gloo on CPU) split the inputs, each output is
written once, and the main process merges the report."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest

from flipnet.io import save_image

pytest.importorskip("accelerate")
torch = pytest.importorskip("torch")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed unavailable")
def test_two_processes_split_the_inputs(tmp_path):
    rng = np.random.default_rng(0)
    for i in range(4):
        save_image(tmp_path / "in" / f"img{i}.png", rng.integers(0, 256, (40, 48, 3), np.uint8))
    out = tmp_path / "out"
    # `--multi_gpu` selects torch.distributed's launcher; without CUDA flipnet picks gloo on CPU
    # (accelerate's `--cpu` alone starts a single process unless an MPI hostfile is given)
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes",
           "2", "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
           "--main_process_port", str(_free_port()),
           "-m", "flipnet.cli", "restore", str(tmp_path / "in"), "-o", str(out),
           "--method", "input", "--device", "cpu"]
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1"}
    r = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=240, env=env)
    assert r.returncode == 0, r.stderr[-2000:]
    report = json.loads((out / "report.json").read_text())
    assert report["processes"] == 2 and report["done"] == 4
    images = report["images"]
    assert sorted(images) == sorted(str(tmp_path / "in" / f"img{i}.png") for i in range(4))
    # index modulo world size: img0, img2 on rank 0; img1, img3 on rank 1
    assert {p.rsplit("img", 1)[1][0]: e["rank"] for p, e in images.items()} == \
        {"0": 0, "1": 1, "2": 0, "3": 1}
    assert sorted(p.name for p in (out / "restored_imgs").iterdir()) == \
        [f"img{i}.png" for i in range(4)]  # each output once, no temp files
    assert not list(out.glob("report.part*"))
    assert r.stdout.count("4 files") == 1  # only the main process prints the summary
