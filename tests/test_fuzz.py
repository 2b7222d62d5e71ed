"""Property-based tests (hypothesis): the image readers and the runtime's input checks, fed arrays of
random dtypes, ranks, shapes and values, PNGs of every mode, and files of random bytes. Every case is
either converted exactly as `vae_export/images.py` documents, or refused with a VaeExportError;
never another exception. `pytest --hypothesis-show-statistics` prints how many cases ran."""

from __future__ import annotations

import io
import json
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from PIL import Image

from vae_export.errors import InputError, VaeExportError
from vae_export.images import read_images

SHIPPED = Path(__file__).resolve().parents[1] / "artifacts" / "mlp"
SHAPES = [(1, 4, 3), (3, 2, 5)]                     # (C, H, W): grayscale and colour models, not square
FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])

dtypes = st.one_of(hnp.scalar_dtypes(), hnp.byte_string_dtypes(), hnp.unicode_string_dtypes(),
                   hnp.array_dtypes(allow_subarrays=True), st.sampled_from([np.dtype(">f4"), np.dtype(">f8"),
                                                                            np.dtype(np.longdouble)]))


@st.composite
def image_arrays(draw):
    """(image_shape, array): shapes that fit the model often, and every other rank and size too."""
    c, h, w = shape = draw(st.sampled_from(SHAPES))
    n = draw(st.integers(0, 3))
    fitting = [(n, c, h, w)] + ([(n, h, w)] if c == 1 else [])
    dims = draw(st.one_of(st.sampled_from(fitting), hnp.array_shapes(min_dims=0, max_dims=5, min_side=0, max_side=5)))
    dtype = draw(st.one_of(st.just(np.dtype(np.uint8)), st.sampled_from([np.float16, np.float32, np.float64]).map(np.dtype),
                           dtypes))
    if dtype.kind == "f":  # mostly valid pixels, sometimes anything a float can hold
        elements = draw(st.one_of(st.just(st.floats(0, 1, width=min(dtype.itemsize * 8, 64))), st.just(None)))
    else:
        elements = None
    return shape, draw(hnp.arrays(dtype, dims, elements=elements))


@pytest.fixture(autouse=True, scope="module")
def subnormal_floats():
    """hypothesis draws subnormal floats, which the CPU flushes to zero after an in-process training
    run has called torch.set_flush_denormal(True); unset it (every training run sets it again)."""
    if "torch" in sys.modules:
        sys.modules["torch"].set_flush_denormal(False)


def _documented(a: np.ndarray, shape: tuple[int, int, int]) -> np.ndarray | None:
    """What images.py promises for this array: the converted images, or None for a refusal."""
    c, h, w = shape
    if a.ndim == 3 and c == 1:
        a = a[:, None]
    if a.ndim != 4 or a.shape[1:] != shape or a.shape[0] == 0:
        return None
    if a.dtype == np.uint8:
        return a.astype(np.float32) / np.float32(255)
    if a.dtype.kind == "f" and a.dtype.itemsize in (2, 4, 8):
        with np.errstate(over="ignore"):
            x = a.astype(np.float32)
        return x if np.isfinite(x).all() and x.min() >= 0 and x.max() <= 1 else None
    return None


def _read(path: Path, shape) -> np.ndarray | None:
    try:
        x = read_images([path], shape)
    except InputError as e:
        assert str(path) in str(e)
        return None
    assert x.dtype == np.float32 and x.ndim == 4 and x.shape[1:] == shape and len(x) >= 1
    assert np.isfinite(x).all() and x.min() >= 0 and x.max() <= 1
    return x


@FUZZ
@pytest.mark.filterwarnings("ignore:Stored array in format")   # unicode field names need .npy format 3.0
@given(image_arrays())
def test_npy_arrays_are_converted_as_documented_or_refused(case):
    shape, a = case
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "x.npy"
        np.save(path, a, allow_pickle=True)          # object arrays pickle: the reader must refuse them
        got, want = _read(path, shape), _documented(a, shape)
    if want is None:
        assert got is None, (a.dtype, a.shape)
    else:
        assert got is not None and np.array_equal(got, want), (a.dtype, a.shape)


MODES = ["1", "L", "LA", "RGB", "RGBA", "P", "I;16"]   # Pillow writes 16-bit grayscale from I;16 only


@st.composite
def png_images(draw):
    """(image_shape, mode, pixels as saved): every PNG mode, fitting the model's size or not."""
    c, h, w = shape = draw(st.sampled_from(SHAPES))
    mode = draw(st.sampled_from(MODES))
    size = draw(st.one_of(st.just((h, w)), st.tuples(st.integers(1, 6), st.integers(1, 6))))
    bands = {"LA": 2, "RGB": 3, "RGBA": 4}.get(mode, 1)
    top = {"1": 1, "I;16": 65535}.get(mode, 255)
    values = st.integers(0, top)
    if draw(st.booleans()) and bands > 1:            # gray stored in colour, and opaque alpha, often
        gray = draw(hnp.arrays(np.int64, size, elements=values))
        pixels = np.stack([gray] * (3 if bands >= 3 else 1) + ([np.full(size, 255)] if bands in (2, 4) else []), axis=-1)
    else:
        pixels = draw(hnp.arrays(np.int64, (*size, bands) if bands > 1 else size, elements=values))
    return shape, mode, pixels


def _png_bytes(mode: str, pixels: np.ndarray) -> bytes:
    if mode == "1":
        img = Image.fromarray(pixels.astype(bool))
    elif mode == "I;16":
        img = Image.fromarray(pixels.astype(np.uint16))
    elif mode == "P":
        img = Image.fromarray(pixels.astype(np.uint8), "L").convert("P")
    else:
        img = Image.fromarray(pixels.astype(np.uint8), mode)
    buffer = io.BytesIO()
    img.save(buffer, format="PNG")
    return buffer.getvalue()


def _documented_png(data: bytes, shape) -> np.ndarray | None:
    """The documented conversion, computed from what Pillow decodes (16-bit stays 16-bit)."""
    c, h, w = shape
    img = Image.open(io.BytesIO(data))
    if img.size != (w, h):
        return None
    mode = img.mode
    if mode == "P":
        img, mode = img.convert("RGBA"), "RGBA"
    a = np.asarray(img).astype(np.int64)
    scale = {"1": 1, "L": 255, "LA": 255, "RGB": 255, "RGBA": 255, "I;16": 65535, "I": 65535}[mode]
    a = a[..., None] if a.ndim == 2 else a
    if mode in ("LA", "RGBA"):
        if (a[..., -1] != 255).any():
            return None
        a = a[..., :-1]
    if a.shape[-1] == 3 and c == 1:
        if not (a == a[..., :1]).all():
            return None
        a = a[..., :1]
    if a.shape[-1] == 1 and c == 3:
        a = np.repeat(a, 3, axis=-1)
    return (a.astype(np.float32) / np.float32(scale)).transpose(2, 0, 1)[None]


@FUZZ
@given(png_images())
def test_png_files_are_converted_as_documented_or_refused(case):
    shape, mode, pixels = case
    data = _png_bytes(mode, pixels)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "x.png"
        path.write_bytes(data)
        got, want = _read(path, shape), _documented_png(data, shape)
    if want is None:
        assert got is None, mode
    else:
        assert got is not None and np.array_equal(got, want), mode


@FUZZ
@given(st.sampled_from(SHAPES), st.sampled_from([".npy", ".png", ".jpg", ""]),
       st.sampled_from([b"", b"\x93NUMPY\x01\x00", b"\x89PNG\r\n\x1a\n"]), st.binary(max_size=300))
def test_files_of_random_bytes_never_crash_the_readers(shape, suffix, header, body):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"x{suffix}"
        path.write_bytes(header + body)
        _read(path, shape)                           # converted (and then valid) or an InputError


@pytest.fixture(scope="module")
def networks():
    from vae_export.runtime import Decoder, Encoder

    return Decoder(SHIPPED / "decoder.onnx"), Encoder(SHIPPED / "encoder.onnx")


@st.composite
def network_inputs(draw):
    """(role, input): arrays of any dtype/shape/values, and nested lists that numpy cannot make an array of."""
    role = draw(st.sampled_from(["decoder", "encoder"]))
    fitting = (draw(st.integers(0, 3)), *((20,) if role == "decoder" else (1, 28, 28)))
    dims = draw(st.one_of(st.just(fitting), hnp.array_shapes(min_dims=0, max_dims=4, min_side=0, max_side=4)))
    dtype = draw(st.one_of(st.sampled_from([np.float32, np.float64, np.float16]).map(np.dtype), dtypes))
    x = draw(st.one_of(hnp.arrays(dtype, dims),
                       st.lists(st.lists(st.floats(), max_size=3), max_size=3),
                       st.lists(st.one_of(st.none(), st.text(max_size=2), st.floats()), max_size=3)))
    return role, x


@FUZZ
@given(network_inputs())
def test_runtime_input_checks_convert_or_refuse(networks, case):
    role, x = case
    decoder, encoder = networks
    try:
        if role == "decoder":
            out = (decoder.decode(x),)
        else:
            out = encoder.encode(x)
    except VaeExportError:
        return
    a = np.asarray(x)
    assert a.dtype.kind == "f", a.dtype
    assert a.shape[0] >= 1 and all(o.dtype == np.float32 and len(o) == len(a) for o in out)
    assert np.isfinite(a.astype(np.float32)).all()


@pytest.fixture(scope="module")
def sample_files(tmp_path_factory):
    """(whole-run bytes, candidates): one run of 60 samples cut as 3 parts and as 2 parts (the parts of
    both cuts tile it), the whole file, and files that must never be joined into it: a part of
    another seed, another program's .npy of a part's very pixels, a truncated copy of a part."""
    from vae_export.runtime import Decoder
    from vae_export.sampling import sample_to_file
    from vae_export.shards import shard_range

    d, n = tmp_path_factory.mktemp("merge"), 60
    decoder = Decoder(SHIPPED / "decoder.onnx", threads=1)
    sample_to_file(decoder, d / "whole.npy", n, seed=1, dtype="uint8")
    files = {"whole.npy": range(0, n)}
    for count in (3, 2):
        for k in range(count):
            rows = shard_range(n, k, count)
            sample_to_file(decoder, d / f"{k}of{count}.npy", n, seed=1, dtype="uint8", start=rows.start,
                           stop=rows.stop, part=(k, count))
            files[f"{k}of{count}.npy"] = rows
    sample_to_file(decoder, d / "seed2.npy", n, seed=2, dtype="uint8", start=20, stop=40, part=(1, 3))
    np.save(d / "foreign.npy", np.load(d / "1of3.npy"))
    (d / "truncated.npy").write_bytes((d / "2of3.npy").read_bytes()[:-1])
    candidates = [(d / name, files.get(name)) for name in [*files, "seed2.npy", "foreign.npy", "truncated.npy"]]
    return (d / "whole.npy").read_bytes(), n, candidates


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_merge_writes_exactly_the_one_run_bytes_or_refuses_before_writing(sample_files, data):
    """Any subset of parts, in any order, with foreign files among them: merge writes the one-run file
    exactly when the parts tile the run (each sample once), and otherwise refuses with nothing written."""
    from vae_export.shards import merge

    whole, n, candidates = sample_files
    cut = data.draw(st.sampled_from([candidates[1:4], candidates[4:6], candidates[:1]]))     # 3 parts, 2 parts, whole
    kept = [c for c, keep in zip(cut, data.draw(st.lists(st.booleans(), min_size=len(cut), max_size=len(cut)))) if keep]
    extra = data.draw(st.lists(st.sampled_from(candidates), max_size=2))
    chosen = list({c[0]: c for c in kept + extra}.values()) or [cut[0]]
    chosen = data.draw(st.permutations(chosen))
    rows = sorted((r.start, r.stop) for _, r in chosen if r is not None)
    tiles = len(rows) == len(chosen) and [a for a, _ in rows] == [0, *(b for _, b in rows[:-1])] and rows[-1][1] == n
    event("tiles the run" if tiles else "does not tile it")
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "all.npy"
        try:
            merge([path for path, _ in chosen], out)
        except VaeExportError:
            assert not tiles and list(Path(tmp).iterdir()) == []
            return
        assert tiles and out.read_bytes() == whole


@FUZZ
@given(st.one_of(st.text(max_size=200), st.dictionaries(st.sampled_from(["samples", "n", "seed", "dtype", "rows", "part",
                                                                         "decoder_sha256", "checkpoint_sha256", "precision"]),
                                                        st.one_of(st.integers(), st.text(max_size=5), st.none(),
                                                                  st.lists(st.integers(), max_size=3))).map(json.dumps)),
       st.sampled_from(["# vae-export ", "#vae-export ", "# ", ""]))
def test_any_header_record_is_read_or_refused_in_one_line(text, mark):
    """Whatever follows the dict of a .npy header (an edited or foreign record, a stray quote or
    backslash), reading the part and merging it gives a record or a VaeExportError, never another exception."""
    from vae_export.shards import merge

    comment = (mark + text).encode("latin1", "replace").replace(b"\n", b" ").replace(b"\r", b" ")
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "part.npy"
        buf = io.BytesIO()
        np.lib.format.write_array_header_1_0(buf, {"descr": "|u1", "fortran_order": False, "shape": (2, 1, 2, 2)})
        header = buf.getvalue()[:-1].rstrip(b" ") + b"  " + comment
        header += b" " * (-(len(header) + 1) % 64) + b"\n"
        path.write_bytes(header[:8] + len(header[10:]).to_bytes(2, "little") + header[10:] + bytes(8))
        try:
            merge([path], Path(tmp) / "all.npy")
        except VaeExportError:
            pass
