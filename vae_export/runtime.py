"""Run the exported ONNX encoder and decoder with numpy and onnxruntime only: no torch, so other
applications can embed `decoder.onnx` with two dependencies.

    from vae_export.runtime import Decoder
    decoder = Decoder("artifacts/mlp/decoder.onnx", provider="auto")
    images = decoder.sample(16, seed=0)          # (16, 1, 28, 28) float32 in [0, 1]
    fast = Decoder("artifacts/mlp", precision="int8")            # decoder.int8.onnx in that folder
    pixels = fast.decode(fast.latents(0, 0, 16), dtype="uint8")  # 0..255, rounded inside the graph
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import math
import os
import threading
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from .errors import ArtifactError, ProviderUnavailable, UsageError, VaeExportError, first_line
from .files import require_memory
from .onnx_wire import UINT8_OUTPUT, external_tensor, with_uint8_output
from .provenance import same_model

PROVIDERS = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider"}
MAX_MODEL_BYTES = 256 * 2**20       # our models are 1-2 MB; refuse anything absurd before parsing it
BOUND_BATCH = 64                    # up to this batch, decode through a reused IO binding (see Decoder)
SMALL_BATCH = 32                    # up to this batch, one intra-op thread is faster (benchmarks/sample_speed.py)
PRECISIONS = ("fp32", "fp16", "int8")
OUTPUT_DTYPES = {"float32": np.float32, "uint8": np.uint8}
LATENT_CHUNK = 4096                 # latents come in fixed chunks, so samples do not depend on batch size
CHECKED_BYTES = 64 * 2**20          # a call that holds more than this is checked against the free memory first

ort.set_default_logger_severity(3)  # errors only: a CUDA provider that fails to load is reported by us


def physical_cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def session_options(threads: int) -> ort.SessionOptions:
    """Options chosen on purpose:
    - all graph optimizations (Gemm+activation fusion, constant folding): the graphs are plain ops;
    - intra-op threads = cores, even for batch 1: there a decode is bound by reading the weights
      (1.3 MB for mlp), and two cores read them from two L2 caches, faster than one core from one;
      one inter-op thread and sequential execution, since the graphs are chains;
    - no spinning: idle pool threads otherwise busy-wait after each run, stealing the cores that
      the caller (writing the last batch, or a training job) needs.
    """
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    so.add_session_config_entry("session.inter_op.allow_spinning", "0")
    return so


def _create(model: bytes, threads: int, providers: list) -> ort.InferenceSession:
    return ort.InferenceSession(model, sess_options=session_options(threads), providers=providers)


def open_session(model: bytes, provider: str = "cpu", threads: int | None = None) -> ort.InferenceSession:
    """A session on the provider asked for, verified: onnxruntime silently falls back to the CPU when
    the CUDA provider cannot load, so we check what the session really got.

    Where CUDA cannot load, `auto` falls back without a word (onnxruntime's own complaints, on stdout
    and stderr, are held back: stdout carries data), and `cuda` is refused in one line.
    """
    if provider not in (*PROVIDERS, "auto"):
        raise UsageError(f"unknown provider {provider!r}; expected cpu, cuda or auto")
    threads = threads or physical_cores()
    available = ort.get_available_providers()
    why = "this onnxruntime build has no CUDA provider"
    if provider in ("cuda", "auto") and PROVIDERS["cuda"] in available:
        held = io.StringIO()
        with contextlib.redirect_stdout(held), contextlib.redirect_stderr(held):
            try:
                ort.preload_dlls()  # reuse the CUDA/cuDNN libraries that torch's nvidia-* wheels installed
            except Exception:  # noqa: BLE001 - missing libraries surface below as a CPU-only session
                pass
        ort.set_default_logger_severity(4)  # the provider bridge logs its load failure as an error
        try:
            session = _create(model, threads, [PROVIDERS["cuda"], PROVIDERS["cpu"]])
        finally:
            ort.set_default_logger_severity(3)
        if session.get_providers()[0] == PROVIDERS["cuda"]:
            return session
        missing = [line.split(":")[0].removeprefix("Failed to load ") for line in held.getvalue().splitlines()
                   if line.startswith("Failed to load ")]
        why = ("the CUDA provider failed to load (" + (f"{', '.join(missing)} not found" if missing else
               "CUDA or cuDNN libraries missing or mismatched") + ")")
    if provider == "cuda":
        raise ProviderUnavailable(f"--provider cuda: {why}; available: {', '.join(available)}; {gpu_help()}")
    return _create(model, threads, [PROVIDERS["cpu"]])


def gpu_help() -> str:
    """How to get the CUDA provider working, naming the CUDA major version this onnxruntime needs."""
    try:
        from onnxruntime.capi import build_and_package_info as build
        cuda = f"CUDA {build.cuda_version.split('.')[0]}.x"
    except (ImportError, AttributeError):  # the CPU wheel: `make install-gpu` brings the current GPU wheel
        cuda = "the CUDA version onnxruntime-gpu is built for (https://onnxruntime.ai/docs/install/)"
    return ("install GPU support with `make install-gpu` (swaps onnxruntime for onnxruntime-gpu; the two must "
            f"never be installed together) on a machine with {cuda} and cuDNN 9")


class _Model:
    """An exported vae-export network, validated before its first run."""

    role = ""
    inputs: tuple[str, ...] = ()
    outputs: tuple[str, ...] = ()

    def __init__(self, path: str | os.PathLike, provider: str = "cpu", threads: int | None = None):
        _check_args(path, provider, threads)
        self.path = Path(path)
        data = _read_model(self.path)
        self.sha256 = hashlib.sha256(data).hexdigest()   # what sample files record of their decoder
        self.session = _loaded(self.path, lambda: open_session(data, provider, threads))
        self.provider = self.session.get_providers()[0]
        self.metadata = _metadata(self.session, self.path)
        self._check_io()

    def _check_io(self) -> None:
        got_in = tuple(i.name for i in self.session.get_inputs())
        got_out = tuple(o.name for o in self.session.get_outputs())
        if (got_in, got_out) != (self.inputs, self.outputs) or self.metadata.get("role") != self.role:
            raise ArtifactError(f"{self.path} is not a vae-export {self.role}: expected inputs {list(self.inputs)} -> "
                                f"outputs {list(self.outputs)}, got {list(got_in)} -> {list(got_out)} "
                                f"(role {self.metadata.get('role')!r})")
        for value in [*self.session.get_inputs(), *self.session.get_outputs()]:
            if value.type != "tensor(float)":
                raise ArtifactError(f"{self.path}: {value.name} is {value.type}, expected tensor(float)")
        latent, image = self.metadata["latent_dim"], self.metadata["image_shape"]
        if not (_positive_ints([latent]) and isinstance(image, list) and len(image) == 3 and _positive_ints(image)):
            raise ArtifactError(f"{self.path}: metadata latent_dim {latent!r} / image_shape {image!r} is not "
                                "a positive size / three positive sizes")
        shapes = {"latent_sample": [latent], "sample": image, "mu": [latent], "logvar": [latent]}
        for value in [*self.session.get_inputs(), *self.session.get_outputs()]:
            got, want = value.shape, shapes[value.name]
            if len(got) != 1 + len(want) or list(got[1:]) != list(want):
                raise ArtifactError(f"{self.path}: {value.name} has shape {got}, but its metadata "
                                    f"promises (batch_size, {', '.join(map(str, want))})")

    @property
    def image_shape(self) -> tuple[int, ...]:
        return tuple(self.metadata["image_shape"])

    def _validated(self, x: Any, shape: tuple[int, ...], what: str) -> np.ndarray:
        try:
            x = np.asarray(x)
        except Exception as e:  # noqa: BLE001 - ragged nested lists, objects numpy cannot make an array of (or whose __array__ fails)
            raise UsageError(f"{what} must be an array of shape (batch, {', '.join(map(str, shape))}): {first_line(e)}") from None
        if x.dtype != np.float32:
            if not np.issubdtype(x.dtype, np.floating):
                raise UsageError(f"{what} must be floating point, got {x.dtype}")
            with np.errstate(over="ignore"):  # values beyond float32 become inf, refused just below
                x = x.astype(np.float32)
        if x.ndim != 1 + len(shape) or x.shape[1:] != shape or x.shape[0] == 0:
            raise UsageError(f"{what} must have shape (batch, {', '.join(map(str, shape))}), got {x.shape}")
        if not np.isfinite(x).all():
            raise UsageError(f"{what} contains NaN or infinite values")
        return np.ascontiguousarray(x)

    def _run_checked(self, run):
        """Run onnxruntime; what it raises (an allocation that fails, a provider error) becomes one typed line."""
        try:
            return run()
        except VaeExportError:
            raise
        except MemoryError:
            raise VaeExportError(f"{self.path}: out of memory; use a smaller batch") from None
        except Exception as e:  # noqa: BLE001 - onnxruntime raises its own pybind exception types
            raise VaeExportError(f"{self.path}: onnxruntime failed ({first_line(e)})") from None


class Decoder(_Model):
    """latent_sample (B, latent_dim) -> sample (B, C, H, W) float32 in [0, 1], or uint8 0..255.

    `precision` picks the variant in the export folder (decoder.onnx, decoder.fp16.onnx,
    decoder.int8.onnx); `path` may be that folder or any decoder file in it. Without `precision`,
    the file named is used whatever its variant. Without `threads`,
    batches up to SMALL_BATCH run on a one-thread session and larger ones on one thread per core:
    a small decode is over before a second thread has woken up (no spinning: idle threads must not
    steal the caller's cores), while a large one splits its GEMMs across the cores.
    """

    role, inputs, outputs = "decoder", ("latent_sample",), ("sample",)

    def __new__(cls, path: str | os.PathLike = "", provider: str = "cpu", *args, **kwargs):
        """provider="openvino": an OpenVINODecoder (openvino_backend.py, the optional `runtimes` extra)."""
        if isinstance(provider, str) and provider == "openvino" and cls is Decoder:  # any other type: __init__ refuses it
            from .openvino_backend import OpenVINODecoder

            return super().__new__(OpenVINODecoder)
        return super().__new__(cls)

    def __init__(self, path: str | os.PathLike, provider: str = "cpu", threads: int | None = None,
                 precision: str | None = None):
        _check_args(path, provider, threads)
        if precision is not None and not isinstance(precision, str):
            raise UsageError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
        super().__init__(decoder_path(path, precision), provider, threads)
        self.precision = self.metadata.get("variant", "fp32")
        if precision not in (None, self.precision):
            raise ArtifactError(f"{self.path} holds the {self.precision!r} variant, not {precision!r}")
        sidecar = self.path.with_name("decoder.json")
        if self.path != Path(path) and sidecar.is_file():   # a variant picked from an export folder: of its model
            same_model([(sidecar, _read_json(sidecar)), (self.path, self.metadata)],
                       f"the folder's {self.precision} variant must be its own model's")
        self.threads = threads
        self._latent_shape = (self.latent_dim,)     # per-call work is what batch-1 latency is made of
        self._model = _read_model(self.path)
        self._sessions = {(self._threads_of(self.session), False): self.session}  # (threads, uint8) -> session
        self._bound: dict[tuple, tuple] = {}        # (batch, dtype) -> (session, binding, input, output, lock)
        self._lock = threading.Lock()

    @property
    def latent_dim(self) -> int:
        return int(self.metadata["latent_dim"])

    def decode(self, z: Any, out: np.ndarray | None = None, dtype: str = "float32") -> np.ndarray:
        """Decode latents to float32 in [0, 1] or, with dtype "uint8", to round(255 x) computed in the
        graph. With `out` (a C-contiguous array of the output shape and dtype), onnxruntime writes
        straight into it: no per-batch allocation."""
        _check_dtype(dtype)
        z = self._validated(z, self._latent_shape, "latents")
        shape = (len(z), *self.image_shape)
        if out is not None and not (isinstance(out, np.ndarray) and out.shape == shape and out.dtype == OUTPUT_DTYPES[dtype]
                                    and out.flags.c_contiguous and out.flags.writeable):
            raise UsageError(f"out must be a writable C-contiguous {dtype} array of shape {shape}")
        _check_memory(math.prod(shape) * np.dtype(OUTPUT_DTYPES[dtype]).itemsize * (1 if out is not None else 2),
                      f"decoding {len(z):,} latents")
        return self._run(z, out, dtype)

    def session_for(self, batch: int, dtype: str = "float32") -> ort.InferenceSession:
        """The session that decodes a batch of this size to this dtype (created on first use)."""
        _check_int(batch, "batch", 1)
        _check_dtype(dtype)
        on_cpu = self.provider == PROVIDERS["cpu"]
        threads = self.threads or (1 if batch <= SMALL_BATCH or not on_cpu else physical_cores())
        key = (threads, dtype == "uint8")
        with self._lock:
            if key not in self._sessions:
                model = with_uint8_output(self._model) if key[1] else self._model
                self._sessions[key] = _loaded(self.path, lambda: open_session(
                    model, "cpu" if on_cpu else "cuda", threads))
            return self._sessions[key]

    def _threads_of(self, session: ort.InferenceSession) -> int:
        return session.get_session_options().intra_op_num_threads

    def _run(self, z: np.ndarray, out: np.ndarray | None = None, dtype: str = "float32") -> np.ndarray:
        on_cpu = self.provider == PROVIDERS["cpu"]
        if out is None and on_cpu and len(z) <= BOUND_BATCH:
            return self._run_bound(z, dtype)
        shape, name, np_dtype = (len(z), *self.image_shape), _output_name(dtype), OUTPUT_DTYPES[dtype]
        session = self.session_for(len(z), dtype)
        if out is None and on_cpu:
            return self._run_checked(lambda: session.run([name], {"latent_sample": z})[0])  # named outputs: less work per call
        return self._run_checked(lambda: self._run_binding(session, z, out, shape, name, np_dtype, on_cpu))

    def _run_binding(self, session, z, out, shape, name, np_dtype, on_cpu) -> np.ndarray:
        binding = session.io_binding()  # CUDA: one copy in, one out; CPU: write into the caller's buffer
        binding.bind_cpu_input("latent_sample", z)
        if out is not None and on_cpu:
            binding.bind_output(name, "cpu", 0, np_dtype, list(shape), out.ctypes.data)
            session.run_with_iobinding(binding)
            return out
        binding.bind_output(name, "cpu" if on_cpu else "cuda")
        session.run_with_iobinding(binding)
        result = binding.copy_outputs_to_cpu()[0]
        if out is not None:
            np.copyto(out, result)
            return out
        return result

    def _run_bound(self, z: np.ndarray, dtype: str) -> np.ndarray:
        """Small batches are latency-bound: reuse one IO binding per batch size, with the input and
        output buffers bound once, so a call costs a copy in, the run and a copy out, without
        session.run's per-call binding and allocation."""
        key = (len(z), dtype)
        if key not in self._bound:
            session = self.session_for(len(z), dtype)
            zin = np.empty(z.shape, np.float32)
            img = np.empty((len(z), *self.image_shape), OUTPUT_DTYPES[dtype])
            binding = session.io_binding()
            binding.bind_cpu_input("latent_sample", zin)
            binding.bind_output(_output_name(dtype), "cpu", 0, img.dtype, list(img.shape), img.ctypes.data)
            self._bound.setdefault(key, (session, binding, zin, img, threading.Lock()))
        session, binding, zin, img, lock = self._bound[key]
        with lock:
            np.copyto(zin, z)
            self._run_checked(lambda: session.run_with_iobinding(binding))
            return img.copy()

    def latents(self, seed: int, start: int, stop: int) -> np.ndarray:
        """Latents of samples start..stop-1 for `seed`, the same whatever the batch size."""
        return latent_slice(seed, start, stop, self.latent_dim)

    def sample(self, n: int, seed: int = 0, batch_size: int = 1024) -> np.ndarray:
        """n images decoded from N(0, I) latents drawn with numpy: same seed, same images. All n are
        held in memory (checked first); `sampling.sample_to_file` streams any n to disk."""
        _check_int(n, "n", 1)
        _check_int(batch_size, "batch_size", 1)
        _check_int(seed, "seed", 0)
        batch = min(batch_size, n)
        _check_memory((n + 2 * batch) * 4 * math.prod(self.image_shape) + batch * 4 * self.latent_dim,
                      f"{n:,} samples (held in memory) in batches of {batch:,}")
        return np.concatenate([self._run(self.latents(seed, i, min(i + batch_size, n)))
                               for i in range(0, n, batch_size)])


def decoder_path(path: str | os.PathLike, precision: str | None = None) -> Path:
    """The file of `precision` in an export folder: `path` is the folder or any decoder file in it."""
    path = Path(path)
    if precision not in (None, *PRECISIONS):
        raise UsageError(f"unknown precision {precision!r}; expected {', '.join(PRECISIONS)}")
    precision = precision or "fp32"
    if precision == "fp32" and not path.is_dir():
        return path                      # the file the caller names (Decoder checks its variant)
    folder = path if path.is_dir() else path.parent
    name = "decoder.onnx" if precision == "fp32" else f"decoder.{precision}.onnx"
    if not (folder / name).is_file():
        raise ArtifactError(f"no {name} in {folder}" + ("" if precision == "fp32" else
                            f": write it with `vae-export onnx CHECKPOINT --out {folder} --{precision}`"))
    return folder / name


def _read_json(path: Path) -> dict[str, Any]:
    try:
        meta = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ArtifactError(f"{path} is not a readable JSON sidecar ({first_line(e)})") from None
    if not isinstance(meta, dict):
        raise ArtifactError(f"{path} is not a vae-export sidecar (not a JSON object)")
    return meta


def _output_name(dtype: str) -> str:
    return UINT8_OUTPUT if dtype == "uint8" else "sample"


class Encoder(_Model):
    """sample (B, C, H, W) in [0, 1] -> mu, logvar (B, latent_dim)."""

    role, inputs, outputs = "encoder", ("sample",), ("mu", "logvar")

    def encode(self, images: Any) -> tuple[np.ndarray, np.ndarray]:
        """Pixels in [0, 1] (as images.py reads them): 0..255 values are refused, not silently encoded."""
        x = self._validated(images, self.image_shape, "images")
        if x.min() < 0 or x.max() > 1:
            raise UsageError(f"images must lie in [0, 1], found {x.min():g}..{x.max():g}; divide 0..255 pixels by 255")
        _check_memory(x.nbytes * 2, f"encoding {len(x):,} images")
        mu, logvar = self._run_checked(lambda: self.session.run(["mu", "logvar"], {"sample": x}))
        return mu, logvar


def _check_args(path: Any, provider: Any, threads: Any) -> None:
    """The constructor's arguments, typed before any file is read."""
    _check_path(path)
    if not isinstance(provider, str):
        raise UsageError(f"provider must be one of cpu, cuda, auto, openvino, got {provider!r}")
    if threads is not None:
        _check_int(threads, "threads", 1, 1024)


def _check_path(path: Any) -> None:
    if not isinstance(path, (str, os.PathLike)) or "\0" in str(os.fspath(path)):
        raise UsageError(f"path must be a file or folder name, got {path!r}")


def _check_int(value: Any, name: str, low: int, high: int | None = None) -> None:
    if not isinstance(value, (int, np.integer)) or isinstance(value, (bool, np.bool_)) or value < low or (
            high is not None and value > high):
        raise UsageError(f"{name} must be an integer >= {low}" + (f" and <= {high}" if high is not None else "")
                         + f", got {value!r}")


def _check_dtype(dtype: Any) -> None:
    if not isinstance(dtype, str) or dtype not in OUTPUT_DTYPES:
        raise UsageError(f"dtype must be one of {', '.join(OUTPUT_DTYPES)}, got {dtype!r}")


def _check_memory(nbytes: int, what: str) -> None:
    """Large calls only: reading /proc/meminfo would cost a batch-1 decode more than the decode."""
    if nbytes > CHECKED_BYTES:
        require_memory(nbytes, what)


def _positive_ints(values: list) -> bool:
    return all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in values)


def latent_slice(seed: int, start: int, stop: int, dim: int) -> np.ndarray:
    """(stop - start, dim) standard-normal float32 latents; chunk k of LATENT_CHUNK rows comes from
    its own generator seeded with (seed, k), so any batching of the same range gives the same rows."""
    _check_int(seed, "seed", 0)
    _check_int(start, "start", 0)
    _check_int(stop, "stop", int(start) + 1)
    _check_int(dim, "dim", 1)
    _check_memory((stop - start + 2 * LATENT_CHUNK) * dim * 4, f"{stop - start:,} latents")
    first, last = start // LATENT_CHUNK, (stop - 1) // LATENT_CHUNK
    chunks = [np.random.default_rng([seed, k]).standard_normal((LATENT_CHUNK, dim), dtype=np.float32)
              for k in range(first, last + 1)]
    block = chunks[0] if len(chunks) == 1 else np.concatenate(chunks)
    offset = start - first * LATENT_CHUNK
    return block[offset: offset + stop - start]


def read_metadata(path: str | os.PathLike) -> dict[str, Any]:
    """The metadata of an exported ONNX file (JSON-decoded), without running it."""
    _check_path(path)
    data = _read_model(Path(path))
    return _metadata(_loaded(Path(path), lambda: _create(data, 1, [PROVIDERS["cpu"]])), Path(path))


def _loaded(path: Path, make):
    """Run a session factory; onnxruntime's load failures become one ArtifactError line."""
    try:
        return make()
    except (UsageError, ProviderUnavailable):
        raise
    except Exception as e:  # noqa: BLE001 - onnxruntime raises its own pybind exception types
        raise ArtifactError(f"{path}: onnxruntime cannot load it ({first_line(e)})") from None


def _read_model(path: Path) -> bytes:
    """The model's bytes, refused if any tensor in it points at external data: onnxruntime would
    read that file relative to the current folder, so an untrusted model could pull in any file."""
    if not path.is_file():
        raise ArtifactError(f"no model at {path}")
    try:
        size = path.stat().st_size
        if size > MAX_MODEL_BYTES:
            raise ArtifactError(f"{path} is {size} bytes, over the {MAX_MODEL_BYTES}-byte cap for a VAE model")
        data = path.read_bytes()
    except OSError as e:
        raise ArtifactError(f"cannot read {path}: {e.strerror or first_line(e)}") from None
    try:
        external = external_tensor(data)
    except ValueError as e:
        raise ArtifactError(f"{path} is not an ONNX file ({e})") from None
    if external:
        raise ArtifactError(f"{path}: tensor {external} stores its data in an external file; "
                            "vae-export models must be single files")
    return data


def _metadata(session: ort.InferenceSession, path: Path) -> dict[str, Any]:
    raw = session.get_modelmeta().custom_metadata_map
    try:
        meta = {k: json.loads(v) for k, v in raw.items()}
    except json.JSONDecodeError:
        raise ArtifactError(f"{path}: metadata is not JSON; was it written by vae-export?") from None
    if meta.get("producer") != "vae-export":
        raise ArtifactError(f"{path} has no vae-export metadata (producer {meta.get('producer')!r})")
    missing = [k for k in ("role", "latent_dim", "image_shape") if k not in meta]
    if missing:
        raise ArtifactError(f"{path}: metadata lacks {', '.join(missing)}")
    return meta
