"""One pixel decoder for every command (issue 17, class 4): training's folder: reader and the runtime's
`encode`/`reconstruct` reader (vae_export/images.py) give the same arrays for the same file: 16-bit
and float pixels at their exact scale, EXIF orientation applied, symlinked subfolders followed as
torchvision's ImageFolder does, and every other mode refused naming the file. Files are made here,
in every Pillow mode the format table names, and hypothesis draws the pixels."""

from __future__ import annotations

import io
import os
import shutil
import tempfile
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from PIL import Image

from vae_export.errors import VaeExportError
from vae_export import images
from vae_export.training.data import DataError, load_dataset, to_float


@pytest.fixture(autouse=True, scope="module")
def subnormal_floats():
    """hypothesis cannot draw subnormal floats after an in-process training run has called
    torch.set_flush_denormal(True) (as test_fuzz.py says); unset it for this module."""
    if "torch" in sys.modules:
        sys.modules["torch"].set_flush_denormal(False)


def train_view(path: Path, **options) -> np.ndarray:
    """The image as training sees it: a folder: dataset of two copies of the file, one per split."""
    with tempfile.TemporaryDirectory() as tmp:
        for name in ("a", "b"):
            shutil.copyfile(path, Path(tmp) / f"{name}{path.suffix}")
        data = load_dataset(f"folder:{tmp}", tmp, test_fraction=0.5, **options)
    assert np.array_equal(data.train[0], data.test[0])
    return to_float(data.train[0]).numpy()


def encode_view(path: Path, channels: int) -> np.ndarray:
    """The image as `encode` and `reconstruct` see it, for a model of the file's own (upright) size."""
    return images.read_images([path], (channels, *images.read_header(path).size))[0]


def save(path: Path, image: Image.Image, **params) -> Path:
    image.save(path, **params)
    return path


def test_sixteen_bit_and_float_pixels_train_at_their_scale(tmp_path):
    ramp = np.linspace(0, 65535, 12).astype(np.uint16).reshape(3, 4)      # 0 .. 65535, not clipped to 255
    unit = np.linspace(0, 1, 12, dtype=np.float32).reshape(3, 4)
    for path, want in [(save(tmp_path / "p16.png", Image.fromarray(ramp)), ramp / 65535),
                       (save(tmp_path / "t16.tif", Image.fromarray(ramp)), ramp / 65535),
                       (save(tmp_path / "f.tiff", Image.fromarray(unit, "F")), unit)]:
        trained = train_view(path)
        np.testing.assert_allclose(trained[0], want, rtol=0, atol=1e-7, err_msg=path.name)
        assert np.array_equal(trained, encode_view(path, 1)), path.name


def test_exif_orientation_turns_images_upright_for_training_and_encoding(tmp_path):
    pixels = np.arange(4 * 6 * 3, dtype=np.uint8).reshape(4, 6, 3) * 2   # stored 4 high, 6 wide
    exif = Image.Exif()
    exif[0x0112] = 6                                                      # "rotate 90 clockwise to view"
    upright = np.rot90(pixels, -1).transpose(2, 0, 1)                    # (3, 6, 4)
    for path in (save(tmp_path / "phone.png", Image.fromarray(pixels), exif=exif),
                 save(tmp_path / "phone.tif", Image.fromarray(pixels), exif=exif)):
        trained = train_view(path)
        assert trained.shape == (3, 6, 4) and np.array_equal(trained, upright / np.float32(255)), path.name
        assert np.array_equal(trained, images.read_images([path], (3, 6, 4))[0])


def test_symlinked_subfolders_are_followed_once(tmp_path):
    data, elsewhere = tmp_path / "data", tmp_path / "elsewhere"
    for folder, n in ((data / "real", 2), (elsewhere, 3)):
        folder.mkdir(parents=True)
        for i in range(n):
            save(folder / f"{i}.png", Image.fromarray(np.full((4, 4), i, np.uint8)))
    os.symlink(elsewhere, data / "linked")
    os.symlink(data, data / "real" / "loop")                             # a cycle is walked once, not forever
    loaded = load_dataset(f"folder:{data}", data, test_fraction=0.2)
    assert len(loaded.train) + len(loaded.test) == 5


@pytest.mark.parametrize("mode", ["CMYK", "LAB", "transparent"])
def test_other_modes_are_refused_naming_the_file_or_skipped_and_counted(tmp_path, mode):
    for i in range(3):
        save(tmp_path / f"ok{i}.png", Image.fromarray(np.full((4, 4, 3), 9 * i, np.uint8)))
    odd = (Image.fromarray(np.zeros((4, 4, 4), np.uint8), "RGBA") if mode == "transparent"
           else Image.new(mode, (4, 4)))
    path = save(tmp_path / ("odd.jpg" if mode == "CMYK" else "odd.tif"), odd)
    with pytest.raises(DataError, match=path.name):
        load_dataset(f"folder:{tmp_path}", tmp_path)
    with pytest.raises(VaeExportError, match=str(path)):
        images.read_images([path], (3, 4, 4))
    data = load_dataset(f"folder:{tmp_path}", tmp_path, skip_bad_files=True, test_fraction=0.34)
    assert len(data.train) + len(data.test) == 3 and "1 unreadable skipped" in data.description


def test_folder_and_arrays_share_the_suffix_list_of_imagefolder():
    from torchvision.datasets.folder import IMG_EXTENSIONS

    assert set(images.SUFFIXES) == set(IMG_EXTENSIONS)


# -- the fuzz: every mode of the table (and some outside it), PNG and TIFF, any pixels ----------------------

FORMATS = {"1": ("PNG", "TIFF"), "L": ("PNG", "TIFF"), "LA": ("PNG", "TIFF"), "I;16": ("PNG", "TIFF"),
           "I": ("TIFF",), "F": ("TIFF",), "RGB": ("PNG", "TIFF", "BMP"), "RGBA": ("PNG", "TIFF"),
           "P": ("PNG", "BMP"), "CMYK": ("TIFF",)}


@st.composite
def image_files(draw):
    """(mode, format, bytes): an image of random small size and pixels, often opaque, sometimes turned."""
    mode = draw(st.sampled_from(sorted(FORMATS)))
    fmt = draw(st.sampled_from(FORMATS[mode]))
    h, w = draw(st.integers(1, 5)), draw(st.integers(1, 5))
    bands = {"LA": 2, "RGB": 3, "RGBA": 4, "CMYK": 4}.get(mode, 1)
    shape = (h, w, bands) if bands > 1 else (h, w)
    if mode == "F":
        pixels = draw(hnp.arrays(np.float32, shape, elements=st.one_of(st.floats(0, 1, width=32), st.floats(width=32))))
    elif mode == "I":
        pixels = draw(hnp.arrays(np.int32, shape, elements=st.one_of(st.integers(0, 65535), st.integers(-2**31, 2**31 - 1))))
    else:
        top = {"1": 1, "I;16": 65535}.get(mode, 255)
        pixels = draw(hnp.arrays(np.int64, shape, elements=st.integers(0, top)))
        if mode in ("LA", "RGBA") and draw(st.booleans()):
            pixels[..., -1] = 255                                         # opaque, so accepted
    image = {"1": lambda: Image.fromarray(pixels.astype(bool)), "I;16": lambda: Image.fromarray(pixels.astype(np.uint16)),
             "I": lambda: Image.fromarray(pixels, "I"), "F": lambda: Image.fromarray(pixels, "F"),
             "P": lambda: Image.fromarray(pixels.astype(np.uint8), "L").convert("P")}.get(
        mode, lambda: Image.fromarray(pixels.astype(np.uint8), mode))()
    params = {}
    if fmt != "BMP" and draw(st.booleans()):
        exif = Image.Exif()
        exif[0x0112] = draw(st.integers(1, 8))
        params["exif"] = exif
    buffer = io.BytesIO()
    try:
        image.save(buffer, format=fmt, **params)
    except (OSError, ValueError, KeyError):                               # a mode this format cannot store
        assume(False)
    return mode, fmt, buffer.getvalue()


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(image_files())
def test_training_and_encode_read_every_file_the_same_or_both_refuse(case):
    mode, fmt, data = case
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"x.{fmt.lower()}"
        path.write_bytes(data)
        with Image.open(path) as im:
            channels = images.MODES[im.mode].channels if im.mode in images.MODES else 1
        try:
            encoded = encode_view(path, channels)
        except VaeExportError as e:
            assert str(path) in str(e)
            encoded = None
        why = ""
        try:
            trained = train_view(path)
        except VaeExportError as e:
            assert "a." in str(e) or "b." in str(e)
            trained, why = None, str(e)
    if encoded is None:
        assert trained is None, (mode, fmt)
    else:
        assert trained is not None, (mode, fmt, why)
        assert trained.dtype == encoded.dtype == np.float32, (mode, fmt)
        assert np.array_equal(trained, encoded), (mode, fmt)
        assert np.isfinite(encoded).all() and encoded.min() >= 0 and encoded.max() <= 1
