"""OpenVINO as an optional CPU backend of the runtime: `Decoder(..., provider="openvino")`.

    vae-export sample --provider openvino --precision int8 -n 100000 --out samples.npy

OpenVINO's CPU plugin computes in bf16 by default on CPUs with bf16 units (AVX512-BF16, AMX): an app
that loads decoder.onnx with default settings gets up to ~0.01 (2.5 grey levels) of error and is never
told. So the precision is always explicit here: `fp32` and `int8` set INFERENCE_PRECISION_HINT f32
(int8 runs decoder.int8.onnx, whose quantized layers OpenVINO runs in int8 whatever the hint), `bf16`
runs decoder.onnx with the bf16 hint, a lossy precision of its own whose cost is measured like fp16/int8.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from .errors import ArtifactError, ProviderUnavailable, first_line

INSTALL = "pip install 'vae-export[runtimes]'  (or: pip install openvino)"
HINTS = {"fp32": "f32", "int8": "f32", "bf16": "bf16"}    # runtime precision -> INFERENCE_PRECISION_HINT
FILES = {"fp32": "decoder.onnx", "int8": "decoder.int8.onnx", "bf16": "decoder.onnx"}


def openvino():
    try:
        import openvino as ov
    except ImportError:
        raise ProviderUnavailable(f"--provider openvino: OpenVINO is not installed; {INSTALL}") from None
    return ov


def compile_model(path: str | Path, hint: str = "f32", threads: int | None = None, latency: bool = False):
    """The file compiled for the CPU with an explicit inference precision ("f32" or "bf16"), never the
    default. `latency` asks for one stream (batch-1 decoding) instead of throughput streams."""
    ov = openvino()
    config: dict[str, Any] = {"INFERENCE_PRECISION_HINT": hint,
                              "PERFORMANCE_HINT": "LATENCY" if latency else "THROUGHPUT"}
    if threads:
        config["INFERENCE_NUM_THREADS"] = threads
    try:
        core = ov.Core()
        return core.compile_model(core.read_model(str(path)), "CPU", config)
    except Exception as e:  # noqa: BLE001 - OpenVINO raises RuntimeError with its own multi-line text
        raise ArtifactError(f"{path}: OpenVINO cannot load it ({first_line(e, 200)})") from None


class OpenVINOSession:
    """Runs a vae-export ONNX file through OpenVINO; outputs are read by name."""

    def __init__(self, path: str | Path, precision: str = "fp32", threads: int | None = None, latency: bool = False):
        self.compiled = compile_model(path, HINTS[precision], threads, latency)
        self.request = self.compiled.create_infer_request()   # reused: no per-call request set-up
        self.input = self.compiled.input(0)

    def run(self, names: list[str], x: np.ndarray) -> list[np.ndarray]:
        results = self.request.infer({self.input: x}, share_inputs=True, share_outputs=False)
        return [results[self.compiled.output(name)] for name in names]
