"""FID InceptionV3 (pytorch-fid layout) and LPIPS loaders, with random-init weights in tmp files."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from flipnet.errors import FlipnetError, WeightsError
from flipnet.metrics.inception import (
    ENV_VAR,
    FIDInceptionV3,
    InceptionUnavailable,
    inception_features,
    load_fid_inception,
)
from flipnet.metrics.lpips import (
    ENV_VARS,
    HEADS_DIR,
    LPIPS,
    LPIPSUnavailable,
    load_lpips,
    lpips_distances,
)

# (key, shape) pairs of pytorch-fid's pt_inception-2015-12-05 checkpoint (torchvision naming)
KNOWN_INCEPTION_KEYS = {
    "Conv2d_1a_3x3.conv.weight": (32, 3, 3, 3),
    "Conv2d_1a_3x3.bn.running_var": (32,),
    "Mixed_5b.branch1x1.conv.weight": (64, 192, 1, 1),
    "Mixed_5b.branch_pool.conv.weight": (32, 192, 1, 1),
    "Mixed_6b.branch7x7_2.conv.weight": (128, 128, 1, 7),
    "Mixed_7c.branch3x3dbl_3b.conv.weight": (384, 384, 3, 1),
    "fc.weight": (1008, 2048),
    "fc.bias": (1008,),
}


@pytest.fixture(scope="module")
def inception_file(tmp_path_factory):
    """A random-init FIDInceptionV3 saved as a .pth, and the module it came from."""
    torch.manual_seed(0)
    model = FIDInceptionV3().eval()
    for m in model.modules():  # keep activations O(1) through 95 layers (default init vanishes)
        if isinstance(m, torch.nn.Conv2d):
            torch.nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
    path = tmp_path_factory.mktemp("fid") / "pt_inception-random.pth"
    torch.save(model.state_dict(), path)
    return path, model


def test_inception_keys_and_known_shapes(inception_file):
    path, model = inception_file
    loaded = load_fid_inception(path)
    saved = torch.load(path, weights_only=True)
    assert set(loaded.state_dict()) == set(saved) == set(FIDInceptionV3().state_dict())
    shapes = {k: tuple(v.shape) for k, v in loaded.state_dict().items()}
    for key, shape in KNOWN_INCEPTION_KEYS.items():
        assert shapes[key] == shape, key
    assert not any(k.startswith("AuxLogits") for k in shapes)
    for k, v in saved.items():
        assert torch.equal(loaded.state_dict()[k], v), k


def test_inception_features_shape_and_round_trip(inception_file):
    path, model = inception_file
    loaded = load_fid_inception(path)
    rng = np.random.default_rng(0)
    imgs = rng.integers(0, 256, (2, 64, 64, 3), dtype=np.uint8)
    feats = inception_features(loaded, imgs, batch_size=2)
    assert feats.shape == (2, 2048) and feats.dtype == np.float64
    assert np.isfinite(feats).all() and (feats >= 0).all()  # average of ReLU outputs
    with torch.no_grad():
        direct = model(torch.from_numpy(imgs).permute(0, 3, 1, 2).float() / 127.5 - 1)
    assert feats.mean() > 1e-3
    np.testing.assert_allclose(feats, direct.double().numpy(), rtol=1e-4, atol=1e-6)
    assert not np.allclose(feats[0], feats[1], rtol=1e-2, atol=0)
    # mixed sizes are resized one by one to 299 first
    mixed = inception_features(loaded, [imgs[0], imgs[1][:48]], batch_size=2)
    np.testing.assert_allclose(mixed[0], feats[0], rtol=1e-4, atol=1e-6)


def test_inception_checkpoint_without_batch_counters_loads(inception_file, tmp_path):
    path, _ = inception_file
    state = {k: v for k, v in torch.load(path, weights_only=True).items()
             if not k.endswith("num_batches_tracked")}
    old = tmp_path / "old_style.pth"
    torch.save(state, old)
    assert isinstance(load_fid_inception(old), FIDInceptionV3)


def test_inception_unavailable_and_bad_files(tmp_path, monkeypatch):
    monkeypatch.delenv(ENV_VAR, raising=False)
    with pytest.raises(InceptionUnavailable, match="FID-Inception is unavailable.*" + ENV_VAR):
        load_fid_inception(None)
    with pytest.raises(InceptionUnavailable, match="nowhere.pth"):
        load_fid_inception(tmp_path / "nowhere.pth")
    wrong = tmp_path / "wrong_net.pth"
    torch.save({"conv.weight": torch.zeros(3, 3, 1, 1)}, wrong)
    with pytest.raises(WeightsError, match="wrong_net.pth: not an FID InceptionV3"):
        load_fid_inception(wrong)
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(WeightsError, match="junk.pth"):
        load_fid_inception(junk)
    monkeypatch.setenv(ENV_VAR, str(tmp_path / "from_env.pth"))
    with pytest.raises(InceptionUnavailable, match="from_env.pth"):
        load_fid_inception()


def _random_backbone(net: str, path, *, extra_classifier: bool = True) -> None:
    """Save random-init backbone weights in torchvision's key layout (features.N.*)."""
    torch.manual_seed(1)
    state = {f"features.{k}": v for k, v in LPIPS(net).features.state_dict().items()}
    if extra_classifier:  # a full torchvision checkpoint also holds the classifier
        state["classifier.0.weight"] = torch.zeros(4, 4)
    torch.save(state, path)


@pytest.mark.parametrize("net", ["alex", "vgg"])
def test_lpips_identity_positive_symmetric(net, tmp_path):
    path = tmp_path / f"{net}_random.pth"
    _random_backbone(net, path)
    model = load_lpips(net, path)
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(2, 3, 64, 64, generator=gen) * 2 - 1
    noisy = (x + 0.3 * torch.randn(x.shape, generator=gen)).clamp(-1, 1)
    with torch.no_grad():
        assert model(x, x).abs().max().item() == 0.0
        d = model(x, noisy)
        d_rev = model(noisy, x)
    assert d.shape == (2,) and (d > 0).all()
    torch.testing.assert_close(d, d_rev)
    heads = load_file(str(HEADS_DIR / f"{net}.safetensors"))
    for k in range(5):
        assert torch.equal(model.lins[k].weight, heads[f"lin{k}.weight"])


def test_lpips_distances_on_uint8_pairs(tmp_path):
    path = tmp_path / "alex.pth"
    _random_backbone("alex", path, extra_classifier=False)
    model = load_lpips("alex", path)
    rng = np.random.default_rng(0)
    a = rng.integers(0, 256, (3, 64, 64, 3), dtype=np.uint8)
    b = np.clip(a.astype(int) + rng.integers(-40, 41, a.shape), 0, 255).astype(np.uint8)
    d = lpips_distances(model, list(a), list(b), batch_size=2)
    assert d.shape == (3,) and (d > 0).all()
    np.testing.assert_array_equal(lpips_distances(model, list(a), list(a)), 0.0)
    more = np.clip(a.astype(int) + rng.integers(-120, 121, a.shape), 0, 255).astype(np.uint8)
    assert (lpips_distances(model, list(a), list(more)) > d).all()


def test_shipped_heads_are_the_lpips_v01_heads():
    channels = {"vgg": (64, 128, 256, 512, 512), "alex": (64, 192, 384, 256, 256)}
    for net, chans in channels.items():
        heads = load_file(str(HEADS_DIR / f"{net}.safetensors"))
        assert {k: tuple(v.shape) for k, v in heads.items()} == {
            f"lin{k}.weight": (1, c, 1, 1) for k, c in enumerate(chans)}
        assert all((v >= 0).all() for v in heads.values())  # trained with non-negative weights
    assert "Richard Zhang" in (HEADS_DIR / "LICENSE-lpips.txt").read_text()


def test_lpips_unavailable_and_bad_backbone(tmp_path, monkeypatch):
    monkeypatch.delenv(ENV_VARS["vgg"], raising=False)
    with pytest.raises(LPIPSUnavailable, match="LPIPS \\(vgg\\) is unavailable"):
        load_lpips("vgg")
    assert issubclass(LPIPSUnavailable, FlipnetError)
    wrong = tmp_path / "vgg_as_alex.pth"
    _random_backbone("vgg", wrong)
    with pytest.raises(WeightsError, match="vgg_as_alex.pth: features.0.weight has shape"):
        load_lpips("alex", wrong)
    with pytest.raises(ValueError, match="squeeze"):
        load_lpips("squeeze", wrong)
