"""`vae-export evaluate`: importance-sampled -log p(x) per image, for the eager model or exported files."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer

from ..errors import UsageError
from .common import Device, Quiet, command, err, needs_train_extra, out


class Split(str, Enum):
    test = "test"
    train = "train"


class Binarize(str, Enum):
    none = "none"
    dynamic = "dynamic"
    static = "static"


def parse_ks(text: str) -> tuple[int, ...]:
    try:
        ks = tuple(int(k) for k in text.split(","))
    except ValueError:
        raise UsageError(f"--k must be comma-separated integers, got {text!r}") from None
    return ks  # EvalSettings refuses k <= 0


@command
@needs_train_extra
def evaluate(
    checkpoint: Annotated[Path, typer.Argument(help="A checkpoint.pt written by `vae-export train`.")],
    k: Annotated[str, typer.Option("--k", help="Importance samples per image, comma-separated.")] = "1,10,100,1000,5000",
    n_images: Annotated[Optional[int], typer.Option(min=1, help="Use the first N images of the split.")] = None,
    split: Annotated[Split, typer.Option()] = Split.test,
    seed: Annotated[int, typer.Option(min=0, max=2**63 - 1, help="Seeds the importance samples (and a dynamic binarization): keep it "
                                           "fixed to compare variants on the same noise.")] = 0,
    binarize: Annotated[Optional[Binarize], typer.Option(help="Pixels for a Bernoulli likelihood [default: as trained].")] = None,
    encoder: Annotated[Optional[Path], typer.Option(help="An exported encoder.onnx in place of the eager encoder.")] = None,
    decoder: Annotated[Optional[Path], typer.Option(help="An exported decoder*.onnx in place of the eager decoder.")] = None,
    device: Annotated[Device, typer.Option(help="Eager torch device and onnxruntime provider.")] = Device.auto,
    data_dir: Annotated[Optional[Path], typer.Option(help="Dataset root [default: $VAE_EXPORT_DATA or ~/.cache/vae-export/data].")] = None,
    report: Annotated[Optional[Path], typer.Option(help="Also write the figures as JSON.")] = None,
    quiet: Quiet = False,
):
    """Estimate -log p(x) by importance sampling (nats/image, bits/dim), with the ELBO and active units."""
    from vae_export.training.data import load_run_data, resolve_data_dir, to_float
    from vae_export.training.train import pick_device

    from ..checkpoint import load_model
    from ..evaluate import EvalSettings, check_inputs, evaluate as run_evaluation, networks
    from ..files import check_output, sha256_file
    from ..progress import SampleProgress

    if report is not None:
        check_output(report, inputs=(checkpoint, encoder, decoder), option="--report")
    ks = parse_ks(k)
    model, state = load_model(checkpoint)
    trained = state.get("settings", {})
    settings = EvalSettings(ks=ks, n_images=n_images, split=split.value, seed=seed,
                            binarize=binarize.value if binarize else trained.get("binarize", "none"))
    dev = str(pick_device(device.value))
    check_inputs(model.config, None, settings)                          # before the data is read
    nets = networks(model, sha256_file(checkpoint), encoder, decoder, dev)
    data = load_run_data(state, resolve_data_dir(data_dir), checkpoint)     # the run's own data, or refused
    images = to_float(data.train if split == Split.train else data.test)
    check_inputs(model.config, images, settings)
    with SampleProgress(err, min(n_images or len(images), len(images)), disable=quiet, label="images") as progress:
        result = run_evaluation(nets, model.config, images, settings, device=dev, on_images=progress.advance)
    print_result(result)
    if report is not None:
        from ..files import write_json

        write_json(report, result)
        if not quiet:
            err.print(f"wrote {report}")


def print_result(r: dict) -> None:
    from rich.table import Table

    table = Table("k", "-log p(x) nats", "± s.e.", "bits/dim", title=f"{r['n_images']} {r['settings']['split']} images, "
                  f"encoder {r['encoder']}, decoder {r['decoder']}, seed {r['settings']['seed']}")
    for row in r["nll"]:
        table.add_row(str(row["k"]), f"{row['nll_nats']:.3f}", f"{row['nll_stderr']:.3f}", f"{row['bits_per_dim']:.4f}")
    out.print(table)
    out.print(f"-ELBO {r['elbo_nats']:.3f} nats = recon {r['recon_nats']:.3f} + KL {r['kl_nats']:.3f}; "
              f"PSNR {r['psnr_db']:.2f} dB; active units {r['active_units']}/{r['latent_dim']}; likelihood: {r['meaning']}; {r['seconds']:.1f} s")
