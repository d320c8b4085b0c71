"""Export the feed-forward restorer to ONNX, with a JSON sidecar that detects a stale export.

The graph takes ``lq`` float32 ``(B, 3, S, S)`` in ``[-1, 1]`` (S = ``image_size`` of the config)
and returns ``restored`` of the same shape and range, exactly like ``Restorer.forward``; the batch
axis is dynamic, the spatial ones are fixed at S (callers align faces to S first). The exporter is
torch's TorchScript tracer (``torch.onnx.export(..., dynamo=False)``): it needs the ``onnx``
package but not onnxscript, and works offline. The sidecar ``<out>.json`` records the weights
fingerprint (SHA-256 of ``config.json`` and the safetensors shards), the SHA-256 of the ``.onnx``
file, the image size and the opset, so a changed weights folder or a half-replaced file is noticed.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import warnings
from pathlib import Path

import torch

from flipnet.errors import ConfigError, WeightsError
from flipnet.io import write_bytes_atomic

SIDECAR_FORMAT = 1  # bump when the exported graph's interface changes
INPUT_NAME, OUTPUT_NAME = "lq", "restored"
MISSING_ONNX = "ONNX export needs the onnx package: pip install onnx"


def weights_fingerprint(folder: str | os.PathLike) -> str:
    """SHA-256 over a weights folder's ``config.json`` and ``*.safetensors`` (names and bytes)."""
    folder = Path(folder)
    files = [folder / "config.json", *sorted(folder.glob("*.safetensors"))]
    h = hashlib.sha256()
    for f in files:
        try:
            data = f.read_bytes()
        except OSError as e:
            raise WeightsError(f"{f}: cannot be read ({e.strerror or e})") from None
        h.update(f.name.encode() + b"\0" + len(data).to_bytes(8, "little") + data)
    return h.hexdigest()


def sidecar_path(onnx_path: str | os.PathLike) -> Path:
    """Where the JSON sidecar of an ``.onnx`` file lives: ``<file>.onnx.json``."""
    p = Path(onnx_path)
    return p.with_name(p.name + ".json")


def read_sidecar(onnx_path: str | os.PathLike) -> dict | None:
    """The sidecar of an export as a dict, or None when it is missing or unreadable."""
    try:
        meta = json.loads(sidecar_path(onnx_path).read_text())
    except (OSError, ValueError, UnicodeDecodeError):
        return None
    return meta if isinstance(meta, dict) else None


def is_fresh(onnx_path: str | os.PathLike, weights_folder: str | os.PathLike, *,
             fingerprint: str | None = None) -> bool:
    """True when ``onnx_path`` is a complete export of the weights now in ``weights_folder``."""
    onnx_path = Path(onnx_path)
    meta = read_sidecar(onnx_path)
    if meta is None or meta.get("format") != SIDECAR_FORMAT or not onnx_path.is_file():
        return False
    fingerprint = fingerprint or weights_fingerprint(weights_folder)
    if meta.get("weights_sha256") != fingerprint:
        return False
    return hashlib.sha256(onnx_path.read_bytes()).hexdigest() == meta.get("onnx_sha256")


def export_onnx(weights_folder: str | os.PathLike, out_path: str | os.PathLike, *,
                opset: int = 17) -> Path:
    """Export a restorer folder to ONNX (dynamic batch) plus its sidecar; returns ``out_path``.

    Args:
        weights_folder: a restorer folder (``config.json`` + safetensors), see ``load_restorer``.
        out_path: the ``.onnx`` file to write; replaced atomically (temporary file + rename).
        opset: ONNX opset version.

    Returns:
        ``out_path`` as a ``Path``; ``<out_path>.json`` holds image_size, opset, the weights
        fingerprint and the file's SHA-256.
    """
    from flipnet.models.restorer import load_restorer

    try:
        import onnx  # noqa: F401  (torch's exporter builds the file with it)
    except ImportError:
        raise ConfigError(MISSING_ONNX) from None
    weights_folder, out_path = Path(weights_folder), Path(out_path)
    fingerprint = weights_fingerprint(weights_folder)
    model, cfg = load_restorer(weights_folder)
    x = torch.zeros(1, 3, cfg.image_size, cfg.image_size)  # (B, 3, S, S); B is dynamic
    buf = io.BytesIO()
    with warnings.catch_warnings(), torch.no_grad():
        # the tracer warns that it is deprecated and that the padding test becomes a constant
        # (it does: S is fixed, and S is padded or not the same way every time)
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (x,), buf, dynamo=False, opset_version=opset,
                          input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                          dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
                          do_constant_folding=True)
    data = buf.getvalue()
    # the model first, then its sidecar: a kill between the two leaves a sidecar whose
    # onnx_sha256 no longer matches, so the export reads as stale, never as fresh and wrong
    write_bytes_atomic(out_path, data)
    meta = {"format": SIDECAR_FORMAT, "image_size": cfg.image_size, "opset": opset,
            "weights_sha256": fingerprint, "onnx_sha256": hashlib.sha256(data).hexdigest(),
            "weights": str(weights_folder.resolve()), "torch": torch.__version__,
            "input": INPUT_NAME, "output": OUTPUT_NAME}
    write_bytes_atomic(sidecar_path(out_path), json.dumps(meta, indent=1).encode())
    return out_path
