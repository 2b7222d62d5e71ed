"""Images in, for every command: `train --dataset folder:/npy:/npz:`, `evaluate` and `parity` (through
training/data.py), `encode` and `reconstruct` all read pixels here, through one decoder with one format
table, so a file means the same pixels to training as to the runtime. numpy + pillow only (no torch).

Image files (.png .jpg .jpeg .bmp .ppm .pgm .tif .tiff .webp; Pillow's PNG, JPEG, BMP, PPM, TIFF and WEBP
decoders only) are turned upright by their EXIF orientation first (`ImageOps.exif_transpose`), then
converted by their Pillow mode (MODES below):

    mode                  channels  stored as          pixel in [0, 1]
    1 (1-bit)             grey      uint8 0 or 255     v / 255 (0 or 1)
    L (8-bit)             grey      uint8              v / 255
    LA                    grey      uint8              v / 255, alpha must be 255 everywhere (then dropped)
    I;16, I;16B, I;16L    grey      float32            v / 65535
    I (32-bit integer)    grey      float32            v / 65535; values outside 0..65535 are refused
    F (32-bit float)      grey      float32            v; NaN, infinities and values outside [0, 1] refused
    RGB (8 bits/channel)  colour    uint8              v / 255 (16-bit colour PNGs: Pillow reads 8 bits)
    RGBA                  colour    uint8              v / 255, alpha must be 255 everywhere (then dropped)
    P, PA (palette)       colour    uint8              the palette's RGBA, as RGBA
    anything else (CMYK, YCbCr, LAB, HSV, I;16S, RGBa, multi-frame files...): refused, naming the file

Arrays (.npy, or the one array / the array named `images` of an .npz; no pickles): shape (N, H, W),
(N, C, H, W) or (N, H, W, C) with C = 1 or 3 and N >= 1; dtype uint8 (v / 255, as torchvision's ToTensor)
or float16/32/64 of either byte order (values already in [0, 1]; NaN, infinities and values outside are
refused). Other dtypes are refused: an int64 array may hold 0..255 or 0..1.

Channels: grey becomes colour by repetition; colour becomes grey only when its three channels are equal,
or when the user asked for it (`train --channels 1`: ITU-R 601-2 luma, as Pillow's convert("L")).

    vae-export encode digits.npy photo.jpg --out latents.npz
"""

from __future__ import annotations

import contextlib
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from .errors import InputError, first_line
from .files import require_memory

SUFFIXES = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")  # torchvision's IMG_EXTENSIONS
FORMATS = ("PNG", "JPEG", "BMP", "PPM", "TIFF", "WEBP")     # the Pillow decoders tried; never EPS, PSD...
LUMA = (0.299, 0.587, 0.114)                                # ITU-R 601-2, Pillow's convert("L")


@dataclass(frozen=True)
class Mode:
    channels: int               # 1 grey, 3 colour
    scale: int                  # a stored value v is the pixel v / scale
    dtype: type                 # uint8 when 8 bits hold the pixels exactly, else float32 (already scaled)
    alpha: bool = False         # the last band is alpha: must be opaque, then dropped
    convert: str | None = None  # decode through this Pillow mode first (1 -> L, palettes -> RGBA)


MODES = {
    "1": Mode(1, 255, np.uint8, convert="L"),
    "L": Mode(1, 255, np.uint8),
    "LA": Mode(1, 255, np.uint8, alpha=True),
    **{m: Mode(1, 65535, np.float32) for m in ("I;16", "I;16B", "I;16L", "I;16N", "I")},
    "F": Mode(1, 1, np.float32),
    "RGB": Mode(3, 255, np.uint8),
    "RGBA": Mode(3, 255, np.uint8, alpha=True),
    "P": Mode(3, 255, np.uint8, alpha=True, convert="RGBA"),
    "PA": Mode(3, 255, np.uint8, alpha=True, convert="RGBA"),
}


@dataclass(frozen=True)
class Header:
    """What an image file holds, from its header alone (upright: EXIF orientation applied)."""

    size: tuple[int, int]       # (H, W)
    mode: Mode


def _refuse(path: Path, why: str):
    raise InputError(f"cannot read images from {path}: {why}")


def _mode(path: Path, name: str) -> Mode:
    if name not in MODES:
        _refuse(path, f"Pillow mode {name} is not accepted (accepted: {', '.join(MODES)}); convert it to RGB or L first")
    return MODES[name]


def _open(path: Path):
    from PIL import Image

    img = Image.open(path, formats=FORMATS)
    if getattr(img, "n_frames", 1) > 1:
        img.close()
        _refuse(path, f"holds {img.n_frames} frames; save the one to use as a single image")
    return img


def _unreadable(path: Path, e: Exception):
    raise InputError(f"cannot read images from {path}: not a readable image ({first_line(e, 200)})") from None


def read_header(path: Path) -> Header:
    """The upright size and mode of an image file, without decoding its pixels (a PNG whose EXIF
    chunk follows its pixels is turned when decoded)."""
    from PIL import ExifTags

    try:
        with _open(path) as img:
            mode = _mode(path, img.mode)
            orientation = 1           # Pillow's TIFF plugin reports the upright size itself, and turns on load;
            if img.format != "TIFF" and (img.format != "PNG" or "exif" in img.info):   # PNG's getexif() decodes
                orientation = img.getexif().get(ExifTags.Base.Orientation, 1)
            w, h = img.size
    except InputError:
        raise
    except Exception as e:  # noqa: BLE001 - pillow raises OSError, SyntaxError, ValueError, zlib errors... on bad files
        _unreadable(path, e)
    return Header((w, h) if orientation in (5, 6, 7, 8) else (h, w), mode)


def decode_image(path: Path) -> np.ndarray:
    """One image file, upright, as (C, H, W) with C its own channels (1 or 3): uint8 0..255 for
    8-bit modes, float32 in [0, 1] for the others (MODES says which and how)."""
    from PIL import ImageOps

    try:
        with _open(path) as img:
            mode = _mode(path, img.mode)
            tiff_size = img.size if img.format == "TIFF" else None    # Pillow's TIFF header size is the upright one
            upright = ImageOps.exif_transpose(img)
            if mode.convert:
                upright = upright.convert(mode.convert)
            pixels = np.asarray(upright)
            if tiff_size and pixels.shape[1::-1] != tiff_size:      # Pillow 13 leaves I;16 TIFFs as stored
                _refuse(path, f"Pillow cannot turn this {img.mode} TIFF upright by its EXIF orientation; save it upright")
    except InputError:
        raise
    except Exception as e:  # noqa: BLE001 - as in read_header; also truncated pixel data
        _unreadable(path, e)
    if pixels.ndim == 2:
        pixels = pixels[..., None]                                  # (H, W) -> (H, W, 1)
    if mode.alpha:
        if (pixels[..., -1] != 255).any():
            _refuse(path, "has transparent pixels; flatten the alpha channel first")
        pixels = pixels[..., :-1]
    if mode.dtype == np.uint8:
        x = pixels.astype(np.uint8, copy=False)
    else:
        x = pixels.astype(np.float32)
        if not np.isfinite(x).all() or x.min() < 0 or x.max() > mode.scale:
            _refuse(path, f"holds values outside 0..{mode.scale} (found {x.min():g}..{x.max():g})")
        if mode.scale != 1:
            x /= np.float32(mode.scale)
    return np.array(x.transpose(2, 0, 1), order="C")              # (H, W, C) -> (C, H, W), writable


def read_array(path: Path, kind: str = "npy", check: Callable[[tuple, np.dtype], None] | None = None) -> np.ndarray:
    """An .npy array, or an .npz's one array (or its `images`), as (N, C, H, W): uint8 as stored, floats
    as float32 in [0, 1]. `check(shape, dtype)` sees the (N, C, H, W) shape from the header before a
    byte of data is read (a memory estimate, a model's shape)."""
    try:
        with contextlib.ExitStack() as stack:
            if kind == "npz":
                zf = stack.enter_context(zipfile.ZipFile(path))
                f = stack.enter_context(zf.open(_npz_member(zf, path)))
            else:
                f = stack.enter_context(open(path, "rb"))
            version = np.lib.format.read_magic(f)
            read = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}.get(version)
            if read is None:
                _refuse(path, f".npy format version {version[0]}.{version[1]} is not accepted (use 1.0 or 2.0)")
            shape, fortran, dtype = read(f)
            if dtype != np.uint8 and not (dtype.kind == "f" and dtype.itemsize in (2, 4, 8)):
                _refuse(path, f"dtype {dtype} is not accepted; use uint8 (0..255) or float (0..1), e.g. x.astype(np.uint8)")
            layout = _layout(shape)
            if layout is None:
                _refuse(path, f"shape {shape} is not (N, H, W), (N, C, H, W) or (N, H, W, C) with C = 1 or 3 and N >= 1")
            if check:
                check(layout[0], dtype)
            f.seek(0)
            a = np.lib.format.read_array(f, allow_pickle=False)
    except InputError:
        raise
    except Exception as e:  # noqa: BLE001 - numpy and zipfile raise ValueError, OSError, EOFError, BadZipFile...
        raise InputError(f"cannot read images from {path}: not a readable {kind} file ({first_line(e, 200)})") from None
    a = a.reshape(layout[1]) if layout[2] is None else a.transpose(layout[2])
    if a.dtype == np.uint8:
        return np.ascontiguousarray(a)
    with np.errstate(over="ignore"):  # float64 beyond float32's range becomes inf, refused below
        x = np.ascontiguousarray(a, dtype=np.float32)
    if not np.isfinite(x).all():
        _refuse(path, "holds NaN or infinite values")
    if x.min() < 0 or x.max() > 1:
        _refuse(path, f"float pixels must lie in [0, 1], found {x.min():g}..{x.max():g} (uint8 0..255 is also accepted)")
    return x


def _layout(shape: tuple[int, ...]):
    """((N, C, H, W), reshape, transpose) for an accepted array shape, else None."""
    if len(shape) == 3:
        n, h, w = shape
        return ((n, 1, h, w), (n, 1, h, w), None) if n > 0 else None
    if len(shape) == 4 and shape[0] > 0:
        n, a, b, c = shape
        if a in (1, 3):
            return (n, a, b, c), shape, None
        if c in (1, 3):
            return (n, c, a, b), None, (0, 3, 1, 2)
    return None


def _npz_member(zf: zipfile.ZipFile, path: Path) -> str:
    names = [n for n in zf.namelist() if n.endswith(".npy")]
    if len(names) == 1:
        return names[0]
    if "images.npy" in names:
        return "images.npy"
    _refuse(path, f"holds {[n[:-4] for n in names]}; expected one array, or one named 'images'")


def to_channels(x: np.ndarray, channels: int, path: Path | str, convert: bool = False) -> np.ndarray:
    """Images (..., C, H, W) with `channels` channels: grey is repeated; colour becomes grey when its
    channels are equal, or by luma when `convert` (the user asked for grey), else it is refused."""
    have = x.shape[-3]
    if have == channels:
        return x
    if have == 1:
        return np.repeat(x, channels, axis=-3)
    r, g, b = (x[..., i, :, :] for i in range(3))
    if ((r == g) & (g == b)).all():
        return np.ascontiguousarray(x[..., :1, :, :])
    if not convert:
        _refuse(path, "is a colour image; this model takes grayscale")
    luma = (LUMA[0] * r.astype(np.float32) + LUMA[1] * g + LUMA[2] * b)[..., None, :, :]
    return np.rint(luma).clip(0, 255).astype(np.uint8) if x.dtype == np.uint8 else luma.clip(0, 1).astype(np.float32)


def to_float(x: np.ndarray) -> np.ndarray:
    """uint8 -> float32 v / 255 (torchvision's ToTensor); float32 as is."""
    return x.astype(np.float32) / np.float32(255) if x.dtype == np.uint8 else x


def read_images(paths: list[Path], image_shape: tuple[int, int, int]) -> np.ndarray:
    """Every image in `paths` (arrays and image files, in order) as float32 (N, C, H, W) in [0, 1] for a
    model of `image_shape`: sizes must match (no resizing), channels follow `to_channels`."""
    if not paths:
        raise InputError("no image files given")
    c, h, w = image_shape
    arrays = []
    for path in paths:
        suffix = path.suffix.lower()
        if suffix in (".npy", ".npz"):
            def fits(shape, dtype, path=path):
                if shape[2:] != (h, w):
                    _refuse(path, f"images are {shape[2]}x{shape[3]} pixels; the model takes {h}x{w}")
                require_memory(shape[0] * max(c, shape[1]) * h * w * 4 * 2, f"reading {path}")
            x = read_array(path, suffix[1:], fits)
        elif suffix in SUFFIXES:
            header = read_header(path)
            if header.size != (h, w):                               # before decoding the pixels
                _refuse(path, f"is {header.size[1]}x{header.size[0]} pixels; the model takes {w}x{h}")
            x = decode_image(path)[None]
        else:
            _refuse(path, f"expected .npy, .npz or an image ({' '.join(SUFFIXES)}), got {path.suffix or 'no suffix'!r}")
        arrays.append(to_float(to_channels(x, c, path)))
    return arrays[0] if len(arrays) == 1 else np.concatenate(arrays)
