"""A VAE's quality as a likelihood: the importance-sampled estimate of -log p(x) (Burda et al. 2016,
the IWAE protocol), with the eager networks or with exported ONNX files in their place, so the cost
of an export or of quantization is a number in nats.

    vae-export evaluate runs/mlp/checkpoint.pt --k 1,100,5000 --n-images 1000
    vae-export evaluate runs/mlp/checkpoint.pt --decoder export/decoder.int8.onnx   # the same noise

    log p(x) ~= logsumexp_j [log p(x|z_j) + log p(z_j) - log q(z_j|x)] - log k,   z_j ~ q(z|x)

Every constant is kept (the 2*pi normalizers, sigma), so the figures are log-densities. The noise for
image i comes from its own generator seeded with (seed, i): every variant, batching and device sees
the same z, and differences between variants are not Monte Carlo noise.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, NamedTuple

import numpy as np
import torch

from .config import VAEConfig
from .errors import UsageError
from .files import require_memory
from .likelihood import bernoulli_draw, check_binarize, describe, log_likelihood, log_normal, static_binarized
from .model import VAE, pixel_sigma
from .provenance import from_checkpoint

DRAWS_PER_CALL = 16384       # latents decoded per network call (images x samples): bounded memory for any k
SEED_MAX = 2**63 - 1         # torch's manual_seed and numpy's default_rng both take 0..2^63-1
K_MAX = 2**31 - 1            # one image's k samples are held at once (see check_inputs' memory estimate)
ACTIVE_THRESHOLD = 1e-2      # Burda et al.: unit u is active when Cov_x(E_q[z_u]) > 0.01


@dataclass(frozen=True)
class EvalSettings:
    ks: tuple[int, ...] = (1, 10, 100, 1000, 5000)
    n_images: int | None = None          # the first N images of the split; None: all
    split: str = "test"
    seed: int = 0
    binarize: str = "none"               # "none" | "dynamic" (a seeded draw) | "static" (the fixed draw)

    def __post_init__(self) -> None:
        if not self.ks or any(not 0 < k <= K_MAX for k in self.ks):
            raise UsageError(f"every k must be > 0 and at most {K_MAX}, got {', '.join(map(str, self.ks)) or 'none'}")
        if not 0 <= self.seed <= SEED_MAX:
            raise UsageError(f"seed must be 0..{SEED_MAX}, got {self.seed}")
        if self.n_images is not None and self.n_images <= 0:
            raise UsageError(f"n-images must be > 0, got {self.n_images}")
        if self.split not in ("train", "test"):
            raise UsageError(f"unknown split {self.split!r}; expected train or test")


class Networks(NamedTuple):
    """The two halves, each eager or an ONNX file, as functions of torch tensors on `device`."""

    encode: Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]   # x (B, C, H, W) -> mu, logvar (B, L)
    decode_logits: Callable[[torch.Tensor], torch.Tensor]                  # z (N, L) -> logits (N, C, H, W)
    encoder: str                                                           # "eager" or the file's path
    decoder: str


def networks(model: VAE, checkpoint_sha256: str, encoder: Path | None = None, decoder: Path | None = None,
             device: str = "cpu") -> Networks:
    """The eager halves of `model`, with an exported file in place of either. A file must come from the
    same checkpoint (its metadata's sha256) and have the model's shapes; otherwise the pair is refused."""
    from . import runtime

    model = model.eval().to(device)
    encode, decode_logits = model.encoder, model.decoder.logits
    if encoder is not None:
        onnx_encoder = runtime.Encoder(encoder, _provider(device))
        _check_same_model(onnx_encoder, model.config, checkpoint_sha256)

        def encode(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            mu, logvar = onnx_encoder.encode(x.cpu().numpy())
            return torch.from_numpy(mu).to(device), torch.from_numpy(logvar).to(device)

    if decoder is not None:
        onnx_decoder = runtime.Decoder(decoder, _provider(device))
        _check_same_model(onnx_decoder, model.config, checkpoint_sha256)

        def decode_logits(z: torch.Tensor) -> torch.Tensor:
            return probabilities_to_logits(torch.from_numpy(onnx_decoder.decode(z.cpu().numpy())).to(device))

    return Networks(encode, decode_logits, str(encoder or "eager"), str(decoder or "eager"))


def _provider(device: str) -> str:
    return "cuda" if device.startswith("cuda") else "cpu"


def _check_same_model(network, config: VAEConfig, checkpoint_sha256: str) -> None:
    meta = network.metadata
    if meta["latent_dim"] != config.latent_dim or tuple(meta["image_shape"]) != config.image_shape:
        raise UsageError(f"{network.path} has latent_dim {meta['latent_dim']} and image shape {meta['image_shape']}, "
                         f"but the checkpoint has {config.latent_dim} and {list(config.image_shape)}: not one model")
    from_checkpoint(network.path, meta, "the checkpoint evaluated", checkpoint_sha256)


def probabilities_to_logits(p: torch.Tensor) -> torch.Tensor:
    """An exported decoder outputs sigmoid(logits); invert it. Only p = 1 (logits above ~16.6 round
    to it in float32) and p = 0 are clamped, so log p stays exact for small p."""
    p = p.clamp(torch.finfo(p.dtype).tiny, 1 - torch.finfo(p.dtype).eps / 2)
    return torch.log(p) - torch.log1p(-p)


def evaluation_images(x: torch.Tensor, settings: EvalSettings) -> torch.Tensor:
    """The split's first N images, binarized as asked: the fixed static draw, or one draw seeded
    with `settings.seed` (dynamic), made over the whole split so N does not change the pixels."""
    if settings.binarize == "static":
        x = static_binarized(x, settings.split)
    elif settings.binarize == "dynamic":
        x = bernoulli_draw(x, torch.Generator().manual_seed(settings.seed))
    return x[: settings.n_images]


def image_noise(seed: int, index: int, k: int, latent_dim: int) -> torch.Tensor:
    """eps ~ N(0, I) of shape (k, latent_dim) for image `index`: the same for every variant and batching."""
    return torch.from_numpy(np.random.default_rng([seed, index]).standard_normal((k, latent_dim), dtype=np.float32))


@torch.no_grad()
def per_image(nets: Networks, x: torch.Tensor, config: VAEConfig, settings: EvalSettings,
              on_images: Callable[[int], None] | None = None) -> dict[str, torch.Tensor]:
    """Per-image figures over x (N, C, H, W): `nll` (len(ks), N) nats, `recon` and `kl` (N,) nats,
    and `mu` (N, L), the posterior means for the active-unit count. The k samples of an image are
    drawn once (max k) and the estimate for each smaller k averages its disjoint groups of k."""
    kmax, dev = max(settings.ks), x.device
    sigma = pixel_sigma(config)
    sigma = sigma.to(dev) if isinstance(sigma, torch.Tensor) else sigma
    batch = max(1, DRAWS_PER_CALL // kmax)              # images per batch
    chunk = min(kmax, DRAWS_PER_CALL // batch)          # samples per network call
    out = {"nll": [], "recon": [], "kl": [], "mu": [], "psnr": []}
    for start in range(0, len(x), batch):
        xb = x[start: start + batch]                     # (B, C, H, W)
        mu, logvar = nets.encode(xb)                     # (B, L) each
        mse = (torch.sigmoid(nets.decode_logits(mu)) - xb).pow(2).flatten(1).mean(1)   # from the posterior means
        out["psnr"].append(-10 * torch.log10(mse.clamp(min=1e-10)).double())
        eps = torch.stack([image_noise(settings.seed, start + i, kmax, config.latent_dim)
                           for i in range(len(xb))]).to(dev)    # (B, kmax, L)
        log_w, log_px_z = [], []
        for s in range(0, kmax, chunk):
            e = eps[:, s: s + chunk]                                           # (B, c, L)
            z = mu[:, None] + torch.exp(0.5 * logvar)[:, None] * e             # (B, c, L)
            logits = nets.decode_logits(z.flatten(0, 1)).unflatten(0, e.shape[:2])  # (B*c, C, H, W) -> (B, c, C, H, W)
            ll = log_likelihood(logits, xb[:, None], config.likelihood, sigma)          # (B, c)
            log_q = log_normal(e) - 0.5 * logvar.sum(-1, keepdim=True)         # log q(z|x), exact via eps
            log_w.append((ll + log_normal(z) - log_q).double())
            log_px_z.append(ll.double())
        log_w = torch.cat(log_w, 1)                                            # (B, kmax)
        out["nll"].append(torch.stack([-grouped_log_mean_exp(log_w, k) for k in settings.ks]))
        out["recon"].append(-torch.cat(log_px_z, 1).mean(1))
        out["kl"].append((-0.5 * (1 + logvar - mu.pow(2) - logvar.exp()).sum(-1)).double())
        out["mu"].append(mu.double())
        if on_images:
            on_images(len(xb))
    return {"nll": torch.cat(out["nll"], 1).cpu(), **{k: torch.cat(out[k]).cpu() for k in ("recon", "kl", "mu", "psnr")}}


def grouped_log_mean_exp(log_w: torch.Tensor, k: int) -> torch.Tensor:
    """The k-sample estimate log(1/k sum_j w_j) per row of log_w (B, K), averaged over the K // k
    disjoint groups of k columns: the same expectation as one group, with less Monte Carlo noise."""
    groups = log_w.shape[1] // k
    grouped = log_w[:, : groups * k].unflatten(1, (groups, k))                 # (B, K) -> (B, groups, k)
    return (torch.logsumexp(grouped, -1) - math.log(k)).mean(-1)


def summary(figures: dict[str, torch.Tensor], config: VAEConfig, settings: EvalSettings, nets: Networks,
            seconds: float) -> dict:
    """The report: per k the mean NLL over images, its standard error and bits/dim; the (negative)
    ELBO with its parts; active units; and what the numbers mean (likelihood, binarization, noise)."""
    n = figures["nll"].shape[1]
    rows = []
    for k, nll in zip(settings.ks, figures["nll"]):
        mean = nll.mean().item()
        stderr = nll.std().item() / math.sqrt(n) if n > 1 else float("nan")
        rows.append({"k": k, "nll_nats": mean, "nll_stderr": stderr, "bits_per_dim": bits_per_dim(mean, config.pixels)})
    recon, kl = figures["recon"].mean().item(), figures["kl"].mean().item()
    variance = figures["mu"].var(0) if n > 1 else torch.zeros(config.latent_dim)
    return {
        "nll": rows, "elbo_nats": recon + kl, "psnr_db": figures["psnr"].mean().item(), "recon_nats": recon, "kl_nats": kl,
        "active_units": int((variance > ACTIVE_THRESHOLD).sum()), "latent_dim": config.latent_dim,
        "likelihood": config.likelihood, "sigma": config.sigma if config.likelihood == "gaussian" else (list(config.channel_sigma) or None),
        "binarize": settings.binarize, "meaning": describe(config.likelihood, config.sigma, settings.binarize),
        "n_images": n, "encoder": nets.encoder, "decoder": nets.decoder, "seconds": round(seconds, 2),
        "settings": {**asdict(settings), "ks": list(settings.ks)},
    }


def bits_per_dim(nll_nats: float, dims: int) -> float:
    """Nats per image -> bits per pixel: divide by the pixel count and by ln 2."""
    return nll_nats / (dims * math.log(2))


def evaluate(nets: Networks, config: VAEConfig, images: torch.Tensor, settings: EvalSettings, *,
             device: str = "cpu", on_images: Callable[[int], None] | None = None) -> dict:
    """Evaluate the networks of a `config` model on `images` (N, C, H, W) in [0, 1], the split's grey
    levels: binarization and the first-N cut are applied here. Returns the report dict."""
    check_inputs(config, images, settings)
    # border pixels' logits sit far below -87, where softplus and exp turn denormal: the CPU's slow path.
    # Flushing them to zero changes nothing at float32 precision (as in training).
    torch.set_flush_denormal(True)
    t0 = time.perf_counter()
    x = evaluation_images(images, settings).to(device)
    figures = per_image(nets, x, config, settings, on_images)
    return summary(figures, config, settings, nets, time.perf_counter() - t0)


def check_inputs(config: VAEConfig, images: torch.Tensor | None, settings: EvalSettings) -> None:
    """Refuse, before any work, settings the model cannot take (`images` None: before the data is read)
    and a k whose samples would not fit in memory: per image, the noise and latents (float32) and
    their log-weights (float64) for all k."""
    check_binarize(settings.binarize, config.likelihood)
    require_memory(max(settings.ks) * (12 * config.latent_dim + 32), f"--k {max(settings.ks):,} (one image's samples)")
    if images is None:
        return
    if images.shape[1:] != config.image_shape:
        raise UsageError(f"images have shape {tuple(images.shape[1:])}, the model expects {config.image_shape}")
