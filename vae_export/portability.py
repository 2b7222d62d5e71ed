"""Prove that an export folder loads and agrees in the runtimes apps embed: each runtime is driven the
way its own documentation tells an app to, on the same 1000 inputs, and compared with onnxruntime's
float32 file of the same role (decoder.onnx / encoder.onnx).

    vae-export portability artifacts/mlp --runtimes all

Exact files (float32) must agree within max |diff| 1e-5 (encoder: + 1e-5 relative); lossy ones (the
fp16 and int8 files, OpenVINO's bf16 precision) are judged by their mean pixel error, with the worst
pixel reported. A runtime's own known bug (KNOWN_UPSTREAM) is a row of its own, expected to fail with
exactly that error; any other failure of an installed runtime fails the check.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from .errors import ArtifactError, UsageError, first_line
from .runtime import read_metadata

N_INPUTS = 1000
EXACT = (1e-5, 1e-5)            # (atol on max |diff|, encoder rtol) for float32 files in float32 runtimes
# Bounds on the mean |diff| of lossy files and precisions, set from measurement (artifacts/mlp and a
# conv export: fp16 1.6e-5 / 6e-6, and 1.5e-4 in tract, which sums in half; int8 8e-4 / 2.8e-4;
# OpenVINO bf16 2.3e-4 / 1.1e-4 on the decoder, 2.3e-3 / 5.6e-3 on the encoder's mu and logvar).
# int8 and bf16 as in parity.VARIANT_MEAN; fp16 5x wider, for tract's half-precision sums.
LOSSY_MEAN = {"fp16": 5e-4, "int8": 1e-2, "bf16": 1e-3, "bf16-encoder": 2e-2}

NODE_MODULES = Path(__file__).resolve().parents[1] / "node_modules"
NODE_SCRIPT = Path(__file__).with_name("web") / "run_onnx.mjs"


@dataclass(frozen=True)
class Runtime:
    name: str
    install: str
    precision: str = "fp32"             # what the runtime computes in: fp32, or bf16 (lossy)
    note: str = ""


RUNTIMES = {r.name: r for r in (
    Runtime("onnxruntime", "pip install onnxruntime", note="InferenceSession, CPUExecutionProvider"),
    Runtime("openvino", "pip install openvino", note="compile_model(..., 'CPU', {'INFERENCE_PRECISION_HINT': 'f32'})"),
    Runtime("openvino-bf16", "pip install openvino", "bf16", "INFERENCE_PRECISION_HINT bf16 (f32 where the CPU has no bf16)"),
    Runtime("tract", "pip install tract", note="set_input_fact(0, '1000,...,f32'): a fixed batch"),
    Runtime("opencv", "pip install opencv-python-headless", note="readNetFromONNX, default engine, outputs by name"),
    Runtime("opencv-classic", "pip install opencv-python-headless", note="readNetFromONNX(..., engine=ENGINE_CLASSIC)"),
    Runtime("node", "npm install --onnxruntime-node-install=skip onnxruntime-node", note="onnxruntime-node, CPU"),
    Runtime("web", "npm install onnxruntime-web", note="onnxruntime-web's WebAssembly backend (the browsers' CPU path), in Node"),
)}

# (runtime, variant) -> the upstream error such a row may fail with: then it reads "upstream bug", and
# any other failure is ours. OpenCV's classic engine has no float16 layers; its new engine (the
# default) rejects per-channel DequantizeLinear of a ConvTranspose weight (the conv preset's int8 file).
KNOWN_UPSTREAM = {
    ("opencv-classic", "fp16"): "'input' is 7 (CV_16FC1)",
    ("opencv", "int8"): "error: (-215:Assertion failed) zpshape == scshape in function 'dequantizeLinear'",
}


@dataclass
class Row:
    file: str
    runtime: str
    output: str
    loads: bool
    max_abs: float
    mean_abs: float
    vs_same_file: float       # max |diff| against onnxruntime running this very file
    bound: str
    result: str               # pass, FAIL, upstream bug, not installed
    note: str = ""

    def as_dict(self) -> dict:
        return asdict(self)


def selected(names: str) -> list[str]:
    """`all`, or a comma-separated list of RUNTIMES names."""
    if names == "all":
        return list(RUNTIMES)
    chosen = [n.strip() for n in names.split(",") if n.strip()]
    unknown = [n for n in chosen if n not in RUNTIMES]
    if unknown or not chosen:
        raise UsageError(f"unknown runtime {', '.join(unknown) or names!r}; expected all or some of {', '.join(RUNTIMES)}")
    return chosen


def check(directory: Path, runtimes: list[str], n: int = N_INPUTS, seed: int = 0) -> list[Row]:
    """One row per file x runtime x output. Never raises for a runtime's failure: the row says it."""
    directory = Path(directory)
    order = ["decoder.onnx", "decoder.fp16.onnx", "decoder.int8.onnx", "encoder.onnx"]
    files = sorted((p for p in directory.glob("*.onnx") if p.name.split(".")[0] in ("encoder", "decoder")),
                   key=lambda p: (order.index(p.name) if p.name in order else len(order), p.name))
    if not files:
        raise ArtifactError(f"no encoder/decoder .onnx files in {directory}")
    rows = []
    for path in files:
        meta = read_metadata(path)
        x = _inputs(meta, n, seed)
        outputs = list(meta["outputs"])
        reference_path = directory / f"{meta['role']}.onnx"
        reference = _onnxruntime(reference_path if reference_path.is_file() else path, meta, x)
        same = _onnxruntime(path, meta, x)
        for name in runtimes:
            rows += _rows(path, meta, RUNTIMES[name], x, outputs, reference, same)
    return rows


def _inputs(meta: dict, n: int, seed: int) -> np.ndarray:
    """N(0, I) latents for a decoder, uniform [0, 1] images for an encoder."""
    rng = np.random.default_rng(seed)
    if meta["role"] == "decoder":
        return rng.standard_normal((n, meta["latent_dim"]), dtype=np.float32)
    return rng.random((n, *meta["image_shape"]), dtype=np.float32)


def _rows(path: Path, meta: dict, runtime: Runtime, x: np.ndarray, outputs: list[str],
          reference: dict[str, np.ndarray], same: dict[str, np.ndarray]) -> list[Row]:
    variant = meta.get("variant", "fp32")
    lossy = [p for p in (variant, runtime.precision) if p != "fp32"]
    if lossy:
        kind = "bf16-encoder" if meta["role"] == "encoder" and "bf16" in lossy else max(lossy, key=LOSSY_MEAN.get)
        bound, ok = f"mean <= {LOSSY_MEAN[kind]:g}", lambda d, r: d.mean() <= LOSSY_MEAN[kind]
    else:
        rtol = EXACT[1] if meta["role"] == "encoder" else 0.0
        bound = f"max <= {EXACT[0]:g}" + (f" + {rtol:g} rel" if rtol else "")
        ok = lambda d, r: bool(np.all(d <= EXACT[0] + rtol * np.abs(r)))  # noqa: E731
    known = KNOWN_UPSTREAM.get((runtime.name, variant))

    def row(output, loads, max_abs, mean_abs, vs_same, result, note=""):
        return Row(path.name, runtime.name, output, loads, max_abs, mean_abs, vs_same, bound, result, note)

    runner = RUNNERS[runtime.name]
    missing = runner.missing()
    if missing:
        return [row("*", False, float("nan"), float("nan"), float("nan"), "not installed", f"{missing}: {runtime.install}")]
    try:
        got = runner.run(path, meta, x, outputs, runtime.precision)
    except Exception as e:  # noqa: BLE001 - every runtime raises its own types; the row reports the first line
        if known and known in str(e):
            return [row("*", False, float("nan"), float("nan"), float("nan"), "upstream bug", f"{first_line(e, 120)}... {known}")]
        return [row("*", False, float("nan"), float("nan"), float("nan"), "FAIL", first_line(e, 400))]
    rows = []
    for name in outputs:
        a, r = np.asarray(got[name], np.float64).reshape(reference[name].shape), reference[name].astype(np.float64)
        d = np.abs(a - r)
        passed = bool(np.isfinite(d).all() and ok(d, r))
        rows.append(row(name, True, float(d.max()), float(d.mean()), float(np.abs(a - same[name]).max()),
                        "pass" if passed else "FAIL"))
    return rows


def _onnxruntime(path: Path, meta: dict, x: np.ndarray) -> dict[str, np.ndarray]:
    return RUNNERS["onnxruntime"].run(path, meta, x, list(meta["outputs"]), "fp32")


@dataclass(frozen=True)
class Runner:
    missing: Callable[[], str]            # what is missing ("" if the runtime is here)
    run: Callable[..., dict]              # (path, meta, x, outputs, precision) -> {output name: array}


def _module_missing(module: str) -> Callable[[], str]:
    def missing() -> str:
        import importlib.util

        return "" if importlib.util.find_spec(module) else f"no Python module {module}"
    return missing


def _run_onnxruntime(path, meta, x, outputs, precision):
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return dict(zip(outputs, session.run(outputs, {meta["inputs"][0]: x})))


def _run_openvino(path, meta, x, outputs, precision):
    from .openvino_backend import OpenVINOSession

    session = OpenVINOSession(path, "bf16" if precision == "bf16" else "fp32")
    return dict(zip(outputs, session.run(outputs, x)))


def _run_tract(path, meta, x, outputs, precision):
    import tract

    model = tract.onnx().load(str(path))
    model.set_input_fact(0, ",".join(map(str, x.shape)) + ",f32")     # a fixed batch, as tract's docs do
    # tract names outputs after the nodes that compute them (node_linear_1), keeping the graph's order
    return dict(zip(outputs, (t.to_numpy() for t in model.into_model().into_runnable().run([x]))))


def _run_opencv(engine: str):
    def run(path, meta, x, outputs, precision):
        import cv2

        cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_SILENT)  # its failures come back as exceptions; silence the copies it logs
        net = cv2.dnn.readNetFromONNX(str(path), engine=getattr(cv2.dnn, engine))
        net.setInput(x, meta["inputs"][0])
        return dict(zip(outputs, net.forward(outputs)))     # by name: forward() alone gives logvar, mu
    return run


def _node_missing(package: str) -> Callable[[], str]:
    def missing() -> str:
        if not shutil.which("node"):
            return "no node on PATH"
        return "" if (node_modules() / package).is_dir() else f"no {package} in {node_modules()} (or set VAE_EXPORT_NODE_MODULES)"
    return missing


def node_modules() -> Path:
    """Where the npm packages are: $VAE_EXPORT_NODE_MODULES, or the repository's node_modules."""
    return Path(os.environ.get("VAE_EXPORT_NODE_MODULES") or NODE_MODULES)


def _run_node(engine: str):
    def run(path, meta, x, outputs, precision):
        with tempfile.TemporaryDirectory() as tmp:
            x.tofile(f"{tmp}/in.f32")
            done = subprocess.run(["node", str(NODE_SCRIPT), engine, str(node_modules()), str(path), meta["inputs"][0],
                                   f"{tmp}/in.f32", json.dumps(list(x.shape)), ",".join(outputs), f"{tmp}/out"],
                                  capture_output=True, text=True, timeout=300)
            if done.returncode:
                lines = [line for line in done.stderr.splitlines() if "Error" in line] or done.stderr.splitlines() or ["?"]
                raise RuntimeError(lines[0])
            return {name: np.fromfile(f"{tmp}/out.{name}.f32", np.float32) for name in outputs}
    return run


RUNNERS = {
    "onnxruntime": Runner(_module_missing("onnxruntime"), _run_onnxruntime),
    "openvino": Runner(_module_missing("openvino"), _run_openvino),
    "openvino-bf16": Runner(_module_missing("openvino"), _run_openvino),
    "tract": Runner(_module_missing("tract"), _run_tract),
    "opencv": Runner(_module_missing("cv2"), _run_opencv("ENGINE_AUTO")),
    "opencv-classic": Runner(_module_missing("cv2"), _run_opencv("ENGINE_CLASSIC")),
    "node": Runner(_node_missing("onnxruntime-node"), _run_node("node")),
    "web": Runner(_node_missing("onnxruntime-web"), _run_node("web")),
}


def failed(rows: list[Row]) -> list[Row]:
    return [r for r in rows if r.result == "FAIL"]


def markdown(rows: list[Row]) -> str:
    """The table as Markdown, one line per file x runtime x output."""
    lines = ["| file | runtime | output | loads | max abs | mean abs | max vs onnxruntime, same file | bound | result |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        result = r.result + (f": {r.note}" if r.note else "")
        lines.append(f"| {r.file} | {r.runtime} | {r.output} | {'yes' if r.loads else 'no'} | {_num(r.max_abs)} | "
                     f"{_num(r.mean_abs)} | {_num(r.vs_same_file)} | {r.bound} | {result} |")
    return "\n".join(lines)


def matrix(rows: list[Row]) -> str:
    """The table as Markdown, runtime x file: each cell the result and the largest max and mean |diff|."""
    files = list(dict.fromkeys(r.file for r in rows))
    cells: dict[tuple[str, str], list[Row]] = {}
    for r in rows:
        cells.setdefault((r.runtime, r.file), []).append(r)
    lines = ["| runtime | " + " | ".join(files) + " |", "|---|" + "---|" * len(files)]
    for runtime in dict.fromkeys(r.runtime for r in rows):
        out = []
        for f in files:
            group = cells.get((runtime, f), [])
            worst = "FAIL" if any(r.result == "FAIL" for r in group) else group[0].result if group else "-"
            loaded = [r for r in group if r.loads]
            out.append(f"{worst}: max {_num(max(r.max_abs for r in loaded))}, mean {_num(max(r.mean_abs for r in loaded))}"
                       if loaded else worst)
        lines.append(f"| {runtime} | " + " | ".join(out) + " |")
    return "\n".join(lines)


def _num(v: float) -> str:
    return "-" if v != v else f"{v:.1e}"


def print_table(rows: list[Row], console) -> None:
    from rich.markup import escape
    from rich.table import Table

    table = Table("file", "runtime", "output", "loads", "max abs", "mean abs", "vs ort same file", "bound", "result",
                  title="portability: each runtime vs onnxruntime float32", title_justify="left")
    colour = {"pass": "green", "FAIL": "red", "upstream bug": "yellow", "not installed": "dim"}
    for r in rows:
        result = f"[{colour[r.result]}]{r.result}[/]" + (f" {escape(r.note)}" if r.note else "")
        table.add_row(r.file, r.runtime, r.output, "yes" if r.loads else "no", _num(r.max_abs), _num(r.mean_abs),
                      _num(r.vs_same_file), r.bound, result)
    console.print(table)
    for name in dict.fromkeys(r.runtime for r in rows):       # how each runtime was driven
        console.print(f"  {name}: {RUNTIMES[name].note}", markup=False)
