"""flipnet bench on tiny synthetic folders: sets are built once, tables and plots are written."""

from __future__ import annotations

import dataclasses
import json

import cv2
import numpy as np
import pytest

from flipnet.io import save_image
from flipnet.pipelines.bench import BenchConfig, build_sets, run_bench
from flipnet.splits import utkface_split


def _fake_data(tmp_path, astronaut):
    face = cv2.resize(astronaut[20:240, 120:340], (128, 128), interpolation=cv2.INTER_AREA)
    names = [f"{a}_{a % 2}_{a % 5}_2017{a:06d}" for a in range(1, 400)]
    test = [n for n in names if utkface_split(n + ".png") == "test"][:12]
    for i, n in enumerate(test):
        save_image(tmp_path / "utk" / f"{n}.png", np.roll(face, i, axis=1))
    for person in ("Ian_A", "Kim_B"):
        for j in range(2):
            save_image(tmp_path / "lfw" / person / f"{person}_{j}.png", np.roll(face, j, axis=0))
    return BenchConfig(utkface=str(tmp_path / "utk"), lfw=str(tmp_path / "lfw"),
                       work=str(tmp_path / "work"), docs=str(tmp_path / "docs"), n=2, n_ref=4,
                       methods="input,bicubic", speed=False)


def test_bench_end_to_end(tmp_path, astronaut):
    cfg = _fake_data(tmp_path, astronaut)
    sets = build_sets(cfg)
    assert set(sets) == {"gfpgan", "codeformer", "raw", "small", "lfw-real", "_ref"}
    lq_file = sorted((tmp_path / "work" / "sets" / "codeformer" / "lq").iterdir())[0]
    before = lq_file.read_bytes()
    build_sets(cfg)  # reuse: sets are not re-made
    assert lq_file.read_bytes() == before
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "BENCHMARKS.md").write_text("# B\n\nhand-written intro\n")
    res = run_bench(cfg, progress=False)
    assert set(res["methods"]) == {"input", "bicubic"}
    r = res["methods"]["bicubic"]["sets"]["codeformer"]
    assert np.isfinite(r["psnr"]) and 0 < r["ssim"] <= 1
    md = (tmp_path / "docs" / "BENCHMARKS.md").read_text()
    assert "hand-written intro" in md and "| bicubic |" in md and md.count("bench:start") == 1
    run_bench(cfg, progress=False)  # regenerating keeps one block
    assert (tmp_path / "docs" / "BENCHMARKS.md").read_text().count("bench:start") == 1
    for png in ("metrics.png", "quality_speed.png", "before_after.png"):
        assert (tmp_path / "docs" / "bench" / png).stat().st_size > 1000
    saved = json.loads((tmp_path / "docs" / "bench" / "results.json").read_text())
    assert saved["methods"]["input"]["sets"]["lfw-real"]["identity_cos"] > 0.99
    # the ground truth's own no-reference scores are the reference row of each synthetic table
    assert set(saved["ground_truth"]) == {"gfpgan", "codeformer", "raw", "small"}
    assert "| *ground truth (reference)* |" in md
    small = res["methods"]["input"]["sets"]["small"]
    assert small["psnr"] < res["methods"]["input"]["sets"]["gfpgan"]["psnr"]  # 16-64 px faces


def test_bench_rerun_reuses_finished_results_and_redoes_lost_ones(tmp_path, astronaut, monkeypatch):
    from flipnet.pipelines import bench

    cfg = _fake_data(tmp_path, astronaut)
    first = run_bench(cfg, progress=False)
    done = tmp_path / "work" / "done"
    assert sorted(p.name for p in (done / "bicubic").iterdir()) == [
        "codeformer.json", "gfpgan.json", "lfw-real.json", "raw.json", "small.json"]
    (done / "bicubic" / "raw.json").unlink()  # as if killed before this set finished
    calls = []
    real_score = bench.score
    monkeypatch.setattr(bench, "score", lambda *a, **k: calls.append(1) or real_score(*a, **k))
    again = run_bench(cfg, progress=False)
    assert len(calls) == 1  # only the lost (bicubic, raw) result is recomputed
    assert again["methods"]["bicubic"]["sets"]["raw"]["psnr"] == pytest.approx(
        first["methods"]["bicubic"]["sets"]["raw"]["psnr"])
    assert again["methods"]["input"]["sets"]["gfpgan"] == first["methods"]["input"]["sets"]["gfpgan"]
    changed = dataclasses.replace(cfg, seed=1)  # other settings: nothing is reused
    calls.clear()
    run_bench(changed, progress=False)
    assert len(calls) == 10


@pytest.mark.slow
def test_bench_killed_with_sigkill_reruns_to_the_unbroken_tables(tmp_path, astronaut):
    import os
    import signal
    import subprocess
    import sys
    import time

    from flipnet.config import save_config

    cfg = _fake_data(tmp_path, astronaut)
    straight = run_bench(cfg, progress=False)
    killed = dataclasses.replace(cfg, work=str(tmp_path / "work2"), docs=str(tmp_path / "docs2"))
    save_config(killed, tmp_path / "bench.json")
    cmd = [sys.executable, "-m", "flipnet.cli", "bench", "--config", str(tmp_path / "bench.json")]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    first = tmp_path / "work2" / "done" / "input" / "gfpgan.json"
    deadline = time.time() + 300
    while not first.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (tmp_path / "docs2" / "bench" / "results.json").exists()
    subprocess.run(cmd, check=True, capture_output=True, env=env, timeout=600)
    again = json.loads((tmp_path / "docs2" / "bench" / "results.json").read_text())
    for method in ("input", "bicubic"):
        for name, r in straight["methods"][method]["sets"].items():
            got = again["methods"][method]["sets"][name]
            for key in ("psnr", "ssim", "niqe", "identity_cos"):
                assert got.get(key) == pytest.approx(r.get(key)), (method, name, key)
    leftovers = [p for p in (tmp_path / "work2").rglob("*") if p.name.endswith(".tmp")]
    assert leftovers == []
