"""The flipnet command: sub-commands, one-line errors (exit 2, no traceback), dry runs."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np

from flipnet.io import save_image


def run(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "flipnet.cli", *args], check=False,
                          capture_output=True, text=True, cwd=cwd, timeout=300)


def test_help_lists_commands():
    r = run("--help")
    assert r.returncode == 0
    for cmd in ("prepare", "degrade", "restore", "eval", "demo"):
        assert cmd in r.stdout


def test_bad_weights_is_one_line_error(tmp_path, astronaut):
    save_image(tmp_path / "a.png", astronaut)
    r = run("restore", str(tmp_path / "a.png"), "-o", str(tmp_path / "out"), "--method",
            "restorer", "--weights", str(tmp_path / "missing"))
    assert r.returncode == 2
    assert r.stderr.startswith("error:") and "missing" in r.stderr
    assert "Traceback" not in r.stderr


def test_degrade_dry_run_and_config_file(tmp_path):
    r = run("degrade", "--preset", "codeformer", "--seed", "7", "--dry-run", str(tmp_path),
            str(tmp_path / "o"))
    assert r.returncode == 0, r.stderr
    cfg = json.loads(r.stdout)
    assert cfg["preset"] == "codeformer" and cfg["seed"] == 7
    (tmp_path / "c.json").write_text(json.dumps({"preset": "difface", "seed": 3}))
    r = run("degrade", "--config", str(tmp_path / "c.json"), "--seed", "4", "--dry-run",
            str(tmp_path), str(tmp_path / "o"))
    cfg = json.loads(r.stdout)
    assert cfg["preset"] == "difface" and cfg["seed"] == 4


def test_eval_gt_and_bad_pairs(tmp_path, astronaut):
    rng = np.random.default_rng(0)
    for i in range(3):
        crop = astronaut[i * 10:i * 10 + 128, 150:278]
        save_image(tmp_path / "gt" / f"f{i}.png", crop)
        noisy = np.clip(crop + rng.normal(0, 8, crop.shape), 0, 255).astype(np.uint8)
        save_image(tmp_path / "pred" / f"f{i}.png", noisy)
    r = run("eval", "--pred", str(tmp_path / "pred"), "--gt", str(tmp_path / "gt"),
            "--no-identity", "--out", str(tmp_path / "r.json"))
    assert r.returncode == 0, r.stderr
    m = json.loads((tmp_path / "r.json").read_text())["metrics"]
    assert 25 < m["psnr"] < 40 and 0 < m["ssim"] < 1 and m["lpips"] == "unavailable"
    save_image(tmp_path / "pred" / "f0.png", astronaut[:64, :64])
    r = run("eval", "--pred", str(tmp_path / "pred"), "--gt", str(tmp_path / "gt"),
            "--no-identity")
    assert r.returncode == 2 and "f0" in r.stderr and "differs" in r.stderr


def test_restore_exit_codes_for_bad_inputs(tmp_path, astronaut):
    src = tmp_path / "in"
    save_image(src / "small.png", np.ascontiguousarray(astronaut[::4, ::4]))
    (src / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    (src / "empty.png").write_bytes(b"")
    r = run("restore", str(src), "-o", str(tmp_path / "out"), "--method", "input")
    assert r.returncode == 1, r.stderr  # finished, but some inputs were skipped
    errors = sorted(ln for ln in r.stderr.splitlines() if ln.startswith("error:"))
    assert len(errors) == 2 and "broken.jpg" in errors[0] and "empty.png" in errors[1]
    assert "empty (0 bytes)" in errors[1] and "Traceback" not in r.stderr
    assert (tmp_path / "out" / "restored_imgs" / "small.png").exists()
    # nothing to do, a missing input, an output path that is a file: exit 2, one line
    (tmp_path / "nothing").mkdir()
    (tmp_path / "afile").write_text("x")
    for args, words in ((("restore", str(tmp_path / "nothing"), "-o", str(tmp_path / "o")),
                         "no images or videos found"),
                        (("restore", str(tmp_path / "missing.png"), "-o", str(tmp_path / "o")),
                         "does not exist"),
                        (("restore", str(src / "small.png"), "-o", str(tmp_path / "afile"),
                          "--method", "input"), "cannot create the output folders")):
        r = run(*args)
        assert r.returncode == 2 and words in r.stderr, (args, r.stderr)
        assert "Traceback" not in r.stderr


def test_finetune_command_in_model_card_reproduces_the_config():
    import shlex
    from dataclasses import asdict

    from flipnet.training.finetune import FinetuneConfig, finetune_command

    cfg = FinetuneConfig(t0=30, tau=6, respaced_steps=50, limit=800, lr=2e-5, resume=True)
    words = shlex.split(finetune_command(cfg))
    assert words[:2] == ["flipnet", "finetune"]
    r = run(*words[1:], "--dry-run")
    assert r.returncode == 0, r.stderr
    resolved = json.loads(r.stdout)
    assert {k: resolved[k] for k in asdict(cfg)} == asdict(cfg)
