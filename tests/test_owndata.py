"""Your own images through the whole pipeline, on data the tests make: a folder of coloured shapes
(32x32 RGB, PNG and JPEG in subfolders) and a non-square grey array (N, 48, 40). Train a little, export,
prove parity on the real test images, sample and encode through the torch-free runtime, write colour
grids; and refuse bad input with one line, exit 1 or 2, and nothing written."""

import dataclasses
import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from vae_export.training.data import SPLIT_SEED, load_dataset
from vae_export.training.train import TrainSettings, train
from vae_export import runtime
from vae_export.checkpoint import load_checkpoint, load_model
from vae_export.cli import app
from vae_export.config import make_config
from vae_export.errors import VaeExportError
from vae_export.export import export_onnx
from vae_export.parity import check_parity, real_images
from vae_export.sampling import grid, save_png_grid

runner = CliRunner()


def run(*args):
    return runner.invoke(app, [str(a) for a in args])


def _example(name):
    spec = importlib.util.spec_from_file_location(name, Path(__file__).resolve().parents[1] / "examples" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


shapes = _example("make_shapes").make_shapes       # coloured shapes, PNG and JPEG, in two subfolders


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return shapes(tmp_path_factory.mktemp("shapes"))


def test_colour_folder_trains_exports_and_samples_in_colour(folder, tmp_path):
    spec = f"folder:{folder}"
    result = run("train", "--dataset", spec, "--preset", "conv", "--epochs", 1, "--batch-size", 32, "--out", tmp_path / "run")
    assert result.exit_code == 0, result.output
    assert "300 images; 270 train / 30 test, 32x32 RGB" in result.stderr
    state = load_checkpoint(tmp_path / "run" / "checkpoint.pt")
    assert state["config"]["image_shape"] == (3, 32, 32)
    split = dict(state["data"]["split"])
    assert len(split.pop("sha256")) == 64                 # the files' content (test_provenance.py)
    assert split == {"source": "split", "seed": SPLIT_SEED, "test_fraction": 0.1, "images": 300, "train": 270, "test": 30}
    assert {Image.open(tmp_path / "run" / f).mode for f in ("samples.png", "reconstruction.png", "manifold.png")} == {"RGB"}

    result = run("onnx", tmp_path / "run" / "checkpoint.pt", "--out", tmp_path / "export")
    assert result.exit_code == 0, result.output
    assert "folder" in result.stdout and "random inputs only" not in result.stderr  # parity ran on the folder's test images
    meta = json.loads((tmp_path / "export" / "decoder.json").read_text())
    assert meta["image_shape"] == [3, 32, 32] and meta["channels"] == 3 and meta["image_size"] == [32, 32]
    assert meta["value_range"] == [0.0, 1.0] and meta["dataset"] == spec and "270 train / 30 test" in meta["dataset_description"]

    decoder = runtime.Decoder(tmp_path / "export" / "decoder.onnx")
    images = decoder.sample(10, seed=1)
    assert images.shape == (10, 3, 32, 32) and images.dtype == np.float32
    mu, _ = runtime.Encoder(tmp_path / "export" / "encoder.onnx").encode(images)
    assert mu.shape == (10, 2)
    result = run("sample", "--model", tmp_path / "export" / "decoder.onnx", "-n", 16, "--out", tmp_path / "grid.png")
    assert result.exit_code == 0, result.output
    png = Image.open(tmp_path / "grid.png")
    assert png.mode == "RGB" and png.size == (4 * 34 + 2, 4 * 34 + 2)
    result = run("sample", "--model", tmp_path / "export" / "decoder.onnx", "-n", 5, "--out", tmp_path / "x.npy")
    assert result.exit_code == 0 and np.load(tmp_path / "x.npy").shape == (5, 3, 32, 32)


def test_non_square_grey_array_through_the_pipeline(tmp_path):
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:48, :40]
    blobs = [(np.hypot(yy - cy, xx - cx) < r) for cy, cx, r in rng.uniform((10, 10, 4), (38, 30, 10), (240, 3))]
    np.save(tmp_path / "blobs.npy", (np.array(blobs) * 255).astype(np.uint8))             # (240, 48, 40) uint8
    settings = TrainSettings(epochs=1, batch_size=32, dataset=f"npy:{tmp_path / 'blobs.npy'}", test_fraction=0.25)
    for preset in ("mlp-small", "conv-large"):
        train(make_config(preset), settings, tmp_path / preset)
        model, state = load_model(tmp_path / preset / "checkpoint.pt")
        assert model.config.image_shape == (1, 48, 40) and state["data"]["split"]["test"] == 60
        assert model.decoder(torch.zeros(2, model.config.latent_dim)).shape == (2, 1, 48, 40)
    assert model.config.conv_strides == (2, 2, 1, 1) and model.config.latent_dim == 8 * 12 * 10   # a 12x10 grid latent
    images = real_images(state["settings"], shape=model.config.image_shape)
    assert images.shape == (60, 1, 48, 40)
    written = export_onnx(model, state, "sha", tmp_path / "export")
    rows = check_parity(model, [w.path for w in written], images=images, images_name="npy")
    assert all(r.passed for r in rows) and {r.inputs for r in rows} == {"random", "npy"}
    samples = runtime.Decoder(tmp_path / "export" / "decoder.onnx").sample(7)
    assert samples.shape == (7, 1, 48, 40)
    save_png_grid(samples, tmp_path / "grey.png", nrow=7)
    png = Image.open(tmp_path / "grey.png")
    assert png.mode == "L" and png.size == (7 * 42 + 2, 48 + 4)


def test_colour_grid_places_every_channel():
    images = np.zeros((2, 3, 2, 2), np.float32)
    images[0, 0] = 1.0                       # first image red
    images[1, 2] = 0.5                       # second image half blue
    g = grid(images, nrow=2, padding=1)
    assert g.shape == (4, 7, 3)
    assert (g[1:3, 1:3] == [255, 0, 0]).all() and (g[1:3, 4:6] == [0, 0, 128]).all() and (g[0] == 0).all()


def test_conversions_and_deterministic_split(folder):
    a = load_dataset(f"folder:{folder}", folder, image_size=(16, 24), channels=1, test_fraction=0.2)
    b = load_dataset(f"folder:{folder}", folder, image_size=(16, 24), channels=1, test_fraction=0.2)
    assert a.train.shape == (240, 1, 16, 24) and a.test.shape == (60, 1, 16, 24)
    assert torch.equal(a.test, b.test)                                   # the same split every time


def write_header_only_npy(path, shape):
    with open(path, "wb") as f:
        np.lib.format.write_array_header_1_0(f, {"descr": "|u1", "fortran_order": False, "shape": shape})


@pytest.mark.parametrize("case", ["empty", "corrupt", "mixed", "too-big", "bad-shape", "bad-header", "out-of-range",
                                  "unknown", "bad-size", "bad-channels", "odd-size-conv"])
def test_bad_input_is_refused_in_one_line(folder, tmp_path, case):
    data = tmp_path / "data"
    data.mkdir()
    args = []
    if case == "empty":
        (data / "notes.txt").write_text("no images here")
        spec, code, words = f"folder:{data}", 1, "no images"
    elif case == "corrupt":
        shapes(data, n=6)
        (data / "round" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n but not really")
        spec, code, words = f"folder:{data}", 1, "broken.png"
    elif case == "mixed":
        shapes(data / "a", n=2)
        shapes(data / "b", n=2, size=(24, 24))
        spec, code, words = f"folder:{data}", 2, "--image-size"
    elif case == "too-big":
        write_header_only_npy(data / "huge.npy", (10**7, 3, 256, 256))
        spec, code, words = f"npy:{data / 'huge.npy'}", 1, "GiB in memory"
    elif case == "bad-shape":
        np.save(data / "x.npy", np.zeros((4, 5, 8, 8), np.uint8))
        spec, code, words = f"npy:{data / 'x.npy'}", 1, "C = 1 or 3"
    elif case == "bad-header":  # numpy's header parser raises tokenize.TokenError on an unclosed bracket
        header = b"{'descr': '|u1', 'fortran_order': False, 'shape': (4, 8, 8), }  ["
        header += b" " * (-(len(header) + 11) % 64) + b"\n"
        (data / "x.npy").write_bytes(b"\x93NUMPY\x01\x00" + len(header).to_bytes(2, "little") + header + bytes(256))
        spec, code, words = f"npy:{data / 'x.npy'}", 1, "not a readable npy file"
    elif case == "out-of-range":
        np.savez(data / "x.npz", images=np.full((4, 8, 8), 2.0, np.float32))
        spec, code, words = f"npz:{data / 'x.npz'}", 1, "[0, 1]"
    elif case == "unknown":
        spec, code, words = "imagenet", 2, "unknown dataset"
    elif case == "bad-size":
        spec, code, words, args = f"folder:{folder}", 2, "'32xq'", ["--image-size", "32xq"]
    elif case == "bad-channels":
        spec, code, words, args = f"folder:{folder}", 2, "channels", ["--channels", "2"]
    else:  # a size that the conv family cannot halve
        spec, code, words, args = f"folder:{folder}", 2, "--image-size", ["--image-size", "31x31", "--preset", "conv"]
    out = tmp_path / "run"
    result = run("train", "--dataset", spec, "--epochs", 1, "--out", out, *args)
    assert result.exit_code == code, result.output
    assert words in result.stderr and "Traceback" not in result.output
    assert result.stderr.strip().count("\n") == 0 or code == 2 and "Usage" in result.stderr   # typer's usage box
    assert not out.exists() or not any(out.iterdir())                       # nothing written


def test_skip_bad_files_trains_without_them(tmp_path):
    shapes(tmp_path, n=20)
    (tmp_path / "square" / "truncated.jpg").write_bytes(b"\xff\xd8\xff\xe0 and then nothing")
    data = load_dataset(f"folder:{tmp_path}", tmp_path, skip_bad_files=True)
    assert len(data.train) + len(data.test) == 20 and "1 unreadable skipped" in data.description


def test_resume_refuses_data_that_changed(tmp_path):
    rng = np.random.default_rng(0)
    np.save(tmp_path / "a.npy", rng.integers(0, 256, (40, 8, 8), dtype=np.uint8))
    settings = TrainSettings(epochs=1, dataset=f"npy:{tmp_path / 'a.npy'}")
    train(make_config("mlp-small"), settings, tmp_path / "run")
    np.save(tmp_path / "a.npy", rng.integers(0, 256, (50, 8, 8), dtype=np.uint8))    # images added since
    before = (tmp_path / "run" / "checkpoint.pt").read_bytes()
    with pytest.raises(VaeExportError, match="not the run's own data"):
        train(make_config("mlp-small"), dataclasses.replace(settings, epochs=2), tmp_path / "run", resume=True)
    assert (tmp_path / "run" / "checkpoint.pt").read_bytes() == before
