"""The training loop: whole-dataset tensors on the device, shuffled index batches, Adam, and one
atomic checkpoint per epoch so a killed run loses at most one epoch.

    vae-export train --preset mlp --epochs 10 --out runs/mlp
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, NamedTuple

import torch

from vae_export.checkpoint import load_checkpoint, save_checkpoint
from vae_export.config import VAEConfig
from vae_export.errors import TrainingDiverged, UsageError, VaeExportError
from vae_export.files import atomic_open, writable_dir
from vae_export.model import VAE, elbo_terms

from . import plots
from .data import batches, load_images, resolve_data_dir, to_float

CHECKPOINT = "checkpoint.pt"
PRECISIONS = ("auto", "fp32", "bf16")   # auto: bf16 on CUDA, fp32 on CPU (see docs/benchmarks.md)


@dataclass(frozen=True)
class TrainSettings:
    epochs: int = 10
    batch_size: int = 128
    lr: float = 1e-3
    seed: int = 1
    dataset: str = "mnist"
    patience: int | None = None       # stop after this many epochs without a better test loss
    limit: int | None = None          # use only the first N images of each split (quick runs)
    eval_batch_size: int = 2000
    precision: str = "fp32"           # bf16: autocast forward; loss, KL, weights and Adam state stay float32

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise UsageError(f"precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        for name in ("epochs", "batch_size", "eval_batch_size"):
            if getattr(self, name) <= 0:
                raise UsageError(f"{name.replace('_', '-')} must be > 0, got {getattr(self, name)}")
        if not self.lr > 0:
            raise UsageError(f"lr must be > 0, got {self.lr}")
        if self.patience is not None and self.patience <= 0:
            raise UsageError(f"patience must be > 0, got {self.patience}")
        if self.limit is not None and self.limit <= 0:
            raise UsageError(f"limit must be > 0, got {self.limit}")


def pick_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise VaeExportError("--device cuda was asked for, but torch sees no CUDA GPU here (use --device cpu or auto)")
    if name not in ("cpu", "cuda"):
        raise UsageError(f"unknown device {name!r}; expected auto, cpu or cuda")
    return torch.device(name)


def uses_bf16(precision: str, dev: torch.device) -> bool:
    return precision == "bf16" or (precision == "auto" and dev.type == "cuda")


class BatchProgress(NamedTuple):
    epoch: int
    batch: int          # batches done in this epoch
    batches: int        # batches in this epoch
    images: int         # images done in this epoch
    loss: float         # running mean loss per image (nats)


OnBatch = Callable[[BatchProgress], None]
OnEpoch = Callable[[dict[str, Any]], None]       # the epoch's metrics


@dataclass
class Run:
    """Everything a checkpoint saves and --resume restores, so a resumed run matches an unbroken one."""

    config: VAEConfig
    settings: TrainSettings
    model: VAE
    optimizer: torch.optim.Optimizer
    shuffle_rng: torch.Generator      # CPU: the order of batches
    noise_rng: torch.Generator        # on the device: the reparameterization noise
    metrics: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    best_test_loss: float = math.inf
    bad_epochs: int = 0

    @classmethod
    def start(cls, config: VAEConfig, settings: TrainSettings, dev: torch.device) -> Run:
        torch.manual_seed(settings.seed)
        # oneDNN's convolutions run faster on NHWC weights: no layout reorders in every call
        layout = torch.channels_last if config.arch == "conv" else torch.contiguous_format
        model = VAE(config).to(dev, memory_format=layout)
        # fused: one kernel for all parameters, several times faster than the per-tensor default on CPU
        optimizer = torch.optim.Adam(model.parameters(), lr=settings.lr, fused=True)
        return cls(config, settings, model, optimizer, torch.Generator().manual_seed(settings.seed),
                   torch.Generator(device=dev).manual_seed(settings.seed + 1))

    @classmethod
    def resume(cls, state: dict[str, Any], epochs: int, dev: torch.device) -> Run:
        settings = dataclasses.replace(TrainSettings(**state["settings"]), epochs=epochs)
        run = cls.start(VAEConfig.from_dict(state["config"]), settings, dev)
        run.model.load_state_dict(state["model"])
        run.optimizer.load_state_dict(state["optimizer"])
        run.shuffle_rng.set_state(state["rng"]["shuffle"])
        run.noise_rng.set_state(state["rng"]["noise"])
        run.metrics, run.best_test_loss, run.bad_epochs = state["metrics"], state["best_test_loss"], state["bad_epochs"]
        return run

    def checkpoint(self) -> dict[str, Any]:
        return {
            "config": self.config.to_dict(), "settings": dataclasses.asdict(self.settings),
            "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
            "epoch": len(self.metrics), "metrics": self.metrics,
            "best_test_loss": self.best_test_loss, "bad_epochs": self.bad_epochs,
            "rng": {"shuffle": self.shuffle_rng.get_state(), "noise": self.noise_rng.get_state()},
        }


def train(config: VAEConfig, settings: TrainSettings, out: str | Path, *, data_dir: str | Path | None = None,
          device: str = "auto", resume: bool = False, on_batch: OnBatch | None = None,
          on_epoch: OnEpoch | None = None) -> list[dict[str, Any]]:
    """Train, writing checkpoint.pt, metrics.jsonl and the figures into `out` every epoch.

    With `resume`, the config, settings and RNG state come from out/checkpoint.pt; only
    `settings.epochs` (the total to reach) is taken from the caller. Returns every epoch's metrics.
    """
    # As the model grows confident that MNIST's border pixels are black, their logits sink below -87 and
    # sigmoid gradients turn denormal, which the CPU handles far slower (each epoch was slower than the last).
    # Flushing them to zero changes no result at float32 precision. Set before any tensor work, so
    # that OpenMP's worker threads, created later, inherit it (the flag is per thread).
    torch.set_flush_denormal(True)
    out = writable_dir(out)
    dev = pick_device(device)
    if dev.type == "cuda":  # TF32 tensor cores for the float32 matmuls (bf16 autocast covers the rest)
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    if resume:
        run = Run.resume(load_checkpoint(out / CHECKPOINT), settings.epochs, dev)
    elif (out / CHECKPOINT).exists():
        raise UsageError(f"{out / CHECKPOINT} already exists: pass --resume to continue it, or choose another --out")
    else:
        run = Run.start(config, settings, dev)
    settings = run.settings

    root = resolve_data_dir(data_dir)
    train_x = to_float(load_images(settings.dataset, root, train=True)[: settings.limit]).to(dev)
    test_x = to_float(load_images(settings.dataset, root, train=False)[: settings.limit]).to(dev)
    fixed_z = torch.randn(64, run.config.latent_dim, generator=torch.Generator().manual_seed(0)).to(dev)
    try:
        for epoch in range(len(run.metrics) + 1, settings.epochs + 1):
            if settings.patience is not None and run.bad_epochs >= settings.patience:
                break
            t0 = time.perf_counter()
            train_loss = train_epoch(run, epoch, train_x, on_batch)
            train_seconds = time.perf_counter() - t0
            test = evaluate(run.model, test_x, settings.eval_batch_size, seed=settings.seed)
            m = {"epoch": epoch, "train_loss": train_loss, **test, "seconds": round(time.perf_counter() - t0, 3),
                 "train_samples_per_s": round(len(train_x) / train_seconds, 1), "device": dev.type}
            if test["test_loss"] < run.best_test_loss:
                run.best_test_loss, run.bad_epochs = test["test_loss"], 0
            else:
                run.bad_epochs += 1
            run.metrics.append(m)
            save_checkpoint(out / CHECKPOINT, run.checkpoint())
            _write_metrics(run.metrics, out / "metrics.jsonl")
            _write_figures(run.model, test_x, fixed_z, out)
            if on_epoch:
                on_epoch(m)
    finally:
        if run.metrics:  # once per run, also after Ctrl-C or divergence: a matplotlib figure is slow to draw
            plots.save_loss_curve(run.metrics, out / "loss.png")
    return run.metrics


def train_epoch(run: Run, epoch: int, x_all: torch.Tensor, on_batch: OnBatch | None) -> float:
    """One pass over the shuffled data; returns the mean loss per image (nats). The loss is summed
    over the batch before backward, as in pytorch/examples (Adam makes the scale immaterial)."""
    model, optimizer = run.model.train(), run.optimizer
    beta, likelihood = run.config.beta, run.config.likelihood
    total = torch.zeros((), device=x_all.device)
    index = batches(len(x_all), run.settings.batch_size, run.shuffle_rng)
    seen = 0
    # bf16: oneDNN (AMX) and tensor cores run the GEMMs and convolutions in bfloat16; the ELBO is
    # computed in float32 from float32 copies of the outputs
    autocast = torch.autocast(x_all.device.type, torch.bfloat16, enabled=uses_bf16(run.settings.precision, x_all.device))
    for i, idx in enumerate(index):
        x = x_all[idx.to(x_all.device)]
        with autocast:
            logits, mu, logvar = model(x, run.noise_rng)
        recon, kl = elbo_terms(logits.float(), x, mu.float(), logvar.float(), likelihood)
        loss = recon + beta * kl
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        total += loss.detach()
        seen += len(idx)
        if i % 25 == 24 or i == len(index) - 1:   # a host sync only every 25 batches
            running = total.item() / seen
            if not math.isfinite(running):
                raise TrainingDiverged(f"loss became {running} in batch {i + 1}; the last good checkpoint is kept "
                                       "(try a lower --lr or --beta)")
            if on_batch:
                on_batch(BatchProgress(epoch, i + 1, len(index), seen, running))
    return total.item() / seen


@torch.no_grad()
def evaluate(model: VAE, x_all: torch.Tensor, batch_size: int = 2000, seed: int = 1) -> dict[str, float]:
    """Test loss per image in nats: one reparameterized sample per image, as pytorch/examples'
    `Test set loss` (a single-sample ELBO estimate), with a fixed noise seed so it is repeatable."""
    model.eval()
    rng = torch.Generator(device=x_all.device).manual_seed(seed)
    recon_sum = kl_sum = 0.0
    for x in x_all.split(batch_size):
        logits, mu, logvar = model(x, rng)
        recon, kl = elbo_terms(logits, x, mu, logvar, model.config.likelihood)
        recon_sum, kl_sum = recon_sum + recon.item(), kl_sum + kl.item()
    n = len(x_all)
    loss = (recon_sum + model.config.beta * kl_sum) / n
    if not math.isfinite(loss):
        raise TrainingDiverged(f"test loss became {loss}; the last good checkpoint is kept")
    return {"test_loss": loss, "test_recon": recon_sum / n, "test_kl": kl_sum / n}


def _write_metrics(metrics: list[dict[str, Any]], path: Path) -> None:
    with atomic_open(path, "w") as f:
        f.writelines(json.dumps(m) + "\n" for m in metrics)


@torch.no_grad()
def _write_figures(model: VAE, test_x: torch.Tensor, fixed_z: torch.Tensor, out: Path) -> None:
    model.eval()
    x = test_x[:8]
    plots.save_reconstruction(x, model.decoder(model.encoder(x)[0]), out / "reconstruction.png")
    plots.save_grid(model.decoder(fixed_z), out / "samples.png")
    if model.config.latent_dim == 2:
        plots.save_manifold(model.decoder, out / "manifold.png")
