"""The package as users get it: a wheel built from this checkout carries the default model and nothing
else of the repo, and installed into a fresh venv with only the base dependencies (no torch) it samples
from the packaged model, imports the runtime, and refuses the torch commands in one line.

    VAE_EXPORT_DATA=/work/shared/data .venv/bin/python -m pytest -q tests/test_package.py
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path
from urllib.parse import urlparse

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from vae_export import __version__
from vae_export.cli import app
from vae_export.cli.common import TRAIN_EXTRA, shipped_dir

REPO = Path(__file__).resolve().parents[1]
PROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
BASE = {"numpy", "onnxruntime", "typer", "rich", "pillow"}
MODEL = {f"vae_export/artifacts/mlp/{name}" for name in ("encoder.onnx", "decoder.onnx", "decoder.fp16.onnx", "decoder.int8.onnx",
                                                          "decoder.json", "manifest.json")}
# Every torch command, with arguments that get through Typer's parsing, so that the extras check answers.
TORCH_COMMANDS = [["train"], ["export", "c.pt"], ["onnx", "c.pt"], ["torchscript", "c.pt"], ["parity", "c.pt", "export"], ["bench"],
                  ["evaluate", "c.pt"]]
REFUSAL = 'needs the training extra: pip install "vae-export[train]"'

# Run inside the venv: where the packaged model is, and that neither torch nor onnx is there or imported.
PROBE = """
import importlib.util, json, sys
from vae_export.cli.common import shipped_dir
from vae_export.runtime import Decoder

Decoder(shipped_dir() / "decoder.onnx")
print(json.dumps({"model": str(shipped_dir()), "torch": importlib.util.find_spec("torch") and "installed",
                  "imported": [m for m in sys.modules if m.split(".")[0] in ("torch", "onnx")]}))
"""
# Run inside the venv: every command's --help, and each torch command's refusal, in one interpreter.
EVERY_COMMAND = """
import json, sys
from typer.testing import CliRunner
from vae_export.cli import app

runner = CliRunner()
commands = [c.name or c.callback.__name__ for c in app.registered_commands]
refused = [(args[0], *(lambda r: (r.exit_code, r.output))(runner.invoke(app, args))) for args in json.loads(sys.argv[1])]
print(json.dumps({"help": {c: runner.invoke(app, [c, "--help"]).exit_code for c in commands}, "refused": refused}))
"""


def names(requirements: list[str]) -> list[str]:
    """Distribution names of requirement strings: 'torch>=2.6; extra == "train"' -> 'torch'."""
    return [re.split(r"[\s<>=!~;\[]", r, maxsplit=1)[0].lower() for r in requirements]


def test_version_comes_from_the_distribution_metadata():
    result = CliRunner().invoke(app, ["--version"])
    assert result.exit_code == 0 and result.stdout == f"vae-export {PROJECT['version']}\n"
    assert __version__ == PROJECT["version"]


def test_the_extras_check_names_the_train_extra_and_the_base_has_no_torch():
    assert list(TRAIN_EXTRA) == names(PROJECT["optional-dependencies"]["train"])
    assert set(names(PROJECT["dependencies"])) == BASE


def test_a_checkout_ships_artifacts_mlp_itself():
    assert shipped_dir().resolve() == (REPO / "artifacts" / "mlp").resolve()  # one copy, mapped by pyproject.toml


def run(*cmd, cwd: Path, ok: bool = True) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    done = subprocess.run([str(c) for c in cmd], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    assert not ok or done.returncode == 0, f"{cmd} exited {done.returncode}:\n{done.stdout}\n{done.stderr}"
    return done


def index_reachable() -> bool:
    """Building (isolated setuptools) and installing the base dependencies need the package index."""
    url = urlparse(os.environ.get("PIP_INDEX_URL") or "https://pypi.org/simple")
    try:
        socket.create_connection((url.hostname, url.port or 443), timeout=5).close()
        return True
    except OSError:
        return False


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """The wheel, built from a copy of the checkout (no stale build/ folder, no untracked runs or caches)."""
    if not index_reachable():
        message = "the package index cannot be reached: cannot build the wheel or install its dependencies"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    tmp = tmp_path_factory.mktemp("wheel")
    shutil.copytree(REPO, tmp / "src", ignore=shutil.ignore_patterns(
        ".git", ".venv", "build", "dist", "runs", "node_modules", "__pycache__", "*.egg-info"))
    run(sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "--wheel-dir", tmp / "dist", tmp / "src", cwd=tmp)
    (built,) = (tmp / "dist").glob("vae_export-*.whl")
    return built


@pytest.fixture(scope="module")
def venv(wheel, tmp_path_factory) -> Path:
    """A fresh venv with the wheel and its base dependencies only; returns its bin folder."""
    metadata = zipfile.ZipFile(wheel).read(f"vae_export-{PROJECT['version']}.dist-info/METADATA").decode()
    base = names([r for r in re.findall(r"^Requires-Dist: (.+)$", metadata, re.M) if "extra ==" not in r])
    assert set(base) == BASE, f"the wheel's base dependencies are {base}, not the torch-free base: not installing them"
    folder = tmp_path_factory.mktemp("venv")
    run(sys.executable, "-m", "venv", "--without-pip", folder, cwd=folder)  # the outer pip installs into it
    run(sys.executable, "-m", "pip", "--python", folder / "bin" / "python", "install", "--quiet", "--no-compile", wheel, cwd=folder)
    return folder / "bin"


def test_the_wheel_holds_the_model_and_every_module_and_nothing_else(wheel):
    files = set(zipfile.ZipFile(wheel).namelist())
    web = [p for p in (REPO / "vae_export" / "web").rglob("*") if p.is_file() and not {"node_modules", "__pycache__"} & set(p.parts)]
    source = {p.relative_to(REPO).as_posix() for p in [*REPO.glob("vae_export/**/*.py"), *web]}
    source |= {f"vae_export/{p.relative_to(REPO).as_posix()}" for p in REPO.glob("training/**/*.py")}  # installed as vae_export.training
    assert MODEL <= files and source <= files  # packages are listed by hand in pyproject.toml: none may be missing
    assert "vae_export/artifacts/mlp/checkpoint.pt" not in files  # torch-only, 7.8 MB: not in the base install
    dist_info = f"vae_export-{PROJECT['version']}.dist-info"
    assert {f.split("/")[0] for f in files} == {"vae_export", dist_info}  # one top-level name; no tests, runs, benchmarks
    assert not [f for f in files if re.search(r"__pycache__|\.pyc$|node_modules|\.egg-info", f)]


def test_the_wheel_in_a_fresh_venv_samples_without_torch_and_refuses_the_torch_commands(venv, tmp_path):
    assert run(venv / "vae-export", "--version", cwd=tmp_path).stdout == f"vae-export {PROJECT['version']}\n"

    run(venv / "python", "-c", "from vae_export.runtime import Decoder", cwd=tmp_path)
    probe = json.loads(run(venv / "python", "-c", PROBE, cwd=tmp_path).stdout)
    assert probe["torch"] is None and probe["imported"] == []  # torch is not even installed
    assert probe["model"].endswith("site-packages/vae_export/artifacts/mlp")

    run(venv / "vae-export", "sample", "-n", "16", "--out", "x.png", cwd=tmp_path)
    assert CliRunner().invoke(app, ["sample", "-n", "16", "--out", str(tmp_path / "checkout.png")]).exit_code == 0
    packaged, checkout = (np.asarray(Image.open(tmp_path / f), dtype=np.int16) for f in ("x.png", "checkout.png"))
    assert packaged.shape == checkout.shape and np.abs(packaged - checkout).max() <= 1  # onnxruntime versions may differ

    assert "--preset" in run(venv / "vae-export", "train", "--help", cwd=tmp_path).stdout
    refused = run(venv / "vae-export", "train", "--epochs", "1", cwd=tmp_path, ok=False)
    assert refused.returncode == 2 and refused.stdout == ""
    assert len(refused.stderr.strip().splitlines()) == 1 and f"vae-export train {REFUSAL}" in refused.stderr

    result = json.loads(run(venv / "python", "-c", EVERY_COMMAND, json.dumps(TORCH_COMMANDS), cwd=tmp_path).stdout)
    assert {"sample", "encode", "reconstruct", "train", "bench", "evaluate", "web", "merge"} <= set(result["help"])
    assert set(result["help"].values()) == {0}, result["help"]
    for command, code, output in result["refused"]:
        assert code == 2 and f"vae-export {command} {REFUSAL}" in output, (command, code, output)
