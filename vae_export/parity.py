"""Prove that every exported file computes what the eager model computes, after optimum's validator:
names first, then shapes over several batch sizes (which proves the dynamic batch axis), then values
on random inputs and on real test images, per output with max abs/rel difference and both tolerances.

    vae-export parity runs/mlp/checkpoint.pt runs/mlp/export --provider all
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import json
import warnings
import zipfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from . import runtime
from .errors import ArtifactError, ParityError, first_line
from .export import FORMATS, SPECS, TORCHSCRIPT_EXTRA, format_of
from .model import VAE
from .provenance import from_checkpoint

BATCH_SIZES = (1, 7, 1000)
REL_FLOOR = 1e-6   # max rel = |export - eager| / max(|eager|, REL_FLOOR): defined even where eager is 0

# (atol, rtol) against eager float32, |export - eager| <= atol + rtol * |eager| elementwise.
# TorchScript runs torch's own kernels: 1e-6. ONNX Runtime's MLAS GEMMs sum in another order: 1e-5
# on the decoder's [0, 1] images. Encoder outputs are unbounded (mu, logvar), so they add
# rtol 1e-5, float32's few-ulp level at that magnitude. CUDA: TF32 off on both sides (see below).
TOLERANCES: dict[str, tuple[float, float]] = {
    "torchscript": (1e-6, 0.0),
    "pt2": (1e-6, 0.0),             # an ExportedProgram's module() runs torch's own kernels
    "aoti": (1e-5, 0.0),            # AOTInductor's generated kernels fuse and vectorize: another order
    "onnxruntime-cpu": (1e-5, 0.0),
    "onnxruntime-cuda": (1e-5, 0.0),
}
ENCODER_RTOL = 1e-5
# Reduced-precision decoder variants: stated bounds on [0, 1] pixels, set from measurement (the mlp
# decoder, random and real latents: fp16 max 7e-4, mean 2e-5; int8, static per-channel, max 4.3e-2
# ~ 11/255, mean 7.9e-4, costing +0.005 nats/image of test loss, see quality.py). The measured max
# and mean error are in every row, so the wider int8 bound hides nothing.
VARIANT_TOLERANCES: dict[str, tuple[float, float]] = {"fp16": (2e-3, 0.0), "int8": (1e-1, 0.0)}
# Lossy files are judged by what they cost, not by their worst pixel (a 784-400-40 binarized model's
# int8 decoder moves one pixel by 0.64 yet costs +0.24 nats): parity bounds their MEAN |diff| over the
# pixels (the worst pixel is still in every row; VARIANT_TOLERANCES stay the fast-path sanity bound of
# `bench`), and the export bounds their measured test-loss cost in nats/image (VARIANT_COST_NATS).
# OpenVINO's bf16 precision is held to the same kind of bounds (portability.py, openvino_backend.py).
VARIANT_MEAN = {"fp16": 1e-4, "int8": 1e-2, "bf16": 1e-3}
VARIANT_COST_NATS = {"fp16": 0.05, "int8": 0.5, "bf16": 0.1}


@dataclass
class Row:
    artifact: str
    backend: str
    inputs: str          # "random", or the dataset of the real images ("mnist", "folder", ...)
    batch_size: int
    output: str
    max_abs: float
    mean_abs: float
    max_rel: float
    atol: float
    rtol: float
    passed: bool
    loaded_by: str = ""  # the runtime and version that loaded the file: "torch 2.14.1", "onnxruntime 1.23.2"
    bound_on: str = "max"  # "mean": a lossy variant, whose atol bounds the mean |diff|

    def as_dict(self) -> dict:
        return asdict(self)


def artifacts_in(directory: Path) -> list[Path]:
    """Every exported network in `directory` (encoder/decoder, any variant, any format of FORMATS)."""
    found = sorted(p for p in Path(directory).iterdir()
                   if format_of(p) and p.name.split(".")[0] in SPECS and not p.name.startswith("."))
    if not found:
        raise ArtifactError(f"no encoder/decoder .onnx, .pt2 or .torchscript files in {directory}")
    return found


def check_exported_from(paths: list[Path], checkpoint: Path, sha256: str) -> None:
    """Refuse, before any work, an artifact exported from another checkpoint: its parity would fail
    for a reason no tolerance explains (provenance.from_checkpoint)."""
    for path in paths:
        from_checkpoint(path, artifact_metadata(path), checkpoint, sha256)


def artifact_metadata(path: Path) -> dict:
    """An artifact's metadata without running it: ONNX metadata_props, or the JSON in a zip archive
    (TorchScript's and a .pt2's extra file; an AOTInductor package's metadata, which holds ours)."""
    fmt = format_of(path)
    if fmt == "onnx":
        return runtime.read_metadata(path)
    try:
        with zipfile.ZipFile(path) as archive:
            if fmt == "aoti":
                name = next(n for n in archive.namelist() if n.endswith(".wrapper_metadata.json"))
                meta = json.loads(json.loads(archive.read(name))[TORCHSCRIPT_EXTRA])
            else:
                name = next(n for n in archive.namelist() if n.endswith(f"/extra/{TORCHSCRIPT_EXTRA}"))
                meta = json.loads(archive.read(name))
    except (OSError, zipfile.BadZipFile, StopIteration, ValueError, KeyError, TypeError):
        raise ArtifactError(f"{path} is not a vae-export {fmt} file (no readable {TORCHSCRIPT_EXTRA})") from None
    if not isinstance(meta, dict):
        raise ArtifactError(f"{path}: its {TORCHSCRIPT_EXTRA} is not a JSON object")
    return meta


def check_parity(model: VAE, paths: list[Path], *, provider: str = "cpu", images: np.ndarray | None = None,
                 atol: float | None = None, rtol: float | None = None, seed: int = 0,
                 images_name: str = "mnist") -> list[Row]:
    """Compare each artifact in `paths` with the eager `model`. Returns all rows; raises ParityError
    (carrying the rows) if any fails. `images` (N, C, H, W) in [0, 1] adds real-data rows, whose
    `inputs` column says `images_name` (the dataset: mnist, folder, npy...)."""
    providers = {"cpu": ["cpu"], "cuda": ["cuda"], "all": ["cpu", "cuda"]}[provider]
    if provider == "all" and not torch.cuda.is_available():
        providers = ["cpu"]  # --provider all checks what this machine has; --provider cuda insists
    rows: list[Row] = []
    for path in paths:
        role, variant = _role_variant(path)
        fmt = format_of(path)
        backends = [f"onnxruntime-{p}" for p in providers] if fmt == "onnx" else [fmt]
        for backend in backends:
            device = "cuda" if backend.endswith("cuda") else "cpu"
            run = _runner(path, role, backend)
            loaded_by = f"onnxruntime {runtime.ort.__version__}" if fmt == "onnx" else f"torch {torch.__version__}"
            on = "mean" if variant in VARIANT_MEAN and atol is None else "max"  # an explicit --atol bounds the max
            bounds = (VARIANT_MEAN[variant], 0.0) if on == "mean" else TOLERANCES[backend]
            bounds = (atol if atol is not None else bounds[0],
                      rtol if rtol is not None else (ENCODER_RTOL if role == "encoder" else bounds[1]))
            rows += [dataclasses.replace(r, loaded_by=loaded_by)
                     for r in _compare(model, role, run, path.name, backend, device, bounds, images, images_name, seed, on)]
    failed = [r for r in rows if not r.passed]
    if failed:
        raise ParityError(f"{len(failed)} of {len(rows)} parity checks failed", rows)
    return rows


def _role_variant(path: Path) -> tuple[str, str]:
    parts = path.name[: -len(FORMATS[format_of(path)]["suffix"])].split(".")  # decoder.onnx, decoder.fp16.onnx
    return parts[0], parts[1] if len(parts) > 1 else "fp32"


def _runner(path: Path, role: str, backend: str) -> Callable[[np.ndarray], dict[str, np.ndarray]]:
    """A function from an input batch to {output name: array}, running the artifact on `backend`."""
    spec = SPECS[role]
    from .export_pt2 import runner, torch_runner

    if backend in ("pt2", "aoti"):
        return runner(path, role, backend)
    if backend == "torchscript":
        extra = {TORCHSCRIPT_EXTRA: ""}
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # torch.jit's deprecation notice
                module = torch.jit.load(str(path), map_location="cpu", _extra_files=extra)
            meta = json.loads(extra[TORCHSCRIPT_EXTRA])
        except Exception as e:  # noqa: BLE001 - torch.jit raises RuntimeError, JSONDecodeError, ...
            raise ArtifactError(f"{path} is not a loadable vae-export TorchScript file ({first_line(e, 200)})") from None
        return torch_runner(module, meta, path, role)
    # the runtime refuses files with external data before onnxruntime reads them
    cls = runtime.Decoder if role == "decoder" else runtime.Encoder
    net = cls(path, provider=backend.removeprefix("onnxruntime-"))
    if role == "decoder":
        return lambda x: {"sample": net.decode(x)}
    return lambda x: dict(zip(spec.outputs, net.encode(x)))


def _compare(model: VAE, role: str, run, name: str, backend: str, device: str, bounds: tuple[float, float],
             images: np.ndarray | None, images_name: str, seed: int, on: str = "max") -> list[Row]:
    spec = SPECS[role]
    cfg = model.config
    eager = spec.module(model).eval() if device == "cpu" else copy.deepcopy(spec.module(model)).to(device).eval()
    g = torch.Generator().manual_seed(seed)
    cases = [("random", spec.example(cfg, b, g)) for b in BATCH_SIZES]
    if images is not None:
        x = torch.from_numpy(images[: max(BATCH_SIZES)])
        if role == "decoder":  # real latents: the means the encoder gives real test images
            with torch.inference_mode():
                x = model.encoder(x)[0]
        cases.append((images_name, x))
    rows = []
    with exact_fp32(), torch.inference_mode():
        for kind, x in cases:
            got = run(x.numpy())
            want = eager(x.to(device))
            want = want if isinstance(want, tuple) else (want,)
            for out_name, w in zip(spec.outputs, want):
                w = w.float().cpu().numpy()
                expected_shape = (len(x), *spec.output_shapes(cfg)[out_name])
                a = got.get(out_name)
                if a is None or a.shape != expected_shape or w.shape != expected_shape:
                    rows.append(Row(name, backend, kind, len(x), out_name, *[float("inf")] * 3, *bounds, False, on))
                    continue
                diff = np.abs(a.astype(np.float64) - w)
                ok = bool(diff.mean() <= bounds[0] if on == "mean" else np.all(diff <= bounds[0] + bounds[1] * np.abs(w)))
                rel = float(np.max(diff / np.maximum(np.abs(w), REL_FLOOR)))
                rows.append(Row(name, backend, kind, len(x), out_name, float(diff.max()), float(diff.mean()), rel, *bounds, ok, on))
    return rows


@contextlib.contextmanager
def exact_fp32():
    """TF32 off on the GPU, so eager CUDA is true float32 like every other reference."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def real_images(dataset: str | dict, data_dir: str | Path | None = None, n: int = 1000,
                shape: tuple[int, ...] | None = None) -> np.ndarray | None:
    """The first n test images of a dataset name, or of the data a checkpoint's `settings` describe
    (a folder or array: same size, channels and split), as float32 (n, C, H, W) in [0, 1]; None if
    the data is not here (or, given `shape`, no longer has the model's image shape)."""
    from vae_export.training.data import load_from_settings, resolve_data_dir, to_float

    settings = {"dataset": dataset} if isinstance(dataset, str) else dataset
    try:
        x = load_from_settings(settings, resolve_data_dir(data_dir), download=False).test[:n]
    except Exception:  # noqa: BLE001 - no data here: parity still runs on random inputs
        return None
    return to_float(x).numpy() if shape is None or tuple(x.shape[1:]) == tuple(shape) else None


def print_table(rows: list[Row], console) -> None:
    """One line per check: artifact, backend, inputs, batch size, output, errors, tolerances, result."""
    from rich.table import Table

    table = Table("artifact", "backend", "loaded by", "inputs", "batch", "output", "max abs", "mean abs", "max rel", "atol",
                  "rtol", "result", title="parity against eager PyTorch (float32)", title_justify="left")
    for r in rows:
        table.add_row(r.artifact, r.backend, r.loaded_by, r.inputs, str(r.batch_size), r.output, f"{r.max_abs:.1e}",
                      f"{r.mean_abs:.1e}", f"{r.max_rel:.1e}", f"{'mean ' if r.bound_on == 'mean' else ''}{r.atol:g}",
                      f"{r.rtol:g}", "[green]pass[/]" if r.passed else "[red]FAIL[/]")
    console.print(table)
