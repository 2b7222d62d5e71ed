"""OpenVINO as an optional CPU backend of the runtime: `Decoder(..., provider="openvino")`.

    vae-export sample --provider openvino --precision int8 -n 100000 --out samples.npy

OpenVINO's CPU plugin computes in bf16 by default on CPUs with bf16 units (AVX512-BF16, AMX): an app
that loads decoder.onnx with default settings gets up to ~0.01 (2.5 grey levels) of error and is never
told. So the precision is always explicit here: `fp32` and `int8` set INFERENCE_PRECISION_HINT f32
(int8 runs decoder.int8.onnx, whose quantized layers OpenVINO runs in int8 whatever the hint), `bf16`
runs decoder.onnx with the bf16 hint, a lossy precision of its own whose cost is measured like fp16/int8.
"""

from __future__ import annotations

import hashlib
import os
import threading
from pathlib import Path
from typing import Any

import numpy as np

from .errors import ArtifactError, ProviderUnavailable, UsageError, first_line
from .onnx_wire import UINT8_OUTPUT, with_uint8_output
from .provenance import same_model
from .runtime import OUTPUT_DTYPES, Decoder, _read_json, _read_model, decoder_path, read_metadata

INSTALL = "pip install 'vae-export[runtimes]'  (or: pip install openvino)"
HINTS = {"fp32": "f32", "fp16": "f32", "int8": "f32", "bf16": "bf16"}  # precision -> INFERENCE_PRECISION_HINT


def openvino():
    try:
        import openvino as ov
    except ImportError:
        raise ProviderUnavailable(f"--provider openvino: OpenVINO is not installed; {INSTALL}") from None
    return ov


def compile_model(path: str | Path, hint: str = "f32", threads: int | None = None, uint8: bool = False):
    """The file compiled for the CPU with an explicit inference precision ("f32" or "bf16"), never the
    default. LATENCY: one stream on all cores, since we run one request at a time (THROUGHPUT would
    split the cores into streams that only concurrent requests use). `uint8`: a decoder whose only
    output is round(255 x) computed in the graph (onnx_wire.with_uint8_output), as onnxruntime's is."""
    ov = openvino()
    config: dict[str, Any] = {"INFERENCE_PRECISION_HINT": hint, "PERFORMANCE_HINT": "LATENCY"}
    if threads:
        config["INFERENCE_NUM_THREADS"] = threads
    try:
        core = ov.Core()
        if not uint8:
            return core.compile_model(core.read_model(str(path)), "CPU", config)
        model = core.read_model(with_uint8_output(Path(path).read_bytes()))
        pixels = [r for r in model.get_results() if UINT8_OUTPUT in r.output(0).get_names()]
        return core.compile_model(ov.Model(pixels, model.get_parameters(), "decoder_uint8"), "CPU", config)
    except Exception as e:  # noqa: BLE001 - OpenVINO raises RuntimeError with its own multi-line text
        raise ArtifactError(f"{path}: OpenVINO cannot load it ({first_line(e, 200)})") from None


class OpenVINOSession:
    """Runs a vae-export ONNX file through OpenVINO with one reused infer request; outputs read by name."""

    def __init__(self, path: str | Path, precision: str = "fp32", threads: int | None = None, uint8: bool = False):
        self.compiled = compile_model(path, HINTS[precision], threads, uint8)
        self.request = self.compiled.create_infer_request()   # reused: no per-call request set-up
        self.input = self.compiled.input(0)

    def run(self, names: list[str], x: np.ndarray, copy: bool = True) -> list[np.ndarray]:
        """copy=False returns views of the request's own buffers, valid until its next run."""
        results = self.request.infer({self.input: x}, share_inputs=True, share_outputs=not copy)
        return [results[self.compiled.output(name)] for name in names]


class OpenVINODecoder(Decoder):
    """`Decoder(path, provider="openvino", precision=...)`: the same interface, latents and seeded
    samples as the onnxruntime decoder, computed by OpenVINO's CPU plugin. `precision` fp32, fp16 or
    int8 runs that file with the f32 hint; bf16 runs decoder.onnx with the bf16 hint."""

    def __init__(self, path: str | os.PathLike, provider: str = "openvino", threads: int | None = None,
                 precision: str | None = None):
        if precision not in (None, *HINTS):
            raise UsageError(f"unknown precision {precision!r} for OpenVINO; expected {', '.join(HINTS)}")
        self.path = decoder_path(path, "fp32" if precision == "bf16" else precision)
        self.metadata = read_metadata(self.path)
        variant = self.metadata.get("variant", "fp32")
        if precision not in (None, "bf16", variant) or (precision == "bf16" and variant != "fp32"):
            raise ArtifactError(f"{self.path} holds the {variant!r} variant, not what --precision {precision} runs")
        self.precision = precision or variant
        sidecar = self.path.with_name("decoder.json")
        if self.path != Path(path) and sidecar.is_file():   # a variant picked from an export folder: of its model
            same_model([(sidecar, _read_json(sidecar)), (self.path, self.metadata)],
                       f"the folder's {variant} variant must be its own model's")
        self.sha256 = hashlib.sha256(_read_model(self.path)).hexdigest()   # what sample files record of their decoder
        self.threads = threads
        self._sessions: dict[str, OpenVINOSession] = {}     # dtype -> compiled on first use (0.2-0.5 s each)
        self.provider = f"OpenVINO CPU ({HINTS[self.precision]})"
        self._latent_shape = (self.latent_dim,)
        self._lock = threading.Lock()
        ov = openvino()
        try:
            model = ov.Core().read_model(str(self.path))
        except Exception as e:  # noqa: BLE001 - OpenVINO raises RuntimeError with its own multi-line text
            raise ArtifactError(f"{self.path}: OpenVINO cannot load it ({first_line(e, 200)})") from None
        names = [sorted(port.get_names()) for port in [*model.inputs, *model.outputs]]  # a port may have several
        if len(names) != 2 or not all(want in got for want, got in zip((*self.inputs, *self.outputs), names)) \
                or self.metadata.get("role") != self.role:
            raise ArtifactError(f"{self.path} is not a vae-export decoder: its inputs and outputs are {names}")

    def session_for(self, batch: int, dtype: str = "float32") -> OpenVINOSession:
        if dtype not in self._sessions:
            self._sessions[dtype] = OpenVINOSession(self.path, self.precision, self.threads, uint8=dtype == "uint8")
        return self._sessions[dtype]

    def _run(self, z: np.ndarray, out: np.ndarray | None = None, dtype: str = "float32") -> np.ndarray:
        if dtype not in OUTPUT_DTYPES:
            raise UsageError(f"dtype must be one of {', '.join(OUTPUT_DTYPES)}, got {dtype!r}")
        shape = (len(z), *self.image_shape)
        if out is not None and (out.shape != shape or out.dtype != OUTPUT_DTYPES[dtype]):
            raise UsageError(f"out must be a {dtype} array of shape {shape}")
        with self._lock:                       # one infer request per output, reused: not thread-safe
            session = self.session_for(len(z), dtype)
            images = session.run([UINT8_OUTPUT if dtype == "uint8" else "sample"], z, copy=False)[0]
            if out is None:
                return images.copy()
            np.copyto(out, images)
            return out
