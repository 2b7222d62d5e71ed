"""The torch.export formats (encoder/decoder .pt2 ExportedPrograms and .aoti.pt2 AOTInductor packages)
export beside ONNX and TorchScript, pass parity for a grey mlp and an RGB conv, run in a Python that
never imports vae_export, describe themselves, and fail in one line."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from vae_export.checkpoint import load_model
from vae_export.cli import app
from vae_export.errors import ArtifactError
from vae_export.files import sha256_file
from vae_export.parity import BATCH_SIZES, artifact_metadata, check_parity

FILES = {f"{role}.{suffix}" for role in ("encoder", "decoder") for suffix in ("onnx", "pt2", "aoti.pt2", "torchscript")}
VAE_EXPORT = Path(sys.executable).parent / "vae-export"

# Loads each file with torch alone and writes its outputs; reports what it imported and the metadata.
FRESH = """
import json, sys
import numpy as np, torch
folder = sys.argv[1]
meta = {}
for role in ("encoder", "decoder"):
    x = torch.from_numpy(np.load(f"{folder}/{role}-input.npy"))
    extra = {"vae_export.json": ""}
    program = torch.export.load(f"{folder}/{role}.pt2", extra_files=extra).module()
    package = torch._inductor.aoti_load_package(f"{folder}/{role}.aoti.pt2")
    meta[role] = {"pt2": json.loads(extra["vae_export.json"]), "aoti": package.get_metadata()}
    for fmt, module in (("pt2", program), ("aoti", package)):
        with torch.inference_mode():
            y = module(x)
        y = y if isinstance(y, (tuple, list)) else [y]
        np.savez(f"{folder}/{role}-{fmt}.npz", *[t.numpy() for t in y])
print(json.dumps({"vae_export_imported": any(m.startswith("vae_export") for m in sys.modules), "meta": meta}))
"""


def run(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


@pytest.mark.parametrize("name, dataset", [("mlp", "mnist"), ("rgb", "npy")])
def test_every_format_passes_parity_and_the_report_names_the_loader(pt2_exports, mnist_root, tmp_path, name, dataset):
    ckpt, folder = pt2_exports[name]
    assert FILES <= {p.name for p in folder.iterdir()}
    result = run("parity", ckpt, folder, "--data-dir", mnist_root, "--report", tmp_path / "parity.json", "--quiet")
    assert result.exit_code == 0, result.output
    assert "checks passed for 8 artifacts" in result.stdout
    rows = json.loads((tmp_path / "parity.json").read_text())
    assert {r["backend"] for r in rows} == {"onnxruntime-cpu", "pt2", "aoti", "torchscript"}
    for fmt in ("pt2", "aoti"):
        mine = [r for r in rows if r["backend"] == fmt]
        assert set(BATCH_SIZES) <= {r["batch_size"] for r in mine}     # the dynamic batch axis, proven
        assert {r["inputs"] for r in mine} == {"random", dataset} and all(r["passed"] for r in mine)
        assert {r["loaded_by"] for r in mine} == {f"torch {torch.__version__}"}
    assert {r["loaded_by"].split()[0] for r in rows if r["backend"] == "onnxruntime-cpu"} == {"onnxruntime"}


def test_pt2_and_aoti_run_in_a_python_that_never_imports_vae_export(pt2_exports, tmp_path):
    ckpt, folder = pt2_exports["rgb"]
    model, _ = load_model(ckpt)
    g = torch.Generator().manual_seed(1)
    inputs = {"encoder": torch.rand(5, *model.config.image_shape, generator=g),
              "decoder": torch.randn(3, model.config.latent_dim, generator=g)}   # batch sizes never exported with
    for role, x in inputs.items():
        np.save(tmp_path / f"{role}-input.npy", x.numpy())
        for suffix in ("pt2", "aoti.pt2"):
            os.link(folder / f"{role}.{suffix}", tmp_path / f"{role}.{suffix}")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    done = subprocess.run([sys.executable, "-c", FRESH, str(tmp_path)], capture_output=True, text=True, env=env,
                          cwd=tmp_path, timeout=300)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout.splitlines()[-1])
    assert report["vae_export_imported"] is False
    with torch.inference_mode():
        want = {"encoder": model.encoder(inputs["encoder"]), "decoder": (model.decoder(inputs["decoder"]),)}
    for role in inputs:
        for fmt in ("pt2", "aoti"):
            got = np.load(tmp_path / f"{role}-{fmt}.npz")
            assert len(got.files) == len(want[role])
            for k, w in enumerate(want[role]):
                np.testing.assert_allclose(got[f"arr_{k}"], w.numpy(), atol=1e-5, rtol=1e-5)
        meta = report["meta"][role]
        assert meta["pt2"]["role"] == role and meta["pt2"]["format"] == "pt2" and meta["pt2"]["channels"] == 3
        ours = json.loads(meta["aoti"]["vae_export.json"])
        assert ours["format"] == "aoti" and ours["aoti_isa"] == "avx2" and ours["torch_version"] == torch.__version__
        assert meta["aoti"]["AOTI_CPU_ISA"] == "AVX2"    # what Inductor itself recorded: the portable floor


def test_torchscript_is_labelled_legacy_and_the_manifest_lists_pt2(pt2_exports):
    ckpt, folder = pt2_exports["mlp"]
    for name in FILES:   # what parity's provenance check reads without running the file
        assert artifact_metadata(folder / name)["checkpoint_sha256"] == sha256_file(ckpt)
    extra = {"vae_export.json": ""}
    with pytest.warns(FutureWarning):
        torch.jit.load(str(folder / "decoder.torchscript"), _extra_files=extra)
    assert "deprecated" in json.loads(extra["vae_export.json"])["legacy"]
    listed = {a["file"] for a in json.loads((folder / "manifest.json").read_text())["artifacts"]}
    assert FILES <= listed
    assert "legacy" in run("torchscript", "--help").stdout.lower()


def test_wrong_or_damaged_pt2_files_are_refused(pt2_exports, tmp_path):
    ckpt, folder = pt2_exports["mlp"]
    model, _ = load_model(ckpt)
    for suffix in ("pt2", "aoti.pt2"):
        (tmp_path / f"decoder.{suffix}").write_bytes((folder / f"encoder.{suffix}").read_bytes())  # posing as decoder
        with pytest.raises(ArtifactError, match="metadata says role 'encoder'"):
            check_parity(model, [tmp_path / f"decoder.{suffix}"])
        (tmp_path / f"decoder.{suffix}").write_bytes((folder / f"decoder.{suffix}").read_bytes()[:5000])
        with pytest.raises(ArtifactError, match="is not a loadable vae-export"):
            check_parity(model, [tmp_path / f"decoder.{suffix}"])


def test_aoti_without_a_compiler_is_refused_before_any_work(tmp_path):
    ckpt = Path(__file__).resolve().parents[1] / "artifacts" / "mlp" / "checkpoint.pt"
    env = {**os.environ, "CXX": str(tmp_path / "no-such-g++")}
    done = subprocess.run([str(VAE_EXPORT), "export", str(ckpt), "--out", str(tmp_path / "out"), "--format", "pt2,aoti"],
                          capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 1 and done.stderr.count("\n") == 1, done.stderr
    assert "AOTInductor needs a C++ compiler" in done.stderr
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_a_torch_that_refuses_torchscript_gets_one_line_naming_pt2(monkeypatch, tmp_path):
    def refused(*args, **kwargs):   # what a torch without torch.jit does (pytorch#189705 makes it an error)
        raise RuntimeError("torch.jit.trace is deprecated and disabled\nset an environment variable...")

    monkeypatch.setattr(torch.jit, "trace", refused)
    ckpt = Path(__file__).resolve().parents[1] / "artifacts" / "mlp" / "checkpoint.pt"
    result = run("export", ckpt, "--out", tmp_path / "out", "--format", "torchscript")
    assert result.exit_code == 1 and result.stderr.count("\n") == 1
    assert "use --format pt2 or --format aoti" in result.stderr and "Traceback" not in result.output
    assert not (tmp_path / "out").exists()  # the folder this failed run created is removed too


def test_unknown_formats_are_usage_errors(tmp_path):
    ckpt = Path(__file__).resolve().parents[1] / "artifacts" / "mlp" / "checkpoint.pt"
    assert run("export", ckpt, "--out", tmp_path, "--format", "onnx,tflite").exit_code == 2
    assert run("export", ckpt, "--out", tmp_path, "--format", "pt2", "--int8").exit_code == 2
    assert run("export", ckpt, "--out", tmp_path, "--aoti-isa", "avx9").exit_code == 2
