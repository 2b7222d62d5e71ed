"""`evaluate`: the importance-sampled NLL converges to the exact log-likelihood of tiny models (computed by
quadrature, independently of the library), exported files give the eager figures, bad input is refused."""

import json
import math
from itertools import product

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from vae_export import evaluate as ev
from vae_export.checkpoint import load_model, save_checkpoint
from vae_export.cli import app
from vae_export.config import VAEConfig, make_config
from vae_export.errors import UsageError
from vae_export.export import export_decoder_variants, export_onnx
from vae_export.files import sha256_file
from vae_export.likelihood import bernoulli_draw, static_binarized
from vae_export.model import VAE

runner = CliRunner()


def tiny_model(likelihood: str, pixels: int) -> VAE:
    """A 1-D latent over a few pixels, random weights. q(z|x) is off the posterior but wider than the
    prior, so the importance weights p(x|z) p(z) / q(z|x) are bounded and the estimate converges fast."""
    torch.manual_seed(0)
    model = VAE(VAEConfig("tiny", "mlp", image_shape=(1, 1, pixels), hidden=(6,), latent_dim=1,
                          likelihood=likelihood, sigma=0.3)).eval()
    with torch.no_grad():
        model.decoder.body[-1].weight.mul_(3)   # sharper p(x|z): a posterior the prior does not match
        model.encoder.logvar.bias.add_(1.0)     # q's std about 1.6 > the prior's 1
    return model


def exact_log_px(model: VAE, x: np.ndarray) -> np.ndarray:
    """log p(x) = log integral p(x|z) N(z; 0, 1) dz by the trapezoidal rule on a fine grid, in float64,
    with the densities written out here, not taken from the library."""
    z = np.linspace(-12, 12, 24001)
    with torch.no_grad():
        mean = torch.sigmoid(model.decoder.double().logits(torch.from_numpy(z[:, None]))).flatten(1).numpy()
    model.float()
    log_prior = -0.5 * z**2 - 0.5 * math.log(2 * math.pi)
    out = []
    for xi in x.reshape(len(x), -1):
        if model.config.likelihood == "bernoulli":
            log_lik = np.sum(xi * np.log(mean) + (1 - xi) * np.log1p(-mean), axis=1)
        else:
            s = model.config.sigma
            log_lik = np.sum(-0.5 * ((xi - mean) / s) ** 2 - math.log(s * math.sqrt(2 * math.pi)), axis=1)
        f = log_lik + log_prior
        top = f.max()
        out.append(top + math.log(np.trapezoid(np.exp(f - top), z)))
    return np.array(out)


def per_image_nll(model: VAE, x: torch.Tensor, ks, binarize="none") -> np.ndarray:
    settings = ev.EvalSettings(ks=ks, seed=3, binarize=binarize)
    return ev.per_image(ev.networks(model, ""), x, model.config, settings)["nll"].numpy()   # (len(ks), N)


def test_importance_sampling_converges_to_the_exact_bernoulli_likelihood():
    model = tiny_model("bernoulli", 4)
    x = torch.tensor(list(product([0.0, 1.0], repeat=4))).view(16, 1, 1, 4)   # every binary image
    exact = exact_log_px(model, x.numpy())
    assert math.isclose(np.exp(exact).sum(), 1, rel_tol=1e-6)   # the quadrature itself is normalized
    ks = (1, 10, 100, 50_000)
    nll = per_image_nll(model, x, ks, binarize="static")            # static: binary images stay as they are
    errors = [np.abs(-row - exact).mean() for row in nll]
    assert errors[0] > 0.05 and errors == sorted(errors, reverse=True) and errors[-1] < 5e-3
    assert np.all(-nll[0] <= exact + 1e-4)                          # k = 1 is the ELBO, a lower bound
    assert math.isclose(np.exp(-nll[-1]).sum(), 1, abs_tol=5e-3)    # a distribution over the 16 images


def test_importance_sampling_converges_to_the_exact_gaussian_density():
    model = tiny_model("gaussian", 3)
    x = torch.rand(6, 1, 1, 3, generator=torch.Generator().manual_seed(1))
    exact = exact_log_px(model, x.numpy())
    nll = per_image_nll(model, x, (1, 50_000))
    assert np.abs(-nll[0] - exact).mean() > 0.05
    assert np.abs(-nll[1] - exact).max() < 1e-2


def test_chunking_and_batching_do_not_change_the_estimate(monkeypatch):
    model = tiny_model("bernoulli", 4)
    x = torch.randint(0, 2, (7, 1, 1, 4), generator=torch.Generator().manual_seed(2)).float()
    whole = per_image_nll(model, x, (1, 5, 60))
    monkeypatch.setattr(ev, "DRAWS_PER_CALL", 7)                    # 1 image and 7 samples per decoder call
    assert np.allclose(per_image_nll(model, x, (1, 5, 60)), whole, rtol=0, atol=1e-5)


def test_bits_per_dim_and_binarization():
    assert ev.bits_per_dim(784 * math.log(2), 784) == 1.0
    x = torch.rand(50, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    static = static_binarized(x, "test")
    assert torch.equal(static, static_binarized(x, "test")) and set(static.unique().tolist()) == {0.0, 1.0}
    assert not torch.equal(bernoulli_draw(x), bernoulli_draw(x))
    assert abs(static.mean().item() - x.mean().item()) < 0.01      # P(1) = the grey level


@pytest.fixture(scope="module")
def exported_mlp(trained, tmp_path_factory):
    ckpt = trained("mlp")
    model, state = load_model(ckpt)
    out = tmp_path_factory.mktemp("evaluate-export")
    export_onnx(model, state, sha256_file(ckpt), out)
    export_decoder_variants(out, int8=True)
    return ckpt, out


def test_exported_files_give_the_eager_figures_on_the_same_noise(exported_mlp, mnist_root, tmp_path):
    ckpt, out = exported_mlp
    args = ["evaluate", ckpt, "--k", "1,50", "--n-images", "60", "--binarize", "dynamic", "--data-dir", mnist_root,
            "--device", "cpu", "--quiet"]
    reports = {}
    for name, files in {"eager": [], "onnx": ["--encoder", out / "encoder.onnx", "--decoder", out / "decoder.onnx"],
                        "int8": ["--decoder", out / "decoder.int8.onnx"]}.items():
        result = runner.invoke(app, [str(a) for a in [*args, *files, "--report", tmp_path / f"{name}.json"]])
        assert result.exit_code == 0, result.output
        reports[name] = json.loads((tmp_path / f"{name}.json").read_text())
    eager, onnx, int8 = (reports[n] for n in ("eager", "onnx", "int8"))
    assert {"elbo_nats", "recon_nats", "kl_nats", "active_units", "likelihood", "binarize"} <= set(eager)
    assert eager["binarize"] == "dynamic" and eager["likelihood"] == "bernoulli" and onnx["decoder"].endswith("decoder.onnx")
    for e, o, q in zip(eager["nll"], onnx["nll"], int8["nll"]):
        assert set(e) >= {"k", "nll_nats", "nll_stderr"} and e["k"] == o["k"]
        assert abs(e["nll_nats"] - o["nll_nats"]) < min(1e-3, e["nll_stderr"] / 100)
        assert 0 < abs(e["nll_nats"] - q["nll_nats"]) < e["nll_stderr"]   # int8 costs something, measurably
        assert math.isclose(e["bits_per_dim"], e["nll_nats"] / (784 * math.log(2)))
    assert eager["nll"][1]["nll_nats"] < eager["nll"][0]["nll_nats"] < eager["elbo_nats"] + 1


def test_bad_input_is_refused_in_one_line(exported_mlp, mnist_root, tmp_path):
    ckpt, out = exported_mlp
    other = VAE(make_config("mlp"))          # same shapes, other weights: another model
    save_checkpoint(tmp_path / "other.pt", {"config": other.config.to_dict(), "model": other.state_dict()})
    small = VAE(make_config("mlp", latent_dim=3))
    save_checkpoint(tmp_path / "small.pt", {"config": small.config.to_dict(), "model": small.state_dict()})
    cases = [
        ([ckpt, "--k", "0"], 2, "k must be > 0"),
        ([ckpt, "--k", "10,x"], 2, "comma-separated"),
        ([tmp_path / "other.pt", "--decoder", out / "decoder.onnx"], 2, "another checkpoint"),
        ([tmp_path / "small.pt", "--encoder", out / "encoder.onnx"], 2, "latent_dim 20"),
        ([ckpt, "--decoder", out / "encoder.onnx"], 1, "not a vae-export decoder"),
        ([make_gaussian(tmp_path), "--binarize", "static"], 2, "needs the bernoulli likelihood"),
    ]
    for args, code, message in cases:
        result = runner.invoke(app, [str(a) for a in ["evaluate", *args, "--n-images", "2", "--data-dir", mnist_root]])
        assert result.exit_code == code and message in result.stderr, (args, result.output)
        assert result.stderr.count("\n") == 1 and "Traceback" not in result.output
    with pytest.raises(UsageError):
        ev.EvalSettings(ks=())


def make_gaussian(tmp_path):
    model = VAE(make_config("mlp-deep"))
    save_checkpoint(tmp_path / "gauss.pt", {"config": model.config.to_dict(), "model": model.state_dict()})
    return tmp_path / "gauss.pt"


def test_training_binarizes_and_evaluate_follows_the_checkpoint(mnist_root, tmp_path):
    from vae_export.training.train import TrainSettings, train

    train(make_config("mlp-small"), TrainSettings(epochs=1, limit=300, binarize="static"), tmp_path, data_dir=mnist_root)
    result = runner.invoke(app, [str(a) for a in ["evaluate", tmp_path / "checkpoint.pt", "--k", "1,4", "--n-images", "5",
                                                  "--data-dir", mnist_root, "--report", tmp_path / "r.json"]])
    assert result.exit_code == 0, result.output
    assert "-log p(x)" in result.stdout and "binarized" in result.stdout
    assert json.loads((tmp_path / "r.json").read_text())["binarize"] == "static"   # as trained, by default
    with pytest.raises(UsageError, match="bernoulli"):
        train(make_config("mlp-deep"), TrainSettings(epochs=1, limit=100, binarize="dynamic"), tmp_path / "g",
              data_dir=mnist_root)
