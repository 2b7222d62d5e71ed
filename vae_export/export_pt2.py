"""torch.export's deployment formats, beside ONNX and described by the same `ExportSpec`s:
- `encoder.pt2`, `decoder.pt2`: serialized ExportedPrograms (`torch.export.save`); any PyTorch of a
  compatible version runs them with `torch.export.load(path).module()`, without this package;
- `encoder.aoti.pt2`, `decoder.aoti.pt2`: AOTInductor packages of those programs (compiled C++
  kernels, weights frozen in); `torch._inductor.aoti_load_package` in Python, or libtorch's
  `torch::inductor::AOTIModelPackageLoader` in C++ with no Python at all (examples/cpp/).

    vae-export export runs/mlp/checkpoint.pt --out runs/mlp/export --format onnx,pt2,aoti
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import platform
import time
import warnings
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from .errors import ArtifactError, UsageError, VaeExportError, first_line
from .export import BATCH_AXIS, SPECS, TORCHSCRIPT_EXTRA, ExportSpec, Written, artifact_path, metadata
from .files import atomic_open, writable_dir
from .model import VAE

PT2_EXTRA = TORCHSCRIPT_EXTRA       # "vae_export.json": extra_files of a .pt2, metadata of an AOTI package
EXPORT_BATCH = 2                    # torch.export specializes a size-1 dimension: trace with 2
# The CPU an AOTInductor package is compiled for. Inductor passes -march=native and this machine's
# widest vector ISA unless told otherwise, so a package built on an AVX-512 machine dies of SIGILL
# on a lesser one (pytorch#121516). "avx2" is the portable floor: x86-64-v3 code (Haswell, Zen 1
# and later) with 256-bit vectors; "native" is this machine's best, for packages that stay here.
ISAS: dict[str, dict[str, Any]] = {
    "avx2": {"cpp.march": "x86-64-v3", "cpp.simdlen": 256},
    "native": {},
}
# Constant folding of the weights into the compiled graph, as AOTInductor's CPU docs advise.
AOTI_CONFIGS = {"freezing": True}


def exported_program(module: torch.nn.Module, spec: ExportSpec, config) -> torch.export.ExportedProgram:
    """torch.export of one network with a dynamic `batch_size` axis (traced at batch 2)."""
    example = spec.example(config, EXPORT_BATCH, torch.Generator().manual_seed(0))
    batch = torch.export.Dim(BATCH_AXIS, min=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return torch.export.export(module.eval(), (example,), dynamic_shapes=({0: batch},), strict=False)


def export_pt2(model: VAE, checkpoint: dict[str, Any], checkpoint_sha256: str, out_dir: str | Path) -> list[Written]:
    """Write encoder.pt2 and decoder.pt2, their metadata in extra_files['vae_export.json']."""
    out_dir = writable_dir(out_dir)
    written = []
    for spec in SPECS.values():
        t0 = time.perf_counter()
        program = exported_program(spec.module(model), spec, model.config)
        meta = {**metadata(model.config, checkpoint, checkpoint_sha256, spec, "pt2"), "torch_version": torch.__version__}
        path = artifact_path(out_dir, spec.role, "pt2")
        with atomic_open(path) as f:
            torch.export.save(program, f, extra_files={PT2_EXTRA: json.dumps(meta)})
        written.append(Written(path, time.perf_counter() - t0))
    return written


def export_aoti(model: VAE, checkpoint: dict[str, Any], checkpoint_sha256: str, out_dir: str | Path,
                isa: str = "avx2") -> list[Written]:
    """Write encoder.aoti.pt2 and decoder.aoti.pt2, compiled for `isa` (see ISAS) with frozen weights;
    the metadata rides in the package's metadata under 'vae_export.json'."""
    out_dir = writable_dir(out_dir)
    check_aoti_toolchain(isa)
    written = []
    for spec in SPECS.values():
        t0 = time.perf_counter()
        program = exported_program(spec.module(model), spec, model.config)
        meta = {**metadata(model.config, checkpoint, checkpoint_sha256, spec, "aoti"), "torch_version": torch.__version__,
                "aoti_isa": isa, "aoti_march": ISAS[isa].get("cpp.march", "native"), "aoti_configs": AOTI_CONFIGS}
        configs = {**AOTI_CONFIGS, **ISAS[isa], "aot_inductor.metadata": {PT2_EXTRA: json.dumps(meta)}}
        path = artifact_path(out_dir, spec.role, "aoti")
        with atomic_open(path) as f, _quiet_torch(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                torch._inductor.aoti_compile_and_package(program, package_path=f, inductor_configs=configs)
            except Exception as e:  # noqa: BLE001 - a compiler or linker failure: one line, no traceback
                raise VaeExportError(f"AOTInductor could not compile {path.name} ({first_line(e, 200)})") from None
        written.append(Written(path, time.perf_counter() - t0))
    return written


def check_aoti_toolchain(isa: str) -> str:
    """The C++ compiler AOTInductor will use (CXX, else g++); refuse before any work if there is none,
    or if the asked-for ISA is not this machine's architecture."""
    if isa not in ISAS:
        raise UsageError(f"unknown AOTInductor ISA {isa!r}; expected one of {', '.join(ISAS)}")
    if isa == "avx2" and platform.machine() not in ("x86_64", "AMD64"):
        raise UsageError(f"--aoti-isa avx2 targets x86-64; this machine is {platform.machine()}: use --aoti-isa native")
    from torch._inductor import exc
    from torch._inductor.cpp_builder import get_cpp_compiler

    try:
        return get_cpp_compiler()
    except exc.InvalidCxxCompiler:
        raise VaeExportError("AOTInductor needs a C++ compiler and none was found (set CXX, or install g++: "
                             "apt-get install g++)") from None


@contextlib.contextmanager
def _quiet_torch():
    """Inductor logs warnings to stderr that are expected here (no CUDA runtime on a CPU export; an
    AVX2 package's ISA differing from this machine's) and prints nothing the user can act on."""
    loggers = [logging.getLogger(n) for n in ("torch", "torch._inductor", "torch.export", "torch.utils.cpp_extension")]
    saved = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        for lg, level in zip(loggers, saved):
            lg.setLevel(level)


def load(path: Path, fmt: str) -> tuple[Callable[..., Any], dict[str, Any]]:
    """(callable module, our metadata) of a .pt2 ExportedProgram or an AOTInductor package."""
    try:
        with _quiet_torch(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if fmt == "pt2":
                extra = {PT2_EXTRA: ""}
                module = torch.export.load(str(path), extra_files=extra).module()
                meta = json.loads(extra[PT2_EXTRA])
            else:
                module = torch._inductor.aoti_load_package(str(path))
                meta = json.loads(module.get_metadata()[PT2_EXTRA])
    except Exception as e:  # noqa: BLE001 - torch raises RuntimeError, KeyError, zipfile errors, ...
        kind = "ExportedProgram (.pt2)" if fmt == "pt2" else "AOTInductor package"
        raise ArtifactError(f"{path} is not a loadable vae-export {kind} ({first_line(e, 200)})") from None
    return module, meta


def runner(path: Path, role: str, fmt: str) -> Callable[[np.ndarray], dict[str, np.ndarray]]:
    """A function from an input batch to {output name: array}, running the file through torch."""
    module, meta = load(path, fmt)
    return torch_runner(module, meta, path, role)


def torch_runner(module: Callable, meta: dict, path: Path, role: str) -> Callable[[np.ndarray], dict[str, np.ndarray]]:
    """{output name: array} from a loaded torch module (.pt2, AOTInductor or TorchScript) whose metadata says
    it is `role`: the one place that checks a torch-loaded file's role and names its outputs."""
    spec = SPECS[role]
    if meta.get("role") != role or meta.get("outputs") != list(spec.outputs):
        raise ArtifactError(f"{path}: metadata says role {meta.get('role')!r}, outputs {meta.get('outputs')}; "
                            f"expected {role!r}, {list(spec.outputs)}")

    def run(x: np.ndarray) -> dict[str, np.ndarray]:
        with torch.inference_mode():
            y = module(torch.from_numpy(x))
        y = tuple(y) if isinstance(y, (tuple, list)) else (y,)
        return {name: t.numpy() for name, t in zip(spec.outputs, y)}

    return run
