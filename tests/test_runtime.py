"""The torch-free runtime and sampler: validation, providers, determinism, streaming, the CLI."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from vae_export import runtime, sampling
from vae_export.checkpoint import load_model
from vae_export.cli import app
from vae_export.errors import ArtifactError, ProviderUnavailable, UsageError
from vae_export.export import export_onnx

REPO = Path(__file__).resolve().parents[1]
runner = CliRunner()


@pytest.fixture(scope="module")
def models(trained, tmp_path_factory):
    """{preset: export folder} for mlp and conv (the 2-D latent model)."""
    folders = {}
    for preset in ("mlp", "conv"):
        model, state = load_model(trained(preset))
        folders[preset] = tmp_path_factory.mktemp(f"onnx-{preset}")
        export_onnx(model, state, "test", folders[preset])
    return folders


def no_torch_env(tmp_path):
    """An environment where `import torch` fails, to prove code runs without it."""
    (tmp_path / "blocker").mkdir(exist_ok=True)
    (tmp_path / "blocker" / "torch.py").write_text("raise ImportError('torch is blocked in this test')\n")
    return {"PYTHONPATH": f"{tmp_path / 'blocker'}:{REPO}", "PATH": "/usr/bin:/bin"}


def test_runtime_and_sampler_do_not_import_torch(models, tmp_path):
    code = ("import sys; from vae_export.runtime import Decoder; from vae_export import sampling, shards; "
            f"d = Decoder('{models['mlp'] / 'decoder.onnx'}'); print(d.sample(3).shape); "
            "assert not [m for m in sys.modules if m.startswith('torch')]")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=no_torch_env(tmp_path))
    assert done.returncode == 0, done.stderr
    assert "(3, 1, 28, 28)" in done.stdout


def test_embedding_example_needs_only_numpy_and_onnxruntime(models, tmp_path):
    assert (models["mlp"] / "decoder.json").exists()
    done = subprocess.run([sys.executable, str(REPO / "examples" / "embed_decoder.py"), models["mlp"] / "decoder.onnx",
                           tmp_path / "out.png"], capture_output=True, text=True, env=no_torch_env(tmp_path))
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "out.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_decoder_validates_its_file_and_inputs(models):
    with pytest.raises(ArtifactError, match="not a vae-export decoder"):
        runtime.Decoder(models["mlp"] / "encoder.onnx")
    with pytest.raises(ArtifactError, match="no model"):
        runtime.Decoder(models["mlp"] / "missing.onnx")
    decoder = runtime.Decoder(models["mlp"] / "decoder.onnx")
    assert decoder.latent_dim == 20 and decoder.image_shape == (1, 28, 28)
    with pytest.raises(UsageError, match=r"shape \(batch, 20\)"):
        decoder.decode(np.zeros((4, 3), np.float32))
    with pytest.raises(UsageError, match="NaN"):
        decoder.decode(np.full((2, 20), np.nan, np.float32))
    with pytest.raises(UsageError, match="floating point"):
        decoder.decode(np.zeros((2, 20), np.int64))
    out = decoder.decode(np.zeros((2, 20)))  # float64 is converted, not refused
    assert out.dtype == np.float32 and out.shape == (2, 1, 28, 28)
    encoder = runtime.Encoder(models["mlp"] / "encoder.onnx")
    mu, logvar = encoder.encode(out)
    assert mu.shape == logvar.shape == (2, 20)


def test_metadata_that_contradicts_the_graph_is_refused(models, tmp_path):
    import json

    import onnx

    proto = onnx.load(str(models["mlp"] / "decoder.onnx"))
    for prop in proto.metadata_props:
        if prop.key == "latent_dim":
            prop.value = json.dumps(16)
    onnx.save(proto, str(tmp_path / "decoder.onnx"))
    with pytest.raises(ArtifactError, match="metadata promises"):
        runtime.Decoder(tmp_path / "decoder.onnx")


def test_cuda_is_refused_clearly_where_it_cannot_run(models):
    if "CUDAExecutionProvider" in runtime.ort.get_available_providers():
        pytest.skip("this machine has the CUDA provider")
    with pytest.raises(ProviderUnavailable, match="available: .*CPUExecutionProvider.*make install-gpu"):
        runtime.Decoder(models["mlp"] / "decoder.onnx", provider="cuda")
    assert runtime.Decoder(models["mlp"] / "decoder.onnx", provider="auto").provider == "CPUExecutionProvider"


def test_same_seed_same_samples_whatever_the_batching(models):
    decoder = runtime.Decoder(models["mlp"] / "decoder.onnx")
    n = runtime.LATENT_CHUNK + 900  # crosses a latent chunk boundary
    a = decoder.sample(n, seed=7, batch_size=333)
    b = decoder.sample(n, seed=7, batch_size=8192)
    np.testing.assert_allclose(a, b, atol=1e-6)  # batch size may change the GEMM's summation order only
    assert not np.allclose(a[:10], decoder.sample(10, seed=8))


def test_streamed_npy_matches_in_memory_sampling(models, tmp_path):
    decoder = runtime.Decoder(models["mlp"] / "decoder.onnx")
    want = decoder.sample(5000, seed=3, batch_size=1000)
    stats = sampling.sample_to_file(decoder, tmp_path / "f.npy", 5000, seed=3, batch_size=1000)
    got = np.load(tmp_path / "f.npy")
    assert stats.n == 5000 and got.dtype == np.float32
    np.testing.assert_allclose(got, want, atol=1e-6)
    sampling.sample_to_file(decoder, tmp_path / "u.npy", 5000, seed=3, batch_size=777, dtype="uint8")
    u8 = np.load(tmp_path / "u.npy")
    assert u8.dtype == np.uint8
    assert np.abs(u8.astype(int) - np.rint(want * 255)).max() <= 1
    assert not list(tmp_path.glob(".*.tmp"))


def test_sample_cli(models, tmp_path):
    model = models["mlp"] / "decoder.onnx"
    result = runner.invoke(app, ["sample", "--model", str(model), "-n", "50", "--out", str(tmp_path / "s.png")])
    assert result.exit_code == 0, result.output
    assert "CPUExecutionProvider" in result.stdout and "samples/s" in result.stdout
    result = runner.invoke(app, ["sample", "--model", str(model), "-n", "8", "--interpolate", "1", "2",
                                 "--out", str(tmp_path / "i.npy")])
    assert result.exit_code == 0 and np.load(tmp_path / "i.npy").shape == (8, 1, 28, 28)
    conv = models["conv"] / "decoder.onnx"
    result = runner.invoke(app, ["sample", "--model", str(conv), "--manifold", "--out", str(tmp_path / "m.npy")])
    assert result.exit_code == 0 and np.load(tmp_path / "m.npy").shape == (900, 1, 28, 28)


def test_sample_cli_refusals(models, tmp_path):
    model = str(models["mlp"] / "decoder.onnx")

    def run(*args):
        return runner.invoke(app, ["sample", "--model", model, *map(str, args)])

    assert run("-n", 0, "--out", tmp_path / "x.npy").exit_code == 2
    assert run("--batch-size", 0, "--out", tmp_path / "x.npy").exit_code == 2
    assert run("--out", tmp_path / "x.txt").exit_code == 2
    assert run("--out", tmp_path / "missing" / "x.npy").exit_code == 1      # files.check_output: what the disk holds is exit 1
    assert run("--manifold", "--out", tmp_path / "x.png").exit_code == 2     # mlp has a 20-D latent
    result = runner.invoke(app, ["sample", "--model", str(models["mlp"] / "encoder.onnx"), "--out", str(tmp_path / "x.npy")])
    assert result.exit_code == 1 and "not a vae-export decoder" in result.stderr
    if "CUDAExecutionProvider" not in runtime.ort.get_available_providers():
        result = run("--provider", "cuda", "--out", tmp_path / "x.npy")
        assert result.exit_code == 1 and "make install-gpu" in result.stderr
    assert not list(tmp_path.iterdir())  # no partial file anywhere


def test_encode_and_reconstruct_cli(models, mnist_root, tmp_path):
    from vae_export.training.data import load_images

    images = load_images("mnist", mnist_root, train=False)[:16].numpy()  # uint8 (16, 1, 28, 28)
    np.save(tmp_path / "x.npy", images)
    result = runner.invoke(app, ["encode", str(tmp_path / "x.npy"), "--model", str(models["mlp"] / "encoder.onnx"),
                                 "--out", str(tmp_path / "z.npz")])
    assert result.exit_code == 0, result.output
    z = np.load(tmp_path / "z.npz")
    assert z["mu"].shape == z["logvar"].shape == (16, 20)
    result = runner.invoke(app, ["reconstruct", str(tmp_path / "x.npy"), "--models", str(models["mlp"]),
                                 "--out", str(tmp_path / "r.npy")])
    assert result.exit_code == 0, result.output
    recon = np.load(tmp_path / "r.npy")
    assert recon.shape == (16, 1, 28, 28)
    (tmp_path / "bad.npy").write_bytes(b"nope")
    result = runner.invoke(app, ["encode", str(tmp_path / "bad.npy"), "--out", str(tmp_path / "z2.npz")])
    assert result.exit_code == 1 and "cannot read images" in result.stderr


def test_the_shipped_model_samples_offline_and_passes_parity(tmp_path):
    from vae_export.parity import artifacts_in, check_parity

    shipped = REPO / "artifacts" / "mlp"
    model, _ = load_model(shipped / "checkpoint.pt")
    assert all(r.passed for r in check_parity(model, artifacts_in(shipped)))
    result = runner.invoke(app, ["sample", "-n", "16", "--out", str(tmp_path / "s.npy")])  # no --model: shipped
    assert result.exit_code == 0, result.output
    assert np.load(tmp_path / "s.npy").shape == (16, 1, 28, 28)
