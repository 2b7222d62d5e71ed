"""The runtime API (what apps embed) raises only vae_export.errors types (issue 17, class 5): hypothesis
calls every public entry point of `vae_export.runtime` with arbitrary arguments, valid and not, and
nothing but a VaeExportError subclass may escape; the named examples of the issue are pinned too."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from vae_export.errors import UsageError, VaeExportError
from vae_export.runtime import Decoder, Encoder, latent_slice, read_metadata

SHIPPED = Path(__file__).resolve().parents[1] / "artifacts" / "mlp"


@pytest.fixture(autouse=True, scope="module")
def subnormal_floats():
    """hypothesis cannot draw subnormal floats after an in-process training run has called
    torch.set_flush_denormal(True) (as test_fuzz.py says); unset it for this module."""
    if "torch" in sys.modules:
        sys.modules["torch"].set_flush_denormal(False)


@pytest.fixture(scope="module")
def nets():
    return Decoder(SHIPPED / "decoder.onnx", threads=1), Encoder(SHIPPED / "encoder.onnx", threads=1)


def test_encode_refuses_pixels_outside_0_1(nets):
    _, encoder = nets
    with pytest.raises(UsageError, match=r"\[0, 1\]"):
        encoder.encode(np.full((2, 1, 28, 28), 255, np.float32))


def test_sample_beyond_memory_is_refused_before_it_allocates(nets):
    decoder, _ = nets
    with pytest.raises(VaeExportError, match="memory"):
        decoder.sample(10**9)                       # 3 TB of float32 pixels: refused, not the OOM killer


def test_bad_seeds_out_arrays_and_batches_are_typed_errors(nets):
    decoder, _ = nets
    z = np.zeros((4, 20), np.float32)
    bad_outs = [np.zeros((4, 1, 28, 28), np.float64), np.zeros((4, 1, 28, 28), np.float32)[:, :, ::2],
                np.zeros((3, 1, 28, 28), np.float32), [[0.0]], np.zeros((4, 1, 28, 28), np.float32).T]
    readonly = np.zeros((4, 1, 28, 28), np.float32)
    readonly.flags.writeable = False
    for out in [*bad_outs, readonly]:
        with pytest.raises(UsageError, match="out must be"):
            decoder.decode(z, out=out)
    for call in (lambda: decoder.sample(4, seed=-5), lambda: decoder.latents(-1, 0, 2), lambda: decoder.sample(0),
                 lambda: decoder.sample(4, batch_size=True), lambda: decoder.decode(z, dtype=["uint8"])):
        with pytest.raises(UsageError):
            call()


anything = st.one_of(
    st.none(), st.booleans(), st.integers(-2**70, 0), st.integers(-3, 70), st.integers(2**40, 2**70),  # never a long valid job
    st.floats(), st.text(max_size=4),
    st.sampled_from(["cpu", "cuda", "auto", "fp32", "int8", "uint8", "float32", str(SHIPPED), str(SHIPPED / "decoder.onnx"),
                     str(SHIPPED / "encoder.onnx"), "/nonexistent", "\0"]),
    hnp.arrays(st.sampled_from([np.float32, np.float64, np.uint8, np.int64, np.bool_]).map(np.dtype),
               hnp.array_shapes(min_dims=0, max_dims=4, max_side=4)),
    st.lists(st.floats(), max_size=3))


@st.composite
def calls(draw):
    """(name, arguments) of one public runtime call."""
    name = draw(st.sampled_from(["Decoder", "Encoder", "decode", "sample", "latents", "latent_slice", "encode",
                                 "session_for", "read_metadata"]))
    least, most = {"Decoder": (1, 4), "Encoder": (1, 3), "decode": (1, 3), "sample": (1, 3), "latents": (3, 3),
                   "latent_slice": (4, 4), "encode": (1, 1), "session_for": (1, 2), "read_metadata": (1, 1)}[name]
    return name, draw(st.lists(anything, min_size=least, max_size=most))   # a missing argument is Python's TypeError


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(calls())
def test_only_vae_export_errors_escape_the_runtime(nets, call):
    decoder, encoder = nets
    name, args = call
    target = {"Decoder": Decoder, "Encoder": Encoder, "decode": decoder.decode, "sample": decoder.sample,
              "latents": decoder.latents, "latent_slice": latent_slice, "encode": encoder.encode,
              "session_for": decoder.session_for, "read_metadata": read_metadata}[name]
    try:
        target(*args)
    except VaeExportError:
        pass
