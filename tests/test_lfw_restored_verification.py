"""Pure logic of benchmarks/lfw_restored_verification.py: TAR at FAR, verification figures, splits."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def bench():
    """The benchmark script as a module (benchmarks/ is not a package)."""
    path = REPO / "benchmarks" / "lfw_restored_verification.py"
    spec = importlib.util.spec_from_file_location("lfw_restored_verification", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_tar_at_far_known_values(bench):
    """10 different pairs at 1..10, FAR 0.1 allows one below the threshold (2.0)."""
    neg = np.arange(1.0, 11.0)
    pos = np.array([0.5, 1.5, 1.9, 2.5])
    d = np.concatenate([pos, neg])
    same = np.array([True] * 4 + [False] * 10)
    tar, threshold = bench.tar_at_far(d, same, 0.1)
    assert threshold == 2.0
    assert tar == 0.75
    assert np.mean(neg < threshold) <= 0.1
    tar0, threshold0 = bench.tar_at_far(d, same, 0.0)  # no false accept allowed
    assert (tar0, threshold0) == (0.25, 1.0)
    assert bench.tar_at_far(d, same, 1.0) == (1.0, float("inf"))


def test_verification_scores_separable_and_chance(bench):
    """Same-person pairs near-identical, different ones random: accuracy and TAR are 1;
    with labels shuffled against the descriptors, accuracy falls to about chance."""
    rng = np.random.default_rng(0)
    n = 200
    a = rng.normal(size=(2 * n, 128))
    b = np.concatenate([a[:n] + 0.01 * rng.normal(size=(n, 128)), rng.normal(size=(n, 128))])
    same = np.array([True] * n + [False] * n)
    r = bench.verification_scores(a, b, same, far=0.01)
    assert r["accuracy_mean"] == 1.0 and r["tar"] == 1.0
    assert r["cos_same"] > 0.99 and abs(r["cos_different"]) < 0.1
    assert (r["n_same"], r["n_different"]) == (n, n)
    r = bench.verification_scores(a, b, rng.permutation(same), far=0.01)
    assert 0.35 < r["accuracy_mean"] < 0.65


def test_image_seed_depends_on_image_and_seed_only(bench):
    """A face keeps its degradation whichever pairs are drawn; the run seed changes it."""
    assert bench.image_seed(0, "Ian_Thorpe/Ian_Thorpe_0001") == \
        bench.image_seed(0, "Ian_Thorpe/Ian_Thorpe_0001")
    assert bench.image_seed(0, "Ian_Thorpe/Ian_Thorpe_0001") != \
        bench.image_seed(1, "Ian_Thorpe/Ian_Thorpe_0001")
    assert 0 <= bench.image_seed(123, "x/y") < 2**31


def test_pairs_come_from_people_i_to_l(bench, shared_data, tmp_path):
    """The people view holds exactly LFW's test-split people, and pairs drawn from it too."""
    from flipnet.metrics.lfw import make_pairs
    from flipnet.splits import lfw_split

    view = bench.people_view(shared_data / "lfw", tmp_path)
    names = sorted(p.name for p in view.iterdir())
    assert names and all("I" <= n[0].upper() <= "L" for n in names)
    every = sorted(p.name for p in (shared_data / "lfw").iterdir() if p.is_dir()
                   and lfw_split(p / "x.jpg") == "test")
    assert names == every
    pairs = make_pairs(view, 20, 20, rng=np.random.default_rng(0))
    assert all(lfw_split(p) == "test" for pair in pairs for p in (pair.path_a, pair.path_b))
    assert bench.people_view(shared_data / "lfw", tmp_path) == view  # a rerun reuses it


def test_paired_gains_against_input(bench):
    """Fold-wise differences to the input row: the input row gains 0, a better row gains."""
    rows = {"input on x": {"fold_accuracies": [0.5, 0.6, 0.7]},
            "restorer on x": {"fold_accuracies": [0.6, 0.6, 0.9]}}
    bench.add_paired_gains(rows, "input on x")
    assert rows["input on x"]["gain_vs_input"]["mean"] == 0.0
    g = rows["restorer on x"]["gain_vs_input"]
    assert g["mean"] == pytest.approx(0.1) and (g["folds_better"], g["folds_worse"]) == (2, 0)
    rows = {"clean": {"fold_accuracies": [1.0]}}
    bench.add_paired_gains(rows, "input on x")  # no input row: nothing added
    assert "gain_vs_input" not in rows["clean"]
