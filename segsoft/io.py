"""Reading images into a uniform float representation, finding them, writing files safely.

Everything the rest of segsoft sees of an input picture is an :class:`Image`:
float32 RGB in [0, 1] plus an optional mask of the pixels to use. The readers
here turn every Pillow mode into that form, apply the EXIF orientation, and
turn each way a file can be unusable into a one-line :class:`SegsoftError`
that starts with the file's name.

How each source is scaled
-------------------------
========================  ===========================================  =========
source (Pillow mode)      pixels                                       bit_depth
========================  ===========================================  =========
1, L, P, RGB, CMYK, ...   ``uint8 / 255`` (CMYK, YCbCr, LAB: Pillow's   8
                          own conversion to RGB, no colour management)
I;16, I;16B, ...          ``uint16 / 65535``                           16
16-bit RGB(A) PNG/TIFF    ``uint16 / 65535`` (see below)               16
I (32-bit integer)        values in 0..65535: ``/ 65535``; other        16 / 32
                          non-negative values: ``/ max``; with
                          negative values: ``(v - min) / (max - min)``
F (32-bit float)          kept if the max is <= 1, else ``/ max``;      32
                          negatives clipped to 0; NaN/inf rejected
========================  ===========================================  =========

Pillow has no 16-bit RGB mode and hands 16-bit-per-channel RGB and RGBA
PNG/TIFF files over as 8-bit (their high bytes). :func:`read_image` recovers
the full precision by decoding such a file a second time with the opposite
byte order, which yields the low bytes. This covers PNG and uncompressed or
libtiff-compressed TIFF; other 16-bit colour sources (16-bit PPM, or a
``PIL.Image`` object passed to :func:`as_image`) arrive as 8-bit.
Multi-frame files (GIF, APNG, multi-page TIFF) give their first frame.
"""

from __future__ import annotations

import errno
import glob
import os
import re
import secrets
import stat
import struct
import sys
import threading
import warnings
import zlib
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image as PILImage
from PIL import UnidentifiedImageError

from .errors import SegsoftError

__all__ = [
    "DEFAULT_MAX_PIXELS",
    "IMAGE_EXTENSIONS",
    "Image",
    "as_image",
    "atomic_path",
    "atomic_write_bytes",
    "find_images",
    "inside",
    "read_image",
    "safe_component",
]

DEFAULT_MAX_PIXELS = 100_000_000

#: Extensions taken as images without looking inside (lower case, with the dot).
#: Files in a folder with other extensions are still found when Pillow
#: recognises their content.
IMAGE_EXTENSIONS = frozenset(
    {".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp", ".webp", ".gif", ".ppm", ".pgm", ".pbm", ".pnm", ".jp2"}
)

# What Pillow's decoders raise on damaged data: they are not consistent, so the
# list is wide, but it leaves out MemoryError and programming errors.
_DECODE_ERRORS = (
    OSError,
    SyntaxError,
    ValueError,
    EOFError,
    IndexError,
    KeyError,
    TypeError,
    struct.error,
    zlib.error,
    UnicodeDecodeError,
)

_GRAY_MODES = frozenset({"1", "L", "LA", "La", "I", "I;16", "I;16L", "I;16B", "I;16N", "F"})

_LUT8 = np.arange(256, dtype=np.float32) / np.float32(255)


@dataclass(eq=False, repr=False)
class Image:
    """An image ready for segmentation.

    Parameters
    ----------
    pixels : ndarray, float32, shape (H, W, 3)
        RGB in [0, 1], C-contiguous. Grey sources have three equal channels.
    mask : ndarray of bool, shape (H, W), or None
        True where the pixel is used (not transparent); None when all are.
    path : Path or None
        The file it was read from.
    bit_depth : int
        8 or 16 for integer sources, 32 for float (or 32-bit integer) ones.
        For 8, ``np.round(pixels * 255)`` gives back the source bytes exactly.
    mode : str
        The Pillow mode of the source, or ``"array"``.
    is_gray : bool
        The source had a single colour channel.

    Examples
    --------
    >>> img = Image.from_array(np.zeros((2, 3), dtype=np.uint8))
    >>> img.height, img.width, img.n_pixels, img.n_used, img.is_gray
    (2, 3, 6, 6, True)
    """

    pixels: np.ndarray
    mask: np.ndarray | None = None
    path: Path | None = None
    bit_depth: int = 8
    mode: str = "array"
    is_gray: bool = False

    def __post_init__(self) -> None:
        pixels = np.asarray(self.pixels)
        if pixels.ndim != 3 or pixels.shape[2] != 3 or pixels.dtype.kind != "f":
            raise ValueError(f"pixels must be a float (H, W, 3) array, got {pixels.dtype} {pixels.shape}")
        self.pixels = np.ascontiguousarray(pixels, dtype=np.float32)
        if self.mask is not None:
            mask = np.asarray(self.mask)
            if mask.shape != pixels.shape[:2] or mask.dtype != bool:
                raise ValueError(f"mask must be a bool {pixels.shape[:2]} array, got {mask.dtype} {mask.shape}")
            self.mask = np.ascontiguousarray(mask)
        if self.path is not None:
            self.path = Path(self.path)

    @property
    def height(self) -> int:
        """Number of rows."""
        return int(self.pixels.shape[0])

    @property
    def width(self) -> int:
        """Number of columns."""
        return int(self.pixels.shape[1])

    @property
    def n_pixels(self) -> int:
        """``height * width``."""
        return self.height * self.width

    @property
    def n_used(self) -> int:
        """Number of pixels the mask keeps (all of them without a mask)."""
        return self.n_pixels if self.mask is None else int(np.count_nonzero(self.mask))

    def __repr__(self) -> str:
        used = "" if self.mask is None else f", n_used={self.n_used}"
        return (
            f"Image({self.width}x{self.height}, mode={self.mode!r}, bit_depth={self.bit_depth}, "
            f"is_gray={self.is_gray}{used}, path={None if self.path is None else str(self.path)!r})"
        )

    @classmethod
    def from_array(cls, arr: np.ndarray, mask: np.ndarray | None = None) -> Image:
        """Wrap an in-memory array.

        Parameters
        ----------
        arr : array, shape (H, W), (H, W, 1), (H, W, 3) or (H, W, 4)
            uint8 (divided by 255), uint16 (by 65535), bool, or float
            (taken to be in [0, 1] and clipped to it). A fourth channel is
            alpha: pixels where it is 0 are masked out.
        mask : array of bool, shape (H, W), optional
            Pixels to use; combined with the alpha channel.

        Returns
        -------
        Image
            With ``mode="array"`` and ``path=None``.

        Raises
        ------
        SegsoftError
            For an unsupported dtype or shape, NaN or infinite values, no
            pixels, or no pixel left to use.

        Examples
        --------
        >>> rgba = np.full((2, 2, 4), 255, dtype=np.uint8)
        >>> rgba[0, 0, 3] = 0
        >>> img = Image.from_array(rgba)
        >>> img.bit_depth, img.n_used, img.mask.tolist()
        (8, 3, [[False, True], [True, True]])
        """
        a = np.asarray(arr)
        if a.ndim == 3 and a.shape[2] in (1, 3, 4):
            channels = a.shape[2]
        elif a.ndim == 2:
            channels = 1
            a = a[:, :, None]
        else:
            raise SegsoftError(
                f"array of shape {a.shape} is not an image (expected (H, W), (H, W, 1), (H, W, 3) or (H, W, 4))"
            )
        if a.shape[0] == 0 or a.shape[1] == 0:
            raise SegsoftError(f"array of shape {a.shape} has no pixels")
        if a.dtype == bool:
            a = a.astype(np.uint8) * np.uint8(255)  # an 8-bit black-and-white image
        if a.dtype.kind == "f":
            if not np.isfinite(a).all():
                raise SegsoftError("array contains NaN or infinite values")
            bit_depth = 32
        elif a.dtype in (np.uint8, np.uint16):
            bit_depth = 8 * a.dtype.itemsize
        else:
            raise SegsoftError(f"unsupported array dtype {a.dtype} (use uint8, uint16, bool or float)")

        alpha = None
        if channels == 4:
            alpha = a[:, :, 3] > 0
            a = a[:, :, :3]
        elif channels == 1:
            a = a[:, :, 0]
        if mask is not None:
            m = np.asarray(mask)
            if m.shape != a.shape[:2]:
                raise SegsoftError(f"mask of shape {m.shape} does not match the image's {a.shape[:2]}")
            m = m.astype(bool)
            alpha = m if alpha is None else alpha & m
        pixels = _unit_rgb(a)
        return cls(pixels, _finish_mask(alpha, "array"), None, bit_depth, "array", channels == 1)


# --------------------------------------------------------------------------
# reading


def read_image(path: str | os.PathLike, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> Image:
    """Read an image file with Pillow.

    The EXIF orientation is applied, transparency (an alpha channel or a
    palette/tRNS transparent colour) becomes the mask, and every mode is
    scaled to float RGB in [0, 1] as listed in the module docstring.

    Parameters
    ----------
    path : str or os.PathLike
        The file. Only the first frame of a multi-frame file is read.
    max_pixels : int or None
        Refuse images with more pixels than this before decoding them
        (None: no limit). Pillow's own decompression-bomb limit is replaced
        by this one.

    Returns
    -------
    Image

    Raises
    ------
    SegsoftError
        With a one-line message starting with ``path``: no such file, a
        directory, permission denied, empty file, not an image, truncated or
        corrupt data, too many pixels, no pixels, NaN/inf values in a float
        image, or every pixel transparent.

    Examples
    --------
    >>> import os, tempfile
    >>> from PIL import Image as PILImage
    >>> with tempfile.TemporaryDirectory() as folder:
    ...     name = os.path.join(folder, "red.png")
    ...     PILImage.new("RGB", (4, 3), (255, 0, 0)).save(name)
    ...     img = read_image(name)
    >>> img.width, img.height, img.bit_depth, img.mode
    (4, 3, 8, 'RGB')
    >>> img.pixels[0, 0]
    array([1., 0., 0.], dtype=float32)
    """
    name = os.fsdecode(path)
    p = Path(name)
    try:
        st = p.stat()
    except (FileNotFoundError, NotADirectoryError):
        raise SegsoftError(f"{name}: no such file") from None
    except PermissionError:
        raise SegsoftError(f"{name}: permission denied") from None
    except OSError as e:
        raise SegsoftError(f"{name}: cannot read ({_reason(e)})") from None
    if stat.S_ISDIR(st.st_mode):
        raise SegsoftError(f"{name}: is a directory, not an image")
    if stat.S_ISREG(st.st_mode) and st.st_size == 0:
        raise SegsoftError(f"{name}: empty file")

    with _pillow_limit_lifted():
        try:
            pil = PILImage.open(p)
        except UnidentifiedImageError:
            if _is_tiff(p):
                return _read_tiff(p, name, max_pixels)
            raise SegsoftError(f"{name}: not an image (Pillow cannot identify it)") from None
        except (FileNotFoundError, NotADirectoryError):
            raise SegsoftError(f"{name}: no such file") from None
        except IsADirectoryError:
            raise SegsoftError(f"{name}: is a directory, not an image") from None
        except PermissionError:
            raise SegsoftError(f"{name}: permission denied") from None
        except _DECODE_ERRORS as e:
            raise SegsoftError(f"{name}: truncated or corrupt image data ({_reason(e)})") from None
        with pil:
            return _from_pil(pil, name, p, max_pixels, reopen=lambda: PILImage.open(p))


def _is_tiff(path: Path) -> bool:
    with suppress(OSError), open(path, "rb") as f:
        return f.read(4) in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")
    return False


def _read_tiff(path: Path, name: str, max_pixels: int | None) -> Image:
    """TIFFs Pillow cannot open (float or 16-bit RGB, planar samples), read with
    tifffile, which scikit-image already depends on."""
    try:
        import tifffile

        with tifffile.TiffFile(path) as tif:
            page = tif.pages[0]
            planar = page.planarconfig == 2 and len(page.shape) == 3  # (samples, H, W)
            h, w = page.shape[1:] if planar else page.shape[:2]
            if max_pixels is not None and h * w > max_pixels:
                raise SegsoftError(
                    f"{name}: {w}x{h} = {h * w} pixels exceeds the limit of {max_pixels} (use --max-pixels to raise it)"
                )
            arr = page.asarray()
            if planar:
                arr = np.moveaxis(arr, 0, -1)
    except SegsoftError:
        raise
    except Exception as e:  # noqa: BLE001 - tifffile raises many kinds on bad data
        raise SegsoftError(f"{name}: not an image Pillow or tifffile can read ({_reason(e)})") from None
    if arr.ndim == 3 and arr.shape[2] > 4:
        arr = arr[..., :3]
    if np.issubdtype(arr.dtype, np.floating):
        if not np.isfinite(arr).all():
            raise SegsoftError(f"{name}: image contains NaN or infinite values")
        top = float(arr.max()) if arr.size else 1.0
        arr = arr.astype(np.float32) / (top if top > 1.0 else 1.0)  # as for Pillow's mode F
    elif arr.dtype not in (np.uint8, np.uint16, np.bool_):
        arr = arr.astype(np.float32) / max(float(arr.max()), 1.0)
    image = Image.from_array(arr)
    image.path, image.mode = path, f"tifffile:{arr.dtype}"
    return image


def as_image(
    obj: Image | str | os.PathLike | np.ndarray | PILImage.Image,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
) -> Image:
    """Turn whatever the caller has into an :class:`Image`.

    Parameters
    ----------
    obj : Image, str, os.PathLike, ndarray or PIL.Image.Image
        An :class:`Image` is returned as is; a path is read with
        :func:`read_image`; an array goes through :meth:`Image.from_array`;
        a Pillow image is converted as :func:`read_image` would (without the
        16-bit colour recovery, which needs the file).
    max_pixels : int or None
        Limit for paths and Pillow images, see :func:`read_image`.

    Returns
    -------
    Image

    Raises
    ------
    TypeError
        For any other kind of object.

    Examples
    --------
    >>> from PIL import Image as PILImage
    >>> as_image(PILImage.new("L", (5, 2), 128)).pixels[0, 0]
    array([0.5019608, 0.5019608, 0.5019608], dtype=float32)
    >>> as_image(np.ones((2, 2, 3))).bit_depth
    32
    """
    if isinstance(obj, Image):
        return obj
    if isinstance(obj, (str, os.PathLike)):
        return read_image(obj, max_pixels=max_pixels)
    if isinstance(obj, np.ndarray):
        return Image.from_array(obj)
    if isinstance(obj, PILImage.Image):
        return _from_pil(obj, "image", None, max_pixels, reopen=None)
    raise TypeError(f"cannot make an image from a {type(obj).__name__}")


# Pillow's MAX_IMAGE_PIXELS is process-wide. While any read is in progress it
# is lifted (our own max_pixels check on the header size replaces it, and a
# user's --max-pixels may be above Pillow's limit); the last read to finish
# puts the saved value back, so overlapping reads in threads stay correct.
_limit_lock = threading.Lock()
_limit_users = 0
_limit_saved: int | None = None


@contextmanager
def _pillow_limit_lifted() -> Iterator[None]:
    global _limit_users, _limit_saved
    with _limit_lock:
        if _limit_users == 0:
            _limit_saved = PILImage.MAX_IMAGE_PIXELS
            PILImage.MAX_IMAGE_PIXELS = None
        _limit_users += 1
    try:
        yield
    finally:
        with _limit_lock:
            _limit_users -= 1
            if _limit_users == 0:
                PILImage.MAX_IMAGE_PIXELS = _limit_saved


def _reason(e: BaseException) -> str:
    """A short single-line description of an exception."""
    text = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
    text = " ".join(text.split()) or type(e).__name__
    return text if len(text) <= 100 else text[:97] + "..."


def _from_pil(
    pil: PILImage.Image,
    name: str,
    path: Path | None,
    max_pixels: int | None,
    reopen: Callable[[], PILImage.Image] | None,
) -> Image:
    w, h = pil.size
    if max_pixels is not None and w * h > max_pixels:
        raise SegsoftError(
            f"{name}: {w}x{h} = {w * h} pixels exceeds the limit of {max_pixels} (use --max-pixels to raise it)"
        )
    if w <= 0 or h <= 0:
        raise SegsoftError(f"{name}: image has no pixels ({w}x{h})")
    mode = pil.mode
    wide = _wide_rawmode(pil) if reopen is not None else None
    with _pillow_limit_lifted():
        try:
            pil.load()
            arr, alpha, bit_depth, is_gray = _native(pil, name)
            if wide is not None and reopen is not None:
                arr, alpha = _widen(pil, reopen, wide, arr, alpha)
                bit_depth = 16
                is_gray = wide == "LA;16B"
        except SegsoftError:
            raise
        except _DECODE_ERRORS as e:
            raise SegsoftError(f"{name}: truncated or corrupt image data ({_reason(e)})") from None

    # transparency given as one colour (tRNS in grey/RGB PNGs, GIF in mode L)
    t = pil.info.get("transparency")
    if mode == "1" and isinstance(t, int):
        t = 255 if t else 0  # the file's 0/1 value, and "1" was read as L
    if alpha is None and arr.dtype != np.float32 and isinstance(t, (int, tuple)):
        if arr.ndim == 2 and isinstance(t, int):
            alpha = arr != t
        elif arr.ndim == 3 and isinstance(t, tuple) and len(t) == arr.shape[2]:
            alpha = np.any(arr != np.asarray(t, dtype=arr.dtype), axis=2)

    orientation = _orientation(pil)
    arr = _orient(arr, orientation)
    if alpha is not None:
        alpha = _orient(alpha, orientation)
    if arr.dtype == np.float32:
        pixels = np.empty((*arr.shape[:2], 3), dtype=np.float32)
        pixels[...] = arr[..., None] if arr.ndim == 2 else arr
    else:
        pixels = _unit_rgb(arr)
    return Image(pixels, _finish_mask(alpha, name), path, bit_depth, mode, is_gray)


def _native(pil: PILImage.Image, name: str) -> tuple[np.ndarray, np.ndarray | None, int, bool]:
    """Pixels of a loaded image as uint8/uint16 (H, W[, 3]) or float32 in [0, 1], plus alpha > 0."""
    mode = pil.mode
    is_gray = mode in _GRAY_MODES
    if mode in ("1", "L"):
        return np.asarray(pil.convert("L") if mode == "1" else pil), None, 8, True
    if mode in ("LA", "La", "PA", "RGBA", "RGBa") or (mode == "P" and "transparency" in pil.info):
        target = "LA" if mode in ("LA", "La") else "RGBA"
        a = np.asarray(pil if mode == target else pil.convert(target))
        return a[..., :-1] if target == "RGBA" else a[..., 0], a[..., -1] > 0, 8, is_gray
    if mode.startswith("I;16"):
        return np.asarray(pil).astype(np.uint16, copy=False), None, 16, True
    if mode == "I":
        return _scale_int32(np.asarray(pil))
    if mode == "F":
        a = np.asarray(pil, dtype=np.float32)
        if not np.isfinite(a).all():
            raise SegsoftError(f"{name}: image contains NaN or infinite values")
        top = float(a.max())
        if top > 1.0:
            a = a / np.float32(top)
        return np.clip(a, 0.0, 1.0), None, 32, True
    if mode != "RGB":
        try:
            pil = pil.convert("RGB")  # P, CMYK, YCbCr, LAB, HSV, RGBX
        except ValueError:
            raise SegsoftError(f"{name}: unsupported image mode {mode}") from None
    return np.asarray(pil), None, 8, False


def _scale_int32(a: np.ndarray) -> tuple[np.ndarray, None, int, bool]:
    lo, hi = int(a.min()), int(a.max())
    if lo >= 0 and hi <= 65535:
        return a.astype(np.uint16), None, 16, True
    if lo >= 0:
        return (a / hi).astype(np.float32), None, 32, True
    if lo == hi:
        return np.zeros(a.shape, dtype=np.float32), None, 32, True
    return ((a - lo) / (hi - lo)).astype(np.float32), None, 32, True


# Pillow decodes 16-bit-per-channel colour into 8-bit modes through these raw
# modes, keeping the high byte. Decoding with the opposite byte order keeps the
# low byte instead (the row length and bytes per pixel the PNG unfilter uses
# are unchanged); "RGBA" reads the four bytes of a 16-bit grey+alpha pixel.
_NATIVE_16 = "RGB;16B" if sys.byteorder == "little" else "RGB;16L"
_LOW_BYTES = {
    "RGB;16B": "RGB;16L",
    "RGB;16L": "RGB;16B",
    "RGB;16N": _NATIVE_16,
    "RGBA;16B": "RGBA;16L",
    "RGBA;16L": "RGBA;16B",
    "RGBA;16N": "RGBA" + _NATIVE_16[3:],
    "LA;16B": "RGBA",
}
_WIDE_CODECS = frozenset({"zip", "raw", "libtiff"})


def _tile_rawmode(tile: tuple) -> str | None:
    args = tile[3]
    if isinstance(args, str):
        return args
    if isinstance(args, tuple) and args and isinstance(args[0], str):
        return args[0]
    return None


def _with_rawmode(tile: tuple, rawmode: str) -> tuple:
    args = tile[3]
    args = rawmode if isinstance(args, str) else (rawmode, *args[1:])
    if hasattr(tile, "_replace"):  # Pillow >= 11 uses a NamedTuple
        return tile._replace(args=args)
    return (*tile[:3], args)


def _wide_rawmode(pil: PILImage.Image) -> str | None:
    """The raw mode when ``pil`` (not yet loaded) holds 16-bit colour Pillow will cut to 8 bits."""
    tiles = list(getattr(pil, "tile", None) or [])
    if not tiles or pil.mode not in ("RGB", "RGBA"):
        return None
    modes = {_tile_rawmode(t) for t in tiles}
    codecs = {t[0] for t in tiles}
    if len(modes) != 1 or not codecs <= _WIDE_CODECS:
        return None
    rawmode = modes.pop()
    return rawmode if rawmode in _LOW_BYTES else None


def _widen(
    pil: PILImage.Image,
    reopen: Callable[[], PILImage.Image],
    rawmode: str,
    high: np.ndarray,
    alpha: np.ndarray | None,
) -> tuple[np.ndarray, np.ndarray | None]:
    """Decode the file again for the low bytes and return the uint16 colour and alpha > 0."""
    with reopen() as other:
        if other.size != pil.size or other.mode != pil.mode or _wide_rawmode(other) != rawmode:
            raise ValueError("file changed while reading")
        other.tile = [_with_rawmode(t, _LOW_BYTES[rawmode]) for t in other.tile]
        other.load()
        low = np.asarray(other)
    if rawmode == "LA;16B":  # low holds (L high, L low, A high, A low)
        lum = (low[..., 0].astype(np.uint16) << 8) | low[..., 1]
        return lum, ((low[..., 2] | low[..., 3]) > 0)
    wide = (high.astype(np.uint16) << 8) | low[..., :3]
    if alpha is not None:
        alpha = alpha | (low[..., 3] > 0)  # 16-bit alpha 1..255 has a zero high byte
    return wide, alpha


def _orientation(pil: PILImage.Image) -> int:
    try:
        value = pil.getexif().get(0x0112, 1)
    except _DECODE_ERRORS:
        return 1  # unreadable EXIF is no reason to refuse the pixels
    return value if isinstance(value, int) and 1 <= value <= 8 else 1


def _orient(a: np.ndarray, orientation: int) -> np.ndarray:
    """Apply an EXIF orientation to an (H, W, ...) array, as ``ImageOps.exif_transpose`` does."""
    if orientation == 2:
        return a[:, ::-1]
    if orientation == 3:
        return a[::-1, ::-1]
    if orientation == 4:
        return a[::-1]
    if orientation == 5:
        return a.swapaxes(0, 1)
    if orientation == 6:
        return np.rot90(a, -1)
    if orientation == 7:
        return a[::-1, ::-1].swapaxes(0, 1)
    if orientation == 8:
        return np.rot90(a, 1)
    return a


def _unit_rgb(a: np.ndarray) -> np.ndarray:
    """(H, W) or (H, W, 3) uint8/uint16/float array -> C-contiguous float32 (H, W, 3) in [0, 1]."""
    out = np.empty((*a.shape[:2], 3), dtype=np.float32)
    if a.dtype == np.uint8:
        # float32 division is correctly rounded: exactly the float32 nearest
        # uint8 / 255 (what the features' lookup table relies on), and far
        # faster than a table lookup on tens of millions of values
        if a.ndim == 3:
            np.divide(a, np.float32(255.0), out=out, dtype=np.float32)
            return out
        v = np.divide(a, np.float32(255.0), dtype=np.float32)
    elif a.dtype == np.uint16:
        v = a.astype(np.float32)
        v /= np.float32(65535)
    else:
        v = np.clip(a, 0.0, 1.0).astype(np.float32, copy=False)
    out[...] = v[..., None] if v.ndim == 2 else v
    return out


def _finish_mask(alpha: np.ndarray | None, name: str) -> np.ndarray | None:
    if alpha is None or alpha.all():
        return None
    if not alpha.any():
        raise SegsoftError(f"{name}: every pixel is transparent")
    return np.ascontiguousarray(alpha, dtype=bool)


# --------------------------------------------------------------------------
# finding


def find_images(inputs: Iterable[str | os.PathLike], recursive: bool = False) -> list[tuple[Path, Path]]:
    """List the images named by files, folders and glob patterns.

    Parameters
    ----------
    inputs : iterable of str or os.PathLike
        Each is a file (taken whatever its extension; it is checked when
        read), a folder (its non-hidden files with an extension in
        :data:`IMAGE_EXTENSIONS`, or whose content Pillow recognises), or a
        glob pattern (``**`` allowed; matching files are filtered as in a
        folder, matching folders are ignored).
    recursive : bool
        Also look in the sub-folders (not hidden ones) of folder inputs.

    Returns
    -------
    list of (Path, Path)
        ``(image, stem)`` pairs sorted by image path, each file once. The
        stem is where the image's outputs go, relative to an output folder:
        the file name without its extension for a file, the path relative
        to the folder (or to the pattern's fixed leading folders) for a
        folder (or a pattern), e.g. ``sub/img``. Stems that would collide
        (compared case-insensitively) get the extension appended,
        ``img.png`` -> ``img_png``, and if that is not enough ``_2``,
        ``_3``, ... in path order.

    Raises
    ------
    SegsoftError
        ``"<input>: no such file or folder"`` for an input that does not
        exist and matches nothing as a pattern.

    Examples
    --------
    >>> import os, tempfile
    >>> from PIL import Image as PILImage
    >>> with tempfile.TemporaryDirectory() as folder:
    ...     for name in ("a.jpg", "a.png"):
    ...         PILImage.new("RGB", (2, 2)).save(os.path.join(folder, name))
    ...     with open(os.path.join(folder, "notes.txt"), "w") as f:
    ...         _ = f.write("not an image")
    ...     found = find_images([folder])
    >>> [(p.name, str(stem)) for p, stem in found]
    [('a.jpg', 'a_jpg'), ('a.png', 'a_png')]
    """
    pairs: list[tuple[Path, Path]] = []
    for item in inputs:
        text = os.fsdecode(item)
        p = Path(text)
        if p.is_dir():
            pairs.extend((f, f.relative_to(p).with_suffix("")) for f in _folder_images(p, recursive))
        elif p.exists() or p.is_symlink():
            pairs.append((p, Path(p.stem)))
        elif _has_magic(text):
            root = _glob_root(text)
            matches = [Path(m) for m in sorted(glob.glob(text, recursive=True))]
            files = [m for m in matches if m.is_file() and _looks_like_image(m)]
            if not matches:
                raise SegsoftError(f"{text}: no such file or folder")
            pairs.extend((f, _relative_stem(f, root)) for f in files)
        else:
            raise SegsoftError(f"{text}: no such file or folder")

    seen: set[str] = set()
    unique: list[tuple[Path, Path]] = []
    for f, stem in pairs:
        key = os.path.normcase(os.path.realpath(f))
        if key not in seen:
            seen.add(key)
            unique.append((f, stem))
    unique.sort(key=lambda pair: (str(pair[0]), str(pair[1])))
    return _unique_stems(unique)


def _folder_images(folder: Path, recursive: bool) -> list[Path]:
    found: list[Path] = []
    for here, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith(".")) if recursive else []
        for name in sorted(files):
            f = Path(here) / name
            if not name.startswith(".") and f.is_file() and _looks_like_image(f):
                found.append(f)
    return found


def _looks_like_image(f: Path) -> bool:
    if f.suffix.lower() in IMAGE_EXTENSIONS:
        return True
    # Image.open only reads the header; a huge image must count as an image,
    # not trip Pillow's bomb check
    with _pillow_limit_lifted(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            with PILImage.open(f):
                return True
        except (UnidentifiedImageError, *_DECODE_ERRORS):
            return False


def _has_magic(text: str) -> bool:
    return any(c in text for c in "*?[")


def _glob_root(pattern: str) -> Path:
    """The leading folders of a pattern that contain no wildcard."""
    parts = Path(pattern).parts
    fixed = []
    for part in parts[:-1]:
        if _has_magic(part):
            break
        fixed.append(part)
    return Path(*fixed) if fixed else Path()


def _relative_stem(f: Path, root: Path) -> Path:
    try:
        return f.relative_to(root).with_suffix("")
    except ValueError:  # a ".." in the pattern
        return Path(f.stem)


def _unique_stems(pairs: list[tuple[Path, Path]]) -> list[tuple[Path, Path]]:
    def key(stem: Path) -> str:
        return stem.as_posix().casefold()  # case-insensitive file systems

    counts = Counter(key(stem) for _, stem in pairs)
    taken = {key(stem) for _, stem in pairs if counts[key(stem)] == 1}
    out = []
    for f, stem in pairs:
        if counts[key(stem)] > 1:
            ext = f.suffix[1:].lower()
            base = stem.with_name(f"{stem.name}_{ext}") if ext else stem
            stem, n = base, 1
            while key(stem) in taken:
                n += 1
                stem = base.with_name(f"{base.name}_{n}")
            taken.add(key(stem))
        out.append((f, stem))
    return out


# --------------------------------------------------------------------------
# writing

_UNSAFE_CHARS = re.compile(r"[\x00-\x1f\x7f/\\:]")


def safe_component(name: str, fallback: str = "image") -> str:
    """Turn ``name`` into a safe single path component for an output folder.

    Separators, control characters and ``:`` become ``_``; names made only
    of dots (``.``, ``..``, ``...``) or nothing, and names a file system
    treats specially (trailing dots or spaces) are fixed, so that
    ``OUTPUT / safe_component(x)`` is always a child of ``OUTPUT``.

    Examples
    --------
    >>> safe_component(".."), safe_component("a/b"), safe_component(""), safe_component("photo")
    ('_..', 'a_b', 'image', 'photo')
    """
    text = _UNSAFE_CHARS.sub("_", os.fsdecode(name)).strip(" ")
    if not text:
        return fallback
    if set(text) == {"."}:
        return "_" + text
    return text


def inside(root: str | os.PathLike, path: str | os.PathLike) -> Path:
    """``path`` (relative to ``root`` or absolute) if it resolves inside ``root``, else a SegsoftError.

    Symbolic links are followed, so a link planted in the output folder
    cannot send a write elsewhere.

    Examples
    --------
    >>> str(inside("out", "out/a/b.png"))
    'out/a/b.png'
    >>> inside("out", "out/../x.png")
    Traceback (most recent call last):
    ...
    segsoft.errors.SegsoftError: out/../x.png: outside the output folder out
    """
    root_p, p = Path(os.fsdecode(root)), Path(os.fsdecode(path))
    real_root = os.path.realpath(root_p)
    real = os.path.realpath(p)
    if os.path.commonpath([real_root, real]) != real_root or real == real_root and p != root_p:
        raise SegsoftError(f"{p}: outside the output folder {root_p}")
    return p


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Write a file under a temporary name and move it into place at the end.

    The temporary file ``.<stem>.<random>.tmp<suffix>`` is created (empty) in
    the target's folder, which is created if needed; it keeps the target's
    suffix so that writers that go by it (``np.save``, Pillow) pick the right
    format. When the block ends normally it replaces the target in one step
    (``os.replace``); when it raises, the temporary file is removed and the
    target is left as it was. There is no ``fsync``: this protects against the
    process failing, not against the machine losing power.

    Parameters
    ----------
    path : str or os.PathLike
        The final file.

    Yields
    ------
    Path
        The temporary file to write to.

    Raises
    ------
    SegsoftError
        ``"<path>: cannot write (<reason>)"`` for an OSError while creating
        the folder or file, inside the block, or when moving it into place.

    Examples
    --------
    >>> import os, tempfile
    >>> with tempfile.TemporaryDirectory() as folder:
    ...     target = os.path.join(folder, "out", "p.npy")
    ...     with atomic_path(target) as tmp:
    ...         np.save(tmp, np.arange(3))
    ...     print(np.load(target), os.listdir(os.path.dirname(target)))
    [0 1 2] ['p.npy']
    """
    target = Path(os.fsdecode(path))
    tmp: Path | None = None
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = _create_temp(target)
        yield tmp
        os.replace(tmp, target)
        tmp = None
    except OSError as e:
        raise SegsoftError(f"{target}: cannot write ({_write_reason(target, e)})") from e
    finally:
        if tmp is not None:
            with suppress(OSError):
                tmp.unlink()


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` so that the file is either complete or untouched.

    Parameters
    ----------
    path : str or os.PathLike
        The final file; its folder is created if needed.
    data : bytes
        The whole content.

    Raises
    ------
    SegsoftError
        ``"<path>: cannot write (<reason>)"``.

    Examples
    --------
    >>> import os, tempfile
    >>> with tempfile.TemporaryDirectory() as folder:
    ...     target = os.path.join(folder, "a", "b.txt")
    ...     atomic_write_bytes(target, b"hello")
    ...     with open(target, "rb") as f:
    ...         print(f.read())
    b'hello'
    """
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def _create_temp(target: Path) -> Path:
    # os.open with 0o666 lets the umask set the permissions, as for a plain
    # open(); tempfile.mkstemp would make every output private (0o600)
    for _ in range(100):
        tmp = target.with_name(f".{target.stem}.{secrets.token_hex(4)}.tmp{target.suffix}")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        except FileExistsError:
            continue
        os.close(fd)
        return tmp
    raise FileExistsError(errno.EEXIST, "cannot create a temporary file", str(target.parent))


def _write_reason(target: Path, e: OSError) -> str:
    # mkdir under a regular file says "File exists"; name the culprit instead
    for parent in target.parents:
        if parent.exists() or parent.is_symlink():
            if not parent.is_dir():
                return f"{parent} is not a folder"
            break
    return _reason(e)
