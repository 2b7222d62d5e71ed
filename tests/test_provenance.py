"""Provenance is checked before files are joined or scored (issue 17, class 3): sample parts record
what they are in their .npy header and `merge` joins only the parts of one run; encoder, decoder,
variants and sidecar must come from one checkpoint (reconstruct, web, parity); `evaluate` and
`--resume` refuse data that changed since training, through one function. Real files, the shipped
model and the CLI; the other checkpoint is a real one, its export the shipped files re-stamped."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from vae_export import runtime
from vae_export.checkpoint import load_model, save_checkpoint
from vae_export.cli import app
from vae_export.files import sha256_file
from vae_export.provenance import read_npy

SHIPPED = Path(__file__).resolve().parents[1] / "artifacts" / "mlp"
N = 900                                # three parts of 300: edges fall inside latent chunks' rows
runner = CliRunner()


def run(*args):
    result = runner.invoke(app, [str(a) for a in args])
    assert "Traceback" not in result.output
    return result


def refused(result, *words):
    """Exit 2 (the files given do not belong together), one line naming what is wrong."""
    assert result.exit_code == 2, result.output
    assert result.stderr.strip().count("\n") == 0, result.stderr
    for word in words:
        assert str(word) in result.stderr, result.stderr


@pytest.fixture(scope="module")
def parts(tmp_path_factory):
    """One run of N samples, whole and in 3 parts, plus parts that belong to other runs."""
    if not (SHIPPED / "decoder.int8.onnx").is_file():
        pytest.skip(f"no shipped decoder at {SHIPPED}")
    d = tmp_path_factory.mktemp("parts")
    common = ["sample", "--model", SHIPPED / "decoder.onnx", "--dtype", "uint8", "-q"]
    assert run(*common, "-n", N, "--seed", 3, "--out", d / "whole.npy").exit_code == 0
    for k in range(3):
        assert run(*common, "-n", N, "--seed", 3, "--shard", f"{k}/3", "--batch-size", 128,
                   "--out", d / f"part-{k}.npy").exit_code == 0
    assert run(*common, "-n", N, "--seed", 4, "--shard", "1/3", "--out", d / "seed4-1.npy").exit_code == 0
    assert run(*common, "-n", N + 3, "--seed", 3, "--shard", "1/3", "--out", d / "n903-1.npy").exit_code == 0
    assert run(*common[:-3], "--dtype", "float32", "-n", N, "--seed", 3, "--shard", "1/3",
               "--out", d / "float-1.npy").exit_code == 0
    assert run(*common, "--precision", "int8", "-n", N, "--seed", 3, "--shard", "1/3",
               "--out", d / "int8-1.npy").exit_code == 0
    np.save(d / "foreign.npy", np.load(d / "part-1.npy"))          # the same pixels, written by another program
    return d


def test_every_numpy_reader_loads_a_part_and_its_record_says_what_it_is(parts):
    whole, part = np.load(parts / "whole.npy"), np.load(parts / "part-1.npy")
    assert np.array_equal(part, whole[300:600])
    assert np.array_equal(np.load(parts / "part-1.npy", mmap_mode="r"), part)
    with open(parts / "part-1.npy", "rb") as f:
        assert np.lib.format.read_magic(f) == (1, 0)
        assert np.lib.format.read_array_header_1_0(f) == ((300, 1, 28, 28), False, np.dtype(np.uint8))
        assert f.tell() == 4096                                     # data still block-aligned
    record = read_npy(parts / "part-1.npy").record
    assert record == {"samples": 1, "decoder_sha256": sha256_file(SHIPPED / "decoder.onnx"),
                      "checkpoint_sha256": runtime.read_metadata(SHIPPED / "decoder.onnx")["checkpoint_sha256"],
                      "precision": "fp32", "n": N, "seed": 3, "dtype": "uint8", "rows": [300, 600], "part": "1/3"}
    assert "rows" not in read_npy(parts / "whole.npy").record


def test_merge_joins_parts_in_any_order_into_the_one_run_bytes(parts, tmp_path):
    for order in ([2, 0, 1], [1, 2, 0]):                            # a glob puts part-10 before part-2
        result = run("merge", *(parts / f"part-{k}.npy" for k in order), "--out", tmp_path / "all.npy")
        assert result.exit_code == 0, result.output
        assert (tmp_path / "all.npy").read_bytes() == (parts / "whole.npy").read_bytes()
    # a whole-run file and parts of another split of the same run tile it just as well
    assert run("merge", parts / "whole.npy", "--out", tmp_path / "again.npy").exit_code == 0
    assert (tmp_path / "again.npy").read_bytes() == (parts / "whole.npy").read_bytes()


@pytest.mark.parametrize("swap, words", [
    ({1: None}, ["no part holds samples 300..599 of the 900", "part 1/3"]),      # a part missing
    ({2: None}, ["no part holds samples 600..899", "part 2/3"]),
    ({1: "seed4-1"}, ["seed4-1.npy", "another run", "--seed 4"]),                # another seed
    ({1: "n903-1"}, ["n903-1.npy", "another run", "-n 903"]),                   # another -n
    ({1: "float-1"}, ["float-1.npy", "another run", "float32"]),                # another dtype
    ({1: "int8-1"}, ["int8-1.npy", "another run", "int8"]),                     # another decoder
    ({1: "foreign"}, ["foreign.npy", "not written by `vae-export sample`"]),    # another program
    ({3: "whole"}, ["both hold sample"]),                                       # overlapping parts
])
def test_merge_refuses_parts_that_do_not_tile_one_run_before_writing(parts, tmp_path, swap, words):
    names = {0: "part-0", 1: "part-1", 2: "part-2", **swap}
    paths = [parts / f"{name}.npy" for name in names.values() if name]
    out = tmp_path / "all.npy"
    refused(run("merge", *paths, "--out", out), *words)
    assert list(tmp_path.iterdir()) == []                           # nothing written, no temp file


@pytest.mark.parametrize("value", ["", " ", "0/0", "1/1", "4/3", "-1/3", "a/3", "1/3/5", "1", "１/３", "0x1/3"])
def test_shard_values_that_are_not_k_of_n_are_usage_errors_never_the_whole_run(tmp_path, value):
    out = tmp_path / "part.npy"
    refused(run("sample", "--model", SHIPPED / "decoder.onnx", "-n", 8, "--shard", value, "--out", out), "--shard")
    assert not out.exists()


# --- models: encoder, decoder, variants and sidecar of one checkpoint ---

@pytest.fixture(scope="module")
def other(tmp_path_factory):
    """A second real checkpoint (the shipped weights scaled by 1.01), and an export folder stamped
    with its sha256: the shipped ONNX files with their weights scaled alike and metadata rewritten."""
    d = tmp_path_factory.mktemp("other")
    model, state = load_model(SHIPPED / "checkpoint.pt")
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(1.01)
    save_checkpoint(d / "checkpoint.pt", {**{k: v for k, v in state.items() if not k.startswith("format")},
                                          "model": model.state_dict()})
    sha = sha256_file(d / "checkpoint.pt")
    (d / "export").mkdir()
    for name in ("encoder.onnx", "decoder.onnx", "decoder.int8.onnx"):
        proto = onnx.load(str(SHIPPED / name))
        weight = next(t for t in proto.graph.initializer if t.data_type == onnx.TensorProto.FLOAT and len(t.dims) == 2)
        weight.CopyFrom(onnx.numpy_helper.from_array(onnx.numpy_helper.to_array(weight) * 1.01, weight.name))
        meta = {p.key: json.loads(p.value) for p in proto.metadata_props}
        del proto.metadata_props[:]
        onnx.helper.set_model_props(proto, {k: json.dumps(v) for k, v in {**meta, "checkpoint_sha256": sha}.items()})
        onnx.save(proto, str(d / "export" / name))
    sidecar = json.loads((SHIPPED / "decoder.json").read_text())
    (d / "export" / "decoder.json").write_text(json.dumps({**sidecar, "checkpoint_sha256": sha}))
    return d


def _mixed(tmp_path: Path, other: Path, **from_other: bool) -> Path:
    """The shipped export folder with the files named in from_other taken from the other export."""
    folder = tmp_path / "export"
    folder.mkdir()
    for name in ("encoder.onnx", "decoder.onnx", "decoder.int8.onnx", "decoder.json"):
        key = name.removesuffix(".onnx").replace(".", "_")
        shutil.copyfile((other / "export" if from_other.get(key) else SHIPPED) / name, folder / name)
    return folder


def test_reconstruct_refuses_an_encoder_and_decoder_of_different_checkpoints(other, tmp_path):
    images = tmp_path / "x.npy"
    np.save(images, np.zeros((2, 1, 28, 28), np.uint8))
    out = tmp_path / "r.png"
    folder = _mixed(tmp_path, other, decoder=True)
    refused(run("reconstruct", images, "--models", folder, "--out", out), "decoder.onnx", "encoder.onnx", "another model")
    assert not out.exists()
    assert run("reconstruct", images, "--models", other / "export", "--out", out).exit_code == 0   # one model: fine


@pytest.mark.parametrize("which", ["decoder_int8", "decoder_json"])
def test_web_refuses_a_variant_or_sidecar_of_another_checkpoint(other, tmp_path, which):
    folder = _mixed(tmp_path, other, **{which: True})
    refused(run("web", folder, "--out", tmp_path / "site", "-q"), "another model", "checkpoint_sha256")
    assert not (tmp_path / "site").exists()


def test_a_variant_picked_from_a_folder_is_of_the_folder_s_model(other, tmp_path):
    folder = _mixed(tmp_path, other, decoder_int8=True)
    out = tmp_path / "s.npy"
    refused(run("sample", "--model", folder, "--precision", "int8", "-n", 4, "--out", out), "decoder.int8.onnx", "another model")
    assert not out.exists()
    named = run("sample", "--model", folder / "decoder.int8.onnx", "--precision", "int8", "-n", 4, "--out", out)
    assert named.exit_code == 0, named.output                      # a file named is used as named


@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
def test_parity_refuses_an_export_of_another_checkpoint_up_front(other, tmp_path, fmt):
    export = SHIPPED
    if fmt == "torchscript":
        from vae_export.export import export_torchscript

        export = tmp_path / "ts"
        model, state = load_model(SHIPPED / "checkpoint.pt")
        export_torchscript(model, state, sha256_file(SHIPPED / "checkpoint.pt"), export)
    result = run("parity", other / "checkpoint.pt", export, "--report", tmp_path / "r.json")
    refused(result, "another checkpoint", other / "checkpoint.pt")
    assert "max" not in result.stdout and not (tmp_path / "r.json").exists()   # no table: nothing was run


# --- data: evaluate and --resume refuse the same change, by one check ---

def _images(folder: Path, seeds: range) -> None:
    folder.mkdir(exist_ok=True)
    for s in seeds:
        pixels = np.random.default_rng(s).integers(0, 256, (8, 8), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / f"{s:03d}.png")


def test_evaluate_and_resume_refuse_a_folder_that_changed_since_training(tmp_path):
    data = tmp_path / "imgs"
    _images(data, range(40))
    run_dir = tmp_path / "run"
    train = ["train", "--dataset", f"folder:{data}", "--preset", "mlp-small", "--batch-size", 16, "-q"]
    assert run(*train, "--epochs", 1, "--out", run_dir).exit_code == 0
    resume = ["train", "--resume", "--epochs", 2, "--out", run_dir, "-q"]
    evaluate = ["evaluate", run_dir / "checkpoint.pt", "--k", "1,2", "--device", "cpu", "-q"]
    assert run(*evaluate).exit_code == 0                                    # the run's own data
    before = (run_dir / "checkpoint.pt").read_bytes()

    _images(data, range(40, 50))                          # grown: 4 of the 5 "test" images were trained on
    for result in (run(*evaluate), run(*resume)):
        refused(result, "not the run's own data", "images 40 -> 50")

    for extra in data.glob("04[0-9].png"):
        extra.unlink()
    _images(data, range(40, 41))
    (data / "040.png").rename(data / "000.png")           # as many images, one of them other pixels
    for result in (run(*evaluate), run(*resume)):
        refused(result, "not the run's own data", "content changed")
    assert (run_dir / "checkpoint.pt").read_bytes() == before
