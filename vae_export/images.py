"""Images in, for `encode` and `reconstruct`: numpy + pillow only (no torch), every accepted format
converted exactly and every other one refused with an `InputError` naming the file.

For a model of image shape (C, H, W), C = 1 or 3, the result is float32 (N, C, H, W) in [0, 1]:

- `.npy` (no pickles), shape (N, C, H, W), or (N, H, W) when C = 1; N >= 1.
  dtype uint8: pixel values 0..255, scaled by 1/255 (as torchvision's ToTensor).
  dtype float16, float32 or float64 (either byte order): values already in [0, 1], converted to float32; NaN, infinities
  and values outside [0, 1] are refused.
  Every other dtype is refused (bool, other integers, complex, structured): their scale is ambiguous
  (an int64 array may hold 0..255 or 0..1), so convert it yourself, e.g. `x.astype(np.uint8)`.
- `.png`, one image of exactly H x W pixels (no resizing):
  1-bit, 8-bit or 16-bit grayscale, scaled by 1, 1/255 or 1/65535; 8-bit RGB or palette.
  An alpha channel is accepted only when fully opaque (it is then dropped).
  C = 1 takes grayscale, or RGB whose three channels are equal; C = 3 takes RGB, or grayscale
  repeated on the three channels. Pillow reads 16-bit colour PNGs at 8 bits per channel.

    vae-export encode digits.npy --out latents.npz
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .errors import InputError, first_line
from .files import require_memory


def read_images(paths: list[Path], image_shape: tuple[int, int, int]) -> np.ndarray:
    """Every image in `paths` (.npy arrays and .png files, in order) as float32 (N, C, H, W) in [0, 1]."""
    if not paths:
        raise InputError("no image files given")
    arrays = [read_npy(p, image_shape) if p.suffix == ".npy" else read_png(p, image_shape) if p.suffix == ".png"
              else _refuse(p, f"expected a .npy or .png file, got {p.suffix or 'no suffix'!r}") for p in paths]
    return arrays[0] if len(arrays) == 1 else np.concatenate(arrays)


def read_npy(path: Path, image_shape: tuple[int, int, int]) -> np.ndarray:
    try:
        a = np.load(path, mmap_mode="r", allow_pickle=False)  # mapped: shape and dtype are checked before reading
    except Exception as e:  # noqa: BLE001 - numpy raises ValueError, OSError, EOFError, SyntaxError... on bad files
        raise InputError(f"cannot read images from {path}: not a readable .npy array ({first_line(e, 200)})") from None
    if not isinstance(a, np.ndarray):
        _refuse(path, "expected one array, got an .npz archive")
    c, h, w = image_shape
    if a.ndim == 3 and c == 1:
        a = a[:, None]                                               # (N, H, W) -> (N, 1, H, W)
    if a.ndim != 4 or a.shape[1:] != (c, h, w) or a.shape[0] == 0:
        wanted = f"(N, {c}, {h}, {w})" + (f" or (N, {h}, {w})" if c == 1 else "")
        _refuse(path, f"expected shape {wanted} with N >= 1, got {a.shape}")
    if a.dtype != np.uint8 and not (a.dtype.kind == "f" and a.dtype.itemsize in (2, 4, 8)):
        _refuse(path, f"dtype {a.dtype} is not accepted; use uint8 (0..255) or float (0..1), e.g. x.astype(np.uint8)")
    require_memory(a.shape[0] * c * h * w * 4 * 2, f"reading {path}")
    try:
        if a.dtype == np.uint8:
            return np.asarray(a, np.float32) / np.float32(255)
        with np.errstate(over="ignore"):  # float64 beyond float32's range becomes inf, refused below
            x = np.array(a, np.float32)
    except (OSError, ValueError) as e:  # the mapped file shrank or could not be read
        raise InputError(f"cannot read images from {path} ({first_line(e, 200)})") from None
    if not np.isfinite(x).all():
        _refuse(path, "holds NaN or infinite values")
    if x.min() < 0 or x.max() > 1:
        _refuse(path, f"float pixels must lie in [0, 1], found {x.min():g}..{x.max():g} (uint8 0..255 is also accepted)")
    return x


def read_png(path: Path, image_shape: tuple[int, int, int]) -> np.ndarray:
    from PIL import Image

    c, h, w = image_shape
    try:
        with Image.open(path) as img:
            if img.format != "PNG":
                _refuse(path, f"is a {img.format} file, not a PNG")
            if img.size != (w, h):                                  # from the header, before decoding pixels
                _refuse(path, f"is {img.size[0]}x{img.size[1]} pixels; the model takes {w}x{h}")
            mode = img.mode
            if mode == "P":
                img = img.convert("RGBA")
                mode = "RGBA"
            pixels = np.asarray(img)
    except InputError:
        raise
    except Exception as e:  # noqa: BLE001 - pillow raises OSError, SyntaxError, ValueError, zlib errors... on bad files
        raise InputError(f"cannot read images from {path}: not a readable PNG ({first_line(e, 200)})") from None
    scale = {"1": 1, "L": 255, "LA": 255, "RGB": 255, "RGBA": 255, "I;16": 65535, "I": 65535}.get(mode)
    if scale is None:
        _refuse(path, f"PNG mode {mode} is not accepted (grayscale, RGB or palette, 1/8/16 bits)")
    if pixels.ndim == 2:
        pixels = pixels[..., None]                                  # (H, W) -> (H, W, 1)
    if mode in ("LA", "RGBA"):
        if (pixels[..., -1] != 255).any():
            _refuse(path, "has transparent pixels; flatten the alpha channel first")
        pixels = pixels[..., :-1]
    if mode == "I" and (pixels.min() < 0 or pixels.max() > 65535):
        _refuse(path, "holds values outside 16 bits")
    if pixels.shape[-1] == 3 and c == 1:
        if not ((pixels[..., 0] == pixels[..., 1]) & (pixels[..., 1] == pixels[..., 2])).all():
            _refuse(path, "is a colour image; this model takes grayscale")
        pixels = pixels[..., :1]
    if pixels.shape[-1] == 1 and c == 3:
        pixels = np.repeat(pixels, 3, axis=-1)
    x = pixels.astype(np.float32) / np.float32(scale)
    return np.ascontiguousarray(x.transpose(2, 0, 1)[None])         # (H, W, C) -> (1, C, H, W)


def _refuse(path: Path, why: str):
    raise InputError(f"cannot read images from {path}: {why}")

