"""OpenVINO as an optional backend: the same seeded samples as onnxruntime within each precision's
bound, the precision always explicit, and one clear line where OpenVINO is missing."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from vae_export.cli import app
from vae_export.errors import ArtifactError
from vae_export.runtime import Decoder

SHIPPED = Path(__file__).resolve().parents[1] / "artifacts" / "mlp"
runner = CliRunner()


@pytest.fixture(autouse=True)
def need_openvino():
    try:
        import openvino  # noqa: F401
    except ImportError:
        message = "needs OpenVINO: pip install 'vae-export[runtimes]' (make install does)"
        pytest.fail(message) if os.environ.get("CI") else pytest.skip(message)


# precision -> (the onnxruntime file it is compared with, bound on max |diff|, bound on mean |diff|)
BOUNDS = {"fp32": ("fp32", 1e-5, 1e-6), "int8": ("int8", 1e-3, 1e-5), "fp16": ("fp16", 1e-5, 1e-6),
          "bf16": ("fp32", 5e-2, 1e-3)}


@pytest.mark.parametrize("precision", list(BOUNDS))
def test_openvino_decodes_the_seeded_samples_onnxruntime_decodes(precision):
    decoder = Decoder(SHIPPED, provider="openvino", precision=precision)
    assert type(decoder).__name__ == "OpenVINODecoder" and decoder.precision == precision
    assert decoder.provider == f"OpenVINO CPU ({'bf16' if precision == 'bf16' else 'f32'})"
    reference, max_bound, mean_bound = BOUNDS[precision]
    want = Decoder(SHIPPED, precision=reference).sample(2000, seed=3, batch_size=700)
    got = decoder.sample(2000, seed=3, batch_size=512)
    diff = np.abs(got - want)
    assert got.shape == want.shape == (2000, 1, 28, 28) and got.dtype == np.float32
    assert diff.max() <= max_bound and diff.mean() <= mean_bound, (diff.max(), diff.mean())
    out = np.empty((5, 1, 28, 28), np.uint8)
    z = decoder.latents(3, 0, 5)
    assert decoder.decode(z, out=out, dtype="uint8") is out
    assert np.abs(out.astype(int) - np.rint(got[:5] * 255)).max() <= 1


def test_sample_command_with_openvino_int8_matches_onnxruntime_int8(tmp_path):
    for provider in ("cpu", "openvino"):
        result = runner.invoke(app, ["sample", "-n", "300", "--provider", provider, "--precision", "int8", "--dtype", "uint8",
                                     "--batch-size", "128", "--out", str(tmp_path / f"{provider}.npy")])
        assert result.exit_code == 0, result.output
    assert "provider OpenVINO CPU (f32), int8" in result.output
    a, b = (np.load(tmp_path / f"{p}.npy").astype(int) for p in ("cpu", "openvino"))
    assert a.shape == (300, 1, 28, 28) and np.abs(a - b).max() <= 1


def test_the_precision_is_explicit_and_bf16_is_openvinos_alone(tmp_path):
    result = runner.invoke(app, ["sample", "-n", "4", "--precision", "bf16", "--out", str(tmp_path / "s.npy")])
    assert result.exit_code == 2 and "--precision bf16 needs --provider openvino" in result.output
    with pytest.raises(ArtifactError, match="holds the 'int8' variant"):
        Decoder(SHIPPED / "decoder.int8.onnx", provider="openvino", precision="bf16")
    with pytest.raises(ArtifactError, match="not a vae-export decoder"):
        Decoder(SHIPPED / "encoder.onnx", provider="openvino")
    assert not (tmp_path / "s.npy").exists()


def test_without_openvino_the_provider_is_refused_in_one_line(tmp_path):
    """A real process in which `import openvino` fails, as on a base install."""
    code = ("import sys; sys.modules['openvino'] = None; from vae_export.cli import main; "
            f"sys.argv = ['vae-export', 'sample', '-n', '4', '--provider', 'openvino', '--out', {str(tmp_path / 's.npy')!r}]; main()")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 1, done.stderr
    assert done.stderr.strip().splitlines() == ["error: --provider openvino: OpenVINO is not installed; "
                                                "pip install 'vae-export[runtimes]'  (or: pip install openvino)"]
    assert not (tmp_path / "s.npy").exists()
