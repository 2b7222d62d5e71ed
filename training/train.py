"""The training loop: whole-dataset tensors on the device, shuffled index batches, Adam, and one
atomic checkpoint per epoch so a killed run loses at most one epoch.

    vae-export train --preset mlp --epochs 10 --out runs/mlp
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, NamedTuple

import torch

from vae_export.checkpoint import load_checkpoint, save_checkpoint, typed_dataclass
from vae_export.config import VAEConfig
from vae_export.errors import CheckpointError, TrainingDiverged, UsageError, VaeExportError, first_line
from vae_export.files import OwnedDir, atomic_open, made_dir, run_lock, strict_json
from vae_export.likelihood import bernoulli_draw, calibrated_sigma, check_binarize, choose_likelihood, static_binarized
from vae_export.model import VAE, elbo_terms, pixel_sigma

from . import distributed, plots
from .schedule import SCHEDULES, one_cycle
from .data import batches, check_same_data, load_from_settings, parse_dataset, resolve_data_dir, to_float

CHECKPOINT = "checkpoint.pt"
RUN_FILES = (CHECKPOINT, "metrics.jsonl", "loss.png", "reconstruction.png", "samples.png", "manifold.png")  # all a run writes
PRECISIONS = ("auto", "fp32", "bf16")   # auto: bf16 on CUDA, fp32 on CPU (see docs/benchmarks.md)


@dataclass(frozen=True)
class TrainSettings:
    epochs: int = 10
    min_steps: int = 0                # small datasets: more epochs, until this many optimizer steps (CLI default 3000)
    batch_size: int = 128
    lr: float = 1e-3                  # onecycle: the peak
    lr_schedule: str = "constant"     # or "onecycle" (training/schedule.py), over all the run's steps
    seed: int = 1
    dataset: str = "mnist"            # mnist, fashion-mnist, cifar10, cifar100, folder:PATH, npy:PATH, npz:PATH
    image_size: tuple[int, int] | None = None   # (H, W) to resize to; default: the data's own size
    image_channels: int | None = None # 1 (grey) or 3 (RGB); default: what the images are
    test_fraction: float = 0.1        # folders and arrays: the share held out for the test loss
    skip_bad_files: bool = False      # folders: train without unreadable files instead of refusing
    patience: int | None = None       # stop after this many epochs without a better test loss
    limit: int | None = None          # use only the first N images of each split (quick runs)
    eval_batch_size: int = 2000
    binarize: str = "none"            # "dynamic" | "static": binary pixels for a normalized Bernoulli likelihood
    precision: str = "fp32"           # bf16: autocast forward; loss, KL, weights and Adam state stay float32

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise UsageError(f"precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        for name in ("epochs", "batch_size", "eval_batch_size"):
            if getattr(self, name) <= 0:
                raise UsageError(f"{name.replace('_', '-')} must be > 0, got {getattr(self, name)}")
        if not self.lr > 0:
            raise UsageError(f"lr must be > 0, got {self.lr}")
        if self.lr_schedule not in SCHEDULES:
            raise UsageError(f"lr-schedule must be one of {', '.join(SCHEDULES)}, got {self.lr_schedule!r}")
        if self.patience is not None and self.patience <= 0:
            raise UsageError(f"patience must be > 0, got {self.patience}")
        if self.limit is not None and self.limit <= 0:
            raise UsageError(f"limit must be > 0, got {self.limit}")
        parse_dataset(self.dataset)
        if self.image_size is not None and (len(self.image_size) != 2 or min(self.image_size) < 1):
            raise UsageError(f"image-size must be two sizes >= 1 (HxW), got {self.image_size}")
        if self.image_channels not in (None, 1, 3):
            raise UsageError(f"channels must be 1 (grey) or 3 (RGB), got {self.image_channels}")
        if not 0 < self.test_fraction < 1:
            raise UsageError(f"test-fraction must be between 0 and 1, got {self.test_fraction}")


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
    epochs: int = 0     # epochs the run will reach


OnBatch = Callable[[BatchProgress], None]
OnEpoch = Callable[[dict[str, Any]], None]       # the epoch's metrics
OnData = Callable[[str], None]                   # a one-line description of the data (and the likelihood chosen)


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
    data: dict[str, Any] = dataclasses.field(default_factory=dict)   # description and train/test split

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
    def resume(cls, state: dict[str, Any], epochs: int, dev: torch.device, path: Path) -> Run:
        """The run saved in `state` (already validated by load_checkpoint: config and weights), with
        the settings, optimizer, RNG and metrics checked here: a tampered file fails in one line."""
        settings = dataclasses.replace(typed_dataclass(TrainSettings, state.get("settings"), f"{path}: settings"),
                                       epochs=epochs)
        try:
            run = cls.start(VAEConfig.from_dict(state["config"]), settings, dev)
            run.model.load_state_dict(state["model"])
            run.optimizer.load_state_dict(state["optimizer"])
            run.shuffle_rng.set_state(state["rng"]["shuffle"])
            run.noise_rng.set_state(state["rng"]["noise"])
            run.metrics, run.best_test_loss, run.bad_epochs = state["metrics"], state["best_test_loss"], state["bad_epochs"]
            if (not isinstance(run.metrics, list) or state["epoch"] != len(run.metrics)
                    or [m.get("epoch") for m in run.metrics] != list(range(1, len(run.metrics) + 1))
                    or not isinstance(run.best_test_loss, float) or type(run.bad_epochs) is not int):
                raise ValueError("its epoch, metrics and early-stopping state disagree")
        except (KeyError, TypeError, ValueError, RuntimeError, AttributeError) as e:
            what = f"no {e}" if isinstance(e, KeyError) else first_line(e)
            raise CheckpointError(f"{path} cannot be resumed: {what}") from None
        run.data = state.get("data", {})
        return run

    def checkpoint(self) -> dict[str, Any]:
        return {
            "config": self.config.to_dict(), "settings": dataclasses.asdict(self.settings),
            "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
            "epoch": len(self.metrics), "metrics": self.metrics,
            "best_test_loss": self.best_test_loss, "bad_epochs": self.bad_epochs,
            "rng": {"shuffle": self.shuffle_rng.get_state(), "noise": self.noise_rng.get_state()},
            "data": self.data,
        }


def train(config: VAEConfig, settings: TrainSettings, out: str | Path, *, data_dir: str | Path | None = None,
          device: str = "auto", resume: bool = False, on_batch: OnBatch | None = None,
          on_epoch: OnEpoch | None = None, on_data: OnData | None = None) -> list[dict[str, Any]]:
    """Train, writing checkpoint.pt, metrics.jsonl and the figures into `out` every epoch.

    The model's image_shape is the data's (C, H, W): a preset describes the network, the data its
    shape. `on_data` receives a one-line description of the data once it is loaded. With `resume`,
    the config, settings and RNG state come from out/checkpoint.pt; only `settings.epochs` (the
    total to reach) is taken from the caller. Returns every epoch's metrics.
    Under torchrun every process calls this; they train one model together (training/distributed.py).
    """
    world, dev = distributed.setup(pick_device(device))
    try:
        return _train(config, settings, out, world, dev, data_dir, resume, on_batch, on_epoch, on_data)
    finally:
        distributed.teardown()


def _train(config: VAEConfig, settings: TrainSettings, out: str | Path, world: distributed.World,
           dev: torch.device, data_dir: str | Path | None, resume: bool, on_batch: OnBatch | None,
           on_epoch: OnEpoch | None, on_data: OnData | None) -> list[dict[str, Any]]:
    # As the model grows confident that MNIST's border pixels are black, their logits sink below -87 and
    # sigmoid gradients turn denormal, which the CPU handles far slower (each epoch was slower than the last).
    # Flushing them to zero changes no result at float32 precision. Set before any tensor work, so
    # that OpenMP's worker threads, created later, inherit it (the flag is per thread).
    torch.set_flush_denormal(True)
    with made_dir(out) as out, run_lock(out) if world.is_main else contextlib.nullcontext():  # rank 0 alone writes into out
        return _train_locked(config, settings, out, world, dev, data_dir, resume, on_batch, on_epoch, on_data)


def _train_locked(config: VAEConfig, settings: TrainSettings, out: Path, world: distributed.World,
                  dev: torch.device, data_dir: str | Path | None, resume: bool, on_batch: OnBatch | None,
                  on_epoch: OnEpoch | None, on_data: OnData | None) -> list[dict[str, Any]]:
    if not resume and (out / CHECKPOINT).exists():
        raise UsageError(f"{out / CHECKPOINT} already exists: pass --resume to continue it, or choose another --out")
    owned = _owned_run(out, resume) if world.is_main else None
    if resume:
        # rank 0's checkpoint, sent to every rank: the other machines need no copy of it
        run = Run.resume(distributed.from_main(load_checkpoint(out / CHECKPOINT) if world.is_main else None),
                         settings.epochs, dev, out / CHECKPOINT)
        data = load_from_settings(dataclasses.asdict(run.settings), resolve_data_dir(data_dir))
        check_same_data(run.data, run.config.image_shape, data, out / CHECKPOINT)
    else:
        data = load_from_settings(dataclasses.asdict(settings), resolve_data_dir(data_dir))
        chosen = ""
        if config.likelihood == "auto":
            likelihood, why = choose_likelihood(data.train, settings.binarize)
            config, chosen = dataclasses.replace(config, likelihood=likelihood), f"likelihood auto: {likelihood} ({why})"
        run = Run.start(dataclasses.replace(config, image_shape=data.image_shape), settings, dev)
        run.data = {"description": data.description, "split": data.split, "likelihood_choice": chosen}
    settings = run.settings
    if dev.type == "cuda" and settings.precision != "fp32":  # TF32 tensor cores for the float32 matmuls
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    check_binarize(settings.binarize, run.config.likelihood)
    if on_data:
        on_data(data.description)
        if run.data.get("likelihood_choice"):
            on_data(run.data["likelihood_choice"])

    if settings.min_steps and not resume:   # a small dataset trains for epochs enough to make min_steps steps
        per_epoch = math.ceil(len(data.train[: settings.limit]) / settings.batch_size)
        settings = run.settings = dataclasses.replace(settings, epochs=max(settings.epochs, math.ceil(settings.min_steps / per_epoch)))
    train_x = to_float(data.train[: settings.limit]).to(dev)
    test_x = to_float(data.test[: settings.limit]).to(dev)
    del data
    if settings.binarize == "static":
        train_x = static_binarized(train_x, "train")
    if settings.binarize != "none":  # dynamic too: one fixed draw of the test set, so the test loss is repeatable
        test_x = static_binarized(test_x, "test")
    fixed_z = torch.randn(64, run.config.latent_dim, generator=torch.Generator().manual_seed(0)).to(dev)
    net = distributed.wrap(run.model, world)
    parallel = distributed.describe(world, settings.batch_size, settings.lr)
    saved = len(run.metrics)  # epochs in checkpoint.pt: the figures never describe more
    try:
        for epoch in range(len(run.metrics) + 1, settings.epochs + 1):
            if settings.patience is not None and run.bad_epochs >= settings.patience:
                break
            t0 = time.perf_counter()
            train_loss = train_epoch(run, epoch, train_x, on_batch, net, world)
            train_seconds = time.perf_counter() - t0
            # evaluated once, by rank 0; every rank takes its result, so that all stop alike (patience)
            test = distributed.from_main(evaluate(run.model, test_x, settings.eval_batch_size, seed=settings.seed)
                                         if world.is_main else None)
            m = {"epoch": epoch, "train_loss": train_loss, **test, "seconds": round(time.perf_counter() - t0, 3),
                 "train_samples_per_s": round(len(train_x) / train_seconds, 1), "device": dev.type,
                 "world_size": world.size, "batch_size": settings.batch_size, "lr": run.optimizer.param_groups[0]["lr"]}
            if test["test_loss"] < run.best_test_loss:
                run.best_test_loss, run.bad_epochs = test["test_loss"], 0
            else:
                run.bad_epochs += 1
            run.metrics.append(m)
            if world.is_main:  # rank 0 alone writes
                save_checkpoint(out / CHECKPOINT, {**run.checkpoint(), "parallel": parallel})
                _write_metrics(run.metrics, out / "metrics.jsonl")
                owned.record([out / CHECKPOINT, out / "metrics.jsonl", *_write_figures(run.model, test_x, fixed_z, out)])
            saved = len(run.metrics)
            if on_epoch:
                on_epoch(m)
    finally:
        if saved and world.is_main:  # once per run, also after Ctrl-C, divergence or a full disk: a matplotlib figure is slow to draw
            failing = sys.exc_info()[1] is not None
            with contextlib.suppress(OSError) if failing else contextlib.nullcontext():  # keep the first error
                plots.save_loss_curve(run.metrics[:saved], out / "loss.png")
                owned.record([out / "loss.png"])
    return run.metrics[:saved]


def train_epoch(run: Run, epoch: int, x_all: torch.Tensor, on_batch: OnBatch | None,
                net: torch.nn.Module | None = None, world: distributed.World = distributed.World()) -> float:
    """One pass over the shuffled data; returns the mean loss per image (nats). The loss is summed
    over the batch before backward, as in pytorch/examples (Adam makes the scale immaterial).
    Under DDP (`net` wraps run.model) each rank computes its slice of every global batch."""
    model, optimizer = (run.model if net is None else net).train(), run.optimizer
    beta, likelihood, sigma = run.config.beta, run.config.likelihood, run.config.sigma
    squared = torch.zeros(run.config.image_shape[0], device=x_all.device)   # calibrated: sum of sigma^2 per channel
    total = torch.zeros((), device=x_all.device)
    index = batches(len(x_all), run.settings.batch_size, run.shuffle_rng)
    noise = distributed.epoch_noise(run.noise_rng, world)
    seen = torch.zeros((), device=x_all.device)
    # bf16: oneDNN (AMX) and tensor cores run the GEMMs and convolutions in bfloat16; the ELBO is
    # computed in float32 from float32 copies of the outputs
    autocast = torch.autocast(x_all.device.type, torch.bfloat16, enabled=uses_bf16(run.settings.precision, x_all.device))
    for i, idx in enumerate(index):
        x = x_all[distributed.rank_slice(idx, world).to(x_all.device)]
        if run.settings.binarize == "dynamic":
            x = bernoulli_draw(x, noise)
        with autocast:
            logits, mu, logvar = model(x, noise)
        if likelihood == "calibrated":   # sigma-VAE: this batch's maximum-likelihood sigma per channel
            sigma = calibrated_sigma(torch.sigmoid(logits.detach().float()), x)
            squared += sigma.flatten() ** 2
        recon, kl = elbo_terms(logits.float(), x, mu.float(), logvar.float(), likelihood, sigma)
        loss = recon + beta * kl
        if run.settings.lr_schedule == "onecycle":   # from the step alone: a resumed run continues it exactly
            lr, beta1 = one_cycle((epoch - 1) * len(index) + i, run.settings.epochs * len(index), run.settings.lr)
            for group in optimizer.param_groups:
                group["lr"], group["betas"] = lr, (beta1, group["betas"][1])
        optimizer.zero_grad(set_to_none=True)
        distributed.loss_for_backward(loss, world).backward()
        optimizer.step()
        total += loss.detach()
        seen += len(x)
        if i % 25 == 24 or i == len(index) - 1:   # a host sync only every 25 batches
            total_all, seen_all = distributed.sum_over_ranks(total, seen)   # all ranks see the same figure
            running = total_all.item() / seen_all.item()
            if not math.isfinite(running):
                raise TrainingDiverged(f"loss became {running} in batch {i + 1}; the last good checkpoint is kept "
                                       "(try a lower --lr or --beta)")
            if on_batch:
                on_batch(BatchProgress(epoch, i + 1, len(index), int(seen_all), running, run.settings.epochs))
    if likelihood == "calibrated":   # the epoch's sigma, which evaluation and the checkpoint use
        channel_sigma = tuple(round(v, 6) for v in (squared / len(index)).sqrt().tolist())
        run.config = run.model.config = dataclasses.replace(run.config, channel_sigma=channel_sigma)
    return running


@torch.no_grad()
def evaluate(model: VAE, x_all: torch.Tensor, batch_size: int = 2000, seed: int = 1) -> dict[str, float]:
    """Test loss per image in nats: one reparameterized sample per image, as pytorch/examples'
    `Test set loss` (a single-sample ELBO estimate), with a fixed noise seed so it is repeatable;
    and the mean PSNR of the reconstructions from the posterior means (what `reconstruct` gives)."""
    model.eval()
    rng = torch.Generator(device=x_all.device).manual_seed(seed)
    recon_sum = kl_sum = psnr_sum = 0.0
    for x in x_all.split(batch_size):
        logits, mu, logvar = model(x, rng)
        psnr_sum += psnr(model.decoder(mu), x).sum().item()
        recon, kl = elbo_terms(logits, x, mu, logvar, model.config.likelihood, pixel_sigma(model.config).to(x.device)
                               if model.config.likelihood == "calibrated" else model.config.sigma)
        recon_sum, kl_sum = recon_sum + recon.item(), kl_sum + kl.item()
    n = len(x_all)
    loss = (recon_sum + model.config.beta * kl_sum) / n
    if not math.isfinite(loss):
        raise TrainingDiverged(f"test loss became {loss}; the last good checkpoint is kept")
    return {"test_loss": loss, "test_recon": recon_sum / n, "test_kl": kl_sum / n, "test_psnr": round(psnr_sum / n, 3)}


def psnr(recon: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Peak signal-to-noise ratio per image in dB (pixels in [0, 1]): 10 log10(1 / MSE), MSE floored at 1e-10."""
    return -10 * torch.log10((recon.float() - x).pow(2).flatten(1).mean(1).clamp(min=1e-10))


def _write_metrics(metrics: list[dict[str, Any]], path: Path) -> None:
    with atomic_open(path, "w") as f:
        f.writelines(json.dumps(strict_json(m), allow_nan=False) + "\n" for m in metrics)


def _owned_run(out: Path, resume: bool) -> OwnedDir:
    """The run folder as files.OwnedDir: refuse, before any work, to write over a file of the user's. A run
    resumed from before the ledger existed owns its files by name (its checkpoint says it is a run)."""
    owned = OwnedDir(out, "vae-export train")
    earlier = resume and not any(e.get("by") == owned.producer for e in owned.ledger().values())
    owned.check(RUN_FILES, adopt=RUN_FILES if earlier else ())
    return owned


@torch.no_grad()
def _write_figures(model: VAE, test_x: torch.Tensor, fixed_z: torch.Tensor, out: Path) -> list[Path]:
    model.eval()
    x = test_x[:8]
    plots.save_reconstruction(x, model.decoder(model.encoder(x)[0]), out / "reconstruction.png")
    plots.save_grid(model.decoder(fixed_z), out / "samples.png")
    if model.config.latent_dim == 2:
        plots.save_manifold(model.decoder, out / "manifold.png")
    return [out / name for name in ("reconstruction.png", "samples.png", "manifold.png")[:2 + (model.config.latent_dim == 2)]]
