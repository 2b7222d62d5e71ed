"""Faults, injected for real: full disks (a small tmpfs), SIGTERM/SIGINT/kill -9 in subprocesses, two
runs into one folder, tampered checkpoints and models, odd inputs and options. Each asserts the exit
code, one line on stderr and no traceback, no temp file or staging folder left, and the previous good
artifact byte-identical."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import venv
from pathlib import Path

import numpy as np
import pytest
import torch

from vae_export.checkpoint import FORMAT, FORMAT_VERSION

REPO = Path(__file__).resolve().parents[1]
SHIPPED = REPO / "artifacts" / "mlp"
EXE = Path(sys.executable).parent / "vae-export"
pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="tmpfs, flock and signals as on Linux")


def need(condition: bool, reason: str) -> None:
    """Skip with a reason where the machine lacks something beyond pip; in CI, fail instead."""
    if not condition:
        if os.environ.get("CI"):
            pytest.fail(reason)
        pytest.skip(reason)


def cli(*args, cwd=None, timeout=300) -> subprocess.CompletedProcess:
    return subprocess.run([str(EXE), *map(str, args)], capture_output=True, text=True, cwd=cwd, timeout=timeout)


def start(*args) -> subprocess.Popen:
    return subprocess.Popen([str(EXE), *map(str, args)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for(predicate, proc: subprocess.Popen | None = None, timeout: float = 120) -> None:
    deadline = time.time() + timeout
    while not predicate():
        assert time.time() < deadline, "timed out waiting"
        assert proc is None or proc.poll() is None, f"exited early: {proc.communicate()}"
        time.sleep(0.01)


def one_line(stderr: str) -> bool:
    return stderr.strip() != "" and "\n" not in stderr.strip() and "Traceback" not in stderr


def leftovers(folder: Path) -> list[Path]:
    return [p for p in folder.rglob(".*") if p.name.endswith(".tmp") or p.name.startswith(".staging-")]


@pytest.fixture
def tmpfs(tmp_path):
    """mount(size) -> a fresh folder on a real tmpfs of that size (root only), unmounted afterwards."""
    need(os.geteuid() == 0, "mounting a tmpfs needs root")
    mounts = []

    def mount(size: str) -> Path:
        point = tmp_path / f"tmpfs{len(mounts)}"
        point.mkdir()
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(point)], capture_output=True)
        need(done.returncode == 0, f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
        mounts.append(point)
        return point

    yield mount
    for point in mounts:
        subprocess.run(["umount", "-l", str(point)], check=False)


def tampered(state: dict, path: Path) -> Path:
    torch.save({"format": FORMAT, "format_version": FORMAT_VERSION, **state}, path)
    return path


# -- 1, 2: full disks and jobs too large -------------------------------------------------------------------

def test_sample_larger_than_the_disk_or_memory_is_refused_before_any_work(tmpfs, tmp_path):
    small = tmpfs("2m")
    done = cli("sample", "-n", 100_000, "--out", small / "x.npy")        # 314 MB into 2 MB
    assert done.returncode == 1 and one_line(done.stderr), done.stderr
    assert f"{small / 'x.npy'}: 100,000 samples" in done.stderr and "free" in done.stderr
    done = cli("sample", "-n", 5_000_000_000, "--out", tmp_path / "x.npy")  # 15.7 TB
    assert done.returncode == 1 and one_line(done.stderr) and "TB" in done.stderr, done.stderr
    done = cli("sample", "-n", 10**12, "--out", tmp_path / "x.png")         # a grid held in memory
    assert done.returncode == 1 and one_line(done.stderr) and "memory" in done.stderr, done.stderr
    done = cli("sample", "-n", 10, "--batch-size", 10**12, "--out", tmp_path / "ok.npy")  # a batch larger than the job
    assert done.returncode == 0, done.stderr
    assert os.listdir(small) == [] and not leftovers(tmp_path)


def test_sample_that_fills_the_disk_midway_fails_in_one_line(tmpfs):
    """The disk fills (another writer) after the preflight passed: a clean one-line failure, or a
    complete file where the space was reserved up front; never a crash or a leftover temp file.
    (A memory-mapped writer dies of SIGBUS here, exit 135, with nothing on stderr.)"""
    disk = tmpfs("64m")
    proc = start("sample", "-n", 20_000, "--batch-size", 1, "--quiet", "--out", disk / "x.npy")  # 63 MB, slowly
    wait_for(lambda: leftovers(disk), proc)
    with open(disk / "filler", "wb") as f:
        try:
            while True:
                f.write(b"\0" * 2**20)
                f.flush()
        except OSError:
            pass
    _, stderr = proc.communicate(timeout=300)
    assert proc.returncode in (0, 1), (proc.returncode, stderr)
    if proc.returncode == 1:
        assert one_line(stderr) and "No space left on device" in stderr and str(disk / "x.npy") in stderr, stderr
        assert not (disk / "x.npy").exists()
    else:
        assert np.load(disk / "x.npy").shape == (20_000, 1, 28, 28)
    assert not leftovers(disk)


def _checkpoint_bytes_mlp_small() -> int:
    """About the size of an mlp-small checkpoint: the weights and Adam's two moments, float32."""
    from vae_export.config import make_config
    from vae_export.model import VAE

    return 3 * 4 * sum(p.numel() for p in VAE(make_config("mlp-small")).parameters())


def test_train_on_a_full_disk_keeps_the_last_checkpoint_and_figures_that_match_it(tmpfs, mnist_root):
    from vae_export.training.plots import save_loss_curve
    from vae_export.checkpoint import load_checkpoint

    size = _checkpoint_bytes_mlp_small()
    disk = tmpfs(f"{int(size * 1.6)}")  # one checkpoint fits, a second one beside it (atomic replace) does not
    done = cli("train", "--preset", "mlp-small", "--epochs", 3, "--limit", 300, "--quiet", "--data-dir", mnist_root,
               "--out", disk / "run")
    assert done.returncode == 1 and one_line(done.stderr), done.stderr
    assert "No space left on device" in done.stderr and str(disk / "run" / "checkpoint.pt") in done.stderr
    state = load_checkpoint(disk / "run" / "checkpoint.pt")
    assert state["epoch"] == 1
    lines = (disk / "run" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line) for line in lines] == state["metrics"]
    save_loss_curve(state["metrics"], disk / "expected.png")                 # loss.png shows the saved epochs only
    assert (disk / "run" / "loss.png").read_bytes() == (disk / "expected.png").read_bytes()
    assert not leftovers(disk)


# -- 3, 6: signals, kill -9 and concurrent runs ------------------------------------------------------------

def test_sample_sigterm_cleans_up_and_kill9_leftovers_are_swept(tmp_path):
    target = tmp_path / "x.npy"
    assert cli("sample", "-n", 10, "--dtype", "uint8", "--out", target).returncode == 0
    good = target.read_bytes()
    for sig, code in ((signal.SIGKILL, -9), (signal.SIGTERM, 143), (signal.SIGINT, 130)):
        stale = set(leftovers(tmp_path))
        proc = start("sample", "-n", 3_000_000, "--dtype", "uint8", "--quiet", "--out", target)
        wait_for(lambda: set(leftovers(tmp_path)) - stale, proc)   # its temp file exists: the write is under way
        time.sleep(0.3)
        proc.send_signal(sig)
        _, stderr = proc.communicate(timeout=60)
        assert proc.returncode == code, stderr
        assert target.read_bytes() == good                # the previous good file is untouched
        if sig == signal.SIGKILL:
            assert leftovers(tmp_path)                    # nothing can clean up after kill -9 ...
        else:
            assert one_line(stderr) and ("terminated" if sig == signal.SIGTERM else "interrupted") in stderr
            assert not leftovers(tmp_path)                # ... but the next run of the same target swept it
    assert os.listdir(tmp_path) == ["x.npy"]


def test_onnx_sigterm_and_kill9_leave_no_staging_folder(tmp_path):
    out = tmp_path / "export"
    out.mkdir()
    for name in ("encoder.onnx", "decoder.onnx", "decoder.json", "manifest.json"):
        shutil.copy(SHIPPED / name, out / name)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    for sig, code in ((signal.SIGKILL, -9), (signal.SIGTERM, 143)):
        stale = set(leftovers(out))
        proc = start("onnx", SHIPPED / "checkpoint.pt", "--out", out, "--quiet")
        wait_for(lambda: set(leftovers(out)) - stale, proc)               # the export is under way
        proc.send_signal(sig)
        _, stderr = proc.communicate(timeout=120)
        assert proc.returncode == code, stderr
        assert {p.name: p.read_bytes() for p in out.iterdir() if not p.name.startswith(".")} == before
    assert one_line(stderr) and "terminated" in stderr
    assert not leftovers(out)                              # kill -9's staging folder was swept by the next run


def test_a_second_train_into_the_same_folder_is_refused_and_sigterm_exits_143(mnist_root, tmp_path):
    from typer.testing import CliRunner

    from vae_export.checkpoint import load_checkpoint
    from vae_export.cli import app

    args = ("train", "--quiet", "--data-dir", mnist_root, "--out", tmp_path)
    first = start(*args, "--epochs", 50, "--preset", "mlp-small", "--limit", 1000)
    wait_for(lambda: (tmp_path / "checkpoint.pt").exists(), first)
    second = CliRunner().invoke(app, [*map(str, args), "--epochs", "50", "--resume"])
    assert second.exit_code == 1 and one_line(second.stderr), second.output
    assert "in use by another vae-export run" in second.stderr and str(first.pid) in second.stderr
    first.send_signal(signal.SIGTERM)
    _, stderr = first.communicate(timeout=120)
    assert first.returncode == 143 and one_line(stderr) and "terminated" in stderr, stderr
    assert load_checkpoint(tmp_path / "checkpoint.pt")["epoch"] >= 1
    assert not leftovers(tmp_path)


def test_the_run_lock_dies_with_its_process(tmp_path):
    from vae_export.errors import VaeExportError
    from vae_export.files import run_lock

    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from vae_export.files import run_lock\n"
                               f"with run_lock({str(tmp_path)!r}):\n    print('held', flush=True); time.sleep(600)"],
                              stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    with pytest.raises(VaeExportError, match=f"pid {holder.pid}"):
        with run_lock(tmp_path):
            pass
    holder.kill()                                                        # kill -9: no cleanup code runs
    holder.wait()
    with run_lock(tmp_path):                                             # the kernel released the lock
        pass
    assert not list(tmp_path.iterdir())                                  # and a released lock leaves no file


# -- 5: tampered checkpoints, refused in one line by every consumer --------------------------------------------

def _tampered_checkpoints(folder: Path) -> dict[str, Path]:
    state = torch.load(SHIPPED / "checkpoint.pt", weights_only=True)
    state = {k: v for k, v in state.items() if k not in ("format", "format_version")}
    cases = {
        "latent_dim changed": {**state, "config": {**state["config"], "latent_dim": 16}},
        "arch changed": {**state, "config": {**state["config"], "arch": "conv", "channels": [16, 32, 32], "hidden": [32]}},
        "latent_dim a string": {**state, "config": {**state["config"], "latent_dim": "20"}},
        "hidden a float": {**state, "config": {**state["config"], "hidden": [400.5]}},
        "huge latent_dim": {**state, "config": {**state["config"], "latent_dim": 10**12}},
        "config missing": {k: v for k, v in state.items() if k != "config"},
        "weights NaN": {**state, "model": {k: v * float("nan") for k, v in state["model"].items()}},
        "optimizer missing": {k: v for k, v in state.items() if k != "optimizer"},
        "rng wrong": {**state, "rng": {"shuffle": torch.zeros(3, dtype=torch.uint8), "noise": state["rng"]["noise"]}},
        "settings wrong type": {**state, "settings": {**state["settings"], "batch_size": "128"}},
        "metrics disagree": {**state, "epoch": 3},
    }
    paths = {}
    for k, (name, case) in enumerate(cases.items()):
        (folder / str(k)).mkdir()
        paths[name] = tampered(case, folder / str(k) / "checkpoint.pt")
    truncated = folder / "truncated"
    truncated.mkdir()
    (truncated / "checkpoint.pt").write_bytes((SHIPPED / "checkpoint.pt").read_bytes()[:100_000])
    paths["truncated"] = truncated / "checkpoint.pt"
    return paths


def test_tampered_checkpoints_are_refused_in_one_line_by_every_consumer(mnist_root, tmp_path):
    from typer.testing import CliRunner

    from vae_export.cli import app

    runner = CliRunner()
    resume_only = {"optimizer missing", "rng wrong", "settings wrong type", "metrics disagree"}
    for name, path in _tampered_checkpoints(tmp_path).items():
        before = path.read_bytes()
        commands = [["train", "--resume", "--epochs", 12, "--data-dir", mnist_root, "--out", path.parent]]
        if name not in resume_only:
            commands += [["onnx", path, "--out", tmp_path / "export"], ["parity", path, SHIPPED]]
        for command in commands:
            result = runner.invoke(app, list(map(str, command)))
            assert result.exit_code == 1 and one_line(result.stderr), (name, command[0], result.output, result.exception)
            assert str(path) in result.stderr, (name, result.stderr)
        assert path.read_bytes() == before
    assert not (tmp_path / "export").exists() or not list((tmp_path / "export").iterdir())


def test_resume_refuses_the_options_it_would_ignore(tmp_path):
    from typer.testing import CliRunner

    from vae_export.cli import app

    for option in (["--lr", "0.1"], ["--preset", "conv"], ["--batch-size", "64"], ["--seed", "3"], ["--limit", "10"]):
        result = CliRunner().invoke(app, ["train", "--resume", "--out", str(tmp_path), *option])
        assert result.exit_code == 2 and option[0] in result.stderr and one_line(result.stderr), result.output


# -- 4: untrusted models ----------------------------------------------------------------------------------------

def test_models_with_external_data_are_refused_before_any_file_is_read(tmp_path):
    import onnx

    from vae_export.errors import ArtifactError
    from vae_export.runtime import Decoder, Encoder

    models = tmp_path / "other"
    models.mkdir()
    for role in ("encoder", "decoder"):   # weights.bin sits in the folder we run from, not beside the model
        onnx.save(onnx.load(str(SHIPPED / f"{role}.onnx")), str(tmp_path / f"{role}.onnx"), save_as_external_data=True,
                  location=f"{role}.bin")                  # the weights; small constants stay inline
        shutil.move(tmp_path / f"{role}.onnx", models / f"{role}.onnx")
    np.save(tmp_path / "x.npy", np.zeros((2, 28, 28), np.uint8))
    for args in (["sample", "--model", "other/decoder.onnx", "-n", 4, "--out", "s.npy"],
                 ["encode", "x.npy", "--model", "other/encoder.onnx", "--out", "z.npz"],
                 ["reconstruct", "x.npy", "--models", "other", "--out", "r.npy"]):
        done = cli(*args, cwd=tmp_path)
        assert done.returncode == 1 and one_line(done.stderr) and "external file" in done.stderr, (args, done.stderr)
    for cls, role in ((Decoder, "decoder"), (Encoder, "encoder")):
        with pytest.raises(ArtifactError, match="external file"):
            cls(models / f"{role}.onnx")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["decoder.bin", "encoder.bin", "other", "x.npy"]


def test_models_with_lying_metadata_or_truncated_bytes_are_refused(tmp_path):
    import onnx

    from vae_export.errors import ArtifactError
    from vae_export.runtime import Decoder

    lies = [("latent_dim", '"twenty"', "latent_dim"), ("image_shape", "5", "image_shape"),
            ("image_shape", "[1, 14, 56]", "metadata promises")]        # same pixel count, another shape
    for k, (key, value, message) in enumerate(lies):
        proto = onnx.load(str(SHIPPED / "decoder.onnx"))
        for prop in proto.metadata_props:
            if prop.key == key:
                prop.value = value
        onnx.save(proto, str(tmp_path / f"{k}.onnx"))
        with pytest.raises(ArtifactError, match=message):
            Decoder(tmp_path / f"{k}.onnx")
        done = cli("sample", "--model", tmp_path / f"{k}.onnx", "-n", 4, "--out", tmp_path / "s.npy")
        assert done.returncode == 1 and one_line(done.stderr) and f"{k}.onnx" in done.stderr, done.stderr
    (tmp_path / "cut.onnx").write_bytes((SHIPPED / "decoder.onnx").read_bytes()[:50_000])
    with pytest.raises(ArtifactError, match="cut.onnx"):
        Decoder(tmp_path / "cut.onnx")
    assert not (tmp_path / "s.npy").exists()


# -- 7, 8: readers, options and output paths ---------------------------------------------------------------------

def test_encode_converts_pixel_formats_exactly_or_refuses_them(tmp_path):
    from typer.testing import CliRunner

    from vae_export.cli import app

    x = np.random.default_rng(0).integers(0, 256, (3, 1, 28, 28), dtype=np.uint8)
    accepted = {"u8.npy": x, "u8_3d.npy": x[:, 0], "f32.npy": x / np.float32(255), "f64.npy": x.astype(np.float64) / 255}
    refused = {"i64.npy": x.astype(np.int64), "bool.npy": x > 127, "c64.npy": x.astype(np.complex64) / 255,
               "over.npy": x.astype(np.float32), "nan.npy": np.full((1, 28, 28), np.nan),
               "shape.npy": x[:, :, :14], "empty.npy": x[:0], "rec.npy": np.zeros(2, [("a", "f4")])}
    for name, a in {**accepted, **refused}.items():
        np.save(tmp_path / name, a)
    (tmp_path / "junk.npy").write_bytes(b"\x93NUMPY junk")
    refused["junk.npy"] = None
    latents = {}
    for name in [*accepted, *refused]:
        result = CliRunner().invoke(app, ["encode", str(tmp_path / name), "--out", str(tmp_path / "z.npz")])
        if name in accepted:
            assert result.exit_code == 0, (name, result.output)
            latents[name] = np.load(tmp_path / "z.npz")["mu"]
        else:
            assert result.exit_code == 1 and one_line(result.stderr) and name in result.stderr, (name, result.output)
    for name in accepted:
        np.testing.assert_allclose(latents[name], latents["u8.npy"], atol=1e-5, err_msg=name)


def test_options_and_output_paths_are_checked_before_work(tmp_path):
    from typer.testing import CliRunner

    from vae_export.cli import app

    def run(*args):
        return CliRunner().invoke(app, list(map(str, args)))

    (tmp_path / "file").write_text("x")
    assert run("sample", "--seed", -1, "--out", tmp_path / "s.npy").exit_code == 2
    assert run("sample", "--interpolate", -1, 2, "--out", tmp_path / "s.npy").exit_code == 2
    assert run("sample", "--dtype", "uint8", "--out", tmp_path / "s.png").exit_code == 2
    assert run("sample", "--out", tmp_path / "file" / "s.npy").exit_code in (1, 2)
    assert run("train", "--seed", -1, "--out", tmp_path / "r").exit_code == 2
    assert run("train", "--seed", 2**64, "--out", tmp_path / "r").exit_code == 2
    assert run("train", "--batch-size", 2**40, "--out", tmp_path / "r").exit_code == 2
    result = run("train", "--out", tmp_path / "file")
    assert result.exit_code == 1 and "not a folder" in result.stderr
    result = run("onnx", SHIPPED / "checkpoint.pt", "--out", tmp_path / "file")
    assert result.exit_code == 1 and "not a folder" in result.stderr
    result = run("parity", SHIPPED / "checkpoint.pt", SHIPPED, "--report", tmp_path / "missing" / "p.json")
    assert result.exit_code == 1 and "does not exist" in result.stderr
    result = run("bench", "--out", tmp_path / "missing" / "b.json")       # refused before minutes of benchmarking
    assert result.exit_code == 1 and "does not exist" in result.stderr
    assert run("bench", "--plot", tmp_path / "b.txt").exit_code == 2
    assert run("bench", "--batch-sizes", "0,-3").exit_code == 2
    assert run("encode", SHIPPED / "samples.png", "--out", tmp_path / "missing" / "z.npz").exit_code == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]


# -- 9: the GPU wheel where CUDA cannot load --------------------------------------------------------------------

@pytest.fixture(scope="session")
def gpu_wheel_python(tmp_path_factory) -> Path:
    """A throwaway venv with onnxruntime-gpu and numpy only (no torch, no onnx)."""
    folder = tmp_path_factory.mktemp("ort-gpu")
    venv.create(folder, with_pip=True)
    python = folder / "bin" / "python"
    done = subprocess.run([python, "-m", "pip", "install", "--quiet", "onnxruntime-gpu", "numpy"],
                          capture_output=True, text=True, timeout=600)
    need(done.returncode == 0, f"cannot install onnxruntime-gpu from PyPI: {done.stderr.strip()[-300:]}")
    return python


def test_gpu_wheel_without_cuda_falls_back_silently_and_refuses_cuda_in_one_line(gpu_wheel_python, tmp_path):
    code = ("import sys; from vae_export.runtime import Decoder; "
            f"d = Decoder({str(SHIPPED / 'decoder.onnx')!r}, provider='auto'); d.sample(2); "
            "sys.exit(0 if d.provider == 'CPUExecutionProvider' else 3)")
    env = {"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}
    done = subprocess.run([gpu_wheel_python, "-c", code], capture_output=True, text=True, env=env, cwd=tmp_path)
    if done.returncode == 3:
        pytest.skip("CUDA really runs here: nothing falls back")
    assert done.returncode == 0 and done.stdout == "" and done.stderr == "", (done.stdout, done.stderr)
    code = ("from vae_export.errors import ProviderUnavailable; from vae_export.runtime import Decoder\n"
            f"try: Decoder({str(SHIPPED / 'decoder.onnx')!r}, provider='cuda')\n"
            "except ProviderUnavailable as e: print(e)\n")
    done = subprocess.run([gpu_wheel_python, "-c", code], capture_output=True, text=True, env=env, cwd=tmp_path)
    cuda = subprocess.run([gpu_wheel_python, "-c", "from onnxruntime.capi import build_and_package_info as b; "
                           "print(b.cuda_version.split('.')[0])"], capture_output=True, text=True, env=env).stdout.strip()
    assert done.returncode == 0 and done.stderr == "" and len(done.stdout.strip().splitlines()) == 1, done
    assert f"CUDA {cuda}.x" in done.stdout and "make install-gpu" in done.stdout, done.stdout
