"""Checked before the work (issue 17, class 5): every command refuses a bad output path in one line
before it reads a byte of data or model, and leaves nothing behind; reports are strict JSON; data
and options that cannot fit are refused, not a traceback. The bad paths are real (a folder where a
file goes, a file where a folder goes, a missing parent, an input as output), through the real CLI in
process (typer's CliRunner) and once through the installed entry point."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from vae_export.cli import app

SHIPPED = Path(__file__).resolve().parents[1] / "artifacts" / "mlp"
CKPT = SHIPPED / "checkpoint.pt"
EXE = Path(sys.executable).parent / "vae-export"


def run(*args):
    return CliRunner().invoke(app, list(map(str, args)))


def listing(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


@pytest.fixture
def place(tmp_path):
    """tmp_path holding: a folder named like an output file, a plain file, an empty dataset root, an
    .npz of images and a shard part. Each case's work would fail otherwise or later, differently
    (MNIST is not in `empty`), so a refusal naming the output proves the check came first."""
    for name in ("taken", "taken.npy", "taken.png", "taken.npz", "empty"):
        (tmp_path / name).mkdir()
    (tmp_path / "file").write_text("x")
    np.savez(tmp_path / "in.npz", images=np.zeros((1, 28, 28), np.uint8))
    np.save(tmp_path / "part.npy", np.zeros((2, 1, 28, 28), np.float32))
    return tmp_path


# (command line with {t} for tmp_path, the bad path, exit code, words in the one line)
CASES = {
    "train": ("train --dataset npy:{t}/missing.npy --out {t}/file", "file", 1, "not a folder"),
    "train-parent": ("train --dataset npy:{t}/missing.npy --out {t}/file/run", "file/run", 1, "not a folder"),
    "onnx": (f"onnx {CKPT} --data-dir {{t}}/empty --out {{t}}/file", "file", 1, "not a folder"),
    "export": (f"export {CKPT} --data-dir {{t}}/empty --out {{t}}/file", "file", 1, "not a folder"),
    "portability": (f"portability {SHIPPED} --runtimes onnxruntime --report {{t}}/taken", "taken", 1, "is a folder"),
    "torchscript": (f"torchscript {CKPT} --data-dir {{t}}/empty --out {{t}}/file", "file", 1, "not a folder"),
    "parity": (f"parity {CKPT} {SHIPPED} --data-dir {{t}}/empty --report {{t}}/taken", "taken", 1, "is a folder"),
    "parity-input": (f"parity {{t}}/ckpt.pt {SHIPPED} --report {{t}}/ckpt.pt", "ckpt.pt", 2, "also an input"),
    "bench": ("bench --no-train --no-compile --out {t}/taken", "taken", 1, "is a folder"),
    "bench-plot": ("bench --no-train --no-compile --plot {t}/missing/b.png", "missing/b.png", 1, "does not exist"),
    "evaluate": (f"evaluate {CKPT} --data-dir {{t}}/empty --report {{t}}/taken", "taken", 1, "is a folder"),
    "evaluate-parent": (f"evaluate {CKPT} --data-dir {{t}}/empty --report {{t}}/missing/r.json", "missing/r.json", 1, "does not exist"),
    "evaluate-input": ("evaluate {t}/ckpt.pt --data-dir {t}/empty --report {t}/ckpt.pt", "ckpt.pt", 2, "also an input"),
    "sample": ("sample -n 100000000 --out {t}/taken.npy", "taken.npy", 1, "is a folder"),
    "interpolate": ("sample --interpolate 0 1 --out {t}/taken.png", "taken.png", 1, "is a folder"),
    "manifold": ("sample --manifold --out {t}/taken.png", "taken.png", 1, "is a folder"),
    "sample-input": ("sample --model {t}/part.npy --out {t}/part.npy", "part.npy", 2, "also an input"),
    "encode": ("encode {t}/in.npz --out {t}/taken.npz", "taken.npz", 1, "is a folder"),
    "encode-input": ("encode {t}/in.npz --out {t}/in.npz", "in.npz", 2, "also an input"),
    "reconstruct": ("reconstruct {t}/in.npz --out {t}/taken.png", "taken.png", 1, "is a folder"),
    "merge": ("merge {t}/part.npy --out {t}/taken.npy", "taken.npy", 1, "is a folder"),
    "merge-input": ("merge {t}/part.npy --out {t}/part.npy", "part.npy", 2, "also an input"),
    "web": (f"web {SHIPPED} --out {{t}}/file", "file", 1, "not a folder"),
}


@pytest.mark.parametrize("case", CASES)
def test_every_command_refuses_a_bad_output_before_any_work(place, case):
    line, bad, code, words = CASES[case]
    if "{t}/ckpt.pt" in line:       # an input named as the output: a copy, should a regression ever write it
        shutil.copyfile(CKPT, place / "ckpt.pt")
    before = listing(place)
    result = run(*line.format(t=place).split())
    assert result.exit_code == code, (result.exit_code, result.output)
    err = result.stderr.strip()
    assert "\n" not in err and "Traceback" not in err and words in err and bad in err, err
    assert result.stdout == "" and listing(place) == before


def test_the_installed_command_refuses_to_merge_onto_a_folder_before_copying(place):
    done = subprocess.run([EXE, "merge", place / "part.npy", "--out", place / "taken.npy"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 1 and done.stdout == "", done
    assert done.stderr.strip() == f"error: --out {place / 'taken.npy'} exists and is a folder"
    assert not any((place / "taken.npy").iterdir())


def test_a_refused_dataset_leaves_no_empty_out_folder(tmp_path):
    np.save(tmp_path / "bad.npy", np.zeros((4, 8, 8), np.int64))      # ambiguous scale: refused
    result = run("train", "--dataset", f"npy:{tmp_path}/bad.npy", "--out", tmp_path / "new" / "run")
    assert result.exit_code == 1 and "int64" in result.stderr, result.output
    assert listing(tmp_path) == ["bad.npy"]


def test_an_array_resized_beyond_memory_is_refused_before_it_is_read(tmp_path):
    np.save(tmp_path / "x.npy", np.zeros((10, 8, 8), np.uint8))
    result = run("train", "--dataset", f"npy:{tmp_path}/x.npy", "--image-size", "200000x200000", "--out", tmp_path / "r")
    assert result.exit_code == 1 and "--image-size" in result.stderr and "Traceback" not in result.output, result.output
    assert listing(tmp_path) == ["x.npy"]


def test_evaluate_options_out_of_range_are_refused_in_one_line(tmp_path):
    result = run("evaluate", CKPT, "--seed", -5)
    assert result.exit_code == 2, result.output
    for k in ("10,100000000000000", "99999999999999999999999"):
        result = run("evaluate", CKPT, "--k", k, "--data-dir", tmp_path)
        assert result.exit_code == 2 and "every k" in result.stderr and "Traceback" not in result.output, result.output
    result = run("evaluate", CKPT, "--k", 2**31 - 1, "--data-dir", tmp_path)     # valid, but cannot fit
    assert result.exit_code == 1 and "memory" in result.stderr, result.output


def test_a_one_image_report_is_strict_json(mnist_root, tmp_path):
    report = tmp_path / "r.json"
    result = run("evaluate", CKPT, "--n-images", 1, "--k", 1, "--device", "cpu", "--data-dir", mnist_root,
                 "--report", report, "--quiet")
    assert result.exit_code == 0, result.output

    def refuse(constant):
        raise AssertionError(f"{constant} is not JSON")

    r = json.loads(report.read_text(), parse_constant=refuse)
    assert r["n_images"] == 1 and r["nll"][0]["nll_stderr"] is None


def test_the_one_json_writer_is_strict(tmp_path):
    from vae_export.files import write_json

    write_json(tmp_path / "a.json", {"x": [float("nan"), float("inf"), 1.5], "y": (float("-inf"),)})
    assert json.loads((tmp_path / "a.json").read_text()) == {"x": [None, None, 1.5], "y": [None]}
    with pytest.raises(TypeError):
        write_json(tmp_path / "b.json", {"x": object()})
    assert listing(tmp_path) == ["a.json"]
