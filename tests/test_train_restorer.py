"""Restorer training: pairs (synthetic and from folders), loss going down, exact resume, export."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from flipnet.config import load_config, save_config
from flipnet.degradations.color import ColorConfig
from flipnet.degradations.face_size import FaceSizeConfig
from flipnet.degradations.pipeline import DegradationConfig
from flipnet.errors import ConfigError, FlipnetError
from flipnet.io import load_image, save_image
from flipnet.models.restorer import RestorerConfig, load_restorer
from flipnet.splits import group_balance_weights, utkface_split
from flipnet.training.harness import checkpoints
from flipnet.training.pairs import (
    PairFolder,
    PairSampler,
    SyntheticPairs,
    face_presets,
    fixed_pairs,
    load_faces,
)
from flipnet.training.restorer import (
    RestorerTrainConfig,
    make_pairs,
    sampling_weights,
    train_restorer,
)

TINY = RestorerConfig(image_size=32, width=8, enc_blocks=(1, 1), middle_blocks=1,
                      dec_blocks=(1, 1))


def _blob(rng, size=32) -> np.ndarray:
    """A synthetic 'face': a bright disk with two dark 'eyes' on a dark background."""
    yy, xx = np.mgrid[:size, :size]
    cy, cx = rng.uniform(0.4, 0.6, 2) * size
    face = (yy - cy) ** 2 + (xx - cx) ** 2 < (0.35 * size) ** 2
    eyes = [((yy - cy + 4) ** 2 + (xx - cx - s) ** 2) < 4 for s in (-5, 5)]
    rgb = np.where(face[..., None], rng.integers(150, 255, 3), 20)
    return np.where((eyes[0] | eyes[1])[..., None], 40, rgb).astype(np.uint8)


@pytest.fixture(scope="module")
def faces(tmp_path_factory):
    """19 synthetic faces (face008 and face018 fall in the test split) + one corrupt file."""
    root = tmp_path_factory.mktemp("faces")
    rng = np.random.default_rng(0)
    for i in range(19):
        save_image(root / f"face{i:03d}.png", _blob(rng))
    (root / "broken.png").write_bytes(b"not a png")
    return root


def _cfg(data, out, **kw) -> RestorerTrainConfig:
    base = {"data_dir": str(data), "out_dir": str(out), "restorer": TINY,
            "batch_size": 4, "lr": 2e-3, "warmup_steps": 1, "steps": 4, "gan_start": 1,
            "sample_every": 0, "save_every": 2, "log_every": 1, "sample_count": 3, "seed": 3,
            "threads": 1, "eval_count": 0, "prior_path": None}
    return RestorerTrainConfig(**{**base, **kw})


def test_load_faces_keeps_only_the_split_and_skips_broken(faces):
    with pytest.warns(UserWarning, match="broken.png"):
        paths, pixels = load_faces(faces, 16, progress=False)
    assert len(paths) == 17 and all(utkface_split(p) == "train" for p in paths)
    assert pixels.shape == (17, 16, 16, 3) and pixels.dtype == np.uint8
    test_paths, _ = load_faces(faces, 16, split="test", progress=False)
    assert [p.name for p in test_paths] == ["face008.png", "face018.png"]


def test_synthetic_pairs_are_a_function_of_the_seed(faces):
    _, pixels = load_faces(faces, 32, split="test", progress=False)
    pairs = SyntheticPairs(pixels, face_presets(["gfpgan", "codeformer"], 32))
    lq, hq = pairs[(0, False, 11)]
    assert lq.shape == hq.shape == (3, 32, 32) and lq.min() >= -1 and lq.max() <= 1
    assert torch.equal(pairs[(0, False, 11)][0], lq)
    assert not torch.equal(pairs[(0, False, 12)][0], lq)
    assert torch.equal(pairs[(0, True, 11)][1], hq.flip(-1))
    assert (lq - hq).abs().mean() > 0.01  # the LQ really is degraded
    # a gray LQ gets a gray target
    gray = SyntheticPairs(pixels, [DegradationConfig(color=ColorConfig(gray_prob=1.0))])
    lq, hq = gray[(1, False, 5)]
    assert torch.allclose(hq[0], hq[1], atol=1e-6) and torch.allclose(hq[1], hq[2], atol=1e-6)


def test_pair_sampler_yields_seeded_keys():
    a, b = PairSampler(10, seed=1), PairSampler(10, seed=1)
    first = list(a)
    assert first == list(b) and sorted(k[0] for k in first) == list(range(10))
    assert len({k[2] for k in first}) == 10
    a.set_epoch(1)
    assert {k[2] for k in a}.isdisjoint({k[2] for k in first})


def test_pair_folder_matches_names_and_reports_problems(tmp_path):
    rng = np.random.default_rng(1)
    for name in ("a", "b", "c"):
        save_image(tmp_path / "p" / "lq" / f"{name}.png", _blob(rng, 24))
        save_image(tmp_path / "p" / "target" / f"{name}.jpg", _blob(rng, 24))
    save_image(tmp_path / "p" / "lq" / "orphan.png", _blob(rng, 24))
    with pytest.warns(UserWarning, match="orphan"):
        ds = PairFolder(tmp_path / "p", 24, progress=False)
    assert ds.names == ["a", "b", "c"]
    lq, target = ds[(1, False, 0)]
    expected = load_image(tmp_path / "p" / "lq" / "b.png").rgb
    assert np.array_equal(((lq.permute(1, 2, 0) + 1) * 127.5).round().byte().numpy(), expected)
    assert torch.equal(ds[(1, True, 0)][1], target.flip(-1))
    (tmp_path / "q" / "lq").mkdir(parents=True)
    with pytest.raises(FlipnetError, match=r"q: .*target/ is missing"):
        PairFolder(tmp_path / "q", 24, progress=False)


@pytest.fixture(scope="module")
def pairs_dir(tmp_path_factory):
    """8 (lq, target) pairs: the LQ is a fixed, learnable change of contrast and brightness."""
    root = tmp_path_factory.mktemp("pairs")
    rng = np.random.default_rng(2)
    for i in range(8):
        target = _blob(rng)
        save_image(root / "target" / f"{i}.png", target)
        save_image(root / "lq" / f"{i}.png", (target // 2 + 30).astype(np.uint8))
    return root


def test_l1_goes_down_on_a_pairs_folder(pairs_dir, tmp_path):
    folder = train_restorer(_cfg("unused", tmp_path / "run", pairs_dir=str(pairs_dir), steps=30,
                                 lr=1e-2, save_every=30, sample_every=30, gan_start=20,
                                 disc_start=10, eval_count=5))
    log = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").open()]
    l1 = [x["l1"] for x in log]
    assert len(l1) == 30 and "gan_d" in log[-1] and "gan_d" not in log[5]
    # the discriminator warms up from step 11 before the restorer feels it after step 20
    assert "gan_d" in log[12] and "gan_g" not in log[12] and "gan_g" in log[-1]
    assert np.mean(l1[-10:]) < 0.7 * np.mean(l1[:5])
    assert (tmp_path / "run" / "samples" / "step-0000030.png").is_file()
    card = (folder / "MODEL_CARD.md").read_text()
    assert "8 (lq, target) pairs" in card and not (folder / "eval.json").exists()


def test_synthetic_run_exports_card_samples_and_check(faces, tmp_path):
    with pytest.warns(UserWarning):
        folder = train_restorer(_cfg(faces, tmp_path / "run", steps=3, sample_every=3,
                                     eval_count=5), command="pytest")
    assert (tmp_path / "run" / "samples" / "step-0000003.png").is_file()
    # the shipped figure: rows LQ | restored (no data-set HQ row), 2 faces x 2 presets, 2 px pad
    assert load_image(folder / "samples.png").rgb.shape == (2 * 34 + 2, 4 * 34 + 2, 3)
    card = (folder / "MODEL_CARD.md").read_text()
    assert "3 steps" in card and str(faces) in card and "`pytest`" in card
    assert "offline stand-in" in card and "| codeformer |" in card and "test-split faces" in card
    evaluation = json.loads((folder / "eval.json").read_text())
    assert evaluation["faces"] == 2 and evaluation["gfpgan"]["psnr_lq"] > 10
    _, cfg = load_restorer(folder)
    assert cfg == TINY


def _final_state(out):
    ckpt = checkpoints(out / "checkpoints")[-1]
    ema = torch.load(ckpt / "custom_checkpoint_0.pkl", weights_only=False)
    return (ckpt.name, load_file(str(ckpt / "model.safetensors")),
            load_file(str(ckpt / "model_1.safetensors")), ema["shadow"])


@pytest.mark.filterwarnings("ignore:skipped .*broken.png")
def test_resume_is_exact_with_the_gan_on(faces, tmp_path):
    # a constant learning rate: a cosine schedule depends on `steps`, which differs here
    train_restorer(_cfg(faces, tmp_path / "straight", steps=4, lr_schedule="constant"))
    train_restorer(_cfg(faces, tmp_path / "split", steps=2, lr_schedule="constant"))
    # a cosine schedule depends on `steps`: changing it is a different run, refused by name
    with pytest.raises(ConfigError, match="lr_schedule: 'constant' -> 'cosine'"):
        train_restorer(_cfg(faces, tmp_path / "split", steps=4))
    # same settings (more steps is harmless at a constant lr): continues automatically
    train_restorer(_cfg(faces, tmp_path / "split", steps=4, lr_schedule="constant"))
    name_a, model_a, disc_a, ema_a = _final_state(tmp_path / "straight")
    name_b, model_b, disc_b, ema_b = _final_state(tmp_path / "split")
    assert name_a == name_b == "step-0000004"
    for a, b in ((model_a, model_b), (disc_a, disc_b), (ema_a, ema_b)):
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    at_2 = load_file(str(tmp_path / "split" / "checkpoints" / "step-0000002" / "model.safetensors"))
    assert any(not torch.equal(model_a[k], at_2[k]) for k in model_a)


def test_init_from_starts_at_those_weights_and_checks_the_config(pairs_dir, tmp_path):
    folder = train_restorer(_cfg("unused", tmp_path / "ft", pairs_dir=str(pairs_dir), steps=2,
                                 gan_weight=0.0))
    # zero steps export exactly the initial weights; another architecture is refused
    again = train_restorer(_cfg("unused", tmp_path / "ft2", pairs_dir=str(pairs_dir), steps=0,
                                gan_weight=0.0, init_from=str(folder)))
    a = load_file(str(folder / "model-00001.safetensors"))
    b = load_file(str(again / "model-00001.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    deeper = train_restorer(_cfg("unused", tmp_path / "deeper", pairs_dir=str(pairs_dir),
                                 steps=0, gan_weight=0.0, init_from=str(folder),
                                 restorer=dataclasses.replace(TINY, middle_blocks=3)))
    c = load_file(str(deeper / "model-00001.safetensors"))
    assert set(a) < set(c) and all(torch.equal(a[k], c[k]) for k in a)  # grown from it
    other = dataclasses.replace(TINY, width=16)
    with pytest.raises(ConfigError, match="more than added blocks"):
        train_restorer(_cfg("unused", tmp_path / "ft3", pairs_dir=str(pairs_dir),
                            restorer=other, steps=1, init_from=str(folder)))


def test_fixed_pairs_and_too_small_data(faces, tmp_path):
    _, pixels = load_faces(faces, 32, split="test", progress=False)
    lq, hq = fixed_pairs(SyntheticPairs(pixels, face_presets(["difface"], 32)), 5, seed=0)
    assert lq.shape == hq.shape == (2, 3, 32, 32)
    with pytest.raises(FlipnetError, match="fewer than one batch"):
        train_restorer(_cfg(faces, tmp_path / "small", split="test"))


def test_train_config_round_trips_through_json(tmp_path):
    cfg = _cfg("data", "out", mixed_precision="bf16", presets=("codeformer",))
    save_config(cfg, tmp_path / "c.json")
    assert load_config(RestorerTrainConfig, tmp_path / "c.json") == cfg
    assert all("help" in f.metadata for f in dataclasses.fields(RestorerTrainConfig))


@pytest.mark.filterwarnings("ignore:skipped .*broken.png")
def test_validation_curve_on_held_in_faces_with_small_faces(faces, tmp_path):
    cfg = _cfg(faces, tmp_path / "run", steps=4, sample_every=2, val_count=4, gan_weight=0.0,
               small_faces=FaceSizeConfig(prob=0.5, size=(8, 24)))
    train_restorer(cfg)
    rows = [json.loads(line) for line in (tmp_path / "run" / "val.jsonl").open()]
    assert [r["step"] for r in rows] == [2, 4]
    assert all(10 < r["psnr_lq"] < 60 and r["psnr"] > 5 for r in rows)
    assert "psnr_clean" not in rows[0]  # no undegraded pairs in this run
    assert (tmp_path / "run" / "restorer" / "val_curve.png").is_file()
    assert rows[0]["psnr_lq"] == rows[1]["psnr_lq"]  # the same fixed held-in pairs each time
    train, val = make_pairs(cfg, progress=False)
    assert len(val) == 4 and len(train) == 17 - 4  # 17 readable train-split faces
    with pytest.raises(FlipnetError, match="val_count"):
        make_pairs(RestorerTrainConfig(**{**cfg.__dict__, "val_count": 17}), progress=False)


@pytest.mark.filterwarnings("ignore:skipped .*broken.png")
def test_identity_term_is_logged_and_named_in_the_card(faces, tmp_path):
    folder = train_restorer(_cfg(faces, tmp_path / "run", steps=2, identity_weight=0.5,
                                 gan_weight=0.0))
    log = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").open()]
    assert all(0.0 <= x["identity"] < 1.0 for x in log) and len(log) == 2
    assert "identity (1 - cos, torch port of dlib's ResNet) x0.5" in (
        folder / "MODEL_CARD.md").read_text()


def test_group_balanced_sampler_draws_rare_groups_as_often(tmp_path):
    # 4 faces of age 70 beside 36 of age 25: uniform epochs show the rare group 10% of the time
    names = [f"70_0_1_{i}" for i in range(4)] + [f"25_1_0_{i}" for i in range(36)]
    weights = group_balance_weights(names)
    rare = set(range(4))
    sampler = PairSampler(40, seed=1, weights=weights)
    draws = []
    for epoch in range(50):
        sampler.set_epoch(epoch)
        draws += [i for i, _, _ in sampler]
    share = sum(i in rare for i in draws) / len(draws)
    assert 0.45 < share < 0.55  # balanced: half the draws
    sampler.set_epoch(3)
    first = list(sampler)
    sampler.set_epoch(3)
    assert list(sampler) == first  # still a pure function of (seed, epoch): exact resume
    uniform = PairSampler(40, seed=1)
    assert sorted(i for i, _, _ in uniform) == list(range(40))  # no weights: a permutation
    with pytest.raises(ValueError, match="3 sampling weights for 40"):
        PairSampler(40, seed=1, weights=[1.0] * 3)


@pytest.mark.filterwarnings("ignore:skipped .*broken.png")
def test_balance_groups_weights_follow_the_training_faces(faces, tmp_path):
    cfg = _cfg(faces, tmp_path / "run", val_count=4, balance_groups=True)
    train, val = make_pairs(cfg, progress=False)
    # the paths stay aligned with the pixels after the validation faces are split off
    assert len(train.paths) == len(train.pixels) == 13 and len(val.paths) == 4
    assert np.array_equal(train.pixels[0], load_faces(faces, 32, progress=False)[1][4])
    assert sampling_weights(cfg, train) == [1.0 / 13] * 13  # unlabelled names: one group
    assert sampling_weights(_cfg(faces, tmp_path / "u"), train) is None
    pairs_cfg = _cfg(faces, tmp_path / "p", balance_groups=True, pairs_dir=str(tmp_path))
    with pytest.raises(ConfigError, match="balance_groups needs UTKFace"):
        sampling_weights(pairs_cfg, object())


@pytest.mark.filterwarnings("ignore:skipped .*broken.png")
def test_training_draws_with_the_group_weights(faces, tmp_path, monkeypatch):
    import flipnet.training.restorer as restorer_training

    seen = []

    class Recording(PairSampler):
        def __init__(self, n, **kw):
            seen.append(kw.get("weights"))
            super().__init__(n, **kw)

    monkeypatch.setattr(restorer_training, "PairSampler", Recording)
    train_restorer(_cfg(faces, tmp_path / "run", steps=1, gan_weight=0.0, balance_groups=True))
    assert seen == [[1.0 / 17] * 17]
    assert "group-balanced" in (tmp_path / "run" / "restorer" / "MODEL_CARD.md").read_text()


@pytest.mark.filterwarnings("ignore:skipped .*broken.png")
def test_the_discriminator_sees_gan_real_dir_faces_as_real(pairs_dir, faces, tmp_path,
                                                          monkeypatch):
    from flipnet.io import to_tensor
    from flipnet.training import restorer as module

    seen, forward = [], module.PatchDiscriminator.forward

    def spy(self, x):
        seen.append(x.detach().clone())
        return forward(self, x)

    monkeypatch.setattr(module.PatchDiscriminator, "forward", spy)
    folder = train_restorer(_cfg("unused", tmp_path / "run", pairs_dir=str(pairs_dir), steps=2,
                                 gan_start=0, gan_real_dir=str(faces)))
    _, pixels = load_faces(faces, 32, progress=False)
    known = to_tensor(pixels)
    known = torch.cat([known, known.flip(-1)])  # the real side is drawn with flips too
    _, targets = fixed_pairs(PairFolder(pairs_dir, 32, progress=False), 8, seed=0)
    # each step: disc(restored) for the restorer, then disc(real), disc(restored) for itself
    assert len(seen) == 6
    for real in (seen[1], seen[4]):
        for face in real:
            gap = (known - face).abs().flatten(1).amax(1)
            assert float(gap.min()) < 1e-5  # one of gan_real_dir's faces ...
            assert float((targets - face).abs().flatten(1).amax(1).min()) > 0.1  # ... no target
    assert f"real side: `{faces}`" in (folder / "MODEL_CARD.md").read_text()


def test_cpu_hours_count_the_threads_torch_computes_with():
    from flipnet.training.harness import cpu_hours

    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:  # a config's `threads: 0` (torch's default) once counted as 1 thread
        assert cpu_hours(1800) == pytest.approx(1.0)
    finally:
        torch.set_num_threads(before)


@pytest.mark.filterwarnings("ignore:skipped .*broken.png")
def test_the_card_reports_cpu_hours_from_the_thread_count(faces, tmp_path, monkeypatch):
    from flipnet.training import restorer as module

    monkeypatch.setattr(module, "cpu_hours", lambda seconds: 12.34)
    folder = train_restorer(_cfg(faces, tmp_path / "run", steps=2, threads=0))
    assert ": 12.34 CPU-hours" in (folder / "MODEL_CARD.md").read_text()


@pytest.mark.filterwarnings("ignore:skipped .*broken.png")
def test_resume_is_exact_with_a_gan_real_dir_and_a_late_discriminator(pairs_dir, faces,
                                                                       tmp_path):
    # the discriminator starts after step 1, so a run split at step 2 has drawn real batches
    # only on some steps; the continuation must skip exactly what the unbroken run drew
    kw = {"pairs_dir": str(pairs_dir), "gan_real_dir": str(faces), "gan_start": 1,
          "lr_schedule": "constant"}
    train_restorer(_cfg("unused", tmp_path / "straight", steps=4, **kw))
    train_restorer(_cfg("unused", tmp_path / "split", steps=2, **kw))
    train_restorer(_cfg("unused", tmp_path / "split", steps=4, **kw))
    _, model_a, disc_a, ema_a = _final_state(tmp_path / "straight")
    _, model_b, disc_b, ema_b = _final_state(tmp_path / "split")
    for a, b in ((model_a, model_b), (disc_a, disc_b), (ema_a, ema_b)):
        assert all(torch.equal(a[k], b[k]) for k in a)
