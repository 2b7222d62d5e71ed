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


class Dataset(str, Enum):
    mnist = "mnist"
    fashion_mnist = "fashion-mnist"


class TrainPrecision(str, Enum):
    auto = "auto"
    fp32 = "fp32"
    bf16 = "bf16"


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
    dataset: Annotated[Dataset, typer.Option()] = Dataset.mnist,
    data_dir: Annotated[Optional[Path], typer.Option(help="Dataset root [default: $VAE_EXPORT_DATA or ~/.cache/vae-export/data].")] = None,
    device: Annotated[Device, typer.Option(help="auto picks CUDA when torch sees a GPU.")] = Device.auto,
    seed: Annotated[int, typer.Option()] = 1,
    patience: Annotated[Optional[int], typer.Option(min=1, help="Stop after N epochs without a better test loss.")] = None,
    limit: Annotated[Optional[int], typer.Option(min=1, help="Use only the first N images of each split.")] = None,
    precision: Annotated[TrainPrecision, typer.Option(help="bf16: autocast forward; loss and weights stay float32. auto: bf16 on CUDA, fp32 on CPU.")] = TrainPrecision.auto,
    out_dir: Annotated[Path, typer.Option("--out", help="Run folder [default: runs/PRESET].")] = None,
    resume: Annotated[bool, typer.Option(help="Continue the run in --out from its checkpoint.")] = False,
    quiet: Quiet = False,
):
    """Train a VAE; writes checkpoint.pt, metrics.jsonl and figures into --out after every epoch."""
    from training.train import TrainSettings, train as run_training  # torch loads only for commands that need it

    from ..config import make_config
    from ..progress import TrainProgress

    config = make_config(preset.value, latent_dim=latent_dim, beta=beta,
                         likelihood=likelihood.value if likelihood else None)
    settings = TrainSettings(epochs=epochs, batch_size=batch_size, lr=lr, seed=seed, dataset=dataset.value,
                             patience=patience, limit=limit, precision=precision.value)
    out_dir = out_dir or Path("runs") / preset.value
    progress = TrainProgress(err, epochs, quiet)
    with progress:
        metrics = run_training(config, settings, out_dir, data_dir=data_dir, device=device.value, resume=resume,
                               on_batch=progress.batch, on_epoch=progress.epoch)
    if not metrics:
        raise VaeExportError(f"no epoch was trained in {out_dir}")
    last = metrics[-1]
    out.print(f"{out_dir / 'checkpoint.pt'}: epoch {last['epoch']}, test loss {last['test_loss']:.2f} nats/image "
              f"(recon {last['test_recon']:.2f}, KL {last['test_kl']:.2f}), {sum(m['seconds'] for m in metrics):.1f} s training")
    if not quiet:
        err.print(f"next: vae-export onnx {out_dir / 'checkpoint.pt'} --out {out_dir / 'export'}")


