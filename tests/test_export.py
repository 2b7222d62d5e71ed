"""Every preset exports to ONNX and TorchScript and passes parity; tampered or wrong files fail it."""

import json

import numpy as np
import onnx
import pytest
import torch

from vae_export import runtime
from vae_export.checkpoint import load_model
from vae_export.config import PRESETS
from vae_export.errors import ArtifactError, ParityError
from vae_export.export import (TORCHSCRIPT_EXTRA, export_decoder_variants, export_onnx, export_torchscript,
                               write_manifest)
from vae_export.files import sha256_file
from vae_export.parity import BATCH_SIZES, artifacts_in, check_parity, real_images


@pytest.fixture(scope="module")
def exported(trained, mnist_root, tmp_path_factory):
    """exported(preset) -> (model, state, folder with both formats), cached per preset."""
    cache = {}

    def get(preset):
        if preset not in cache:
            ckpt = trained(preset)
            model, state = load_model(ckpt)
            out = tmp_path_factory.mktemp(f"export-{preset}")
            export_onnx(model, state, sha256_file(ckpt), out)
            export_torchscript(model, state, sha256_file(ckpt), out)
            write_manifest(out)
            cache[preset] = (model, state, out)
        return cache[preset]

    return get


@pytest.mark.parametrize("preset", list(PRESETS))
def test_every_preset_exports_in_both_formats_and_passes_parity(exported, mnist_root, preset):
    model, state, out = exported(preset)
    paths = artifacts_in(out)
    assert [p.name for p in paths] == ["decoder.onnx", "decoder.torchscript", "encoder.onnx", "encoder.torchscript"]
    rows = check_parity(model, paths, images=real_images("mnist", mnist_root))
    assert all(r.passed for r in rows)
    assert {r.batch_size for r in rows} == set(BATCH_SIZES)          # the dynamic batch axis, proven
    assert {r.inputs for r in rows} == {"random", "mnist"}
    assert {r.backend for r in rows} == {"torchscript", "onnxruntime-cpu"}
    onnx_decoder = [r for r in rows if r.artifact == "decoder.onnx"]
    assert max(r.max_abs for r in onnx_decoder) <= 1e-5
    assert max(r.max_abs for r in rows if r.artifact == "decoder.torchscript") <= 1e-6


def test_onnx_graph_is_named_dynamic_and_deterministic(exported):
    _, _, out = exported("mlp")
    proto = onnx.load(str(out / "decoder.onnx"))
    assert [i.name for i in proto.graph.input] == ["latent_sample"]
    assert [o.name for o in proto.graph.output] == ["sample"]
    assert proto.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch_size"
    assert not {n.op_type for n in proto.graph.node} & {"RandomNormal", "RandomNormalLike", "RandomUniform",
                                                      "RandomUniformLike", "Multinomial", "Bernoulli"}
    enc = onnx.load(str(out / "encoder.onnx"))
    assert [o.name for o in enc.graph.output] == ["mu", "logvar"]


def test_metadata_sidecar_and_manifest_round_trip(exported, trained):
    _, state, out = exported("mlp")
    meta = runtime.read_metadata(out / "decoder.onnx")
    assert meta == json.loads((out / "decoder.json").read_text())
    assert meta["latent_dim"] == 20 and meta["image_shape"] == [1, 28, 28] and meta["output_range"] == [0.0, 1.0]
    assert meta["preset"] == "mlp" and meta["likelihood"] == "bernoulli" and meta["dataset"] == "mnist"
    assert meta["epochs_trained"] == state["epoch"] and meta["test_loss"] == state["metrics"][-1]["test_loss"]
    assert meta["checkpoint_sha256"] == sha256_file(trained("mlp")) and meta["opset"] == 18
    extra = {TORCHSCRIPT_EXTRA: ""}
    with pytest.warns(FutureWarning):  # torch.jit is deprecated upstream; still loadable
        torch.jit.load(str(out / "encoder.torchscript"), _extra_files=extra)
    ts_meta = json.loads(extra[TORCHSCRIPT_EXTRA])
    assert ts_meta["role"] == "encoder" and ts_meta["format"] == "torchscript" and ts_meta["latent_dim"] == 20
    manifest = json.loads((out / "manifest.json").read_text())
    listed = {a["file"]: a for a in manifest["artifacts"]}
    assert set(listed) == {"encoder.onnx", "decoder.onnx", "decoder.json", "encoder.torchscript", "decoder.torchscript"}
    for name, entry in listed.items():
        assert entry["sha256"] == sha256_file(out / name) and entry["bytes"] == (out / name).stat().st_size


def test_a_changed_weight_fails_parity(exported, tmp_path):
    model, _, out = exported("mlp")
    proto = onnx.load(str(out / "decoder.onnx"))
    weight = max(proto.graph.initializer, key=lambda t: np.prod(t.dims))
    values = onnx.numpy_helper.to_array(weight).copy()
    values.flat[123] += 0.5
    weight.CopyFrom(onnx.numpy_helper.from_array(values, weight.name))
    onnx.save(proto, str(tmp_path / "decoder.onnx"))
    with pytest.raises(ParityError) as failure:
        check_parity(model, [tmp_path / "decoder.onnx"])
    assert any(not r.passed for r in failure.value.rows)


def test_reduced_precision_variants_report_their_error(exported, tmp_path):
    model, state, _ = exported("mlp")
    export_onnx(model, state, "x", tmp_path)
    written = export_decoder_variants(tmp_path, fp16=True, int8=True)
    assert [w.path.name for w in written] == ["decoder.fp16.onnx", "decoder.int8.onnx"]
    rows = check_parity(model, [w.path for w in written])
    fp16 = max(r.max_abs for r in rows if r.artifact == "decoder.fp16.onnx")
    int8 = max(r.max_abs for r in rows if r.artifact == "decoder.int8.onnx")
    assert 0 < fp16 < int8 <= 0.1  # real, measured, and ordered as the formats promise
    assert runtime.read_metadata(tmp_path / "decoder.int8.onnx")["variant"] == "int8"


def test_wrong_and_unsafe_files_are_refused(exported, tmp_path):
    model, _, out = exported("mlp")
    (tmp_path / "decoder.onnx").write_bytes((out / "encoder.onnx").read_bytes())   # an encoder posing as decoder
    with pytest.raises(ArtifactError, match="expected inputs"):
        check_parity(model, [tmp_path / "decoder.onnx"])
    (tmp_path / "decoder.onnx").write_bytes(b"not onnx")
    with pytest.raises(ArtifactError):
        check_parity(model, [tmp_path / "decoder.onnx"])
    proto = onnx.load(str(out / "decoder.onnx"))
    onnx.save(proto, str(tmp_path / "decoder.onnx"), save_as_external_data=True, location="weights.bin",
              size_threshold=0)
    with pytest.raises(ArtifactError, match="stores its data in an external file"):
        check_parity(model, [tmp_path / "decoder.onnx"])
    with pytest.raises(ArtifactError, match="stores its data in an external file"):  # the runtime refuses it too
        runtime.Decoder(tmp_path / "decoder.onnx")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ArtifactError, match="no encoder/decoder"):
        artifacts_in(empty)
