"""vae-export portability: the shipped model and a fresh conv export load and agree in every runtime
apps embed (onnxruntime, OpenVINO, tract, OpenCV, onnxruntime-node, onnxruntime-web), the runtimes'
own bugs fail exactly as stated, and a file that pins its intermediates to the symbolic batch fails."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import onnx
import pytest
from typer.testing import CliRunner

from vae_export import portability
from vae_export.cli import app
from vae_export.runtime import Decoder

REPO = Path(__file__).resolve().parents[1]
SHIPPED = REPO / "artifacts" / "mlp"
runner = CliRunner()

# What each file is expected to do in each runtime beyond "pass": a runtime's own bug (portability.KNOWN_UPSTREAM).
UPSTREAM = {"mlp": {("decoder.fp16.onnx", "opencv-classic")},
            "conv": {("decoder.fp16.onnx", "opencv-classic"), ("decoder.int8.onnx", "opencv")}}


def installed_or_skip(rows) -> None:
    """A runtime that is not here skips the test (`make install` brings them all); in CI it fails."""
    missing = sorted({f"{r.runtime} ({r.note})" for r in rows if r.result == "not installed"})
    if missing:
        message = "not installed: " + "; ".join(missing)
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)


def assert_expected(rows, preset: str) -> None:
    for r in rows:
        want = "upstream bug" if (r.file, r.runtime) in UPSTREAM[preset] else "pass"
        assert r.result == want, r
    assert {(r.file, r.runtime) for r in rows if r.result == "upstream bug"} == UPSTREAM[preset]


def test_shipped_model_runs_everywhere(tmp_path):
    result = runner.invoke(app, ["portability", str(SHIPPED), "--runtimes", "all", "--report", str(tmp_path / "rows.json")])
    rows = [portability.Row(**r) for r in json.loads((tmp_path / "rows.json").read_text())]
    installed_or_skip(rows)
    assert result.exit_code == 0, result.output
    assert_expected(rows, "mlp")
    assert {r.runtime for r in rows} == set(portability.RUNTIMES)
    assert len({r.file for r in rows}) == 4
    # OpenVINO with the f32 hint agrees within 1e-5; its default bf16 (on CPUs with bf16 units) would not
    assert all(r.max_abs <= 1e-5 for r in rows if r.runtime == "openvino" and r.file in ("decoder.onnx", "encoder.onnx"))
    # the exported files leave intermediate shapes to the runtime, so a client can fix the batch (tract)
    assert all(not onnx.load(str(p)).graph.value_info for p in SHIPPED.glob("*.onnx"))
    meta = {p.key: json.loads(p.value) for p in onnx.load(str(SHIPPED / "encoder.onnx")).metadata_props}
    assert meta["read_outputs"] == "by name" and meta["outputs"] == ["mu", "logvar"]


def test_fresh_conv_export_runs_everywhere(trained, tmp_path):
    from vae_export.checkpoint import load_model
    from vae_export.export import export_decoder_variants, export_onnx

    model, state = load_model(trained("conv"))
    export_onnx(model, state, "test", tmp_path)
    export_decoder_variants(tmp_path, fp16=True, int8=True)
    rows = portability.check(tmp_path, list(portability.RUNTIMES), n=64)
    installed_or_skip(rows)
    assert_expected(rows, "conv")
    assert not portability.failed(rows)


def test_a_file_that_pins_the_symbolic_batch_fails_in_tract(tmp_path):
    """What the export wrote before: value_info from shape inference, every intermediate (batch_size, ...)."""
    if not os.environ.get("CI"):
        pytest.importorskip("tract")
    proto = onnx.shape_inference.infer_shapes(onnx.load(str(SHIPPED / "decoder.onnx")))
    assert proto.graph.value_info
    onnx.save(proto, str(tmp_path / "decoder.onnx"))
    result = runner.invoke(app, ["portability", str(tmp_path), "--runtimes", "onnxruntime,tract", "--quiet"])
    assert result.exit_code == 1
    assert "1 of 2 rows failed: decoder.onnx in tract" in result.output
    assert "FAIL" in result.output and "Failed analyse" in result.output


def test_missing_runtimes_are_listed_with_their_install_line(tmp_path, monkeypatch):
    monkeypatch.setenv("VAE_EXPORT_NODE_MODULES", str(tmp_path))         # an empty node_modules: no npm packages
    shutil.copyfile(SHIPPED / "decoder.onnx", tmp_path / "decoder.onnx")
    result = runner.invoke(app, ["portability", str(tmp_path), "--runtimes", "node,web,onnxruntime", "--format", "markdown"])
    assert result.exit_code == 0, result.output
    assert "| decoder.onnx | node | * | no | - | - | - | max <= 1e-05 | not installed: no onnxruntime-node in" in result.output
    assert "npm install --onnxruntime-node-install=skip onnxruntime-node |" in result.output
    assert "| decoder.onnx | onnxruntime | sample | yes | 0.0e+00 |" in result.output


def test_portability_refuses_bad_requests(tmp_path):
    assert runner.invoke(app, ["portability", str(tmp_path)]).exit_code == 1              # no .onnx files
    result = runner.invoke(app, ["portability", str(SHIPPED), "--runtimes", "tensorrt"])
    assert result.exit_code == 2 and "unknown runtime 'tensorrt'" in result.output


def test_node_native_example_decodes_what_python_decodes(tmp_path):
    if not (shutil.which("node") and (REPO / "node_modules" / "onnxruntime-node").is_dir()):
        message = "needs node and onnxruntime-node (npm ci)"
        pytest.fail(message) if os.environ.get("CI") else pytest.skip(message)
    done = subprocess.run(["node", str(REPO / "examples" / "node" / "decode_native.mjs"), str(SHIPPED),
                           str(tmp_path / "pixels.f32")], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    z = ((np.arange(20) % 5 - 2) / 2).astype(np.float32)[None]      # the example's latent
    ref = Decoder(SHIPPED / "decoder.onnx").decode(z)
    assert np.abs(np.fromfile(tmp_path / "pixels.f32", np.float32) - ref.ravel()).max() <= 1e-5
    assert done.stdout.startswith("mean ") and abs(float(done.stdout.split()[1]) - float(ref.mean())) <= 1e-6, done.stdout
    assert "onnxruntime-node 1.30.0" in done.stdout
