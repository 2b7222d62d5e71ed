"""Build the static page that decodes in the visitor's browser (onnxruntime-web, WebAssembly), and serve it.

    vae-export web artifacts/mlp --out site --serve

The site is self-contained: the page (vae_export/web/), the decoder and its decoder.json sidecar, and the
three onnxruntime-web files the page imports. Those come from npm, pinned by the repo's
package-lock.json: from `node_modules/` after `npm ci` in a checkout, else `npm ci` into a cache folder
on first use. Torch-free: numpy, onnxruntime and the standard library.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Callable

from .errors import ArtifactError, UsageError, VaeExportError, first_line
from .files import OwnedDir, check_writable, write_json
from .latents import manifold_latents
from .provenance import same_model
from .runtime import Decoder

TEMPLATE = Path(__file__).with_name("web")
PAGE = ("index.html", "page.mjs", "decoder.mjs", "style.css")
NPM_PROJECT = TEMPLATE / "npm"           # package.json + package-lock.json (links to the repo root's ones)
ORT_FILES = ("ort.wasm.min.mjs", "ort-wasm-simd-threaded.mjs", "ort-wasm-simd-threaded.wasm")
VARIANTS = (("decoder.onnx", "fp32"), ("decoder.int8.onnx", "int8"))   # what the page can switch between
SITE_MARK = "site.json"                  # what the page reads about the site (models, runtime version)
PRODUCER = "vae-export web"


@dataclass
class Site:
    path: Path
    models: list[str]
    ort_version: str
    bytes: int


def build_site(export_dir: str | os.PathLike, out_dir: str | os.PathLike, ort_dist: Path | None = None) -> Site:
    """Write the site for the decoder in export_dir into out_dir, whole or not at all."""
    export_dir, out_dir = Path(export_dir), Path(out_dir)
    meta = _checked_export(export_dir)
    models = [name for name, _ in VARIANTS if (export_dir / name).is_file()]
    for name in models[1:]:
        _checked_decoder(export_dir / name, meta)
    if out_dir.resolve() == export_dir.resolve():
        raise UsageError(f"--out {out_dir} is the export folder {export_dir}; choose another folder for the site")
    names = [*PAGE, "decoder.json", *models, *(f"ort/{name}" for name in ORT_FILES), SITE_MARK]
    folder = OwnedDir(check_writable(out_dir, folder=True), PRODUCER)
    folder.check(names)                   # before fetching anything: a file of the user's where ours would go
    ort_dist = ort_dist or onnxruntime_web()
    with folder.rebuild() as stage:       # only the files the ledger lists as ours are replaced or removed
        for name in PAGE:
            shutil.copyfile(TEMPLATE / name, stage / name)
        for name in ("decoder.json", *models):
            shutil.copyfile(export_dir / name, stage / name)
        (stage / "ort").mkdir()
        for name in ORT_FILES:
            shutil.copyfile(ort_dist / name, stage / "ort" / name)
        site = {"producer": PRODUCER, "onnxruntime_web": _version(ort_dist.parent),
                "models": [{"file": name, "label": label} for name, label in VARIANTS if name in models]}
        if meta["latent_dim"] == 2:       # the page lays the manifold out on the same quantiles as Python
            site["manifold"] = {"quantiles": [float(q) for q in manifold_latents()[:30, 0]]}
        write_json(stage / SITE_MARK, site)
        size = sum(p.stat().st_size for p in stage.rglob("*") if p.is_file())
    return Site(out_dir, models, site["onnxruntime_web"], size)


def _checked_export(export_dir: Path) -> dict:
    """The sidecar of export_dir's decoder, after checking the decoder is one and the sidecar describes it."""
    missing = [n for n in ("decoder.onnx", "decoder.json") if not (export_dir / n).is_file()]
    if missing:
        raise ArtifactError(f"{export_dir}: no {' or '.join(missing)}; expected a folder written by `vae-export onnx`")
    try:
        meta = json.loads((export_dir / "decoder.json").read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise ArtifactError(f"{export_dir / 'decoder.json'} is not JSON") from None
    if not isinstance(meta, dict) or meta.get("producer") != "vae-export" or meta.get("role") != "decoder":
        raise ArtifactError(f"{export_dir / 'decoder.json'} is not the sidecar of a vae-export decoder")
    _checked_decoder(export_dir / "decoder.onnx", meta)
    return meta


def _checked_decoder(path: Path, meta: dict) -> None:
    """A decoder of the model decoder.json describes: same checkpoint, same shapes (the page switches
    between the variants and labels them with the sidecar's facts)."""
    decoder = Decoder(path, threads=1)    # refuses an encoder, or any other model, in the decoder's place
    same_model([(path.with_name("decoder.json"), meta), (path, decoder.metadata)],
               "the page would show one model's facts over another's pictures")


def onnxruntime_web() -> Path:
    """onnxruntime-web's dist/ folder at the version package-lock.json pins: from the checkout's
    node_modules (`npm ci`), else from a cache folder that `npm ci` fills on first use."""
    lock = NPM_PROJECT / "package-lock.json"
    pinned = json.loads(lock.read_text())["packages"]["node_modules/onnxruntime-web"]["version"]
    cache = _cache_dir() / f"npm-{hashlib.sha256(lock.read_bytes()).hexdigest()[:16]}"
    for root in (lock.resolve().parent, cache):
        package = root / "node_modules" / "onnxruntime-web"
        if _version(package) == pinned:
            return package / "dist"
    _npm_ci(cache)
    return cache / "node_modules" / "onnxruntime-web" / "dist"


def _npm_ci(cache: Path) -> None:
    npm = shutil.which("npm")
    if npm is None:
        raise VaeExportError("vae-export web needs npm once, to fetch onnxruntime-web: install Node.js "
                             "(e.g. `apt-get install npm`), or run `npm ci` in a checkout of vae-export")
    cache.parent.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=f".{cache.name}.", dir=cache.parent))
    try:
        for name in ("package.json", "package-lock.json"):
            shutil.copyfile(NPM_PROJECT / name, stage / name)
        done = subprocess.run([npm, "ci", "--omit=dev", "--ignore-scripts", "--no-audit", "--no-fund"],
                              cwd=stage, capture_output=True, text=True)
        if done.returncode != 0:
            raise VaeExportError(f"npm ci (onnxruntime-web, into {cache}) failed: {first_line(done.stderr or done.stdout)}")
        os.replace(stage, cache)
    finally:
        shutil.rmtree(stage, ignore_errors=True)


def _cache_dir() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "vae-export"


def _version(package: Path) -> str | None:
    try:
        return json.loads((package / "package.json").read_text())["version"]
    except (OSError, ValueError, KeyError):
        return None


class SiteHandler(SimpleHTTPRequestHandler):
    """Static files with the MIME types wasm needs (browsers refuse to stream-compile anything but
    application/wasm), never cached, so a rebuilt site shows at once."""

    extensions_map = {**SimpleHTTPRequestHandler.extensions_map, ".wasm": "application/wasm",
                      ".mjs": "text/javascript", ".onnx": "application/octet-stream", ".json": "application/json"}

    def end_headers(self) -> None:
        self.send_header("Cache-Control", "no-store")
        super().end_headers()


def listen(site: str | os.PathLike, port: int) -> ThreadingHTTPServer:
    """A server for `site` bound to 127.0.0.1:port (0: any free port), opened before the site is built,
    so that a taken port is refused before anything is written."""
    handler = functools.partial(SiteHandler, directory=str(site))
    try:
        return ThreadingHTTPServer(("127.0.0.1", port), handler)
    except OSError as e:
        raise UsageError(f"--port {port}: {e.strerror or e}") from None


def serve(server: ThreadingHTTPServer, ready: Callable[[str], None]) -> None:
    """Serve until a signal; Ctrl-C and SIGTERM propagate (KeyboardInterrupt), so the command exits 130/143."""
    with server:
        ready(f"http://127.0.0.1:{server.server_port}/")
        server.serve_forever()
