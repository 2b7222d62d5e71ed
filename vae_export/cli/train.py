"""`vae-export train`: fit a VAE preset, writing a checkpoint and figures every epoch."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer

from ..config import PRESETS
from ..errors import VaeExportError
from .common import Device, Quiet, command, err, out

Preset = Enum("Preset", {name.replace("-", "_"): name for name in PRESETS}, type=str)


class Likelihood(str, Enum):
    bernoulli = "bernoulli"
    gaussian = "gaussian"


@command
def train(
    preset: Annotated[Preset, typer.Option(help="Architecture preset.")] = Preset.mlp,
    epochs: Annotated[int, typer.Option(min=1, help="Total epochs to reach (also with --resume).")] = 10,
    batch_size: Annotated[int, typer.Option(min=1)] = 128,
    lr: Annotated[float, typer.Option(help="Adam learning rate (> 0).")] = 1e-3,
    latent_dim: Annotated[Optional[int], typer.Option(min=1, help="Override the preset's latent size.")] = None,
    beta: Annotated[Optional[float], typer.Option(min=0.0, help="KL weight (1 = the ELBO).")] = None,
    likelihood: Annotated[Optional[Likelihood], typer.Option(help="Override the preset's likelihood.")] = None,
    dataset: Annotated[str, typer.Option(help="mnist, fashion-mnist, cifar10, cifar100 (torchvision, downloaded when "
                                         "online), folder:PATH (images, recursively), npy:PATH or npz:PATH (an array "
                                         "(N, H, W), (N, C, H, W) or (N, H, W, C), uint8 or float in [0, 1]).")] = "mnist",
    image_size: Annotated[Optional[str], typer.Option(help="Resize every image to HxW (e.g. 64x64) [default: the "
                                                      "data's size; required if a folder's sizes differ].")] = None,
    channels: Annotated[Optional[int], typer.Option(help="1 (grey) or 3 (RGB) [default: what the images are].")] = None,
    test_fraction: Annotated[float, typer.Option(help="folder/npy/npz: share of images held out for the test loss "
                                                 "(a fixed split, recorded in the checkpoint).")] = 0.1,
    skip_bad_files: Annotated[bool, typer.Option(help="folder: train without unreadable files instead of refusing.")] = False,
    conv_widths: Annotated[Optional[str], typer.Option(help="conv presets: encoder widths, one 3x3 layer each, e.g. "
                                                       "32,64,128,256 (stride 2 where the image size allows).")] = None,
    data_dir: Annotated[Optional[Path], typer.Option(help="Dataset root [default: $VAE_EXPORT_DATA or ~/.cache/vae-export/data].")] = None,
    device: Annotated[Device, typer.Option(help="auto picks CUDA when torch sees a GPU.")] = Device.auto,
    seed: Annotated[int, typer.Option()] = 1,
    patience: Annotated[Optional[int], typer.Option(min=1, help="Stop after N epochs without a better test loss.")] = None,
    limit: Annotated[Optional[int], typer.Option(min=1, help="Use only the first N images of each split.")] = None,
    out_dir: Annotated[Path, typer.Option("--out", help="Run folder [default: runs/PRESET].")] = None,
    resume: Annotated[bool, typer.Option(help="Continue the run in --out from its checkpoint.")] = False,
    quiet: Quiet = False,
):
    """Train a VAE; writes checkpoint.pt, metrics.jsonl and figures into --out after every epoch."""
    from training.train import TrainSettings, train as run_training  # torch loads only for commands that need it

    from ..config import make_config
    from ..progress import TrainProgress

    widths = _sizes(conv_widths, ",", "--conv-widths", "32,64,128")
    if widths and PRESETS[preset.value].arch != "conv":
        raise typer.BadParameter(f"--conv-widths applies to conv presets, not {preset.value}")
    config = make_config(preset.value, latent_dim=latent_dim, beta=beta,
                         likelihood=likelihood.value if likelihood else None,
                         channels=widths, strides=() if widths else None)
    settings = TrainSettings(epochs=epochs, batch_size=batch_size, lr=lr, seed=seed, dataset=dataset,
                             patience=patience, limit=limit, image_size=_sizes(image_size, "x", "--image-size", "64x64", 2),
                             image_channels=channels, test_fraction=test_fraction, skip_bad_files=skip_bad_files)
    out_dir = out_dir or Path("runs") / preset.value
    progress = TrainProgress(err, epochs, quiet)
    with progress:
        metrics = run_training(config, settings, out_dir, data_dir=data_dir, device=device.value, resume=resume,
                               on_batch=progress.batch, on_epoch=progress.epoch,
                               on_data=None if quiet else lambda line: err.print(f"data: {line}", markup=False))
    if not metrics:
        raise VaeExportError(f"no epoch was trained in {out_dir}")
    last = metrics[-1]
    out.print(f"{out_dir / 'checkpoint.pt'}: epoch {last['epoch']}, test loss {last['test_loss']:.2f} nats/image "
              f"(recon {last['test_recon']:.2f}, KL {last['test_kl']:.2f}), {sum(m['seconds'] for m in metrics):.1f} s training")
    if not quiet:
        err.print(f"next: vae-export onnx {out_dir / 'checkpoint.pt'} --out {out_dir / 'export'}")


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
