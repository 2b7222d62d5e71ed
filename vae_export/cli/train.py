"""`vae-export train`: fit a VAE preset, writing a checkpoint and figures every epoch."""

from __future__ import annotations

import os
import sys
from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer

from ..config import PRESETS, TRAINING_DEFAULTS
from ..errors import UsageError, VaeExportError
from .common import Device, Quiet, command, err, needs_train_extra, out

Preset = Enum("Preset", {name.replace("-", "_"): name for name in PRESETS}, type=str)


class TrainPrecision(str, Enum):
    auto = "auto"
    fp32 = "fp32"
    bf16 = "bf16"


class Likelihood(str, Enum):
    auto = "auto"
    bernoulli = "bernoulli"
    gaussian = "gaussian"
    calibrated = "calibrated"


SEED_MAX = 2**63 - 2          # torch seeds are 64-bit; the noise generator takes seed + 1
MIN_STEPS = 3000              # without --epochs: a small dataset trains until this many steps (colour needs them)
SIZE_MAX = 2**31 - 1          # torch indexes batches and slices with 32/64-bit integers


class LrSchedule(str, Enum):
    constant = "constant"
    onecycle = "onecycle"


class Binarize(str, Enum):
    none = "none"
    dynamic = "dynamic"
    static = "static"


@command
@needs_train_extra
def train(
    preset: Annotated[Optional[Preset], typer.Option(help="Architecture preset.", show_default="mlp")] = None,
    epochs: Annotated[Optional[int], typer.Option(min=1, max=SIZE_MAX, show_default="10, or more on a small dataset: as many as make 3000 steps",
                                                  help="Total epochs to reach (also with --resume).")] = None,
    batch_size: Annotated[Optional[int], typer.Option(min=1, max=SIZE_MAX, show_default="128")] = None,
    lr: Annotated[Optional[float], typer.Option(help="Adam learning rate (> 0); onecycle: its peak.",
                                                show_default="0.001; conv-large: 0.003")] = None,
    lr_schedule: Annotated[Optional[LrSchedule], typer.Option(show_default="constant; conv-large: onecycle", help="onecycle: "
                                                              "the rate rises to --lr over the first quarter of the steps, then "
                                                              "anneals to almost 0 (the tutorial presets keep their constant rate).")] = None,
    latent_dim: Annotated[Optional[int], typer.Option(min=1, max=2**16, help="Override the preset's latent size.")] = None,
    latent_channels: Annotated[Optional[int], typer.Option(min=0, max=2**12, help="conv presets: a latent on the last conv "
                                                           "layer's grid with this many channels per cell (conv-large: 8; "
                                                           "latent size = channels x cells); 0 = a flat latent of --latent-dim.")] = None,
    beta: Annotated[Optional[float], typer.Option(min=0.0, help="KL weight (1 = the ELBO).")] = None,
    likelihood: Annotated[Optional[Likelihood], typer.Option(help="Override the preset's likelihood. auto (every preset but "
                                                                 "mlp-deep): bernoulli for binary or MNIST-like images, calibrated "
                                                                 "(a Gaussian with sigma = the RMSE per channel) for colour and "
                                                                 "grey-level photos; the choice is logged.")] = None,
    sigma: Annotated[Optional[float], typer.Option(help="Gaussian likelihood: the fixed pixel "
                                    "std (> 0) [default: sqrt(1/2), i.e. summed squared error].")] = None,
    binarize: Annotated[Optional[Binarize], typer.Option(show_default="none", help="Binary pixels for a normalized Bernoulli "
                                                         "likelihood: a fresh draw every batch (dynamic) or one fixed draw (static).")] = None,
    dataset: Annotated[Optional[str], typer.Option(show_default="mnist", help="mnist, fashion-mnist, cifar10, cifar100 (torchvision, downloaded when "
                                                   "online), folder:PATH (images, recursively), npy:PATH or npz:PATH (an array "
                                                   "(N, H, W), (N, C, H, W) or (N, H, W, C), uint8 or float in [0, 1]).")] = None,
    image_size: Annotated[Optional[str], typer.Option(help="Resize every image to HxW (e.g. 64x64) [default: the "
                                                      "data's size; required if a folder's sizes differ].")] = None,
    channels: Annotated[Optional[int], typer.Option(min=1, max=3, help="1 (grey) or 3 (RGB) [default: what the images are].")] = None,
    test_fraction: Annotated[Optional[float], typer.Option(show_default="0.1", help="folder/npy/npz: share of images held out "
                                                           "for the test loss (a fixed split, recorded in the checkpoint).")] = None,
    skip_bad_files: Annotated[bool, typer.Option(help="folder: train without unreadable files instead of refusing.")] = False,
    conv_widths: Annotated[Optional[str], typer.Option(help="conv presets: encoder widths, one 3x3 layer each, e.g. "
                                                       "32,64,128,256 (stride 2 where the image size allows).")] = None,
    data_dir: Annotated[Optional[Path], typer.Option(help="Dataset root [default: $VAE_EXPORT_DATA or ~/.cache/vae-export/data].")] = None,
    device: Annotated[Device, typer.Option(help="auto picks CUDA when torch sees a GPU.")] = Device.auto,
    seed: Annotated[Optional[int], typer.Option(min=0, max=SEED_MAX, show_default="1")] = None,
    patience: Annotated[Optional[int], typer.Option(min=1, max=SIZE_MAX, help="Stop after N epochs without a better test loss.")] = None,
    limit: Annotated[Optional[int], typer.Option(min=1, max=SIZE_MAX, help="Use only the first N images of each split.")] = None,
    precision: Annotated[Optional[TrainPrecision], typer.Option(show_default="auto", help="bf16: autocast forward; loss and weights stay float32. auto: bf16 on CUDA, fp32 on CPU.")] = None,
    out_dir: Annotated[Path, typer.Option("--out", help="Run folder [default: runs/PRESET].")] = None,
    resume: Annotated[bool, typer.Option(help="Continue the run in --out from its checkpoint (only --epochs, --device, --data-dir may change).")] = False,
    nproc: Annotated[int, typer.Option(min=1, help="Data-parallel processes on this machine (one per GPU); >1 runs torchrun.")] = 1,
    quiet: Quiet = False,
):
    """Train a VAE; writes checkpoint.pt, metrics.jsonl and figures into --out after every epoch."""
    from vae_export.training import distributed  # torch loads only for commands that need it
    from vae_export.training.train import TrainSettings, train as run_training

    from ..config import make_config
    from ..files import check_output
    from ..progress import TrainProgress

    saved = {"--preset": preset, "--batch-size": batch_size, "--lr": lr, "--lr-schedule": lr_schedule, "--latent-dim": latent_dim, "--latent-channels": latent_channels, "--beta": beta,
             "--likelihood": likelihood, "--sigma": sigma, "--binarize": binarize, "--dataset": dataset, "--image-size": image_size, "--channels": channels,
             "--test-fraction": test_fraction, "--skip-bad-files": skip_bad_files or None, "--conv-widths": conv_widths,
             "--seed": seed, "--patience": patience, "--limit": limit, "--precision": precision}
    if resume and any(v is not None for v in saved.values()):  # these come from the checkpoint: refuse, never drop
        raise UsageError(f"--resume continues with the checkpoint's own settings; drop "
                         f"{', '.join(k for k, v in saved.items() if v is not None)}")
    preset_name = preset.value if preset else "mlp"
    widths = _sizes(conv_widths, ",", "--conv-widths", "32,64,128")
    if widths and PRESETS[preset_name].arch != "conv":
        raise typer.BadParameter(f"--conv-widths applies to conv presets, not {preset_name}")
    if latent_channels and PRESETS[preset_name].arch != "conv":
        raise typer.BadParameter(f"--latent-channels applies to conv presets, not {preset_name}")
    if latent_dim and (latent_channels or (latent_channels is None and PRESETS[preset_name].latent_channels)):
        raise UsageError(f"{preset_name}'s latent lies on its conv grid: its size is --latent-channels x the grid's cells "
                         f"(8x8 for 32x32 and 64x64 images); for a flat latent of {latent_dim}, add --latent-channels 0")
    config = make_config(preset_name, latent_dim=latent_dim, latent_channels=latent_channels, beta=beta, sigma=sigma,
                         likelihood=likelihood.value if likelihood else None,
                         channels=widths, strides=() if widths else None)
    given = {"batch_size": batch_size, "lr": lr, "seed": seed,
             "lr_schedule": lr_schedule.value if lr_schedule else None, "dataset": dataset, "test_fraction": test_fraction,
             "image_size": _sizes(image_size, "x", "--image-size", "64x64", 2), "image_channels": channels,
             "binarize": binarize.value if binarize else None, "precision": (precision or TrainPrecision.auto).value}
    settings = TrainSettings(epochs=epochs or 10, min_steps=0 if epochs or resume else MIN_STEPS, patience=patience, limit=limit, skip_bad_files=skip_bad_files,
                             **{**TRAINING_DEFAULTS.get(preset_name, {}), **{k: v for k, v in given.items() if v is not None}})
    out_dir = check_output(out_dir or Path("runs") / preset_name, folder=True)
    if nproc > 1:  # the options are valid: now run this very command in nproc processes
        if "LOCAL_RANK" in os.environ:
            raise UsageError("--nproc starts torchrun itself; under torchrun, leave it out")
        from vae_export.training.launch import run_parallel

        code, line = run_parallel(nproc, ["train", *_without_option(sys.argv[2:], "--nproc")])
        if code:
            checkpoint = out_dir / "checkpoint.pt"
            kept = (f"; the last good checkpoint, {checkpoint}, is kept" if checkpoint.is_file()
                    else f"; no checkpoint was written in {out_dir}")
            raise VaeExportError(f"a process of the run failed: {line or f'exit code {code}'}{kept}")
        return
    world = distributed.World.from_env()
    quiet = quiet or not world.is_main  # under torchrun, rank 0 alone reports
    if world.size > 1 and not quiet and not resume:  # a resumed run's batch and lr come from its checkpoint
        parallel = distributed.describe(world, settings.batch_size, settings.lr)
        err.print(f"{world.size} processes: effective batch {settings.batch_size} "
                  f"({parallel['batch_per_rank']} per process), lr {settings.lr}")
    progress = TrainProgress(err, settings.epochs, quiet)
    with progress:
        metrics = run_training(config, settings, out_dir, data_dir=data_dir, device=device.value, resume=resume,
                               on_batch=progress.batch, on_epoch=progress.epoch,
                               on_data=None if quiet else lambda line: err.print(f"data: {line}", markup=False))
    if not metrics:
        raise VaeExportError(f"no epoch was trained in {out_dir}")
    if not world.is_main:
        return
    last = metrics[-1]
    out.print(f"{out_dir / 'checkpoint.pt'}: epoch {last['epoch']}, test loss {last['test_loss']:.2f} nats/image "
              f"(recon {last['test_recon']:.2f}, KL {last['test_kl']:.2f}), PSNR {last['test_psnr']:.1f} dB, {sum(m['seconds'] for m in metrics):.1f} s training")
    if not quiet:
        err.print(f"next: vae-export onnx {out_dir / 'checkpoint.pt'} --out {out_dir / 'export'}")


def _without_option(args: list[str], name: str) -> list[str]:
    """`args` less `name VALUE` and `name=VALUE` (what torchrun's processes must not see again)."""
    kept, skip = [], False
    for arg in args:
        if skip or arg.startswith(f"{name}="):
            skip = False
        elif arg == name:
            skip = True
        else:
            kept.append(arg)
    return kept


def _sizes(text: Optional[str], sep: str, option: str, example: str, count: Optional[int] = None) -> Optional[tuple[int, ...]]:
    """'64x48' -> (64, 48); '32,64' -> (32, 64); None -> None. A bad value is a usage error (exit 2)."""
    if text is None:
        return None
    try:
        sizes = tuple(int(v) for v in text.lower().split(sep))
    except ValueError:
        sizes = ()
    if count == 2 and len(sizes) == 1:     # --image-size 64 = 64x64
        sizes *= 2
    if not sizes or min(sizes) < 1 or (count and len(sizes) != count):
        raise typer.BadParameter(f"{option} must look like {example}, got {text!r}")
    return sizes
