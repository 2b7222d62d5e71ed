"""`vae_export.bench` on a small trained model: the report's structure, and that every backend it
timed agrees with eager (a benchmark of a wrong result is worthless). No timing assertions: only
that the timings are present and consistent with each other. torch.compile is left out (a cold
compile takes ~40 s on two cores)."""

from __future__ import annotations

import importlib.util
import json

import numpy as np
import pytest
import torch
from rich.console import Console

from vae_export import runtime
from vae_export.bench import CPU_FEATURES, TOLERANCES, run_bench
from vae_export.bench_report import plot_report, print_report
from vae_export.config import PRESETS
from vae_export.errors import UsageError

BATCHES = (1, 70)      # a latency-bound and a throughput-bound batch
CPU_BACKENDS = ["eager", "torchscript", "pt2", "onnxruntime-cpu", "onnxruntime-cpu-session"]
REDUCED = ["eager-bf16", "onnxruntime-cpu-fp16", "onnxruntime-cpu-int8"]     # decoder only
CUDA_BACKENDS = {"eager-cuda", "onnxruntime-cuda", "onnxruntime-cuda-iobinding"}
# decoder only, with the `runtimes` extra; without it they are skipped with its install line
OPENVINO = ["openvino-fp32", "openvino-int8", "openvino-bf16"]
HAS_OPENVINO = importlib.util.find_spec("openvino") is not None


@pytest.fixture(scope="module")
def report(trained):
    return run_bench(trained("mlp"), batch_sizes=BATCHES, repeats=2, compile=False, aoti=False, train_steps=1)


def test_report_is_plain_json_describing_the_machine(report):
    assert json.loads(json.dumps(report, allow_nan=False)) == report
    assert {"checkpoint", "preset", "latent_dim", "machine", "threads", "settings",
            "decode", "encode", "train"} <= set(report)
    m = report["machine"]
    assert m["cpu"] and set(m["cpu_features"]) <= set(CPU_FEATURES) and m["usable_cpus"] >= 1 and m["torch"] == torch.__version__ and m["onnxruntime"]
    assert report["threads"]["torch"] == torch.get_num_threads()
    assert report["threads"]["onnxruntime"] == runtime.physical_cores()
    assert report["settings"]["batch_sizes"] == list(BATCHES) and report["settings"]["repeats"] == 2
    assert report["settings"]["inputs"]["encode"] == "mnist test images"


@pytest.mark.parametrize("key", ["decode", "encode"])
def test_every_backend_agrees_with_eager_before_it_is_timed(report, key):
    rows = report[key]["rows"]
    backends = CPU_BACKENDS + (REDUCED + (OPENVINO if HAS_OPENVINO else []) if key == "decode" else [])
    assert [(r["backend"], r["batch_size"]) for r in rows] == [(b, n) for b in backends for n in BATCHES]
    for r in rows:
        assert r["status"] == "ok", r
        assert r["tolerance"] == TOLERANCES[r["backend"]]
        assert r["max_abs_diff"] is not None and 0 <= r["max_abs_diff"]
        if key == "decode":  # pixels in [0, 1]: the tolerance is absolute
            assert r["max_abs_diff"] <= r["tolerance"]
        assert 0 < r["p10_s"] <= r["median_s"] <= r["p90_s"] and r["first_call_s"] > 0
        assert r["samples_per_s"] == pytest.approx(r["batch_size"] / r["median_s"])


def test_thread_counts_are_those_used(report):
    threads = {(r["backend"], r["batch_size"]): r["threads"] for r in report["decode"]["rows"]}
    assert threads["onnxruntime-cpu", 1] == threads["onnxruntime-cpu-int8", 1] == 1   # <= runtime.SMALL_BATCH
    assert threads["onnxruntime-cpu", 70] == runtime.physical_cores()
    assert threads["eager", 70] == torch.get_num_threads()


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_without_a_gpu_cuda_backends_are_skipped_with_a_reason(report):
    for key in ("decode", "encode"):
        missing = set(OPENVINO) if key == "decode" and not HAS_OPENVINO else set()
        assert set(report[key]["skipped"]) == CUDA_BACKENDS | missing
        assert all(reason.strip() for reason in report[key]["skipped"].values())
    assert "cuda" in report["train"]["skipped"]


def test_training_throughput_for_every_preset(report):
    rows = report["train"]["rows"]
    assert [(r["preset"], r["device"]) for r in rows] == [(p, "cpu") for p in PRESETS]
    for r in rows:
        assert r["batch_size"] == 128 and r["steps"] == 1 and r["data"] == "mnist train images"
        assert 0 < r["images_per_s_p10"] <= r["images_per_s"] <= r["images_per_s_p90"]


def test_a_backend_that_disagrees_is_flagged_and_not_timed(trained, monkeypatch, tmp_path):
    decode = runtime.Decoder.decode
    monkeypatch.setattr(runtime.Decoder, "decode", lambda self, z: decode(self, z) + np.float32(1e-3))
    bad = run_bench(trained("mlp"), batch_sizes=(3,), providers=("cpu",), repeats=1, train=False, compile=False, aoti=False,
                    data_dir=tmp_path)  # no MNIST there: the encoder is timed on noise, and the report says so
    # the OpenVINO decoder is a runtime.Decoder too: its fp32 row (1e-5) is as wrong; int8/bf16 bounds are wider
    wrong = [r for r in bad["decode"]["rows"] if r["backend"] in ("onnxruntime-cpu", "openvino-fp32")]
    assert len(wrong) == (2 if HAS_OPENVINO else 1)
    for row in wrong:
        assert row["status"] == "wrong" and row["max_abs_diff"] > row["tolerance"]
        assert "median_s" not in row
    assert all(r["status"] == "ok" for r in bad["decode"]["rows"] if r not in wrong)
    assert set(bad["decode"]["skipped"]) == (set() if HAS_OPENVINO else set(OPENVINO)) and bad["train"]["rows"] == []
    assert bad["settings"]["inputs"]["encode"] == "uniform noise (no mnist)"
    assert all(r["status"] == "ok" for r in bad["encode"]["rows"])


def test_tables_and_plot(report, tmp_path):
    console = Console(record=True, width=200)
    print_report(report, console)
    text = console.export_text()
    for title in ("decode (latents -> images)", "encode (images -> (mu, logvar))", "train:", *CPU_BACKENDS, *REDUCED,
                  "matrix features", "mlp-deep"):
        assert title in text
    plot_report(report, tmp_path / "bench.png")
    assert (tmp_path / "bench.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [p.name for p in tmp_path.iterdir()] == ["bench.png"]   # written atomically: no temp file left


@pytest.mark.parametrize("kwargs", [{"batch_sizes": (0,)}, {"batch_sizes": ()}, {"repeats": 0},
                                    {"providers": ("tpu",)}])
def test_bad_arguments_are_refused_before_any_work(tmp_path, kwargs):
    with pytest.raises(UsageError):
        run_bench(tmp_path / "missing.pt", **kwargs)
