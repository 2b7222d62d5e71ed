"""The CLI in process (typer's CliRunner) and once through the installed entry point."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from vae_export.cli import app

runner = CliRunner()


def run(*args):
    return runner.invoke(app, [str(a) for a in args])


def test_train_export_parity_through_the_cli(mnist_root, tmp_path):
    result = run("train", "--preset", "mlp-small", "--epochs", 1, "--limit", 500, "--data-dir", mnist_root,
                 "--out", tmp_path / "run")
    assert result.exit_code == 0, result.output
    assert "test loss" in result.stdout and "next: vae-export onnx" in result.stderr
    ckpt = tmp_path / "run" / "checkpoint.pt"
    result = run("onnx", ckpt, "--out", tmp_path / "export", "--data-dir", mnist_root)
    assert result.exit_code == 0, result.output
    assert "decoder.onnx" in result.stdout and "MB" in result.stdout and "next: vae-export sample" in result.stderr
    result = run("torchscript", ckpt, "--out", tmp_path / "export", "--quiet")
    assert result.exit_code == 0, result.output
    result = run("parity", ckpt, tmp_path / "export", "--report", tmp_path / "parity.json", "--provider", "all")
    assert result.exit_code == 0, result.output
    assert "checks passed for 4 artifacts" in result.stdout and "pass" in result.stdout
    # an artifact changed behind parity's back: exit 1, failing rows shown
    shutil.copy(tmp_path / "export" / "encoder.onnx", tmp_path / "export" / "decoder.onnx")
    result = run("parity", ckpt, tmp_path / "export")
    assert result.exit_code == 1 and "expected inputs" in result.stderr


def test_usage_errors_exit_2(tmp_path):
    assert run("train", "--epochs", 0).exit_code == 2
    assert run("train", "--batch-size", 0).exit_code == 2
    assert run("train", "--preset", "nope").exit_code == 2
    assert run("train", "--lr", 0, "--out", tmp_path / "r").exit_code == 2
    assert run("parity", tmp_path / "c.pt", tmp_path, "--provider", "tpu").exit_code == 2


def test_runtime_failures_exit_1_with_one_line(tmp_path):
    result = run("train", "--data-dir", tmp_path / "nodata", "--epochs", 1, "--out", tmp_path / "r")
    assert result.exit_code == 1 and "MNIST/raw" in result.stderr and "Traceback" not in result.output
    (tmp_path / "bad.pt").write_bytes(b"junk")
    result = run("onnx", tmp_path / "bad.pt", "--out", tmp_path / "e")
    assert result.exit_code == 1 and result.stderr.count("\n") == 1 and "corrupt" in result.stderr
    result = run("onnx", tmp_path / "missing.pt", "--out", tmp_path / "e")
    assert result.exit_code == 1 and "no checkpoint" in result.stderr


def test_unwritable_out_is_refused(trained, tmp_path):
    (tmp_path / "file").write_text("x")
    result = run("onnx", trained("mlp"), "--out", tmp_path / "file")
    assert result.exit_code == 1 and "not a folder" in result.stderr
    result = run("parity", trained("mlp"), tmp_path)
    assert result.exit_code == 1 and "no encoder/decoder" in result.stderr


def test_installed_entry_point(mnist_root, tmp_path):
    exe = Path(sys.executable).parent / "vae-export"
    done = subprocess.run([exe, "train", "--preset", "mlp", "--epochs", "1", "--limit", "300", "--quiet",
                           "--data-dir", mnist_root, "--out", tmp_path], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(str(tmp_path / "checkpoint.pt")) and done.stderr == ""
    done = subprocess.run([exe, "train", "--epochs", "0"], capture_output=True, text=True)
    assert done.returncode == 2


@pytest.mark.skipif(sys.platform != "linux", reason="signals as on Linux")
def test_ctrl_c_exits_130_and_keeps_the_last_checkpoint(mnist_root, tmp_path):
    import signal
    import time

    exe = Path(sys.executable).parent / "vae-export"
    proc = subprocess.Popen([exe, "train", "--epochs", "50", "--limit", "6000", "--quiet", "--data-dir", mnist_root,
                             "--out", tmp_path], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while not (tmp_path / "checkpoint.pt").exists() and time.time() < deadline:
        time.sleep(0.1)
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130, stderr
    assert "interrupted" in stderr and "Traceback" not in stderr
    from vae_export.checkpoint import load_checkpoint

    assert load_checkpoint(tmp_path / "checkpoint.pt")["epoch"] >= 1  # the last good epoch survives
    assert not list(tmp_path.glob(".*.tmp"))
