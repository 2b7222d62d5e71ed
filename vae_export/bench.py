"""How fast one checkpoint's decoder and encoder run on every backend this machine has, and how fast
each preset trains. Each backend's output is first checked against eager PyTorch on the same input:
a fast wrong answer is worthless, so a backend outside its tolerance is reported `wrong`, not timed.

    vae-export bench runs/mlp/checkpoint.pt --batch-sizes 1,64,1024,8192 --out bench.json --plot bench.png

The torch.export formats are timed too: the .pt2 ExportedProgram's module() and, with `aoti`, the
AOTInductor packages compiled for the portable AVX2 floor (`aoti`) and for this CPU (`aoti-native`).

The decoder is also timed in reduced precision: eager bf16 autocast and the ONNX fp16 and int8 variants
(exported here, int8 calibrated on training images), each checked against eager fp32 within its bound.

The report (`run_bench`'s return value, plain JSON types):
  checkpoint, preset, latent_dim
  machine    cpu (/proc/cpuinfo), cpu_features (its int8/bf16 matrix units), logical_cpus, usable_cpus, gpu (or null), python, platform, torch, onnxruntime,
             numpy, onnxruntime_providers, load_average_start/_end (1-minute load: how busy the machine was)
  threads    torch, torch_interop, onnxruntime (intra-op threads of the runtime's session)
  settings   batch_sizes, repeats, warmup, providers, compile, aoti, train_steps, inputs (what was fed)
  decode, encode  {"rows": [...], "skipped": {backend: one-line reason}}, a row per (backend, batch size):
             backend, device, batch_size, threads, tolerance, max_abs_diff (against eager; null if shapes
             differ), status "ok" or "wrong"; if ok also first_call_s (with torch.compile, its compilation),
             median_s, p10_s, p90_s (seconds per call) and samples_per_s (batch / median)
  train      {"rows": [...], "skipped": {...}}, a row per (preset, device): batch_size, steps (per block),
             blocks, images_per_s (median block), images_per_s_p10/_p90, step_ms, threads, data
"""

from __future__ import annotations

import copy
import dataclasses
import gc
import os
import platform
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import onnxruntime as ort
import torch

from . import export_pt2 as export_pt2_module
from . import runtime
from .checkpoint import load_model
from .config import PRESETS, VAEConfig
from .errors import UsageError, VaeExportError, first_line
from .likelihood import choose_likelihood
from .export import SPECS, calibration_latents, export_decoder_variants, export_onnx, export_torchscript
from .export_pt2 import export_aoti, export_pt2
from .model import VAE
from .parity import VARIANT_TOLERANCES, exact_fp32

WARMUP = 3            # untimed calls per (backend, batch size), after the first call that is checked
TRAIN_BATCH = 128     # training.train's default
TRAIN_BLOCKS = 5      # timed blocks of `train_steps` steps, after one untimed warm-up block
# Elementwise |backend - eager| <= tolerance * max(1, |eager|): absolute on the decoder's [0, 1] pixels,
# relative on the encoder's unbounded logvar. The same kernels: 1e-6; other summation orders: 1e-5;
# the GPU (TF32 off): 1e-4.
# Reduced precision (decoder only): parity's stated bounds for the ONNX variants; eager bf16 autocast
# measured max 1.2e-2, mean 3e-4 on the mlp decoder, bounded at 0.05.
TOLERANCES = {"eager": 1e-6, "torchscript": 1e-6, "pt2": 1e-6, "aoti": 1e-5, "aoti-native": 1e-5, "torch.compile": 1e-5, "onnxruntime-cpu": 1e-5,
              "onnxruntime-cpu-session": 1e-5, "eager-cuda": 1e-4, "onnxruntime-cuda": 1e-4,
              "onnxruntime-cuda-iobinding": 1e-4, "eager-bf16": 5e-2,
              **{f"onnxruntime-cpu-{v}": bound for v, (bound, _) in VARIANT_TOLERANCES.items()},
              # OpenVINO (the `runtimes` extra), f32 hint on the float32 file, int8 like onnxruntime's,
              # bf16 hint like eager bf16 (measured max 1e-2, mean 2.3e-4 on the mlp decoder)
              "openvino-fp32": 1e-5, "openvino-int8": VARIANT_TOLERANCES["int8"][0], "openvino-bf16": 5e-2}
CPU_FEATURES = ("avx512f", "avx512_vnni", "avx_vnni", "amx_int8", "avx512_bf16", "amx_bf16")  # int8/bf16 units
ROLES = {"decode": "decoder", "encode": "encoder"}
Call = Callable[[], Any]


@dataclass
class Backend:
    name: str
    device: str
    prepare: Callable[[np.ndarray], Call]    # input batch -> the zero-argument call that is timed
    threads: Callable[[int], int | None]     # batch size -> threads it runs on (None on a GPU)


def run_bench(checkpoint: Path, batch_sizes: Sequence[int] = (1, 64, 1024, 8192),
              providers: Sequence[str] = ("cpu", "cuda"), repeats: int = 20, train: bool = True,
              log: Callable[[str], None] | None = None, *, compile: bool = True, train_steps: int = 10,
              data_dir: str | Path | None = None, aoti: bool = True) -> dict[str, Any]:
    """Check and time the checkpoint's networks on every backend of `providers` that works here, and
    (with `train`) every preset's training step. `aoti` compiles four AOTInductor packages first. Sets torch.set_flush_denormal(True), as training does."""
    if not batch_sizes or min(batch_sizes) < 1 or repeats < 1 or train_steps < 1:
        raise UsageError("batch sizes, repeats and train steps must be >= 1")
    if set(providers) - {"cpu", "cuda"}:
        raise UsageError(f"unknown providers {sorted(set(providers) - {'cpu', 'cuda'})}; expected cpu, cuda")
    torch.set_flush_denormal(True)  # before tensor work, so OpenMP workers inherit it (see training/train.py)
    log = log or (lambda line: None)
    load_start = os.getloadavg()[0]
    model, state = load_model(checkpoint)
    top = max(batch_sizes)
    images, source = _images(state.get("settings", {"dataset": "mnist"}), False, top, data_dir, model.config.image_shape)
    inputs = {"decoder": runtime.latent_slice(0, 0, top, model.config.latent_dim), "encoder": images.numpy()}
    report: dict[str, Any] = {
        "checkpoint": str(checkpoint), "preset": model.config.preset, "latent_dim": model.config.latent_dim,
        "machine": {**machine(), "load_average_start": load_start},
        "threads": {"torch": torch.get_num_threads(), "torch_interop": torch.get_num_interop_threads(),
                    "onnxruntime": runtime.physical_cores()},
        "settings": {"batch_sizes": list(batch_sizes), "repeats": repeats, "warmup": WARMUP,
                     "providers": list(providers), "compile": compile, "aoti": aoti, "train_steps": train_steps,
                     "inputs": {"decode": "N(0, I) latents, seed 0", "encode": source}},
    }
    with tempfile.TemporaryDirectory(prefix="vae-bench-") as tmp, exact_fp32(), warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit's deprecation notice
        export_onnx(model, state, "bench", tmp)
        export_torchscript(model, state, "bench", tmp)
        export_pt2(model, state, "bench", tmp)
        aoti_skipped = _export_aoti(model, state, Path(tmp)) if aoti and "cpu" in providers else {}
        train_images, _ = _images(state.get("settings", {}).get("dataset", "mnist"), True, 1000, data_dir,
                                  model.config.image_shape)
        export_decoder_variants(tmp, fp16=True, int8=True, latents=calibration_latents(model, train_images))
        for key, role in ROLES.items():
            backends, skipped = _backends(model, role, Path(tmp), providers, compile, aoti and not aoti_skipped)
            skipped.update(aoti_skipped)
            eager = SPECS[role].module(model)
            # batch sizes outermost, so a change in machine load hits every backend alike
            rows = [r for b in batch_sizes
                    for r in _bench_batch(key, backends, skipped, inputs[role][:b], eager, repeats, log)]
            order = [b.name for b in backends]
            report[key] = {"rows": sorted(rows, key=lambda r: order.index(r["backend"])), "skipped": skipped}
    report["train"] = (bench_training(providers, train_steps, data_dir, log) if train
                       else {"rows": [], "skipped": {"all": "not asked for"}})
    report["machine"]["load_average_end"] = os.getloadavg()[0]
    return report


def machine() -> dict[str, Any]:
    return {"cpu": _cpu_model(), "cpu_features": cpu_features(), "logical_cpus": os.cpu_count(),
            "usable_cpus": runtime.physical_cores(),
            "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
            "python": sys.version.split()[0], "platform": platform.platform(), "torch": torch.__version__,
            "onnxruntime": ort.__version__, "numpy": np.__version__,
            "onnxruntime_providers": ort.get_available_providers()}


def cpu_features() -> list[str]:
    """The CPU's int8 and bf16 matrix features (Linux /proc/cpuinfo flags; [] elsewhere)."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = next(line.split(":", 1)[1].split() for line in f if line.startswith("flags"))
    except (OSError, StopIteration):
        return []
    return [name for name in CPU_FEATURES if name in flags]


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or "unknown"


def _export_aoti(model: VAE, state: dict[str, Any], folder: Path) -> dict[str, str]:
    """AOTInductor packages for both ISAs (native ones in folder/native); {backend: reason} if they cannot be made."""
    try:
        export_aoti(model, state, "bench", folder, "avx2")
        export_aoti(model, state, "bench", folder / "native", "native")
    except VaeExportError as e:  # no C++ compiler here: the other backends still run
        return {"aoti": str(e), "aoti-native": str(e)}
    return {}


def _backends(model: VAE, role: str, folder: Path, providers: Sequence[str],
              compile: bool, aoti: bool = False) -> tuple[list[Backend], dict[str, str]]:
    """The backends to time for one role, and the reason for each one that cannot run here."""
    eager = SPECS[role].module(model)
    onnx = folder / f"{role}.onnx"
    net = runtime.Decoder if role == "decoder" else runtime.Encoder
    torch_threads = lambda b: torch.get_num_threads()  # noqa: E731
    makers: dict[str, Callable[[], Backend]] = {}
    if "cpu" in providers:
        makers["eager"] = lambda: Backend("eager", "cpu", _torch_call(eager, "cpu"), torch_threads)
        makers["torchscript"] = lambda: Backend("torchscript", "cpu", _torch_call(
            torch.jit.load(str(folder / f"{role}.torchscript")), "cpu"), torch_threads)
        makers["pt2"] = lambda: Backend("pt2", "cpu", _torch_call(
            export_pt2_module.load(folder / f"{role}.pt2", "pt2")[0], "cpu"), torch_threads)
        if aoti:
            for name, where in (("aoti", folder), ("aoti-native", folder / "native")):
                makers[name] = lambda name=name, where=where: Backend(name, "cpu", _torch_call(
                    export_pt2_module.load(where / f"{role}.aoti.pt2", "aoti")[0], "cpu"), torch_threads)
        if compile:  # dynamic: one graph for every batch size (batch 1 still gets its own)
            makers["torch.compile"] = lambda: Backend("torch.compile", "cpu", _torch_call(
                torch.compile(eager, dynamic=True), "cpu"), torch_threads)
        makers["onnxruntime-cpu"] = lambda: _runtime_backend("onnxruntime-cpu", net(onnx, "cpu"), role)
        makers["onnxruntime-cpu-session"] = lambda: _session_backend(onnx)
        if role == "decoder":  # the reduced-precision paths, each checked against eager fp32 like the rest
            makers["eager-bf16"] = lambda: Backend("eager-bf16", "cpu", _torch_call(eager, "cpu", torch.bfloat16),
                                                   torch_threads)
            for v in VARIANT_TOLERANCES:
                makers[f"onnxruntime-cpu-{v}"] = lambda v=v: _runtime_backend(
                    f"onnxruntime-cpu-{v}", runtime.Decoder(folder, "cpu", precision=v), role)
            for v in ("fp32", "int8", "bf16"):      # skipped, with the install line, without OpenVINO
                makers[f"openvino-{v}"] = lambda v=v: _openvino_backend(runtime.Decoder(folder, "openvino", precision=v), v)
    if "cuda" in providers:
        makers["eager-cuda"] = lambda: Backend("eager-cuda", "cuda", _torch_call(
            copy.deepcopy(eager).to("cuda"), "cuda"), lambda b: None)
        makers["onnxruntime-cuda"] = lambda: _runtime_backend("onnxruntime-cuda", net(onnx, "cuda"), role)
        makers["onnxruntime-cuda-iobinding"] = lambda: _iobinding_backend(onnx)
    backends, skipped = [], {}
    for name, make in makers.items():
        try:
            backends.append(make())
        except Exception as e:  # noqa: BLE001 - a backend that cannot run here is reported, never fatal
            skipped[name] = _one_line(e)
    return backends, skipped


def _torch_call(module: Callable, device: str, autocast: torch.dtype | None = None) -> Callable[[np.ndarray], Call]:
    def prepare(x: np.ndarray) -> Call:
        t = torch.from_numpy(x).to(device)  # on the device before timing starts

        def call():
            with torch.inference_mode(), torch.autocast(device, autocast or torch.bfloat16, enabled=bool(autocast)):
                y = module(t)
            if device == "cuda":
                torch.cuda.synchronize()
            return y
        return call
    return prepare


def _runtime_backend(name: str, net: runtime.Decoder | runtime.Encoder, role: str) -> Backend:
    """vae_export.runtime as applications use it: numpy in and out, input checks included."""
    run = net.decode if role == "decoder" else net.encode
    on_cpu = net.provider == runtime.PROVIDERS["cpu"]
    session = net.session_for if role == "decoder" else (lambda b: net.session)  # the decoder picks by batch size
    return Backend(name, "cpu" if on_cpu else "cuda", lambda x: lambda: run(x),
                   lambda b: session(b).get_session_options().intra_op_num_threads if on_cpu else None)


def _openvino_backend(net: runtime.Decoder, precision: str) -> Backend:
    """The OpenVINO decoder as applications use it (runtime.Decoder(..., provider="openvino"))."""
    threads = net.threads or runtime.physical_cores()
    return Backend(f"openvino-{precision}", "cpu", lambda x: lambda: net.decode(x), lambda b: threads)


def _session_backend(path: Path) -> Backend:
    """One bare multi-threaded session at every batch size: what the runtime's input checks cost."""
    session = runtime.open_session(path.read_bytes(), "cpu")
    name, threads = session.get_inputs()[0].name, session.get_session_options().intra_op_num_threads
    return Backend("onnxruntime-cpu-session", "cpu", lambda x: lambda: session.run(None, {name: x}), lambda b: threads)


def _iobinding_backend(path: Path) -> Backend:
    """ONNX Runtime CUDA with the input and outputs resident on the GPU: no host copies are timed."""
    session = runtime.open_session(path.read_bytes(), "cuda")

    def prepare(x: np.ndarray) -> Call:
        binding, on_gpu = session.io_binding(), ort.OrtValue.ortvalue_from_numpy(x, "cuda", 0)
        binding.bind_ortvalue_input(session.get_inputs()[0].name, on_gpu)
        for output in session.get_outputs():
            binding.bind_output(output.name, "cuda")

        def call(_bound=on_gpu):  # holds the device copy of the input while it is bound
            session.run_with_iobinding(binding)
            binding.synchronize_outputs()
            return binding
        return call
    return Backend("onnxruntime-cuda-iobinding", "cuda", prepare, lambda b: None)


def _bench_batch(key: str, backends: list[Backend], skipped: dict[str, str], x: np.ndarray, eager: Callable,
                 repeats: int, log: Callable[[str], None]) -> list[dict[str, Any]]:
    """Check, then time, every backend on one input batch; a backend that raises moves to `skipped`."""
    want = _arrays(_torch_call(eager, "cpu")(x)())
    rows = []
    for backend in [b for b in backends if b.name not in skipped]:
        row: dict[str, Any] = {"backend": backend.name, "device": backend.device, "batch_size": len(x),
                               "threads": backend.threads(len(x)), "tolerance": TOLERANCES[backend.name]}
        try:
            call = backend.prepare(x)
            t0 = time.perf_counter()
            got = _arrays(call())
            first = time.perf_counter() - t0
        except Exception as e:  # noqa: BLE001 - e.g. torch.compile without a working C++ compiler
            skipped[backend.name] = _one_line(e)
            log(f"{key} {backend.name}: skipped ({skipped[backend.name]})")
            continue
        row["max_abs_diff"], ok = _compare(got, want, row["tolerance"])
        row["status"] = "ok" if ok else "wrong"
        if ok:
            row.update(first_call_s=first, **_timed(call, repeats, len(x)))
        rows.append(row)
        log(f"{key} {backend.name:<26} batch {len(x):>5}: "
            + (f"{row['median_s'] * 1e3:9.3f} ms {row['samples_per_s']:>12,.0f} samples/s" if ok
               else f"WRONG: max |diff| {row['max_abs_diff']} > {row['tolerance']}"))
    return rows


def _arrays(out: Any) -> list[np.ndarray]:
    if isinstance(out, (list, tuple)):
        return [a for o in out for a in _arrays(o)]
    if isinstance(out, torch.Tensor):
        return [out.detach().float().cpu().numpy()]  # float(): numpy has no bfloat16
    if hasattr(out, "copy_outputs_to_cpu"):  # an onnxruntime IO binding
        return list(out.copy_outputs_to_cpu())
    return [np.asarray(out)]


def _compare(got: list[np.ndarray], want: list[np.ndarray], tol: float) -> tuple[float | None, bool]:
    """(max |got - want| over all outputs, whether every element is within tolerance)."""
    if [g.shape for g in got] != [w.shape for w in want]:
        return None, False
    diffs = [np.abs(g.astype(np.float64) - w) for g, w in zip(got, want)]
    ok = all(np.all(d <= tol * np.maximum(1.0, np.abs(w))) for d, w in zip(diffs, want))
    return float(max(d.max() for d in diffs)), ok


def _timed(call: Call, repeats: int, batch: int) -> dict[str, float]:
    for _ in range(WARMUP):
        call()
    times = []
    gc.disable()  # a collection inside one timed call is noise, not the backend's cost
    try:
        for _ in range(repeats):
            t0 = time.perf_counter()
            call()
            times.append(time.perf_counter() - t0)
    finally:
        gc.enable()
    p10, median, p90 = (float(v) for v in np.percentile(times, [10, 50, 90]))
    return {"median_s": median, "p10_s": p10, "p90_s": p90, "samples_per_s": batch / median}


def bench_training(providers: Sequence[str] = ("cpu", "cuda"), steps: int = 10, data_dir: str | Path | None = None,
                   log: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Training images/s per preset and device, with the step of training.train's loop (forward with
    reparameterization noise, summed ELBO, backward, fused Adam) timed in blocks of `steps` steps."""
    torch.set_flush_denormal(True)
    images, source = _images("mnist", True, (TRAIN_BLOCKS + 1) * steps * TRAIN_BATCH, data_dir)
    rows, skipped = [], {}
    for device in [d for d in ("cpu", "cuda") if d in providers]:
        if device == "cuda" and not torch.cuda.is_available():
            skipped["cuda"] = "torch sees no CUDA GPU here"
            continue
        for config in PRESETS.values():
            rows.append({**_train_speed(config, torch.device(device), images, steps), "data": source})
            if log:
                log(f"train {config.preset:<10} {device}: {rows[-1]['images_per_s']:,.0f} images/s")
    return {"rows": rows, "skipped": skipped}


def _train_speed(config: VAEConfig, dev: torch.device, images: torch.Tensor, steps: int) -> dict[str, Any]:
    """Time training.train's own epoch function on blocks of `steps` batches: the exact step that
    `vae-export train` runs (model layout, fused Adam, loss, host syncs), not a copy of it."""
    from vae_export.training.train import Run, TrainSettings, train_epoch

    if config.likelihood == "auto":   # what training would choose on these images (bernoulli on MNIST)
        config = dataclasses.replace(config, likelihood=choose_likelihood(images, "none")[0])
    run = Run.start(config, TrainSettings(batch_size=TRAIN_BATCH, seed=0), dev)
    x_all, block = images.to(dev), steps * TRAIN_BATCH
    seconds = []
    for k, start in enumerate(range(0, len(x_all) - block + 1, block)):
        t0 = time.perf_counter()
        train_epoch(run, k + 1, x_all[start: start + block], None)
        if dev.type == "cuda":
            torch.cuda.synchronize()
        seconds.append(time.perf_counter() - t0)
    rates = [block / s for s in seconds[1:]]                        # the first block is warm-up
    p10, median, p90 = (float(v) for v in np.percentile(rates, [10, 50, 90]))
    return {"preset": config.preset, "device": dev.type, "batch_size": TRAIN_BATCH, "steps": steps,
            "blocks": len(rates), "images_per_s": median, "images_per_s_p10": p10, "images_per_s_p90": p90,
            "step_ms": 1e3 * TRAIN_BATCH / median, "threads": torch.get_num_threads() if dev.type == "cpu" else None}


def _images(dataset: str | dict, train: bool, n: int, data_dir: str | Path | None,
            shape: tuple[int, ...] = (1, 28, 28)) -> tuple[torch.Tensor, str]:
    """n float images in [0, 1] from a dataset name or a checkpoint's settings (a folder or array: its
    size, channels and split), repeated if it has fewer; uniform noise of `shape` if it is not here."""
    from vae_export.training.data import load_from_settings, resolve_data_dir, to_float

    settings = {"dataset": dataset} if isinstance(dataset, str) else dataset
    name = settings.get("dataset", "mnist")
    try:
        data = load_from_settings(settings, resolve_data_dir(data_dir), download=False)
        x = data.train if train else data.test
        if x.shape[1:] != shape:
            raise ValueError(f"{name} images are {tuple(x.shape[1:])}, the model takes {shape}")
    except Exception:  # noqa: BLE001 - no data here: time on noise, and say so in the report
        return torch.rand(n, *shape, generator=torch.Generator().manual_seed(0)), f"uniform noise (no {name})"
    return to_float(x[torch.arange(n) % len(x)]), f"{name} {'train' if train else 'test'} images"


def _one_line(e: BaseException) -> str:
    return f"{type(e).__name__}: {first_line(e)}"
