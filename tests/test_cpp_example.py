"""examples/cpp: a C++ program linked against the installed torch's libtorch loads decoder.aoti.pt2
and writes one decoded image, whose pixels match Python's. Needs g++ (or $CXX) and CMake: CI installs
both (.ci/run); elsewhere the test is skipped with the reason."""

import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

from vae_export.checkpoint import load_model

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "cpp"


@pytest.fixture(scope="module")
def decode_exe(tmp_path_factory) -> Path:
    missing = [tool for tool in ("cmake", os.environ.get("CXX", "g++")) if shutil.which(tool) is None]
    if missing:
        message = f"examples/cpp needs {' and '.join(missing)}"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    build = tmp_path_factory.mktemp("cpp-build")
    torch_root = Path(torch.__file__).parent
    for command in (["cmake", "-S", EXAMPLE, "-B", build, f"-DTORCH_ROOT={torch_root}"], ["cmake", "--build", build]):
        done = subprocess.run([str(c) for c in command], capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return build / "decode"


def read_pnm(path: Path) -> np.ndarray:
    """A binary PGM (P5) or PPM (P6) as (C, H, W) uint8."""
    magic, width, height, _, pixels = path.read_bytes().split(maxsplit=4)
    channels = {b"P5": 1, b"P6": 3}[magic]
    return np.frombuffer(pixels, np.uint8).reshape(int(height), int(width), channels).transpose(2, 0, 1)


@pytest.mark.parametrize("name, suffix", [("mlp", "pgm"), ("rgb", "ppm")])
def test_cpp_decodes_the_pixels_python_decodes(decode_exe, pt2_exports, tmp_path, name, suffix):
    ckpt, folder = pt2_exports[name]
    model, _ = load_model(ckpt)
    z = torch.randn(1, model.config.latent_dim, generator=torch.Generator().manual_seed(3))
    image = tmp_path / f"one.{suffix}"
    done = subprocess.run([str(decode_exe), str(folder / "decoder.aoti.pt2"), str(image), *[repr(float(v)) for v in z[0]]],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    with torch.inference_mode():
        want = np.rint(model.decoder(z)[0].clamp(0, 1).numpy() * 255).astype(np.uint8)   # (C, H, W)
    got = read_pnm(image)
    assert got.shape == want.shape == model.config.image_shape
    diff = np.abs(got.astype(int) - want)
    assert diff.max() <= 1 and diff.mean() < 0.01       # a value exactly on a rounding boundary may flip one level


def test_cpp_refuses_an_encoder_and_a_wrong_latent_in_one_line(decode_exe, pt2_exports, tmp_path):
    _, folder = pt2_exports["mlp"]
    for package, values in (("encoder.aoti.pt2", ["0"] * 20), ("decoder.aoti.pt2", ["0", "1"])):
        done = subprocess.run([str(decode_exe), str(folder / package), str(tmp_path / "x.pgm"), *values],
                              capture_output=True, text=True, timeout=300)
        assert done.returncode in (1, 2) and done.stderr.count("\n") == 1 and done.stderr.startswith("error:")
        assert not (tmp_path / "x.pgm").exists()
