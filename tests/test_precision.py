"""Reduced-precision decoders (fp16, static int8) and the fast sampler: each variant agrees with fp32
within its stated bound on real latents, costs a measured number of nats, and samples the same
images whatever the batch size or range."""

import numpy as np
import pytest
from typer.testing import CliRunner

from vae_export.training.data import load_images, to_float
from vae_export.training.train import evaluate
from vae_export import runtime, sampling
from vae_export.checkpoint import load_model
from vae_export.cli import app
from vae_export.errors import ArtifactError, UsageError
from vae_export.export import calibration_latents, export_decoder_variants, export_onnx
from vae_export.parity import VARIANT_TOLERANCES
from vae_export.quality import decoder_test_loss

runner = CliRunner()


@pytest.fixture(scope="module")
def variants(trained, mnist_root, tmp_path_factory):
    """(model, export folder with decoder.onnx, .fp16.onnx and .int8.onnx, 500 real test images)."""
    model, state = load_model(trained("mlp"))
    folder = tmp_path_factory.mktemp("variants")
    export_onnx(model, state, "test", folder)
    train = to_float(load_images("mnist", mnist_root, train=True)[:500])
    test = to_float(load_images("mnist", mnist_root, train=False)[:500]).numpy()
    export_decoder_variants(folder, fp16=True, int8=True, latents=calibration_latents(model, train),
                            model=model, test_images=test)
    return model, folder, test


def test_quality_function_matches_training_evaluation(variants):
    """The nats figure of the fp32 ONNX decoder is the one training reports for the same images."""
    model, folder, test = variants
    import torch

    want = evaluate(model, torch.from_numpy(test), batch_size=2000, seed=1)
    got = decoder_test_loss(model, folder / "decoder.onnx", test, seed=1)
    assert got["test_kl"] == pytest.approx(want["test_kl"], abs=1e-3)
    assert got["test_loss"] == pytest.approx(want["test_loss"], abs=0.05)


@pytest.mark.parametrize("precision", ["fp16", "int8"])
def test_variant_agrees_with_fp32_on_real_latents_and_records_its_cost(variants, precision):
    model, folder, test = variants
    fp32, variant = runtime.Decoder(folder), runtime.Decoder(folder, precision=precision)
    assert variant.path.name == f"decoder.{precision}.onnx" and variant.precision == precision
    import torch

    with torch.inference_mode():
        z = model.encoder(torch.from_numpy(test))[0].numpy()
    diff = np.abs(variant.decode(z) - fp32.decode(z))
    assert 0 < diff.max() <= VARIANT_TOLERANCES[precision][0]
    error = variant.metadata["error_vs_fp32"]
    assert error["max_abs"] > 0 and error["mean_abs"] < error["max_abs"]
    cost = decoder_test_loss(model, variant, test)["test_loss"] - decoder_test_loss(model, fp32, test)["test_loss"]
    assert error["test_loss_cost_nats"] == pytest.approx(cost, abs=1e-6)
    assert abs(cost) <= 0.5  # the budget for int8; fp16 is far inside it


@pytest.mark.parametrize("precision", ["fp32", "int8"])
def test_samples_do_not_depend_on_batch_size_or_range(variants, tmp_path, precision):
    _, folder, _ = variants
    decoder = runtime.Decoder(folder, precision=precision)
    n = runtime.LATENT_CHUNK + 700  # crosses a latent chunk boundary
    sampling.sample_to_file(decoder, tmp_path / "a.npy", n, seed=5, batch_size=4096, dtype="uint8")
    sampling.sample_to_file(decoder, tmp_path / "b.npy", n, seed=5, batch_size=333, dtype="uint8")
    sampling.sample_to_file(decoder, tmp_path / "c.npy", n, seed=5, batch_size=1000, dtype="uint8",
                            start=4000, stop=4500)  # one shard of the same run
    a, b, c = (np.load(tmp_path / f"{k}.npy").astype(int) for k in "abc")
    assert a.shape == b.shape == (n, 1, 28, 28) and c.shape == (500, 1, 28, 28)
    # fp32 GEMMs may sum in another order per batch size: a pixel may round the other way
    tolerance = 1 if precision == "fp32" else 0
    assert np.abs(a - b).max() <= tolerance and np.abs(a[4000:4500] - c).max() <= tolerance
    floats = decoder.sample(1000, seed=5)
    assert np.abs(a[:1000] - np.rint(255 * floats)).max() <= 1  # graph's uint8 = round(255 x)


def test_precision_is_refused_clearly(variants, tmp_path):
    _, folder, _ = variants
    with pytest.raises(UsageError, match="unknown precision"):
        runtime.Decoder(folder, precision="int4")
    with pytest.raises(ArtifactError, match="holds the 'int8' variant"):
        runtime.Decoder(folder / "decoder.int8.onnx", precision="fp32")
    (tmp_path / "decoder.onnx").write_bytes((folder / "decoder.onnx").read_bytes())
    with pytest.raises(ArtifactError, match="no decoder.int8.onnx.*--int8"):
        runtime.Decoder(tmp_path, precision="int8")
    with pytest.raises(UsageError, match="range"):
        sampling.sample_to_file(runtime.Decoder(folder), tmp_path / "x.npy", 10, start=5, stop=11)


def test_sample_cli_precision(variants, tmp_path):
    _, folder, _ = variants
    result = runner.invoke(app, ["sample", "--model", str(folder / "decoder.onnx"), "--precision", "int8",
                                 "-n", "300", "--dtype", "uint8", "--out", str(tmp_path / "s.npy")])
    assert result.exit_code == 0, result.output
    assert "int8" in result.stdout and np.load(tmp_path / "s.npy").dtype == np.uint8
    result = runner.invoke(app, ["sample", "--model", str(folder), "--precision", "int4", "--out", str(tmp_path / "x.npy")])
    assert result.exit_code == 2


def test_bf16_training_keeps_float32_state_and_reaches_fp32_loss(mnist_root, tmp_path):
    import torch

    from vae_export.training.train import TrainSettings, train
    from vae_export.checkpoint import load_checkpoint
    from vae_export.config import make_config

    losses = {}
    for precision in ("fp32", "bf16"):
        settings = TrainSettings(epochs=1, limit=500, seed=0, precision=precision)
        losses[precision] = train(make_config("mlp"), settings, tmp_path / precision, data_dir=mnist_root)[-1]["test_loss"]
    state = load_checkpoint(tmp_path / "bf16" / "checkpoint.pt")
    assert state["settings"]["precision"] == "bf16"   # --resume continues in bf16
    assert all(t.dtype == torch.float32 for t in state["model"].values())
    assert all(v.dtype == torch.float32 for s in state["optimizer"]["state"].values() for v in s.values()
               if torch.is_tensor(v) and v.numel() > 1)
    assert losses["bf16"] != losses["fp32"] and abs(losses["bf16"] - losses["fp32"]) < 5
    with pytest.raises(UsageError, match="precision"):
        TrainSettings(precision="fp8")
