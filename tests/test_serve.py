"""flipnet serve: the HTTP API through FastAPI's TestClient (real restorer on a real photo, fakes
for capacity and caching)."""

from __future__ import annotations

import io
import json
import shutil
import threading
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

pytest.importorskip("fastapi")
pytest.importorskip("httpx")
from fastapi.testclient import TestClient

from flipnet.errors import ImageReadError
from flipnet.gate import NO_GATE, Gate, read_gate
from flipnet.serve import (
    BUSY_MESSAGE,
    MethodCache,
    MethodInfo,
    ServeConfig,
    create_app,
    decode_upload,
    default_method_factory,
)
from flipnet.weights import DEFAULT_WEIGHTS

WEIGHTS = Path(__file__).resolve().parents[1] / "weights"


def png_bytes(rgb: np.ndarray, mode: str | None = None) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(rgb, mode).save(buf, format="PNG")
    return buf.getvalue()


def decode(content: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(content)))


class InvertMethod:
    """A fake FaceMethod: inverts crops; optionally blocks until ``release`` is set."""

    name, size, template = "invert", 128, "flipnet"

    def __init__(self, gate: bool = False):
        self.started = threading.Event()
        self.release = threading.Event()
        if not gate:
            self.release.set()

    def restore(self, crops: np.ndarray) -> np.ndarray:
        self.started.set()
        assert self.release.wait(30), "test never released the fake method"
        return 255 - crops


def fake_app(method: InvertMethod, **cfg):
    calls = []

    def factory(name, fidelity):
        calls.append((name, fidelity))
        return method

    cfg = ServeConfig(method="invert", **cfg)
    methods = [MethodInfo("invert", "ready", "a test fake", 128)]
    return create_app(cfg, method_factory=factory, methods=methods), calls


@pytest.fixture(scope="module")
def crop() -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (128, 128, 3), dtype=np.uint8)


def post(client, data: bytes, name: str = "face.png", **form):
    return client.post("/api/restore", files={"file": (name, data, "image/png")},
                       data={k: str(v) for k, v in form.items()})


def test_restores_real_photo_with_shipped_restorer(astronaut):
    app = create_app(ServeConfig(device="cpu"))
    with TestClient(app) as client:
        methods = client.get("/api/methods").json()
        assert "restorer" in [m["name"] for m in methods["methods"]]
        assert methods["default"] == "restorer"
        # a degraded photo: a sharp one is (by design) barely changed (faces.keep_detail)
        lq = cv2.GaussianBlur(astronaut, (0, 0), 1.5)
        lq = np.clip(lq + np.random.default_rng(0).normal(0, 8, lq.shape), 0, 255)
        r = post(client, png_bytes(lq.astype(np.uint8)), "astronaut.png", method="restorer")
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "image/png"
    assert int(r.headers["x-faces-found"]) == 1
    out = decode(r.content)
    assert out.shape == astronaut.shape
    diff = np.abs(out.astype(int) - lq.astype(np.uint8).astype(int))
    assert diff.mean() > 0.05  # the face region changed
    assert (diff.max(axis=2) == 0).mean() > 0.5  # most of the background is untouched


def test_page_and_health_are_served():
    app, _ = fake_app(InvertMethod())
    with TestClient(app) as client:
        page = client.get("/")
        assert page.status_code == 200 and 'id="file"' in page.text and "/static/app.js" in page.text
        assert "http" not in page.text.replace("http-equiv", "")  # no CDN: works offline
        assert client.get("/static/app.js").status_code == 200
        assert client.get("/static/style.css").status_code == 200
        assert client.get("/healthz").json() == {"ok": True, "busy": 0, "capacity": 5}


def test_aligned_crop_goes_through_the_method(crop):
    app, calls = fake_app(InvertMethod())
    with TestClient(app) as client:
        r = post(client, png_bytes(crop), aligned=1, framing="flipnet")
        r2 = post(client, png_bytes(crop), aligned="true", upscale=2, framing="flipnet")
        r3 = post(client, png_bytes(crop), aligned=1, framing="celeba")
    assert r.status_code == 200, r.text
    np.testing.assert_array_equal(decode(r.content), 255 - crop)
    assert decode(r2.content).shape == (256, 256, 3)
    assert r3.status_code == 400 and "framing" in r3.json()["error"]
    assert calls == [("invert", 0.5)]  # built once, reused


@pytest.mark.parametrize("name,data,problem", [
    ("notes.txt", b"this is not an image", "not a recognised image format"),
    ("empty.png", b"", "empty"),
])
def test_non_images_get_400_naming_the_file(name, data, problem):
    app, _ = fake_app(InvertMethod())
    with TestClient(app) as client:
        r = post(client, data, name)
    assert r.status_code == 400
    assert r.json()["error"].startswith(f"{name}: ") and problem in r.json()["error"]


def test_truncated_jpeg_gets_400(astronaut):
    buf = io.BytesIO()
    Image.fromarray(astronaut).save(buf, format="JPEG", quality=90)
    app, _ = fake_app(InvertMethod())
    with TestClient(app) as client:
        r = post(client, buf.getvalue()[: len(buf.getvalue()) // 3], "cut.jpg")
    assert r.status_code == 400
    assert "cut.jpg" in r.json()["error"] and "truncated" in r.json()["error"]


def test_bad_form_fields_get_400(crop):
    app, _ = fake_app(InvertMethod())
    with TestClient(app) as client:
        assert "unknown method" in post(client, png_bytes(crop), method="nope").json()["error"]
        r = post(client, png_bytes(crop), fidelity=1.5)
        assert r.status_code == 400 and "fidelity must be in [0, 1]" in r.json()["error"]
        r = post(client, png_bytes(crop), upscale="big")
        assert r.status_code == 400 and "upscale must be a number" in r.json()["error"]
        r = client.post("/api/restore", data={"method": "invert"})
        assert r.status_code == 400 and "no file uploaded" in r.json()["error"]


def test_oversize_upload_gets_413_declared_or_streamed():
    app, calls = fake_app(InvertMethod(), max_upload_mb=1)
    big = b"\0" * (2 * 2**20)
    with TestClient(app) as client:
        r = post(client, big, "huge.png")
        assert r.status_code == 413 and "size limit of 1 MB" in r.json()["error"]

        def chunks():  # no Content-Length: counted while streaming
            for _ in range(32):
                yield b"\0" * 2**16

        r = client.post("/api/restore", content=chunks(),
                        headers={"content-type": "multipart/form-data; boundary=xyz"})
        assert r.status_code == 413 and "size limit" in r.json()["error"]
        assert client.get("/healthz").json()["busy"] == 0  # the slot was given back
    assert calls == []


def test_no_face_returns_upscaled_photo_with_message():
    flat = np.full((60, 90, 4), 200, np.uint8)
    flat[..., 3] = np.linspace(0, 255, 90, dtype=np.uint8)[None, :]
    app, _ = fake_app(InvertMethod())
    with TestClient(app) as client:
        r = post(client, png_bytes(flat, "RGBA"), "wall.png", upscale=2)
    assert r.status_code == 200 and r.headers["x-message"] == "no face found"
    assert r.headers["x-faces-found"] == "0"
    out = decode(r.content)
    assert out.shape == (120, 180, 4)  # alpha kept, size doubled
    assert abs(int(out[0, -1, 3]) - 255) <= 2 and out[0, 0, 3] <= 2


def test_busy_beyond_capacity_answers_503_at_once(crop):
    slow = InvertMethod(gate=True)
    app, _ = fake_app(slow, workers=1, queue=1)
    results = {}
    with TestClient(app) as client:
        def upload(key):
            results[key] = post(client, png_bytes(crop), aligned=1)

        first = threading.Thread(target=upload, args=("first",))
        first.start()
        assert slow.started.wait(20)
        queued = threading.Thread(target=upload, args=("queued",))
        queued.start()
        for _ in range(200):  # until the second request is admitted (waiting for the worker)
            if client.get("/healthz").json()["busy"] == 2:
                break
            time.sleep(0.02)
        t0 = time.perf_counter()
        r = post(client, png_bytes(crop), aligned=1)
        assert time.perf_counter() - t0 < 5
        assert r.status_code == 503 and r.json() == {"error": BUSY_MESSAGE}
        slow.release.set()
        first.join(30)
        queued.join(30)
        assert results["first"].status_code == 200 and results["queued"].status_code == 200
        assert client.get("/healthz").json()["busy"] == 0
        assert post(client, png_bytes(crop), aligned=1).status_code == 200


def test_method_cache_builds_once_and_stays_bounded():
    built = []

    def factory(name, fidelity):
        time.sleep(0.05)
        built.append((name, fidelity))
        return object()

    cache = MethodCache(factory, max_entries=2)
    threads = [threading.Thread(target=cache.get, args=("restorer", 0.3)) for _ in range(4)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    assert built == [("restorer", 0.5)]  # no fidelity knob: one entry whatever the slider says
    a = cache.get("prior", 0.31)
    assert cache.get("prior", 0.29) is a  # rounded to 0.1
    cache.get("prior", 0.9)
    assert len(cache._items) == 2 and ("restorer", 0.5) not in cache._items


def test_decode_upload_names_the_upload_not_the_temp_file():
    with pytest.raises(ImageReadError) as e:
        decode_upload(b"GIF89a broken", "holiday.gif", max_pixels=10**6)
    assert str(e.value).startswith("holiday.gif: ")
    big = png_bytes(np.zeros((50, 50, 3), np.uint8))
    with pytest.raises(ImageReadError, match="over the limit"):
        decode_upload(big, "big.png", max_pixels=100)


def by_name(listing: dict) -> dict:
    return {m["name"]: m for m in listing["methods"]}


def test_method_list_follows_the_quality_gates_of_the_shipped_weights():
    with TestClient(create_app(ServeConfig(device="cpu"))) as client:
        listing = client.get("/api/methods").json()
    methods = by_name(listing)
    assert methods["restorer"]["status"] == "ready"
    assert methods["restorer"]["reason"] == read_gate(WEIGHTS / "restorer-128").reason
    assert methods["flipnet"]["status"] == "experimental"
    assert methods["flipnet"]["reason"] == read_gate(WEIGHTS / DEFAULT_WEIGHTS["flipnet"]).reason
    assert methods["prior"]["status"] == "experimental"
    assert methods["finetuned"]["status"] == "experimental"
    assert {methods[b]["status"] for b in ("input", "bicubic", "classical")} == {"baseline"}
    # the face size each restores at, from its weights' config (baselines: the 128 px crop)
    assert {n: m["face_size"] for n, m in methods.items()} == {
        "restorer": 128, "finetuned": 128, "prior": 128, "flipnet": 128,
        "bicubic": 128, "classical": 128, "input": 128}
    assert listing["default"] == "restorer"
    assert all(m["fidelity"] == (m["name"] in ("prior", "flipnet")) for m in methods.values())


def test_weights_without_a_gate_are_experimental(tmp_path, monkeypatch):
    bare = tmp_path / "restorer-128"  # found before the shipped folder ($FLIPNET_WEIGHTS first)
    bare.mkdir()
    shutil.copy(WEIGHTS / "restorer-128" / "config.json", bare)
    monkeypatch.setenv("FLIPNET_WEIGHTS", str(tmp_path))
    assert read_gate(bare) == Gate(False, NO_GATE)
    with TestClient(create_app(ServeConfig(device="cpu"))) as client:
        listing = client.get("/api/methods").json()
    restorer = by_name(listing)["restorer"]
    assert restorer == {"name": "restorer", "status": "experimental", "reason": NO_GATE,
                        "face_size": 128, "fidelity": False}
    assert listing["default"] == "bicubic"  # no ready method left: the first baseline

    (bare / "gate.json").write_text('{"passed": "yes", "reason": "looks fine"}')
    assert not read_gate(bare).passed and "gate.json is invalid" in read_gate(bare).reason
    (bare / "gate.json").write_text(json.dumps({"passed": True, "reason": "checked\n today"}))
    assert read_gate(bare) == Gate(True, "checked today")


def test_shipped_gates_are_recorded_in_the_model_cards():
    for folder in sorted(p for p in WEIGHTS.iterdir() if (p / "config.json").is_file()):
        gate = read_gate(folder)
        assert gate.reason != NO_GATE and gate.measured, folder.name
        card = (folder / "MODEL_CARD.md").read_text()
        section = card.split("## Quality gate", 1)[1]
        assert gate.reason in section, folder.name
        assert ("**Passed" if gate.passed else "**Not passed") in section, folder.name


def test_experimental_method_restores_when_chosen_and_is_labelled(crop):
    cfg = ServeConfig()
    methods = [MethodInfo("invert", "ready", "a test fake", 128),
               MethodInfo("shaky", "experimental", "ignores its input", 64, fidelity=True)]
    built = []

    def factory(name, fidelity):
        built.append(name)
        return InvertMethod()

    with TestClient(create_app(cfg, method_factory=factory, methods=methods)) as client:
        listing = client.get("/api/methods").json()
        assert listing["default"] == "invert"  # never an experimental one
        assert by_name(listing)["shaky"]["reason"] == "ignores its input"
        r = post(client, png_bytes(crop), method="shaky", aligned=1, framing="flipnet")
        r2 = post(client, png_bytes(crop), aligned=1, framing="flipnet")
    assert r.status_code == 200, r.text
    assert r.headers["x-method"] == "shaky" and r.headers["x-method-status"] == "experimental"
    assert r2.headers["x-method"] == "invert" and r2.headers["x-method-status"] == "ready"
    assert built == ["shaky", "invert"]


def test_sampling_options_go_only_to_diffusion_methods(monkeypatch):
    import flipnet.pipelines.methods as methods_module

    calls = []
    monkeypatch.setattr(methods_module, "make_method",
                        lambda name, weights=None, **kw: calls.append((name, kw)))
    make = default_method_factory(ServeConfig(device="cpu", steps=20))
    for name in ("restorer", "bicubic", "prior", "flipnet"):
        make(name, 0.3)
    assert calls == [("restorer", {"device": "cpu"}), ("bicubic", {"device": "cpu"}),
                     ("prior", {"device": "cpu", "fidelity": 0.3, "steps": 20, "seed": 0}),
                     ("flipnet", {"device": "cpu", "fidelity": 0.3, "steps": 20, "seed": 0})]


def test_page_has_the_method_note_and_groups_experimental_methods():
    app, _ = fake_app(InvertMethod())
    with TestClient(app) as client:
        page = client.get("/").text
        script = client.get("/static/app.js").text
    assert 'id="method-note"' in page
    assert "optgroup" in script and '"experimental"' in script
    assert "Faces are restored at" in script

