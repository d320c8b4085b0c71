"""flipnet serve end to end in a real headless Chromium (Debian's package, driven by Playwright).

Skips when /usr/bin/chromium or Playwright is absent. Set FLIPNET_SCREENSHOT=path to save a
screenshot of the page showing the before/after comparison.
"""

from __future__ import annotations

import io
import os
import socket
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from flipnet.gate import read_gate
from flipnet.weights import DEFAULT_WEIGHTS

WEIGHTS = Path(__file__).resolve().parents[1] / "weights"
CHROMIUM = Path(os.environ.get("FLIPNET_CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]

if not CHROMIUM.exists():
    pytest.skip(f"{CHROMIUM} not found (apt-get install -y chromium)", allow_module_level=True)
sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
uvicorn = pytest.importorskip("uvicorn")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server_url():
    """The real app (shipped restorer, CPU) served by uvicorn in a thread on a free port."""
    from flipnet.serve import ServeConfig, create_app

    port = free_port()
    config = uvicorn.Config(create_app(ServeConfig(device="cpu", port=port)), host="127.0.0.1",
                            port=port, log_level="warning")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    for _ in range(300):
        if server.started:
            break
        time.sleep(0.05)
    assert server.started, "uvicorn did not start"
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(10)


@pytest.fixture(scope="module")
def page(server_url):
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), headless=True,
                                    args=CHROMIUM_ARGS)
        context = browser.new_context(viewport={"width": 900, "height": 900},
                                      accept_downloads=True)
        page = context.new_page()
        page.goto(server_url)
        page.wait_for_selector("#method option[value=restorer]", state="attached")
        yield page
        browser.close()


def test_methods_are_grouped_by_quality_gate_and_the_face_size_is_stated(page):
    assert page.input_value("#method") == "restorer"  # the first ready method is the default
    groups = page.evaluate("""[...document.querySelectorAll('#method optgroup')].map(g => ({
        status: g.dataset.status, label: g.label,
        options: [...g.children].map(o => [o.value, o.textContent, o.title])}))""")
    assert [g["status"] for g in groups] == ["ready", "baseline", "experimental"]
    experimental = groups[2]
    assert "Experimental" in experimental["label"]
    options = {value: (text, title) for value, text, title in experimental["options"]}
    assert {"finetuned", "prior", "flipnet"} <= set(options)
    assert options["flipnet"][0] == "flipnet (experimental)"
    flipnet_reason = read_gate(WEIGHTS / DEFAULT_WEIGHTS["flipnet"]).reason
    assert options["flipnet"][1] == flipnet_reason
    assert "restorer" in [o[0] for o in groups[0]["options"]]
    note = page.text_content("#method-note")
    assert "Faces are restored at 128 x 128 px by restorer." in note
    assert "Experimental" not in note

    page.select_option("#method", "flipnet")
    note = page.text_content("#method-note")
    assert note.startswith("Experimental: " + flipnet_reason[:40])
    assert "Faces are restored at 128 x 128 px by flipnet." in note
    assert page.get_attribute("#method-note", "data-status") == "experimental"
    page.select_option("#method", "bicubic")
    assert page.text_content("#method-note").startswith("Baseline (no model):")
    page.select_option("#method", "restorer")


def test_upload_restore_compare_download(page, astronaut, tmp_path):
    src = tmp_path / "astronaut.png"
    # a degraded photo: a sharp one is (by design) barely changed (faces.keep_detail)
    rng = np.random.default_rng(0)
    astronaut = np.clip(astronaut + rng.normal(0, 8, astronaut.shape), 0, 255).astype(np.uint8)
    Image.fromarray(astronaut).save(src)
    page.set_input_files("#file", str(src))
    page.select_option("#method", "restorer")
    page.click("#restore")
    page.wait_for_selector("body[data-state=done]", timeout=120_000)
    assert "1 face(s) restored" in page.text_content("#faces")
    assert page.evaluate("document.getElementById('after').naturalWidth") == 512

    # drag the comparison slider: the "before" layer is clipped at the pointer
    box = page.locator("#compare").bounding_box()
    page.mouse.move(box["x"] + box["width"] * 0.5, box["y"] + box["height"] / 2)
    page.mouse.down()
    page.mouse.move(box["x"] + box["width"] * 0.25, box["y"] + box["height"] / 2)
    page.mouse.up()
    split = int(page.input_value("#split"))
    assert 20 <= split <= 30
    assert f"{100 - split}%" in page.evaluate(
        "document.getElementById('before-clip').style.clipPath")

    if os.environ.get("FLIPNET_SCREENSHOT"):
        page.mouse.click(box["x"] + box["width"] * 0.5, box["y"] + box["height"] / 2)
        out = Path(os.environ["FLIPNET_SCREENSHOT"])
        out.parent.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(out), full_page=True)

    with page.expect_download() as download:
        page.click("#download")
    assert download.value.suggested_filename == "astronaut_restored.png"
    restored = np.asarray(Image.open(io.BytesIO(Path(download.value.path()).read_bytes())))
    assert restored.shape == astronaut.shape
    assert np.abs(restored.astype(int) - astronaut.astype(int)).mean() > 0.05


def test_non_image_shows_the_error_on_the_page(page, tmp_path):
    bad = tmp_path / "notes.txt"
    bad.write_text("not a photo")
    page.set_input_files("#file", str(bad))
    page.click("#restore")
    page.wait_for_selector("body[data-state=error]", timeout=30_000)
    message = page.text_content("#message")
    assert "notes.txt" in message and "not a recognised image format" in message
    assert "error" in page.get_attribute("#message", "class")
