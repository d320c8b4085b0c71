"""ONNX export of the restorer and the onnxruntime backend: parity with torch on real faces,
dynamic batch, the export cache and its staleness check, and the missing-package errors."""

from __future__ import annotations

import importlib.util
import shutil
import sys

import numpy as np
import pytest
import torch

from flipnet.errors import ConfigError
from flipnet.io import to_tensor

SHIPPED = "restorer-128"
needs_ort = pytest.mark.skipif(
    importlib.util.find_spec("onnxruntime") is None or importlib.util.find_spec("onnx") is None,
    reason="onnx and onnxruntime not installed (pip install 'flipnet[onnx]')")


@pytest.fixture(scope="module")
def faces(astronaut) -> np.ndarray:
    """The astronaut's aligned 128 px face and three degraded versions: uint8 (4, 128, 128, 3)."""
    from flipnet.degradations.pipeline import degrade_images
    from flipnet.degradations.presets import preset_for_size
    from flipnet.faces.align import align_face
    from flipnet.faces.detect import detect_all_faces
    from flipnet.io import to_uint8

    hq = align_face(astronaut, detect_all_faces(astronaut)[0].landmarks5, size=128).crop
    lq = [to_uint8(degrade_images(to_tensor(hq), preset_for_size(name, 128), seed=seed)[0])[0]
          for seed, name in enumerate(("gfpgan", "codeformer", "difface"))]
    return np.stack([hq, *lq])


@pytest.fixture(scope="module")
def weights():
    """The shipped restorer folder."""
    from flipnet.pipelines.methods import resolve_weights

    return resolve_weights(SHIPPED)


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """An empty export cache for this test."""
    monkeypatch.setenv("FLIPNET_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache" / "onnx"


@needs_ort
def test_export_matches_torch_at_batch_1_and_3(tmp_path, weights, faces):
    import onnxruntime as ort

    from flipnet.models.onnx_export import export_onnx, is_fresh, read_sidecar
    from flipnet.models.restorer import load_restorer

    path = export_onnx(weights, tmp_path / "r.onnx")
    meta = read_sidecar(path)
    assert meta["image_size"] == 128 and meta["opset"] == 17 and is_fresh(path, weights)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    model, _ = load_restorer(weights)
    for batch in (faces[:1], faces[1:]):  # one face, then three: the batch axis is dynamic
        x = to_tensor(batch)  # (B, 3, 128, 128) in [-1, 1]
        with torch.no_grad():
            ref = model(x).numpy()
        (y,) = session.run(["restored"], {"lq": x.numpy()})
        assert y.shape == ref.shape
        assert np.abs(y - ref).max() < 1e-3


@needs_ort
def test_method_matches_restorer_method(cache, weights, faces):
    from flipnet.pipelines.methods import RestorerMethod
    from flipnet.pipelines.onnx_method import OnnxRestorerMethod

    onnx = OnnxRestorerMethod(weights, batch_size=3)
    ref = RestorerMethod(weights, device="cpu")
    assert (onnx.name, onnx.size, onnx.template) == (ref.name, ref.size, ref.template)
    out = onnx.restore(faces)  # batches of 3 and 1
    assert out.dtype == np.uint8 and out.shape == faces.shape
    assert np.abs(out.astype(int) - ref.restore(faces)).max() <= 1
    assert not np.array_equal(out, faces)  # it did restore
    assert onnx.restore(faces[:0]).shape == (0, 128, 128, 3)
    with pytest.raises(ValueError, match="expects uint8"):
        onnx.restore(faces[:, :64, :64])


@needs_ort
@pytest.mark.slow  # three exports
def test_cache_is_reused_and_a_changed_weights_file_is_exported_again(
        cache, tmp_path, weights, faces, monkeypatch):
    from flipnet.models import onnx_export
    from flipnet.models.restorer import load_restorer, save_restorer
    from flipnet.pipelines import onnx_method
    from flipnet.pipelines.onnx_method import OnnxRestorerMethod

    exports = []

    def counting_export(*args, **kwargs):
        exports.append(args[1])
        return onnx_export.export_onnx(*args, **kwargs)

    monkeypatch.setattr(onnx_method, "export_onnx", counting_export)
    folder = shutil.copytree(weights, tmp_path / "w")
    first = OnnxRestorerMethod(folder)
    assert first.onnx_path.parent == cache and len(exports) == 1
    again = OnnxRestorerMethod(folder)
    assert again.onnx_path == first.onnx_path and len(exports) == 1  # reused

    # new weights in the same folder: a new fingerprint, so a new export that follows them
    model, cfg = load_restorer(folder)
    with torch.no_grad():
        model.ending.bias.add_(0.25)
    save_restorer(folder, model, cfg)
    changed = OnnxRestorerMethod(folder)
    assert len(exports) == 2 and changed.onnx_path != first.onnx_path
    x = to_tensor(faces[:1])
    with torch.no_grad():
        ref = load_restorer(folder)[0](x).numpy()
    (y,) = changed.session.run(["restored"], {"lq": x.numpy()})
    assert np.abs(y - ref).max() < 1e-3

    # a fresh model.onnx inside the folder wins over the cache; a corrupted one is ignored
    own = onnx_export.export_onnx(folder, folder / "model.onnx")
    assert OnnxRestorerMethod(folder).onnx_path == own and len(exports) == 2
    own.write_bytes(own.read_bytes()[:-10])
    assert not onnx_export.is_fresh(own, folder)
    assert OnnxRestorerMethod(folder).onnx_path == changed.onnx_path and len(exports) == 2


def test_missing_onnxruntime_is_a_clear_config_error(monkeypatch, weights):
    from flipnet.pipelines.onnx_method import OnnxRestorerMethod

    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import onnxruntime -> ImportError
    with pytest.raises(ConfigError, match=r"--backend onnx needs onnxruntime: pip install"):
        OnnxRestorerMethod(weights)


def test_missing_onnx_package_is_a_clear_config_error(monkeypatch, tmp_path, weights):
    from flipnet.models.onnx_export import export_onnx

    monkeypatch.setitem(sys.modules, "onnx", None)
    with pytest.raises(ConfigError, match=r"pip install onnx"):
        export_onnx(weights, tmp_path / "r.onnx")
    assert not (tmp_path / "r.onnx").exists()
