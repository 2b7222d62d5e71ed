"""vae-export web: in real headless Chromium the page decodes exactly what Python's runtime decodes,
so does the Node example, and bad export folders are refused without leaving a half-built site."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from vae_export import web
from vae_export.checkpoint import load_model
from vae_export.cli import app
from vae_export.errors import VaeExportError
from vae_export.export import export_decoder_variants, export_onnx
from vae_export.latents import manifold_latents
from vae_export.runtime import Decoder

REPO = Path(__file__).resolve().parents[1]
CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
runner = CliRunner()


def need(*things: str) -> None:
    """Skip when a tool beyond pip is missing (`apt-get install chromium nodejs npm`, `npm ci`); fail in CI."""
    have = {"node": shutil.which("node"), "chromium": Path(CHROMIUM).is_file(),
            "npm ci": all((REPO / "node_modules" / p).is_dir() for p in ("onnxruntime-web", "playwright-core"))}
    missing = [t for t in things if not have[t]]
    if missing:
        message = f"needs {', '.join(missing)} (.ci/run installs them: apt-get install -y chromium; npm ci)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)


@pytest.fixture(scope="module")
def exports(trained, tmp_path_factory):
    """{preset: export folder}: mlp with its int8 variant, and conv (the 2-D latent)."""
    folders = {}
    for preset in ("mlp", "conv"):
        model, state = load_model(trained(preset))
        folders[preset] = tmp_path_factory.mktemp(f"web-{preset}")
        export_onnx(model, state, "test", folders[preset])
    export_decoder_variants(folders["mlp"], int8=True)
    return folders


@contextlib.contextmanager
def served(export_dir: Path, site: Path):
    """`vae-export web EXPORT --out SITE --serve --port 0` as a real process; yields its URL; Ctrl-C stops it."""
    log = open(site.parent / f"{site.name}-server.log", "w")
    server = subprocess.Popen([sys.executable, "-m", "vae_export", "web", str(export_dir), "--out", str(site), "--serve",
                               "--port", "0"], stdout=subprocess.PIPE, stderr=log, text=True)
    try:
        url = next((line.strip() for line in server.stdout if line.startswith("http://")), None)
        assert url, f"the server printed no URL: {(site.parent / f'{site.name}-server.log').read_text()}"
        yield url
    finally:
        server.send_signal(signal.SIGINT)
        assert server.wait(timeout=20) == 130                       # Ctrl-C: 128 + SIGINT, as shells report it
        log.close()


def assert_decodes_like_python(decoder: Decoder, latents, pixels, canvas=None, atol=1e-5) -> None:
    z = np.asarray(latents, np.float32).reshape(-1, decoder.latent_dim)
    ref = decoder.decode(z)
    got = np.asarray(pixels, np.float32).reshape(ref.shape)
    assert np.abs(got - ref).max() <= atol
    if canvas is not None:         # what was drawn: 8-bit values, tiles in a square grid
        cols, (h, w) = int(np.sqrt(len(z))), decoder.image_shape[1:]
        drawn = np.reshape(canvas, (cols, h, cols, w)).transpose(0, 2, 1, 3).reshape(len(z), h, w)
        assert np.abs(drawn - np.rint(ref[:, 0] * 255)).max() <= 1


@pytest.mark.parametrize("preset", ["mlp", "conv"])
def test_page_in_chromium_decodes_what_python_decodes(exports, preset, tmp_path):
    need("node", "chromium", "npm ci")
    with served(exports[preset], tmp_path / "site") as url:
        wasm = urllib.request.urlopen(urllib.request.Request(f"{url}ort/ort-wasm-simd-threaded.wasm", method="HEAD"))
        assert wasm.headers["Content-Type"] == "application/wasm"    # else browsers refuse to stream-compile it
        subprocess.run(["node", str(REPO / "tests" / "drive_page.mjs"), url, str(tmp_path)], check=True, timeout=120)
    page = json.loads((tmp_path / "page.json").read_text())
    decoder = Decoder(exports[preset] / "decoder.onnx")
    dim = decoder.latent_dim

    assert page["problems"] == []                                    # no errors, nothing fetched from elsewhere
    for when in ("loaded", "sampled"):                               # the 8x8 grid, on load and after "Sample"
        grid = page[when]["grid"]
        assert len(grid["latents"]) == 64 * dim
        assert_decodes_like_python(decoder, grid["latents"], grid["pixels"], grid["canvas"])
    assert page["loaded"]["grid"]["latents"] != page["sampled"]["grid"]["latents"]
    single = page["sampled"]["single"]                               # the first slider moved to 1.5
    assert single["latent"] == [1.5] + [0.0] * (dim - 1)
    assert_decodes_like_python(decoder, single["latent"], single["pixels"], single["canvas"])
    assert page["phone"]["scrollWidth"] <= page["phone"]["width"]    # nothing sticks out on a 390 px phone
    print(f"\n{preset}: screenshots {tmp_path}/desktop.png, phone.png; grid of 64 decoded in "
          f"{np.median(page['timings']['grid']):.1f} ms (median of 10) in Chromium")

    if preset == "conv":                                             # the 30x30 manifold and the latent plane
        manifold = page["loaded"]["manifold"]
        np.testing.assert_allclose(np.reshape(manifold["latents"], (-1, 2)), manifold_latents(), atol=1e-6)
        assert_decodes_like_python(decoder, manifold["latents"], manifold["pixels"])
        tile = page["tile"]                                          # a click on tile (7, 7) decodes its latent
        np.testing.assert_allclose(tile["latent"], manifold_latents()[7 * 30 + 7], atol=0.02)
        assert_decodes_like_python(decoder, tile["latent"], tile["pixels"], tile["canvas"])
        dragged = page["dragged"]                                    # a drag on the plane walks away from it
        assert np.abs(np.subtract(dragged["latent"], tile["latent"])).max() > 0.5
        assert_decodes_like_python(decoder, dragged["latent"], dragged["pixels"], dragged["canvas"])
    else:                                                            # the int8 model, selected on the page
        int8 = page["variant"]
        assert int8["variant"] == "decoder.int8.onnx"
        assert int8["grid"]["latents"] == page["sampled"]["grid"]["latents"]
        # int8 runs other kernels in wasm than natively (VNNI/AMX): a requantized hidden activation may
        # round one step apart, which moves a pixel by ~1e-4 (1.6e-4 seen); fp32 above is held to 1e-5
        assert_decodes_like_python(Decoder(exports[preset] / "decoder.int8.onnx"), int8["grid"]["latents"],
                                   int8["grid"]["pixels"], atol=1e-3)


def test_node_example_decodes_what_python_decodes(exports, tmp_path):
    need("node", "npm ci")
    done = subprocess.run(["node", str(REPO / "examples" / "node" / "decode.mjs"), str(exports["mlp"]),
                           str(tmp_path / "pixels.f32")], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    z = ((np.arange(20) % 5 - 2) / 2).astype(np.float32)[None]      # the example's latent
    ref = Decoder(exports["mlp"] / "decoder.onnx").decode(z)
    assert np.abs(np.fromfile(tmp_path / "pixels.f32", np.float32) - ref.ravel()).max() <= 1e-5
    printed = float(done.stdout.split()[1])                          # "mean 0.37788151 over 784 pixels ..."
    assert done.stdout.startswith("mean ") and abs(printed - float(ref.mean())) <= 1e-6, done.stdout


def test_web_refuses_bad_export_folders_and_keeps_the_old_site(exports, tmp_path):
    old_site = tmp_path / "site"
    old_site.mkdir()
    (old_site / "site.json").write_text("{}")                        # the user's file: kept by every refusal
    (tmp_path / "empty").mkdir()
    with_encoder = tmp_path / "encoder-in-place"
    with_encoder.mkdir()
    shutil.copyfile(exports["mlp"] / "encoder.onnx", with_encoder / "decoder.onnx")
    shutil.copyfile(exports["mlp"] / "decoder.json", with_encoder / "decoder.json")
    for folder, why in [(tmp_path / "empty", "no decoder.onnx or decoder.json"), (with_encoder, "not a vae-export decoder")]:
        result = runner.invoke(app, ["web", str(folder), "--out", str(old_site)])
        assert result.exit_code == 1 and why in result.output and len(result.output.strip().splitlines()) == 1, result.output
    stranger = tmp_path / "photos"
    stranger.mkdir()
    (stranger / "cat.jpg").write_bytes(b"meow")
    result = runner.invoke(app, ["web", str(exports["mlp"]), "--out", str(exports["mlp"])])   # never into the export
    assert result.exit_code == 2 and "choose another folder" in result.output, result.output
    with pytest.raises(OSError):                                     # a build that fails half-way changes nothing
        web.build_site(exports["mlp"], stranger, ort_dist=tmp_path / "empty")
    assert [p.name for p in old_site.iterdir()] == ["site.json"] and [p.name for p in stranger.iterdir()] == ["cat.jpg"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty", "encoder-in-place", "photos", "site"]


def test_web_builds_without_torch_and_says_when_npm_is_missing(exports, tmp_path, monkeypatch):
    need("npm ci")
    (tmp_path / "blocker").mkdir()
    (tmp_path / "blocker" / "torch.py").write_text("raise ImportError('torch is blocked in this test')\n")
    env = {"PYTHONPATH": f"{tmp_path / 'blocker'}:{REPO}", "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}
    done = subprocess.run([sys.executable, "-m", "vae_export", "web", str(exports["conv"]), "--out", str(tmp_path / "site")],
                          capture_output=True, text=True, env=env)
    assert done.returncode == 0, done.stderr
    files = sorted(str(p.relative_to(tmp_path / "site")) for p in (tmp_path / "site").rglob("*"))
    assert files == [".vae-export-files.json", "decoder.json", "decoder.mjs", "decoder.onnx", "index.html", "ort", "ort/ort-wasm-simd-threaded.mjs",
                     "ort/ort-wasm-simd-threaded.wasm", "ort/ort.wasm.min.mjs", "page.mjs", "site.json", "style.css"]
    monkeypatch.setenv("PATH", str(tmp_path))                        # first use from a wheel, on a machine without npm
    with pytest.raises(VaeExportError, match="needs npm once"):
        web._npm_ci(tmp_path / "cache")
