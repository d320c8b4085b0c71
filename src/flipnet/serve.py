"""``flipnet serve``: a local web page (FastAPI + one static HTML page) for restoring photos.

Why FastAPI and not Gradio: a few hundred lines, no front-end bundle or CDN (works offline), and
the HTTP API is tested directly with httpx. Endpoints:

``GET /``              the page (``flipnet/web/index.html`` + ``app.js`` + ``style.css``)
``GET /api/methods``   ``{"methods": [{"name", "status", "reason", "face_size", "fidelity"}],
                       "default", "max_upload_mb"}``
``POST /api/restore``  multipart ``file`` (+ ``method``, ``fidelity``, ``aligned``, ``upscale``)
                       -> ``image/png``; headers ``X-Faces-Found``, ``X-Faces-Skipped``,
                       ``X-Seconds``, ``X-Method``, ``X-Method-Status``, ``X-Message``
                       ("no face found" when none)
``GET /healthz``       ``{"ok": true, "busy": n, "capacity": n}``

The page offers only what works. A method is ``ready`` when its weights folder's quality gate
passed (``gate.json``, ``flipnet.gate``), ``experimental`` otherwise (the gate's one-line reason
is shown), ``baseline`` when it needs no weights (input, bicubic, classical); a method whose
weights are missing is not listed. The page's default is the first ready method (``--method``
picks another). An experimental method still restores when chosen explicitly: it is grouped and
labelled as such on the page and its answers carry ``X-Method-Status: experimental``.

Errors are JSON ``{"error": message}``: 400 for bad input (naming the uploaded file), 413 for an
upload over the size limit, 503 ``"busy, try again"`` at once when ``workers + queue``
restorations are already admitted (never a hang), 500 for a server-side failure.
Restorations run in a thread pool of ``workers`` threads; each method is loaded once and cached.
"""

import asyncio
import io
import json
import logging
import os
import tempfile
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from flipnet.errors import FlipnetError, ImageReadError, WeightsError
from flipnet.pipelines.methods import SAMPLING_METHODS
from flipnet.pipelines.restore import FRAMINGS

WEB_DIR = Path(__file__).resolve().parent / "web"
# diffusion methods: the only ones that take ``fidelity``, ``steps`` and ``seed``
FIDELITY_METHODS = SAMPLING_METHODS
# of those, the ones whose ``restore(crops, *, fidelity=)`` takes it per call: one instance
# serves every fidelity (the others fix it when built, so the cache keys on it)
PER_CALL_FIDELITY = ("flipnet",)
# methods without weights, and what each does instead of restoring
BASELINES = {"input": "the photo as uploaded",
             "bicubic": "down x4 and bicubic back up (what a plain upscaler gives)",
             "classical": "OpenCV non-local means denoising + unsharp mask"}
BUSY_MESSAGE = "busy, try again"
MAX_UPSCALE = 4.0
_TRUE = {"1", "true", "on", "yes"}
log = logging.getLogger("flipnet.serve")


@dataclass(frozen=True)
class ServeConfig:
    """What ``flipnet serve`` runs with."""

    host: str = field(default="127.0.0.1", metadata={"help": "Address to bind (127.0.0.1 = this "
                                                             "machine only)."})
    port: int = field(default=7860, metadata={"help": "TCP port."})
    device: str = field(default="auto", metadata={"help": "auto, cpu, cuda or mps."})
    workers: int = field(default=1, metadata={"help": "Restorations run at the same time."})
    queue: int = field(default=4, metadata={"help": "Uploads that may wait for a worker; beyond "
                                                    "workers + queue the answer is 503 busy."})
    max_upload_mb: float = field(default=20.0, metadata={"help": "Largest upload accepted (MB)."})
    method: str = field(default="", metadata={
        "help": "Method selected on the page; empty = the first whose weights passed their "
                "quality gate."})
    steps: int = field(default=50, metadata={"help": "Sampling steps (diffusion methods)."})
    max_pixels: int = field(default=40_000_000, metadata={
        "help": "Largest photo accepted, in pixels, after upscaling."})


@dataclass(frozen=True)
class MethodInfo:
    """One method as the page lists it."""

    name: str
    status: str  # 'ready' | 'experimental' | 'baseline'
    reason: str  # one line: the quality gate's reason, or what a baseline does
    face_size: int | None  # side in px of the face crop the method restores (None: unknown)
    fidelity: bool = False  # has the fidelity knob

    def to_json(self) -> dict:
        """The entry of ``GET /api/methods``."""
        return {"name": self.name, "status": self.status, "reason": self.reason,
                "face_size": self.face_size, "fidelity": self.fidelity}


def weights_face_size(folder: str | os.PathLike) -> int | None:
    """The face size (px) a weights folder's model works at, from its ``config.json``:
    ``image_size`` (restorer), ``unet.image_size`` (prior) or its prior's (FLIPNET)."""
    try:
        cfg = json.loads((Path(folder) / "config.json").read_text(encoding="utf-8"))
        if "image_size" in cfg:
            return int(cfg["image_size"])
        if "unet" in cfg:  # a prior: pixels, or latents times the autoencoder's factor
            ae = Path(folder) / "autoencoder" / "config.json"
            if ae.is_file():
                return int(json.loads(ae.read_text(encoding="utf-8"))["image_size"])
            return int(cfg["unet"]["image_size"])
        if "prior" in cfg:  # FLIPNET samples at its prior's size
            from flipnet.models.flipnet import resolve_prior

            return weights_face_size(resolve_prior(Path(folder), cfg["prior"]))
    except (OSError, ValueError, KeyError, TypeError, FlipnetError):
        pass
    return None


def describe_methods(names: list[str] | None = None) -> list[MethodInfo]:
    """Status, reason and face size of each method (default: ``available_methods()``, those
    whose weights are found); weights are found as ``make_method`` finds them, not loaded."""
    from flipnet.gate import read_gate
    from flipnet.pipelines.methods import available_methods, make_method
    from flipnet.weights import DEFAULT_WEIGHTS, find_weights

    out = []
    for name in available_methods() if names is None else names:
        if name in BASELINES:
            size = getattr(make_method(name), "size", None)
            out.append(MethodInfo(name, "baseline", BASELINES[name], size))
            continue
        folder = find_weights(DEFAULT_WEIGHTS.get(name, name))
        if folder is None:
            continue  # nothing to load: not offered
        gate = read_gate(folder)
        out.append(MethodInfo(name, "ready" if gate.passed else "experimental", gate.reason,
                              weights_face_size(folder), name in FIDELITY_METHODS))
    return out


def default_method(methods: list[MethodInfo], wanted: str = "") -> str:
    """``wanted`` if given (it must be listed), else the first ready method, else the first
    baseline: an experimental method is the default only when named (or the only kind left)."""
    names = [m.name for m in methods]
    if not names:
        raise FlipnetError("no restoration method is available")
    if wanted:
        if wanted not in names:
            raise FlipnetError(f"method {wanted!r} is not available; choose from "
                               f"{', '.join(names)}")
        return wanted
    for status in ("ready", "baseline"):
        for m in methods:
            if m.status == status:
                return m.name
    return names[0]


class Capacity:
    """A thread-safe admission counter: at most ``limit`` requests admitted at once."""

    def __init__(self, limit: int):
        self.limit = limit
        self.in_use = 0
        self._lock = threading.Lock()

    def try_acquire(self) -> bool:
        """Admit one more request if below the limit; never blocks."""
        with self._lock:
            if self.in_use >= self.limit:
                return False
            self.in_use += 1
            return True

    def release(self) -> None:
        """One admitted request has finished."""
        with self._lock:
            self.in_use -= 1


class WithFidelity:
    """A shared method seen by one request: ``restore(crops)`` passes this request's fidelity
    (``method.restore(crops, fidelity=...)``); every other attribute is the method's."""

    def __init__(self, method, fidelity: float):
        self.method, self.fidelity = method, fidelity

    def restore(self, crops: np.ndarray) -> np.ndarray:
        """The shared method's ``restore`` at this request's fidelity."""
        return self.method.restore(crops, fidelity=self.fidelity)

    def __getattr__(self, name: str):
        return getattr(self.method, name)


class MethodCache:
    """Restoration methods built once and shared by all requests.

    ``PriorMethod`` fixes fidelity when built (its t0/tau schedule), so for it fidelity (rounded
    to 0.1) is part of the key. ``FlipNetMethod`` takes it per call (``PER_CALL_FIDELITY``): one
    instance per name, handed to each request wrapped with that request's fidelity. Bounded
    (least recently used entries dropped) so that many fidelity values cannot grow memory; the
    lock makes concurrent first requests build a method only once.
    """

    def __init__(self, factory: Callable[[str, float], object], *, max_entries: int = 4):
        self.factory = factory
        self.max_entries = max_entries
        self._items: OrderedDict[tuple, object] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, name: str, fidelity: float = 0.5):
        """The method ``name`` (fidelity rounded to 0.1 where the method has that knob)."""
        fid = round(float(fidelity), 1) if name in FIDELITY_METHODS else 0.5
        per_call = name in PER_CALL_FIDELITY
        key = (name, None) if per_call else (name, fid)
        with self._lock:
            if key not in self._items:
                self._items[key] = self.factory(name, 0.5 if per_call else fid)
                while len(self._items) > self.max_entries:
                    self._items.popitem(last=False)
            self._items.move_to_end(key)
            method = self._items[key]
        return WithFidelity(method, fid) if per_call else method


def default_method_factory(cfg: ServeConfig) -> Callable[[str, float], object]:
    """``(name, fidelity) -> FaceMethod`` through ``flipnet.pipelines.methods.make_method``;
    ``fidelity``, ``steps`` and ``seed`` go only to the methods that use them."""
    from flipnet.pipelines.methods import make_method

    def make(name: str, fidelity: float):
        if name in FIDELITY_METHODS:
            return make_method(name, None, device=cfg.device, fidelity=fidelity,
                               steps=cfg.steps, seed=0)
        return make_method(name, None, device=cfg.device)

    return make


def decode_upload(data: bytes, filename: str, *, max_pixels: int) -> "LoadedImage":  # noqa: F821
    """Decode uploaded bytes with ``flipnet.io.load_image``; errors name the uploaded file."""
    from flipnet.io import load_image

    if not data:
        raise ImageReadError(filename, "file is empty (0 bytes)")
    fd, tmp = tempfile.mkstemp(prefix="flipnet-upload-", suffix=".bin")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        try:
            return load_image(tmp, max_pixels=max_pixels)
        except ImageReadError as e:
            raise ImageReadError(filename, e.problem) from None
    finally:
        os.unlink(tmp)


def encode_png(rgb: np.ndarray, alpha: np.ndarray | None = None) -> bytes:
    """uint8 (H, W, 3) RGB (+ (H, W) alpha) -> PNG bytes."""
    from PIL import Image

    im = Image.fromarray(rgb, "RGB") if alpha is None else \
        Image.fromarray(np.dstack([rgb, alpha]), "RGBA")
    buf = io.BytesIO()
    im.save(buf, format="PNG", compress_level=3)
    return buf.getvalue()


def restore_upload(data: bytes, filename: str, method, *, aligned: bool = False,
                   framing: str = "ffhq", upscale: float = 1.0,
                   max_pixels: int = 40_000_000) -> tuple[bytes, dict]:
    """Decode an upload, restore every face (``restore_photo``) and return (PNG bytes, info);
    ``aligned`` uploads are crops framed as ``framing`` (ffhq | flipnet)."""
    from flipnet.pipelines.restore import restore_photo

    t0 = time.perf_counter()
    img = decode_upload(data, filename, max_pixels=max_pixels)
    h, w = img.rgb.shape[:2]
    if h * w * upscale * upscale > max_pixels:
        raise ImageReadError(filename, f"{w}x{h} upscaled x{upscale:g} is over the limit of "
                                       f"{max_pixels:,} pixels")
    res = restore_photo(img.rgb, method, aligned=aligned, framing=framing, upscale=upscale,
                        is_gray=img.is_gray, alpha=img.alpha)
    png = encode_png(res.image, res.alpha)
    found = sum(f.restored is not None for f in res.faces)
    skipped = [f.skipped for f in res.faces if f.skipped]
    message = "no face found" if not res.faces else (
        f"{found} face(s) restored" + (f", {len(skipped)} too small" if skipped else ""))
    return png, {"faces": found, "skipped": len(skipped), "message": message,
                 "seconds": round(time.perf_counter() - t0, 3),
                 "size": [int(res.image.shape[1]), int(res.image.shape[0])]}


class BodyLimit:
    """ASGI middleware: a request body over ``max_mb`` (plus 64 KiB for the form's other fields)
    gets 413 with a JSON message.

    Checks ``Content-Length`` first and otherwise counts streamed bytes; the rest of an oversize
    body is read and discarded (up to ``drain_factor`` times the limit) so the client sees the
    answer instead of a reset connection.
    """

    def __init__(self, app, *, max_mb: float, drain_factor: int = 8):
        self.app, self.max_mb, self.drain_factor = app, max_mb, drain_factor
        self.max_bytes = int(max_mb * 2**20) + 64 * 1024

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            await self._drain(receive, 0)
            return await self._reject(send)
        seen = 0
        started = False

        async def counting_receive():
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    if message.get("more_body"):
                        await self._drain(receive, seen)
                    raise _TooLarge
            return message

        async def tracking_send(message):
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counting_receive, tracking_send)
        except _TooLarge:
            if not started:
                await self._reject(send)

    async def _drain(self, receive, seen: int) -> None:
        while seen <= self.max_bytes * self.drain_factor:
            message = await receive()
            seen += len(message.get("body", b""))
            if message["type"] != "http.request" or not message.get("more_body"):
                return

    async def _reject(self, send) -> None:
        from starlette.responses import JSONResponse

        resp = JSONResponse({"error": f"upload is over the size limit of {self.max_mb:g} MB"}, 413,
                            headers={"Connection": "close"})
        await resp({"type": "http"}, None, send)


class _TooLarge(Exception):
    pass


def _parse_float(form, key: str, default: float, lo: float, hi: float) -> float:
    raw = form.get(key)
    if raw is None or raw == "":
        return default
    try:
        value = float(raw)
    except (TypeError, ValueError):
        raise FlipnetError(f"{key} must be a number, got {raw!r}") from None
    if not lo <= value <= hi:
        raise FlipnetError(f"{key} must be in [{lo:g}, {hi:g}], got {value:g}")
    return value


def create_app(cfg: ServeConfig | None = None, *, method_factory: Callable | None = None,
               methods: list[MethodInfo] | None = None):
    """The FastAPI app; ``method_factory(name, fidelity)`` and ``methods`` replace the shipped
    methods and their descriptions (tests inject a slow fake)."""
    from contextlib import asynccontextmanager

    from fastapi import FastAPI, Request
    from fastapi.responses import FileResponse, JSONResponse, Response
    from fastapi.staticfiles import StaticFiles
    from starlette.datastructures import UploadFile

    cfg = cfg or ServeConfig()
    if cfg.workers < 1 or cfg.queue < 0:
        raise FlipnetError(f"workers must be >= 1 and queue >= 0, got {cfg.workers}, {cfg.queue}")
    catalog = {m.name: m for m in (describe_methods() if methods is None else methods)}
    method_names = list(catalog)
    default = default_method(list(catalog.values()), cfg.method)
    cache = MethodCache(method_factory or default_method_factory(cfg))
    capacity = Capacity(cfg.workers + cfg.queue)
    pool = ThreadPoolExecutor(max_workers=cfg.workers, thread_name_prefix="flipnet-restore")

    @asynccontextmanager
    async def lifespan(app):
        yield
        pool.shutdown(wait=False, cancel_futures=True)

    app = FastAPI(title="flipnet", docs_url=None, redoc_url=None, lifespan=lifespan)
    app.add_middleware(BodyLimit, max_mb=cfg.max_upload_mb)
    app.mount("/static", StaticFiles(directory=WEB_DIR), name="static")
    app.state.capacity, app.state.methods, app.state.pool = capacity, cache, pool
    app.state.catalog, app.state.default = catalog, default

    def error(status: int, message: str) -> JSONResponse:
        return JSONResponse({"error": message}, status_code=status)

    @app.get("/")
    async def index():
        return FileResponse(WEB_DIR / "index.html", media_type="text/html")

    @app.get("/healthz")
    async def healthz():
        return {"ok": True, "busy": capacity.in_use, "capacity": capacity.limit}

    @app.get("/api/methods")
    async def list_methods():
        return {"methods": [m.to_json() for m in catalog.values()], "default": default,
                "max_upload_mb": cfg.max_upload_mb}

    def job(data: bytes, filename: str, name: str, fidelity: float, aligned: bool,
            framing: str, upscale: float) -> tuple[bytes, dict]:
        method = cache.get(name, fidelity)
        return restore_upload(data, filename, method, aligned=aligned, framing=framing,
                              upscale=upscale, max_pixels=cfg.max_pixels)

    @app.post("/api/restore")
    async def restore(request: Request):
        # admission first, so a busy server answers at once without parsing the upload
        if not capacity.try_acquire():
            async for _ in request.stream():  # read (and drop) the body: no reset connection
                pass
            return JSONResponse({"error": BUSY_MESSAGE}, 503, headers={"Retry-After": "1"})
        submitted = False
        filename = "upload"
        try:
            form = await request.form(max_files=1, max_fields=8)
            upload = form.get("file")
            if not isinstance(upload, UploadFile):
                return error(400, "no file uploaded (multipart field 'file')")
            filename = os.path.basename(upload.filename or "upload")
            name = str(form.get("method") or default)
            if name not in method_names:
                return error(400, f"unknown method {name!r}; choose from {', '.join(method_names)}")
            fidelity = _parse_float(form, "fidelity", 0.5, 0.0, 1.0)
            upscale = _parse_float(form, "upscale", 1.0, 1.0, MAX_UPSCALE)
            aligned = str(form.get("aligned", "")).lower() in _TRUE
            framing = str(form.get("framing") or "ffhq")
            if framing not in FRAMINGS:
                return error(400, f"unknown framing {framing!r}; choose from "
                                  f"{', '.join(FRAMINGS)}")
            data = await upload.read()
            await form.close()
            # the worker releases the slot when the restoration really ends (even if the client
            # went away), so no more than workers + queue restorations are ever pending
            future = pool.submit(job, data, filename, name, fidelity, aligned, framing, upscale)
            submitted = True
            future.add_done_callback(lambda _: capacity.release())
            png, info = await asyncio.wrap_future(future)
        except WeightsError as e:
            return error(500, str(e))
        except FlipnetError as e:
            return error(400, str(e))
        except Exception as e:  # a bug: log it, answer with a message instead of a traceback
            if isinstance(e, _TooLarge):
                raise
            log.exception("restoring %s failed", filename)
            return error(500, f"{filename}: restoration failed ({type(e).__name__}: {e})")
        finally:
            if not submitted:
                capacity.release()
        stem = Path(filename).stem or "photo"
        return Response(png, media_type="image/png", headers={
            "X-Faces-Found": str(info["faces"]), "X-Faces-Skipped": str(info["skipped"]),
            "X-Message": info["message"], "X-Seconds": str(info["seconds"]), "X-Method": name,
            "X-Method-Status": catalog[name].status,
            "Content-Disposition": f'inline; filename="{_safe(stem)}_restored.png"'})

    return app


def _safe(stem: str) -> str:
    """A file name safe inside a header: ASCII letters, digits, '-', '_' and '.'."""
    return "".join(c if c.isascii() and (c.isalnum() or c in "-_.") else "_" for c in stem)[:80]


def run_server(cfg: ServeConfig | None = None) -> None:
    """Serve the page with uvicorn until interrupted (the ``flipnet serve`` command)."""
    import uvicorn

    from flipnet.device import resolve_device

    cfg = cfg or ServeConfig()
    resolve_device(cfg.device)  # a bad --device fails now, not at the first upload
    app = create_app(cfg)
    print(f"flipnet serve: http://{cfg.host}:{cfg.port}/  (workers {cfg.workers}, queue "
          f"{cfg.queue}, max upload {cfg.max_upload_mb:g} MB; Ctrl+C to stop)", flush=True)
    for m in app.state.catalog.values():
        size = f"{m.face_size} px" if m.face_size else "size unknown"
        mark = " (default)" if m.name == app.state.default else ""
        print(f"  {m.name:<10} {m.status:<12} {size:<7} {m.reason}{mark}", flush=True)
    uvicorn.run(app, host=cfg.host, port=cfg.port, log_level="warning", timeout_keep_alive=5)
