"""benchmarks/pick_finetune_schedule.py: the fine-tuning schedule is chosen by its fixed rule."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _picker():
    path = REPO / "benchmarks" / "pick_finetune_schedule.py"
    spec = importlib.util.spec_from_file_location("pick_finetune_schedule", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.pick


def _row(label, identity, fd):
    """A row as pseudo_target_quality.py writes it: the pseudo targets carry their setting."""
    row = {"images": label, "id_cos_to_lq": identity, "fd_lowlevel": fd}
    if label.startswith("pseudo target P"):
        numbers = [int(w.strip(",")) for w in label.split() if w.strip(",").isdigit()]
        steps, t0, tau, factor = (numbers + [0])[:4]
        row["setting"] = {"respaced_steps": steps, "t0": t0, "tau": tau, "factor": factor}
    return row


def test_lowest_fd_among_targets_that_keep_identity():
    pick = _picker()
    rows = [_row("input (LQ)", 1.0, 0.01), _row("restorer output R", 0.998, 0.02),
            _row("pseudo target P, 250 steps, t0 150, tau 90", 0.94, 0.10),  # best FD, loses ID
            _row("pseudo target P, 50 steps, t0 30, tau 6, N 16", 0.975, 0.20),
            _row("pseudo target P, 50 steps, t0 30, tau 3", 0.99, 0.25)]
    assert pick(rows) == "--respaced-steps 50 --t0 30 --tau 6 --factor 16"
    assert pick(rows, min_identity=0.98) == "--respaced-steps 50 --t0 30 --tau 3 --factor 0"
    # nothing keeps identity: the setting closest to the person
    assert pick(rows, min_identity=0.999) == "--respaced-steps 50 --t0 30 --tau 3 --factor 0"
    with pytest.raises(SystemExit, match="no pseudo-target rows"):
        pick(rows[:2])
