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
unsigned integer of n     ``v / (2**n - 1)``: the type's full range,   n
bits (uint8 ... uint64)   so a dark picture stays dark whatever its
                          container
signed integer of n bits  ``(v - min) / (max - min)`` with the        n
(int8 ... int64)          type's ``iinfo`` min and max (0 -> ~0.5);
                          also every int32 TIFF, whatever its values
I from a source that      values all in 0..65535: ``/ 65535`` (16-bit  16 / 32
states no 32-bit type     data in Pillow's 32-bit container); else as
(16-bit PPM/PGM, PNG)     a signed 32-bit integer above
F (32-bit float), float   kept if the max is <= 1, else ``/ max``;      32
grey or colour TIFF of    negatives clipped to 0; NaN/inf rejected
any precision
float grey or colour      kept; up to FLOAT_SLACK (0.1) outside         32
array or .npy             [0, 1] clipped, further out an error (a
                          0-255 float array is refused, not clipped)
float multiband (any C    as stored (float32), no clipping or           32
but grey, RGB, RGBA;      scaling; a pixel with NaN/inf in any band
TIFF, .npy, array)        is masked out (nodata)
========================  ===========================================  =========

So ``bands`` are in [0, 1] for integer sources and for grey and colour
images, and "as stored" for float multiband data (reflectance in thousands,
NDVI in -1..1, temperatures, network features): the features standardise
each band, and the display composite ``pixels`` is stretched by percentiles
into [0, 1]. An image whose every pixel is NaN is "every pixel is
transparent".

The integer rules apply to integer TIFFs (Pillow reads signed 8-bit and
unsigned 32-bit grey samples with the wrong sign; they are reinterpreted
from the TIFF tags, and what Pillow cannot open goes to tifffile) and to
integer arrays given to :meth:`Image.from_array`. A file that states its
sample type (a TIFF's BitsPerSample and SampleFormat) is mapped by that
type's full range, so the scale of a picture never depends on its content:
one pixel at 65536 cannot re-scale the rest. The 16-bit exception for
32-bit data is made only for Pillow's mode ``I`` from sources that state no
32-bit type (a PPM/PGM with maxval <= 65535, a PNG), not for TIFFs and not
for arrays, whose dtype is taken at its word. Every result is monotone
in the source value and lies in [0, 1] (64-bit values are rounded to
float64 on the way). Complex samples are refused.

Only regular files (or links to them) are read: a FIFO, socket or device is
refused before it is opened, so that it cannot block. Warnings and log
messages of Pillow, libtiff and tifffile are kept off the terminal while a
file is read; what goes wrong is in the one-line error.

Pillow has no 16-bit RGB mode: 16-bit colour (and grey+alpha) PNGs are
decoded by ``imagecodecs`` (libpng) and keep every value; 16-bit colour
TIFFs are read with tifffile. A ``PIL.Image`` passed to :func:`as_image`
arrives as Pillow gives it (8-bit colour).

Bands, pages and frames
-----------------------
An :class:`Image` holds ``bands`` (float32 (H, W, C), what features are
made of) and ``pixels`` (float32 (H, W, 3), what people see). TIFFs other
than a plain grey/RGB(A) page are read with tifffile by the file's own axes
(``series[0].axes``): ``S`` (contiguous or planar samples), ``C`` (ImageJ
``channels=``, OME ``SizeC``) and the leading ``Q`` of a 3-D series are
bands; any other axis (T, Z, pages of a Pillow-written stack, ...) counts
frames. A 3-D array written by plain ``tifffile.imwrite(path, a)`` (no axes
metadata: tifffile's "shaped" description, series axes ``QYX``) is read
exactly as the same array from a ``.npy``: (H, W, C), whatever its size
(tifffile itself stores an array whose first axis is 3 or 4 as planar RGB
samples, series axes ``SYX``: that is read by those axes, channels first).
Write channels-first stacks with ``metadata={'axes': 'CYX'}`` or
``planarconfig='separate'`` (or as ImageJ/OME), which are read by their axes. ``.npy``/``.npz`` arrays are images too. A file of several frames
(also animated GIF, APNG, WebP) is never cut to its first one: without
``page`` it is an error naming the count (a single-page TIFF volume gives its
first slice, as before).
"""

from __future__ import annotations

import errno
import fnmatch
import hashlib
import logging
import os
import re
import secrets
import signal
import stat
import struct
import sys
import tempfile
import threading
import warnings
import zlib
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import MISSING, dataclass, fields, replace
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
from PIL import Image as PILImage
from PIL import UnidentifiedImageError

from .errors import SegsoftError

__all__ = [
    "DEFAULT_MAX_PIXELS",
    "ARRAY_EXTENSIONS",
    "IMAGE_EXTENSIONS",
    "Image",
    "as_image",
    "atomic_path",
    "atomic_write_bytes",
    "count_frames",
    "display_composite",
    "find_images",
    "inside",
    "read_frames",
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
#: NumPy arrays found in folders and patterns as images too (an (H, W) or (H, W, C) stack),
#: except the names segsoft itself writes into an output folder.
ARRAY_EXTENSIONS = frozenset({".npy", ".npz"})
# Float grey and colour arrays are taken to be in [0, 1]; what lies this far outside (the overshoot of a resampling
# filter) is clipped, anything beyond is refused: a 0-255 array clipped to [0, 1] would be read as a white picture.
FLOAT_SLACK = 0.1
_OUTPUT_ARRAYS = frozenset({"probabilities.npy", "regions.npy", "labels.npy"})

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
    """An image ready for segmentation: its bands, and a picture of it for people.

    Parameters
    ----------
    pixels : ndarray, float32, shape (H, W, 3)
        What a person sees, RGB in [0, 1], C-contiguous: the colour itself
        for colour sources, the grey band in three equal channels for grey
        ones, and a display composite (see :func:`display_composite`) for
        any other number of bands. Renderers and regions use it; features
        never do (they use ``bands``). An 8-bit RGB(A) file read by
        :func:`read_image` keeps its decoded samples instead and makes this
        array (the same values) when it is first asked for.
    mask : ndarray of bool, shape (H, W), or None
        True where the pixel is used (not transparent, and for float
        multiband data not NaN/inf in any band); None when all are.
    path : Path or None
        The file it was read from.
    bit_depth : int
        Bits per sample of integer sources (8, 16, 32 or 64; 16 for 32-bit
        data taken as 16-bit, see the module docstring), 32 for float ones.
        For 8, ``np.round(pixels * 255)`` gives back the source bytes exactly
        (offset by 128 for int8).
    mode : str
        The Pillow mode of the source, ``"tifffile:<dtype>"``, ``"npy"`` or
        ``"array"``.
    is_gray : bool
        The source had a single colour channel.
    bands : ndarray, float32, shape (H, W, C), or None
        The data the features are made of: for integer sources and colour
        or grey images each band mapped onto [0, 1] by its dtype; for float
        multiband sources (not grey, RGB or RGBA) the values as stored, not
        clipped or rescaled (samples of masked NaN/inf pixels are 0).
        None: derived from ``pixels`` (the same array for colour,
        a (H, W, 1) view of it for grey), so a photo costs no extra memory.
    band_names : tuple of str or None
        One name per band (None: ``("R", "G", "B")``, ``("gray",)`` or
        ``b0..b{C-1}``).
    is_color : bool or None
        The bands are a 3-channel colour image (None: ``bands`` is
        ``pixels``). Colour spaces (lab, rgb, hsv, gray) need it or a grey image.
    frame : int or None
        Which page or frame of a multi-frame file this is (None: the only one).
    source_stat : dict or None
        What identified the file when it was opened to be read: ``size``,
        ``mtime_ns``, ``ino`` and ``dev`` from ``fstat`` of the very handle
        the pixels came from (None: not read from a file). Compared with the
        file when outputs are written, it tells whether the bytes read are
        still the file's, which a stat taken later cannot.

    Examples
    --------
    >>> img = Image.from_array(np.zeros((2, 3), dtype=np.uint8))
    >>> img.height, img.width, img.n_pixels, img.n_used, img.is_gray, img.n_bands, img.band_names
    (2, 3, 6, 6, True, 1, ('gray',))
    >>> six = Image.from_array(np.zeros((2, 3, 6), dtype=np.uint16))
    >>> six.n_bands, six.is_color, six.pixels.shape, six.band_names[-1]
    (6, False, (2, 3, 3), 'b5')
    """

    pixels: np.ndarray
    mask: np.ndarray | None = None
    path: Path | None = None
    bit_depth: int = 8
    mode: str = "array"
    is_gray: bool = False
    bands: np.ndarray | None = None
    band_names: tuple[str, ...] | None = None
    is_color: bool | None = None
    frame: int | None = None
    source_stat: dict[str, int] | None = None

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
        if self.bands is None:
            # no copy: a colour photo's bands are its pixels, a grey one's the first channel
            self.bands = self.pixels[:, :, :1] if self.is_gray else self.pixels
            if self.is_color is None:
                self.is_color = not self.is_gray
        else:
            bands = np.asarray(self.bands)
            if bands.ndim == 2:
                bands = bands[:, :, None]
            if bands.ndim != 3 or bands.shape[:2] != self.pixels.shape[:2] or bands.dtype != np.float32:
                raise ValueError(
                    f"bands must be a float32 {self.pixels.shape[:2]} + (C,) array, got {bands.dtype} {bands.shape}"
                )
            self.bands = bands
            if self.is_color is None:
                self.is_color = bands is self.pixels
        if self.band_names is None:
            self.band_names = _default_band_names(self.n_bands, bool(self.is_color), self.is_gray)
        else:
            self.band_names = tuple(str(b) for b in self.band_names)
            if len(self.band_names) != self.n_bands:
                raise ValueError(f"{len(self.band_names)} band names for {self.n_bands} bands")

    @property
    def height(self) -> int:
        """Number of rows."""
        return int(self._shape[0])

    @property
    def width(self) -> int:
        """Number of columns."""
        return int(self._shape[1])

    @property
    def _shape(self) -> tuple[int, ...]:
        """(H, W, 3) of ``pixels``, without making them from the 8-bit samples."""
        p = self.__dict__.get("_pixels")
        if p is None:
            rgb8 = self.__dict__.get("_rgb8")
            if rgb8 is not None:
                return rgb8.shape
            p = self.pixels
        return p.shape

    @classmethod
    def _from_rgb8(cls, rgb8: np.ndarray, mask: np.ndarray | None, path: Path | None, mode: str) -> Image:
        """An 8-bit RGB image that keeps its decoded samples, uint8 (H, W, 3), and makes the float
        ``pixels`` (and so ``bands``) only when they are first asked for.

        The float values are ``rgb8 / 255`` in float32, exactly those the eager reader stores; until
        they are made, the exact fit on distinct colours and the pictures read the samples (3 bytes a
        pixel instead of 12) through :meth:`_rgb8_rows` and :meth:`_unit_window`. Once made, the
        samples are dropped, so changing ``pixels`` in place cannot leave stale samples behind.
        """
        img = cls.__new__(cls)
        for f in fields(cls):
            setattr(img, f.name, f.default if f.default is not MISSING else None)
        img._rgb8 = np.ascontiguousarray(rgb8, dtype=np.uint8)  # set first: the getters look at it
        img.mask = mask
        img.path = None if path is None else Path(path)
        img.bit_depth, img.mode, img.is_gray, img.is_color = 8, mode, False, True
        img.band_names = _default_band_names(3, True, False)
        if mask is not None:
            mask = np.asarray(mask)
            if mask.shape != rgb8.shape[:2] or mask.dtype != bool:
                raise ValueError(f"mask must be a bool {rgb8.shape[:2]} array, got {mask.dtype} {mask.shape}")
            img.mask = np.ascontiguousarray(mask)
        return img

    def _rgb8_rows(self) -> np.ndarray | None:
        """The 8-bit samples as (H * W, 3) uint8 while the float pixels are not made (see
        :meth:`_from_rgb8`), else None."""
        rgb8 = self.__dict__.get("_rgb8")
        return None if rgb8 is None else rgb8.reshape(-1, 3)

    def _unit_window(self, rows: slice, cols: slice) -> np.ndarray:
        """``pixels[rows, cols]``, float32, made from the 8-bit samples when the pixels are not made."""
        rgb8 = self.__dict__.get("_rgb8")
        if rgb8 is None:
            return self.pixels[rows, cols]
        return _UnitRows(rgb8)[rows, cols]

    def _unit_pixels(self) -> np.ndarray | _UnitRows:
        """``pixels``, or while 8-bit samples are kept the same (H, W, 3) values made from them as
        they are indexed (:class:`_UnitRows`), without the image-sized float array."""
        rgb8 = self.__dict__.get("_rgb8")
        return self.pixels if rgb8 is None else _UnitRows(rgb8)

    def _band_rows(self) -> np.ndarray | _UnitRows:
        """``bands.reshape(-1, C)``, or while 8-bit samples are kept, the same rows made from them
        as they are indexed (:class:`_UnitRows`), without the image-sized float array."""
        rgb8 = self._rgb8_rows()
        return self.bands.reshape(-1, self.n_bands) if rgb8 is None else _UnitRows(rgb8)

    @property
    def n_pixels(self) -> int:
        """``height * width``."""
        return self.height * self.width

    @property
    def n_used(self) -> int:
        """Number of pixels the mask keeps (all of them without a mask)."""
        return self.n_pixels if self.mask is None else int(np.count_nonzero(self.mask))

    @property
    def n_bands(self) -> int:
        """Number of bands C (3 for a colour photo, 1 for a grey one)."""
        if self.__dict__.get("_bands") is None and self.__dict__.get("_rgb8") is not None:
            return 3
        return int(self.bands.shape[2])

    def with_display(self, display_bands: Sequence[int]) -> Image:
        """A copy with another display composite in ``pixels``; the bands (and so the memberships) are unchanged.

        Parameters
        ----------
        display_bands : sequence of int
            One band (shown in grey) or three (red, green, blue), 0-based.

        Raises
        ------
        SegsoftError
            ``"--display-bands ..."`` for a wrong number of indices or one out of range.

        Examples
        --------
        >>> img = Image.from_array(np.random.default_rng(0).random((4, 4, 5)))
        >>> false = img.with_display([4, 3, 2])
        >>> false.bands is img.bands, false.is_color
        (True, False)
        """
        pixels = display_composite(self.bands, display_bands, self.mask)
        return replace(self, pixels=pixels, bands=self.bands, is_color=self.is_color)

    def __repr__(self) -> str:
        used = "" if self.mask is None else f", n_used={self.n_used}"
        bands = "" if self.is_color or self.is_gray else f", n_bands={self.n_bands}"
        frame = "" if self.frame is None else f", frame={self.frame}"
        return (
            f"Image({self.width}x{self.height}, mode={self.mode!r}, bit_depth={self.bit_depth}, "
            f"is_gray={self.is_gray}{bands}{used}{frame}, path={None if self.path is None else str(self.path)!r})"
        )

    @classmethod
    def from_array(cls, arr: np.ndarray, mask: np.ndarray | None = None) -> Image:
        """Wrap an in-memory array.

        Parameters
        ----------
        arr : array, shape (H, W) or (H, W, C), C >= 1
            Any integer dtype (its full range maps to [0, 1]: uint8 is
            divided by 255, uint16 by 65535, signed types are shifted by
            their minimum first; see the module docstring), bool, or float
            (grey, RGB and RGBA: in [0, 1]; values up to :data:`FLOAT_SLACK`
            outside it, a resampling filter's overshoot, are clipped, and
            anything further out, such as 0-255 floats, is an error).
            C = 1 is grey, 3 is RGB, 4 is RGBA (pixels where alpha maps to
            0 are masked out); any other C is a multiband image, shown
            through :func:`display_composite`, whose float values are kept
            as they are in ``bands`` and whose pixels with NaN or inf in
            any band are masked out.
        mask : array of bool, shape (H, W), optional
            Pixels to use; combined with the alpha channel.

        Returns
        -------
        Image
            With ``mode="array"`` and ``path=None``.

        Raises
        ------
        SegsoftError
            For an unsupported dtype (complex, object, ...) or shape, NaN or
            infinite values in a grey or colour image, float grey or colour
            values outside [0, 1], no pixels, or no pixel left to use.

        Examples
        --------
        >>> rgba = np.full((2, 2, 4), 255, dtype=np.uint8)
        >>> rgba[0, 0, 3] = 0
        >>> img = Image.from_array(rgba)
        >>> img.bit_depth, img.n_used, img.mask.tolist()
        (8, 3, [[False, True], [True, True]])
        >>> Image.from_array(np.array([[-128, 127]], np.int8)).pixels[0, :, 0].tolist()
        [0.0, 1.0]
        """
        return _array_image(arr, mask)


class _UnitRows:
    """Float32 values made from 8-bit samples as they are indexed: what the float pixels would give
    at ``key`` (``v / 255`` in float32, exactly the reader's values), without the whole float array."""

    def __init__(self, samples: np.ndarray) -> None:
        self._samples = samples
        self.shape = samples.shape
        self.dtype = np.dtype(np.float32)

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, key: Any) -> np.ndarray:
        return np.divide(self._samples[key], np.float32(255.0), dtype=np.float32)


_MAKE_PIXELS = threading.Lock()  # one thread makes the float pixels of an 8-bit image, the others wait for them


def _get_pixels(self: Image) -> np.ndarray:
    p = self.__dict__.get("_pixels")
    if p is None and self.__dict__.get("_rgb8") is not None:
        with _MAKE_PIXELS:
            p = self.__dict__.get("_pixels")
            if p is None:
                p = _unit_rgb(self._rgb8)
                self._pixels = p
                if self.__dict__.get("_bands") is None:
                    self._bands = p  # a colour image's bands are its pixels, as in __post_init__
                self._rgb8 = None
    return p


def _set_pixels(self: Image, value: np.ndarray) -> None:
    if self.__dict__.get("_rgb8") is not None and self.__dict__.get("_bands") is None:
        self.pixels  # noqa: B018 - new pixels on an image whose bands are its pixels: the bands stay the old ones
    self._rgb8 = None
    self._pixels = value


def _get_bands(self: Image) -> np.ndarray | None:
    b = self.__dict__.get("_bands")
    if b is None and self.__dict__.get("_rgb8") is not None:
        self.pixels  # noqa: B018 - makes the pixels, which are the bands
        b = self._bands
    return b


def _set_bands(self: Image, value: np.ndarray | None) -> None:
    self._bands = value


# Properties over the dataclass fields: an 8-bit RGB image read from a file makes its float32
# pixels (12 bytes a pixel) only if something asks for them (see Image._from_rgb8).
Image.pixels = property(_get_pixels, _set_pixels, doc="float32 (H, W, 3) RGB in [0, 1]; see the class docstring.")  # type: ignore[assignment]
Image.bands = property(_get_bands, _set_bands, doc="float32 (H, W, C), the data the features are made of.")  # type: ignore[assignment]


def _default_band_names(n: int, color: bool, gray: bool) -> tuple[str, ...]:
    if color and n == 3:
        return ("R", "G", "B")
    if gray and n == 1:
        return ("gray",)
    return tuple(f"b{i}" for i in range(n))


def _image_name(image: Image) -> str:
    return "array" if image.path is None else str(image.path)


_DISPLAY_SAMPLE = 1 << 18  # pixels the display percentiles are taken from


def display_composite(
    bands: np.ndarray,
    display_bands: Sequence[int] | None = None,
    mask: np.ndarray | None = None,
) -> np.ndarray:
    """A picture of a multiband image for people: float32 (H, W, 3) in [0, 1].

    Each chosen band is stretched linearly so that its 2 % and 98 %
    percentiles (over the used pixels) go to 0 and 1, clipped; a band with
    no spread there is shown as its own values. For display only: features
    are made of the bands, never of this.

    Parameters
    ----------
    bands : ndarray, shape (H, W, C)
    display_bands : sequence of int, optional
        One index (grey) or three (red, green, blue). Default: bands 0, 1, 2,
        or band 0 in grey when C < 3.
    mask : ndarray of bool, shape (H, W), optional
        The used pixels, which alone set the percentiles.

    Raises
    ------
    SegsoftError
        ``--display-bands`` of the wrong length (not 1 or 3) or with an index
        outside 0..C-1.

    Examples
    --------
    >>> b = np.linspace(0, 1, 2 * 50 * 4, dtype=np.float32).reshape(2, 50, 4)
    >>> display_composite(b, [3]).shape, float(display_composite(b).max())
    ((2, 50, 3), 1.0)
    """
    bands = np.asarray(bands)
    if bands.ndim == 2:
        bands = bands[:, :, None]
    c = bands.shape[2]
    if display_bands is None:
        chosen = [0, 1, 2] if c >= 3 else [0]
    else:
        try:
            chosen = [int(i) for i in display_bands]
        except (TypeError, ValueError):
            raise SegsoftError(f"--display-bands must be whole band numbers, got {display_bands!r}") from None
        if len(chosen) not in (1, 3):
            raise SegsoftError(
                f"--display-bands needs 1 band (grey) or 3 (red, green, blue), got {len(chosen)}: "
                + ",".join(map(str, chosen))
            )
        bad = [i for i in chosen if not 0 <= i < c]
        if bad:
            raise SegsoftError(f"--display-bands {bad[0]} is out of range: the image has {c} bands (0-{c - 1})")
    h, w = bands.shape[:2]
    flat = bands.reshape(-1, c)
    rows = None if mask is None else np.flatnonzero(np.asarray(mask).ravel())
    n = flat.shape[0] if rows is None else rows.size
    step = max(1, n // _DISPLAY_SAMPLE)  # percentiles of a strided sample: a quarter megapixel is plenty
    out = np.empty((h, w, 3), dtype=np.float32)
    planes = []
    for i in dict.fromkeys(chosen):
        col = flat[:, i]
        sample = col[::step] if rows is None else col[rows[::step]]
        lo, hi = np.percentile(sample, (2, 98)) if sample.size else (0.0, 1.0)
        plane = bands[:, :, i].astype(np.float32)
        if hi > lo:
            plane = (plane - np.float32(lo)) * np.float32(1.0 / (hi - lo))
        planes.append((i, np.clip(plane, 0.0, 1.0)))
    lookup = dict(planes)
    for j, i in enumerate(chosen * 3 if len(chosen) == 1 else chosen):
        out[:, :, j] = lookup[i]
    return out


def _array_image(
    arr: np.ndarray,
    mask: np.ndarray | None = None,
    name: str | None = None,
    sixteen_in_32: bool = False,
    kind: str | None = None,
    band_names: Sequence[str] | None = None,
) -> Image:
    """:meth:`Image.from_array`, with errors that start with ``name`` when the array comes from a file.

    ``sixteen_in_32`` takes int32 data whose values all lie in 0..65535 as
    16-bit (the rule for Pillow's mode I from a file that states no 32-bit
    type, see the module docstring). ``kind`` says what
    the last axis is when the caller knows better than its length: "gray",
    "gray+alpha", "rgb", "rgba" or "bands" (a 3-channel fluorescence TIFF is
    bands, not colour); None goes by C as :meth:`Image.from_array` says.
    """
    where = "array" if name is None else f"{name}:"
    a = np.asarray(arr)
    if a.ndim == 2:
        a = a[:, :, None]
    elif a.ndim != 3 or a.shape[2] < 1:
        if name is None:
            raise SegsoftError(f"array of shape {a.shape} is not an image (expected (H, W) or (H, W, C))")
        raise SegsoftError(f"{name}: samples of shape {a.shape} are not an image segsoft can use")
    channels = a.shape[2]
    if kind is None:
        kind = {1: "gray", 3: "rgb", 4: "rgba"}.get(channels, "bands")
    if a.shape[0] == 0 or a.shape[1] == 0:
        raise SegsoftError(f"{where} of shape {a.shape} has no pixels" if name is None else f"{name}: no pixels")
    nodata = None
    if a.dtype.kind == "f":
        finite = np.isfinite(a)
        if kind == "bands":
            # multiband floats are kept as stored; a pixel with NaN/inf in any band is nodata, masked out
            if not finite.all():
                nodata = finite.all(axis=2)
                a = np.where(finite, a, 0)  # finite everywhere, so nothing downstream meets a NaN
            cast = a.astype(np.float32)
            if not np.isfinite(cast).all():
                raise SegsoftError(f"{where} has values beyond the float32 range")
            a = cast
        elif not finite.all():
            raise SegsoftError(f"{where} contains NaN or infinite values")
        elif a.size:
            lo, hi = float(a.min()), float(a.max())
            if lo < -FLOAT_SLACK or hi > 1 + FLOAT_SLACK:
                # clipping would keep a 0-255 picture as a white one: a wrong answer with no sign of it
                what = "grey" if kind.startswith("gray") else "colour"
                raise SegsoftError(
                    f"{where if name else 'array:'} float {what} values must lie in [0, 1], these span "
                    f"{lo:.4g} to {hi:.4g} (divide 0-255 data by 255, or give it as uint8)"
                )
        bit_depth = 32
    elif a.dtype.kind in "biu":
        a, bit_depth = _int_unit(a, sixteen_in_32)
    elif name is None:
        raise SegsoftError(f"unsupported array dtype {a.dtype} (use an integer, bool or float dtype)")
    else:
        raise SegsoftError(f"{name}: unsupported sample type {a.dtype}")

    alpha = None
    if kind in ("rgba", "gray+alpha"):
        # after the scaling, so that "transparent" is where alpha maps to 0 for every dtype
        alpha = a[:, :, -1] > 0
        a = a[:, :, :-1]
    if kind in ("gray", "gray+alpha"):
        a = a[:, :, 0]
    if mask is not None:
        m = np.asarray(mask)
        if m.shape != a.shape[:2]:
            what = "mask" if name is None else f"{name}: mask"
            raise SegsoftError(f"{what} of shape {m.shape} does not match the image's {a.shape[:2]}")
        m = m.astype(bool)
        alpha = m if alpha is None else alpha & m
    if nodata is not None:
        alpha = nodata if alpha is None else alpha & nodata
    used = _finish_mask(alpha, name or "array")
    gray = kind in ("gray", "gray+alpha")
    names = None if band_names is None else tuple(band_names)
    if kind == "bands":
        bands = _unit_bands(a)
        pixels = display_composite(bands, None, used)
        return Image(pixels, used, None, bit_depth, "array", False, bands, names, False)
    return Image(_unit_rgb(a), used, None, bit_depth, "array", gray, None, names)


def _too_many(name: str, w: int, h: int, max_pixels: int) -> str:
    return (
        f"{name}: {w}x{h} = {h * w} pixels exceeds the limit of {max_pixels} "
        "(use --max-pixels to raise it, or --scheduler local to segment it tile by tile)"
    )


def _unit_bands(a: np.ndarray) -> np.ndarray:
    """(H, W, C) uint8/uint16/float array -> C-contiguous float32 (H, W, C).

    Integers are mapped to [0, 1]; floats (multiband data as stored: reflectance,
    indices, temperatures, ...) keep their values.
    """
    if a.dtype == np.uint8:
        return np.divide(a, np.float32(255.0), dtype=np.float32)  # correctly rounded, as _unit_rgb
    if a.dtype == np.uint16:
        out = a.astype(np.float32)
        out /= np.float32(65535)
        return out
    if a.dtype.kind == "f":
        return np.ascontiguousarray(a, dtype=np.float32)
    return np.ascontiguousarray(np.clip(a, 0.0, 1.0), dtype=np.float32)


def _int_unit(a: np.ndarray, sixteen_in_32: bool = False) -> tuple[np.ndarray, int]:
    """An integer or bool array mapped as the module docstring says, and its bit depth.

    Returns uint8 or uint16 (which :func:`_unit_rgb` divides by 255 or 65535)
    or float32 in [0, 1], same shape.
    """
    if a.dtype.kind == "b":
        return a.astype(np.uint8) * np.uint8(255), 8  # an 8-bit black-and-white image
    bits = 8 * a.dtype.itemsize
    a = a.astype(a.dtype.newbyteorder("="), copy=False)  # the views below need native byte order
    if a.dtype.kind == "i":
        if sixteen_in_32 and bits == 32 and a.size and int(a.min()) >= 0 and int(a.max()) <= 65535:
            return a.astype(np.uint16), 16
        # flipping the sign bit gives v - iinfo.min in the unsigned type of the
        # same size: exact, and no overflow as in a plain subtraction
        unsigned = np.dtype(f"u{a.dtype.itemsize}")
        a = a.view(unsigned) ^ np.array(1 << (bits - 1), dtype=unsigned)
    if bits <= 16:
        return a, bits
    # float64 holds every uint32 exactly and rounds uint64 monotonically; done
    # in slices so that a large image needs no full-size float64 copy
    top = float(2**bits - 1)
    flat = a.reshape(-1)
    out = np.empty(flat.shape, dtype=np.float32)
    step = 1 << 22
    for start in range(0, flat.size, step):
        v = flat[start : start + step].astype(np.float64)
        v /= top
        np.clip(v, 0.0, 1.0, out=v)
        out[start : start + step] = v
    return out.reshape(a.shape), bits


# --------------------------------------------------------------------------
# reading


def read_image(path: str | os.PathLike, max_pixels: int | None = DEFAULT_MAX_PIXELS, page: int | None = None) -> Image:
    """Read an image file with Pillow.

    The EXIF orientation is applied, transparency (an alpha channel or a
    palette/tRNS transparent colour) becomes the mask, and every mode is
    scaled to float RGB in [0, 1] as listed in the module docstring.

    Parameters
    ----------
    path : str or os.PathLike
        The file: anything Pillow reads, a TIFF of any number of bands
        (read with tifffile by its axes metadata: ``YXS``, ``SYX``, ``CYX``,
        ``QYX``, ImageJ hyperstacks, OME-TIFF), or a ``.npy``/``.npz`` array
        of shape (H, W) or (H, W, C).
    page : int or None
        Which page or frame of a multi-frame file to read (0-based). A file
        with several (an animated GIF/APNG/WebP, a TIFF stack whose pages
        are not channels) is never cut to its first one: without ``page``
        it is an error that says how many there are. Pages the metadata
        calls channels are bands, not frames.
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
        directory, not a regular file (a FIFO, socket or device, refused
        before it is opened), permission denied, empty file, not an image
        (naming the format when it is a known one segsoft cannot read, such
        as HEIC, SVG or PDF, or a text file), truncated or corrupt data, too
        many pixels, no pixels, NaN/inf values in a float image, or every
        pixel transparent.

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
        if is_zarr_store(p):
            return _read_zarr(p, name, max_pixels, page)
        raise SegsoftError(f"{name}: is a directory, not an image")
    if not stat.S_ISREG(st.st_mode):
        # opening a FIFO blocks until a writer comes, reading /dev/zero never ends
        raise SegsoftError(f"{name}: not a regular file ({_file_kind(st.st_mode)})")
    if st.st_size == 0:
        raise SegsoftError(f"{name}: empty file")

    with _quiet(), _pillow_limit_lifted(), _open_regular(p, name) as f:
        # taken from the handle, before any byte is read: a file swapped or rewritten
        # while it is being read then differs from this when the outputs are written
        opened = os.fstat(f.fileno())
        image = _read_handle(f, p, name, max_pixels, page)
    image.source_stat = {
        "size": opened.st_size,
        "mtime_ns": opened.st_mtime_ns,
        "ino": opened.st_ino,
        "dev": opened.st_dev,
    }
    return image


def _read_handle(f: BinaryIO, p: Path, name: str, max_pixels: int | None, page: int | None) -> Image:
    """The image in the open regular file ``f`` (see :func:`read_image`)."""
    head = f.read(_HEAD_BYTES)
    f.seek(0)
    if head.startswith(b"\x93NUMPY") or (head.startswith(b"PK\x03\x04") and p.suffix.lower() == ".npz"):
        return _read_numpy(f, head, p, name, max_pixels, page)
    if _is_tiff(head):
        plan = _tiff_plan(f, name)
        f.seek(0)
        if plan != "pillow":
            return _read_tiff(f, p, name, max_pixels, page)
    try:
        pil = PILImage.open(f)
    except UnidentifiedImageError:
        if _is_tiff(head):
            f.seek(0)
            return _read_tiff(f, p, name, max_pixels, page)
        damage = _damaged(f, head)
        if damage is not None:
            raise SegsoftError(f"{name}: {damage}") from None
        raise SegsoftError(f"{name}: {_not_an_image(head, p.suffix)}") from None
    except PermissionError:
        raise SegsoftError(f"{name}: permission denied") from None
    except _DECODE_ERRORS as e:
        raise SegsoftError(f"{name}: truncated or corrupt image data ({_reason(e)})") from None
    with pil:
        frames = _pil_frames(pil)
        index = _choose_frame(name, frames, page)
        if index:
            try:
                pil.seek(index)
            except _DECODE_ERRORS as e:
                raise SegsoftError(f"{name}: truncated or corrupt image data ({_reason(e)})") from None
        wide = None
        if index == 0 and _png16_colour(head):
            f.seek(0)
            wide = f.read()  # the file again, for a decoder that keeps 16 bits per channel
        image = _from_pil(pil, name, p, max_pixels, wide=wide)
        if frames > 1:
            image.frame = index
        return image


def _pil_frames(pil: PILImage.Image) -> int:
    try:
        return max(1, int(getattr(pil, "n_frames", 1) or 1))
    except _DECODE_ERRORS:
        return 1


def _choose_frame(name: str, frames: int, page: int | None) -> int:
    """The frame to read: ``page``, or the only one; an error names the count and ``--page``."""
    if page is None:
        if frames > 1:
            raise SegsoftError(
                f"{name}: has {frames} frames; choose one with --page N (0-{frames - 1}), "
                "or segment every frame with segsoft batch --frames"
            )
        return 0
    if isinstance(page, bool) or not isinstance(page, (int, np.integer)) or page < 0:
        raise SegsoftError(f"--page must be a whole number >= 0, got {page!r}")
    if page >= frames:
        last = "it has only 1 frame (--page 0)" if frames == 1 else f"it has {frames} frames (--page 0-{frames - 1})"
        raise SegsoftError(f"{name}: --page {page} is past the last page: {last}")
    return int(page)


def _png16_colour(head: bytes) -> bool:
    """A PNG of 16-bit colour, grey+alpha or colour+alpha, which Pillow would cut to 8 bits."""
    return (
        head[:8] == b"\x89PNG\r\n\x1a\n"
        and head[12:16] == b"IHDR"
        and len(head) > 25
        and head[24] == 16
        and head[25] in (2, 4, 6)
    )


def count_frames(path: str | os.PathLike) -> int:
    """Number of pages or frames :func:`read_image` can be asked for with ``page``.

    Channels are not frames: a 6-channel OME-TIFF counts 1, a 5-frame GIF 5.

    Examples
    --------
    >>> import os, tempfile
    >>> from PIL import Image as PILImage
    >>> with tempfile.TemporaryDirectory() as folder:
    ...     name = os.path.join(folder, "a.gif")
    ...     frames = [PILImage.new("L", (4, 4), v) for v in (0, 100, 200)]
    ...     frames[0].save(name, save_all=True, append_images=frames[1:])
    ...     count_frames(name)
    3
    """
    name = os.fsdecode(path)
    try:
        read_image(name, max_pixels=1, page=1 << 62)
    except SegsoftError as e:
        found = _FRAMES_IN_ERROR.search(str(e))
        if found:
            return int(found.group(1) or 1)
        raise
    raise AssertionError("unreachable")  # pragma: no cover


# _choose_frame's message, and the only way a page that large can end; read_image checks the page
# before the pixel limit and before decoding, so counting costs a header read
_FRAMES_IN_ERROR = re.compile(r"is past the last page: it has (?:only 1 frame|(\d+) frames)")


def read_frames(path: str | os.PathLike, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> Iterator[Image]:
    """Every page or frame of a file, in order, as :class:`Image` objects with ``frame`` set.

    For ``segsoft batch --frames``. A single-frame file yields one image
    (``frame`` 0).

    Examples
    --------
    >>> import os, tempfile
    >>> from PIL import Image as PILImage
    >>> with tempfile.TemporaryDirectory() as folder:
    ...     name = os.path.join(folder, "a.gif")
    ...     frames = [PILImage.new("L", (4, 4), v) for v in (0, 100, 200)]
    ...     frames[0].save(name, save_all=True, append_images=frames[1:])
    ...     [(img.frame, round(float(img.pixels[0, 0, 0]), 2)) for img in read_frames(name)]
    [(0, 0.0), (1, 0.39), (2, 0.78)]
    """
    for i in range(count_frames(path)):
        image = read_image(path, max_pixels=max_pixels, page=i)
        image.frame = i
        yield image


_HEAD_BYTES = 4096


def _file_kind(mode: int) -> str:
    if stat.S_ISFIFO(mode):
        return "a FIFO"
    if stat.S_ISSOCK(mode):
        return "a socket"
    if stat.S_ISCHR(mode):
        return "a character device"
    if stat.S_ISBLK(mode):
        return "a block device"
    return "an unusual kind of file"


def _open_regular(p: Path, name: str) -> BinaryIO:
    """Open ``p`` for reading, refusing anything but a regular file.

    ``O_NONBLOCK`` makes the open itself return at once even if ``p`` was
    swapped for a FIFO after the caller's stat; the fstat then refuses it.
    """
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0) | getattr(os, "O_BINARY", 0)
    try:
        fd = os.open(p, flags)
    except (FileNotFoundError, NotADirectoryError):
        raise SegsoftError(f"{name}: no such file") from None
    except PermissionError:
        raise SegsoftError(f"{name}: permission denied") from None
    except OSError as e:
        raise SegsoftError(f"{name}: cannot read ({_reason(e)})") from None
    try:
        mode = os.fstat(fd).st_mode
        if stat.S_ISDIR(mode):
            raise SegsoftError(f"{name}: is a directory, not an image")
        if not stat.S_ISREG(mode):
            raise SegsoftError(f"{name}: not a regular file ({_file_kind(mode)})")
        with suppress(OSError, AttributeError):
            os.set_blocking(fd, True)  # no effect on a regular file; for tidiness
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def _is_tiff(head: bytes) -> bool:
    return head[:4] in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")


# Formats Pillow cannot read, recognised by their first bytes so that the
# error can say what the file is
_SIGNATURES = (
    (b"%PDF-", "PDF documents are not supported"),
    (b"%!PS", "PostScript/EPS files are not supported"),
    (b"\xc5\xd0\xd3\xc6", "PostScript/EPS files are not supported"),
    (b"\xff\x0a", "JPEG XL images are not supported"),
    (b"\x00\x00\x00\x0cJXL \r\n\x87\n", "JPEG XL images are not supported"),
    (b"v/1\x01", "OpenEXR images are not supported"),
    (b"gimp xcf", "GIMP XCF images are not supported"),
    (b"8BPS\x00\x02", "Photoshop PSB images are not supported"),
)
_FTYP_BRANDS = {
    **dict.fromkeys((b"heic", b"heix", b"heim", b"heis", b"hevc", b"hevx", b"hevm", b"hevs"), "HEIC"),
    **dict.fromkeys((b"mif1", b"msf1"), "HEIF"),
    **dict.fromkeys((b"avif", b"avis"), "AVIF"),
    b"crx ": "Canon CR3 raw",
    b"jxl ": "JPEG XL",
}
_VIDEO_BRANDS = frozenset({b"isom", b"iso2", b"mp41", b"mp42", b"M4V ", b"qt  ", b"3gp4", b"3gp5", b"3g2a", b"avc1"})
_EXTENSION_KINDS = {
    ".heic": "HEIC",
    ".heif": "HEIF",
    ".avif": "AVIF",
    ".svg": "SVG",
    ".svgz": "SVG",
    ".pdf": "PDF",
    ".eps": "PostScript/EPS",
    ".ps": "PostScript/EPS",
    ".jxl": "JPEG XL",
    ".exr": "OpenEXR",
    ".xcf": "GIMP XCF",
    **dict.fromkeys((".cr2", ".cr3", ".nef", ".arw", ".orf", ".rw2", ".raf", ".dng", ".raw"), "camera raw"),
}
_CONVERT = " (convert to PNG or TIFF)"
_NOT_IMAGE = "not an image (Pillow cannot identify it)"


def _not_an_image(head: bytes, suffix: str) -> str:
    """Why a file Pillow cannot identify is not an image, from its first bytes and extension."""
    if head[4:8] == b"ftyp":
        size = int.from_bytes(head[:4], "big")
        brands = [head[8:12]] + [head[i : i + 4] for i in range(16, min(size, len(head)) - 3, 4)]
        for brand in brands:
            if brand in _FTYP_BRANDS:
                kind = _FTYP_BRANDS[brand]
                if kind == "HEIF" and suffix.lower() == ".heic":
                    kind = "HEIC"
                return f"{kind} images are not supported{_CONVERT}"
        if any(brand in _VIDEO_BRANDS for brand in brands):
            return f"{_NOT_IMAGE}: it is a video"
    for magic, message in _SIGNATURES:
        if head.startswith(magic):
            return message + _CONVERT
    if head.startswith(b"PK\x03\x04"):
        return f"{_NOT_IMAGE}: it is a ZIP archive (or a document in one)"
    if head.startswith(b"\x1f\x8b"):
        return f"{_NOT_IMAGE}: it is gzip-compressed"
    text = _as_text(head)
    if text is not None:
        start = text.lstrip("\ufeff \t\r\n").lower()
        if "<svg" in start[:2000] and (start.startswith("<?xml") or start.startswith("<svg") or start.startswith("<!")):
            return f"SVG images are not supported{_CONVERT}"
        if start.startswith(("<!doctype html", "<html")):
            return f"{_NOT_IMAGE}: it is an HTML page"
        if suffix.lower() not in _EXTENSION_KINDS:
            return f"{_NOT_IMAGE}: it is a text file"
    kind = _EXTENSION_KINDS.get(suffix.lower())
    if kind is not None:
        return f"{kind} files are not supported{_CONVERT}"
    return _NOT_IMAGE


# Formats Pillow reads, by their first bytes: a file that starts like one of
# them but that Pillow cannot identify is a damaged picture, not "not an image"
_READABLE_MAGIC = (
    (lambda h: h.startswith(b"\x89PNG\r\n\x1a\n"), "PNG"),
    (lambda h: h.startswith(b"\xff\xd8\xff"), "JPEG"),
    (lambda h: h[:6] in (b"GIF87a", b"GIF89a"), "GIF"),
    (lambda h: h[:4] == b"RIFF" and h[8:12] == b"WEBP", "WEBP"),
    # "BM" alone starts ordinary text too; a real header has zero reserved bytes
    (lambda h: h[:2] == b"BM" and len(h) >= 14 and h[6:10] == b"\x00\x00\x00\x00", "BMP"),
)
# Reasons that tell a user nothing, so the generic one is given instead: what a plugin says when it does not
# recognise the data at all, and struct's "unpack_from requires a buffer of at least 2 bytes ..." (Python's own
# text for a header cut short)
_VAGUE = re.compile(r"not identified by this driver|^not an? \w+ file$|unpack(_from)? requires", re.IGNORECASE)


def _damaged(f: BinaryIO, head: bytes) -> str | None:
    """``"truncated or corrupt PNG data (<reason>)"`` when ``head`` starts like a format Pillow reads, else None.

    :func:`PIL.Image.open` tries every plugin and reports only that none
    identified the file; opening it with the one plugin its magic bytes name
    gives that plugin's own reason ("broken PNG file (bad header checksum in
    b'IHDR')").
    """
    fmt = next((kind for matches, kind in _READABLE_MAGIC if matches(head)), None)
    if fmt is None:
        return None
    label = "WebP" if fmt == "WEBP" else fmt
    reason = "the file ends early or its header is damaged"
    PILImage.init()  # the plugins register themselves lazily
    opener = PILImage.OPEN.get(fmt)
    if opener is not None:
        try:
            f.seek(0)
            opener[0](f).close()
        except _DECODE_ERRORS as e:
            text = _reason(e)
            if not _VAGUE.search(text):
                reason = text
        except Exception as e:  # noqa: BLE001 - only the reason is wanted; the file is damaged either way
            reason = f"{reason}; {type(e).__name__}"
    return f"truncated or corrupt {label} data ({reason})"


def _as_text(head: bytes) -> str | None:
    """``head`` decoded if it looks like the start of a UTF-8 text file, else None."""
    if b"\x00" in head:
        return None
    for cut in range(4):  # the read may have split a multi-byte character
        try:
            text = head[: len(head) - cut].decode("utf-8")
            break
        except UnicodeDecodeError:
            continue
    else:
        return None
    return text if all(c.isprintable() or c in "\t\n\r\f\v\ufeff" for c in text) else None


def _tiff_plan(f: BinaryIO, name: str) -> str:
    """ "pillow" for the TIFFs Pillow reads right (one plain grey, grey+alpha, RGB or RGBA page of
    at most 8 bits per colour sample, or a single-page volume), else "tifffile".

    Pillow reads the first page and at most 4 samples, so stacks, channels, planar multiband
    and 16-bit colour go to tifffile, which knows the file's axes. A file tifffile cannot parse
    goes to Pillow, whose errors name the damage as before.
    """
    try:
        import tifffile

        with tifffile.TiffFile(tifffile.FileHandle(f, name=Path(name).name)) as tif:
            if len(tif.series) != 1 or len(tif.pages) != 1:
                return "tifffile"
            page = tif.pages[0]
            axes = tif.series[0].axes
            samples = int(page.samplesperpixel)
            bits = int(page.bitspersample)
            if tif.is_ome or tif.is_imagej and axes not in ("YX", "YXS"):
                return "tifffile"
            if axes not in ("YX", "YXS") and int(getattr(page, "imagedepth", 1) or 1) <= 1:
                return "tifffile"
            if samples > 4 or (samples >= 3 and bits > 8):
                return "tifffile"
            return "pillow"
    except Exception:  # noqa: BLE001 - a TIFF tifffile cannot parse: let Pillow say what is wrong
        return "pillow"


_CHANNEL_AXES = ("C", "S")


def _tiff_channel_names(tif: Any, count: int, axis: str) -> tuple[str, ...] | None:
    """Channel names from OME-XML (``Channel Name=``) or ImageJ ``Labels``, when there is one per band."""
    if axis != "C":
        return None
    names: list[str] = []
    if tif.is_ome and tif.ome_metadata:
        names = re.findall(r'<Channel\b[^>]*?\bName="([^"]*)"', tif.ome_metadata)
    elif tif.is_imagej and tif.imagej_metadata:
        labels = tif.imagej_metadata.get("Labels")
        if isinstance(labels, (list, tuple)):
            names = [str(v) for v in labels]
    names = [n.strip() for n in names]
    if len(names) == count and all(names) and len(set(names)) == count:
        return tuple(names)
    return None


def _read_tiff(f: BinaryIO, path: Path, name: str, max_pixels: int | None, page: int | None = None) -> Image:
    """A TIFF read with tifffile by its own axes metadata (tifffile's ``series[0].axes``).

    ``Y`` and ``X`` are the rows and columns; ``S`` (samples, contiguous or
    planar alike), ``C`` (channels: ImageJ ``channels=``, OME ``SizeC``)
    and a leading ``Q`` of a 3-D series that is not tifffile's own "shaped"
    one are bands (a shaped ``QYX`` series, from a plain
    ``tifffile.imwrite(path, a)``, is ``a`` as numpy holds it: (H, W, C)); every other axis (T, Z, I, ...) counts
    frames, chosen with ``page``. A single-page volume gives its first
    slice, as before. Each further series of the file is more frames.
    """
    try:
        import tifffile

        with tifffile.TiffFile(tifffile.FileHandle(f, name=path.name)) as tif:
            if not len(tif.pages):
                raise SegsoftError(f"{name}: truncated or corrupt TIFF (no image in it)")
            plans = []
            for s in tif.series:
                axes, shape = s.axes, tuple(int(n) for n in s.shape)
                if "Y" not in axes or "X" not in axes:
                    raise SegsoftError(f"{name}: a TIFF series with axes {axes} has no rows and columns")
                if tif.is_shaped and axes == "QYX":
                    # tifffile.imwrite(path, 3-D array) with no axes metadata stores shape[0] pages and says
                    # only "QYX"; the shape is the numpy array's own, read as a .npy would be: (H, W, C)
                    axes = "YXS"
                band = [i for i, a in enumerate(axes) if a in _CHANNEL_AXES]
                if len(axes) == 3 and axes[0] == "Q" and not band:
                    band = [0]
                frame = [i for i, a in enumerate(axes) if a not in "YX" and i not in band]
                plans.append((s, axes, shape, band, frame, int(np.prod([shape[i] for i in frame], dtype=np.int64))))
            first = plans[0]
            volume = len(tif.pages) == 1 and len(plans) == 1 and first[5] > 1
            frames = 1 if volume else sum(p[5] for p in plans)
            index = _choose_frame(name, frames, page)
            for plan in plans:
                if index < plan[5]:
                    break
                index -= plan[5]
            s, axes, shape, band, frame, _ = plan
            h, w = shape[axes.index("Y")], shape[axes.index("X")]
            if max_pixels is not None and h * w > max_pixels:
                raise SegsoftError(_too_many(name, w, h, max_pixels))
            p0 = s.pages[0] if s.pages and s.pages[0] is not None else tif.pages[0]
            arr = s.asarray()
            # frames first, then rows, columns and the bands (C before S: channels of RGB samples)
            order = frame + [axes.index("Y"), axes.index("X")] + band
            arr = np.transpose(arr, order).reshape(-1, h, w, int(np.prod([shape[i] for i in band], dtype=np.int64)))
            arr = arr[index]
            photometric = int(getattr(p0, "photometric", 1))
            extras = tuple(int(e) for e in (getattr(p0, "extrasamples", None) or ()))
            band_axes = "".join(axes[i] for i in band)
            names = _tiff_channel_names(tif, arr.shape[2], band_axes) if band_axes == "C" else None
    except SegsoftError:
        raise
    except MemoryError:
        raise
    except Exception as e:  # noqa: BLE001 - tifffile raises many kinds on bad data
        # the caller saw TIFF magic bytes: a file tifffile cannot parse is a damaged TIFF
        raise SegsoftError(f"{name}: truncated or corrupt TIFF data ({_reason(e)})") from None
    if arr.dtype.kind == "c":
        raise SegsoftError(f"{name}: complex-valued samples are not supported")
    if arr.dtype.kind not in "biuf":
        raise SegsoftError(f"{name}: unsupported sample type {arr.dtype}")
    c = arr.shape[2]
    alpha_extra = extras[:1] in ((1,), (2,))
    if band_axes != "S" or c == 1:
        kind = "gray" if c == 1 else "bands"
    elif c == 2:
        # grey plus an extra sample: alpha (1 associated, 2 unassociated), else a band of its own
        kind = "gray+alpha" if alpha_extra else "bands"
    elif c in (3, 4) and photometric == 2:  # RGB
        # RGB plus an unspecified extra sample (RGB + near infrared, as aerial survey tiles are): 4 bands
        kind = "rgb" if c == 3 else ("rgba" if alpha_extra else "bands")
    else:
        kind = "bands"
    source = arr.dtype
    if arr.dtype.kind == "f" and kind != "bands":  # float multiband data is kept as stored (_array_image)
        if not np.isfinite(arr).all():
            raise SegsoftError(f"{name}: image contains NaN or infinite values")
        top = float(arr.max()) if arr.size else 1.0
        # as for Pillow's mode F; divided before the cast so that float64 beyond float32's range stays finite
        arr = (arr / top if top > 1.0 else arr).astype(np.float32)
        np.maximum(arr, 0.0, out=arr)  # negatives clipped to 0, as the module docstring says
    # the file states its sample type, so an int32 TIFF maps by the int32 range whatever its values
    image = _array_image(arr, name=name, kind=kind, band_names=names)
    image.path = path
    # colour keeps Pillow's name for it (16-bit RGB TIFFs are read here, not by Pillow)
    image.mode = (
        {"rgb": "RGB", "rgba": "RGBA"}.get(kind, f"tifffile:{source}") if source.itemsize == 2 else f"tifffile:{source}"
    )
    if frames > 1:
        image.frame = int(page or 0)
    return image


def _read_numpy(f: BinaryIO, head: bytes, path: Path, name: str, max_pixels: int | None, page: int | None) -> Image:
    """A ``.npy`` array, or the one array (or the ``image`` array) of a ``.npz``, of shape (H, W) or (H, W, C).

    The header is checked before any data is read: no pickles (object
    arrays), an image shape, the pixel limit, and exactly as many bytes as
    the header declares (a truncated file or a lying header is refused, not
    allocated).
    """
    import zipfile

    _choose_frame(name, 1, page)
    try:
        if head.startswith(b"\x93NUMPY"):
            size = os.fstat(f.fileno()).st_size
            arr = _load_npy(f, size, name, max_pixels)
        else:
            with zipfile.ZipFile(f) as z:
                members = [m for m in z.infolist() if m.filename.endswith(".npy")]
                chosen = [m for m in members if m.filename == "image.npy"] or members
                if len(chosen) != 1:
                    keys = ", ".join(m.filename[:-4] for m in members) or "none"
                    raise SegsoftError(f"{name}: holds {len(members)} arrays ({keys}); name the image one 'image'")
                with z.open(chosen[0]) as member:
                    arr = _load_npy(member, chosen[0].file_size, name, max_pixels)
    except SegsoftError:
        raise
    except MemoryError:
        raise
    except Exception as e:  # noqa: BLE001 - numpy and zipfile raise many kinds on bad data
        raise SegsoftError(f"{name}: truncated or corrupt array file ({_reason(e)})") from None
    # a 4-channel array file is four bands (RGB + near infrared, four stains), not a picture with alpha
    image = _array_image(arr, name=name, kind="bands" if arr.ndim == 3 and arr.shape[2] == 4 else None)
    image.path, image.mode = path, "npy"
    return image


def _load_npy(fp: BinaryIO, size: int, name: str, max_pixels: int | None) -> np.ndarray:
    fmt = np.lib.format
    version = fmt.read_magic(fp)
    if version == (1, 0):
        shape, fortran, dtype = fmt.read_array_header_1_0(fp)
    else:
        shape, fortran, dtype = fmt.read_array_header_2_0(fp)
    if dtype.hasobject:
        raise SegsoftError(f"{name}: holds Python objects, not numbers (it is not loaded)")
    if dtype.kind not in "biufc" or dtype.fields is not None or dtype.subdtype is not None:
        raise SegsoftError(f"{name}: unsupported sample type {dtype}")
    if len(shape) not in (2, 3) or (len(shape) == 3 and shape[2] < 1):
        raise SegsoftError(f"{name}: an array of shape {shape} is not an image (expected (H, W) or (H, W, C))")
    h, w = shape[0], shape[1]
    if max_pixels is not None and h * w > max_pixels:
        raise SegsoftError(_too_many(name, w, h, max_pixels))
    need = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    have = size - fp.tell()
    if have != need:
        raise SegsoftError(f"{name}: the header declares {need} bytes of data but the file holds {have}")
    arr = np.frombuffer(fp.read(need), dtype=dtype)
    return arr.reshape(shape, order="F" if fortran else "C")


def as_image(
    obj: Image | str | os.PathLike | np.ndarray | PILImage.Image,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
    page: int | None = None,
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
    page : int or None
        For a path: the page or frame of a multi-frame file (see :func:`read_image`).

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
        return read_image(obj, max_pixels=max_pixels, page=page)
    if page is not None:
        raise SegsoftError("page applies only to a file: pass the frame itself instead")
    if isinstance(obj, np.ndarray):
        return Image.from_array(obj)
    if isinstance(obj, PILImage.Image):
        return _from_pil(obj, "image", None, max_pixels)
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


# While any read is in progress, warnings and the log records of Pillow and
# tifffile are dropped ("Corrupt EXIF data", "invalid offset to first page",
# "More samples per pixel than can be decoded"): a broken file is reported by
# the one-line SegsoftError, a readable one needs no comment. Like the pixel
# limit above, this is process-wide and counted, so overlapping reads in
# threads restore it correctly; catch_warnings is not safe across threads.
_quiet_lock = threading.Lock()
_quiet_users = 0
_quiet_filter: tuple | None = None
_quiet_levels: dict[str, int] = {}
_QUIET_LOGGERS = ("PIL", "tifffile")


class _FiltersChanged(Warning):
    """Never issued: adding a filter for it is the public way to make ``warnings`` see a changed filter list."""


@contextmanager
def _quiet() -> Iterator[None]:
    global _quiet_users, _quiet_filter
    with _quiet_lock:
        if _quiet_users == 0:
            warnings.filterwarnings("ignore", message="(?s:.*)")
            _quiet_filter = warnings.filters[0]
            for logger_name in _QUIET_LOGGERS:
                logger = logging.getLogger(logger_name)
                _quiet_levels[logger_name] = logger.level
                logger.setLevel(logging.CRITICAL + 1)
        _quiet_users += 1
    try:
        yield
    finally:
        with _quiet_lock:
            _quiet_users -= 1
            if _quiet_users == 0:
                with suppress(ValueError):
                    warnings.filters.remove(_quiet_filter)
                # bumps the filters' version, so warnings ignored meanwhile are not remembered as ignored
                warnings.filterwarnings("ignore", category=_FiltersChanged, append=True)
                for logger_name, level in _quiet_levels.items():
                    logging.getLogger(logger_name).setLevel(level)
                _quiet_levels.clear()


def _uses_libtiff(pil: PILImage.Image) -> bool:
    return any(t[0] == "libtiff" for t in (getattr(pil, "tile", None) or []))


# libtiff writes its complaints ("Using code not yet in table.", "Read error on
# strip ...") straight to file descriptor 2, out of reach of Python. Around a
# libtiff decode only, fd 2 goes to a temporary file; afterwards lines that
# look like libtiff's ("module: message") are dropped and anything else
# (another thread's output in that moment) is passed on. One decode at a time
# does this, so the redirections never interleave.
_stderr_lock = threading.Lock()
_LIBTIFF_LINE = re.compile(rb"[^\s:]+: ")


@contextmanager
def _stderr_muted(active: bool) -> Iterator[None]:
    if not active:
        yield
        return
    with _stderr_lock:
        try:
            saved = os.dup(2)
        except OSError:  # no stderr: nothing to protect
            saved = None
        if saved is None:
            yield
            return
        try:
            with suppress(Exception):
                sys.stderr.flush()
            with tempfile.TemporaryFile() as sink:
                os.dup2(sink.fileno(), 2)
                try:
                    yield
                finally:
                    os.dup2(saved, 2)
                    sink.seek(0)
                    lines = sink.read(1 << 20).splitlines(keepends=True)
                    kept = b"".join(line for line in lines if not _LIBTIFF_LINE.match(line))
                    if kept:
                        with suppress(OSError):
                            os.write(2, kept)
        finally:
            os.close(saved)


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
    wide: bytes | None = None,
) -> Image:
    w, h = pil.size
    if max_pixels is not None and w * h > max_pixels:
        raise SegsoftError(_too_many(name, w, h, max_pixels))
    if w <= 0 or h <= 0:
        raise SegsoftError(f"{name}: image has no pixels ({w}x{h})")
    mode = pil.mode
    with _quiet(), _pillow_limit_lifted(), _stderr_muted(_uses_libtiff(pil)):
        try:
            pil.load()
            arr, alpha, bit_depth, is_gray = _native(pil, name)
            if wide is not None:
                full = _decode_png16(wide, name)
                if full.shape[:2] != arr.shape[:2]:
                    raise ValueError("file changed while reading")
                if full.shape[2] in (2, 4):
                    alpha = full[..., -1] > 0
                    full = full[..., :-1]
                arr = full[..., 0] if full.shape[2] == 1 else full
                bit_depth, is_gray = 16, full.shape[2] == 1
        except SegsoftError:
            raise
        except _DECODE_ERRORS as e:
            if pil.format == "EPS" and "ghostscript" in str(e).lower():
                raise SegsoftError(
                    f"{name}: PostScript/EPS needs Ghostscript, which is not installed{_CONVERT}"
                ) from None
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
    if arr.dtype == np.uint8 and arr.ndim == 3 and arr.shape[2] == 3 and bit_depth == 8 and not is_gray:
        # 8-bit colour: keep the samples, make the float pixels only if they are needed
        return Image._from_rgb8(arr, _finish_mask(alpha, name), path, mode)
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
    if mode == "I" or (mode == "L" and _tiff_samples(pil) == np.int8):
        return _native_int(pil)
    if mode in ("1", "L"):
        return np.asarray(pil.convert("L") if mode == "1" else pil), None, 8, True
    if mode in ("LA", "La", "PA", "RGBA", "RGBa") or (mode == "P" and "transparency" in pil.info):
        target = "LA" if mode in ("LA", "La") else "RGBA"
        a = np.asarray(pil if mode == target else pil.convert(target))
        return a[..., :-1] if target == "RGBA" else a[..., 0], a[..., -1] > 0, 8, is_gray
    if mode.startswith("I;16"):
        return np.asarray(pil).astype(np.uint16, copy=False), None, 16, True
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


def _tiff_samples(pil: PILImage.Image) -> np.dtype | None:
    """The integer sample type a single-sample TIFF declares (SampleFormat, BitsPerSample), else None."""
    if pil.format != "TIFF":
        return None
    tags = getattr(pil, "tag_v2", None)
    if tags is None:
        return None
    fmt, bits = tags.get(339, 1), tags.get(258, 1)
    fmt = fmt[0] if isinstance(fmt, tuple) and fmt else fmt
    bits = bits[0] if isinstance(bits, tuple) and bits else bits
    if fmt not in (1, 2) or bits not in (8, 16, 32, 64):
        return None
    return np.dtype(f"{'i' if fmt == 2 else 'u'}{bits // 8}")


def _native_int(pil: PILImage.Image) -> tuple[np.ndarray, None, int, bool]:
    """Pillow's mode I (and L holding int8), mapped by the sample type the file declares.

    Pillow reads a signed 8-bit TIFF as unsigned bytes and an unsigned
    32-bit one as signed: the raw values are reinterpreted, not rescaled.
    """
    a = np.asarray(pil)
    declared = _tiff_samples(pil)
    if pil.mode == "L":
        a = a.view(np.int8)
    elif declared == np.int16:
        a = a.astype(np.int16)
    elif declared == np.uint32:
        a = np.ascontiguousarray(a, dtype=np.int32).view(np.uint32)
    else:
        a = a.astype(np.int32, copy=False)
    # a TIFF states its sample type: map by that type's range, never by the values (one
    # pixel at 65536 must not re-scale the rest); only mode I from a source that states
    # no 32-bit type (PPM/PGM, PNG) may be 16-bit data in Pillow's 32-bit container
    unit, bit_depth = _int_unit(a, sixteen_in_32=declared is None)
    return unit, None, bit_depth, True


def _decode_png16(data: bytes, name: str) -> np.ndarray:
    """16-bit colour (or grey+alpha) PNG samples, exact, from imagecodecs' libpng decoder.

    Pillow has no 16-bit colour mode and would keep only the high bytes.
    """
    import imagecodecs

    arr = imagecodecs.png_decode(data)
    if arr.dtype != np.uint16 or arr.ndim != 3:
        raise ValueError(f"unexpected decoded PNG {arr.dtype} {arr.shape}")
    return arr


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
        glob pattern (``*``, ``?``, ``[...]`` and ``**`` as in
        :func:`glob.glob` with ``recursive=True``; matching files are
        filtered as in a folder, matching folders are ignored). Only regular
        files (and links to them) are found in folders and by patterns; a
        named FIFO or device is listed, and refused when it is read.
    recursive : bool
        Also look in the sub-folders (not hidden ones) of folder inputs.
        Links to folders are not followed there; a ``**`` pattern follows
        them, as :func:`glob.glob` does. Either way each folder is visited
        once, so links that make a cycle cannot make the search endless.

    Returns
    -------
    list of (Path, Path)
        ``(image, stem)`` pairs sorted by image path, each file once. The
        stem is where the image's outputs go, relative to an output folder:
        the file name without its extension for a file, the path relative
        to the folder (or to the pattern's fixed leading folders) for a
        folder (or a pattern), e.g. ``sub/img``. Every part of a stem is
        made safe with :func:`safe_component` (``...png`` gives ``_..``),
        so ``OUTPUT / stem`` stays inside ``OUTPUT``. Stems that would
        collide (compared case-insensitively) get the extension appended,
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
        if p.is_dir() and is_zarr_store(p):
            pairs.append((p, Path(p.stem)))  # a zarr store is one image, not a folder of them
        elif p.is_dir():
            pairs.extend((f, f.relative_to(p).with_suffix("")) for f in _folder_images(p, recursive))
        elif p.exists() or p.is_symlink():
            pairs.append((p, Path(p.stem)))
        elif _has_magic(text):
            root = _glob_root(text)
            matches = [Path(m) for m in _glob(text)]
            if not matches:
                raise SegsoftError(f"{text}: no such file or folder")
            files = [m for m in matches if _is_regular(m) and _looks_like_image(m)]
            pairs.extend((f, _relative_stem(f, root)) for f in files)
        else:
            raise SegsoftError(f"{text}: no such file or folder")

    seen: set[str] = set()
    unique: list[tuple[Path, Path]] = []
    for f, stem in pairs:
        key = os.path.normcase(os.path.realpath(f))
        if key not in seen:
            seen.add(key)
            unique.append((f, _safe_stem(stem)))
    unique.sort(key=lambda pair: (str(pair[0]), str(pair[1])))
    return _unique_stems(unique)


def _safe_stem(stem: Path) -> Path:
    # a file named "...png" has the stem ".."; "a\nb" would put a newline in a folder name
    return Path(*(safe_component(part) for part in stem.parts or ("",)))


def _is_regular(f: Path) -> bool:
    """A regular file, or a link to one (a FIFO would block whoever opens it)."""
    try:
        return stat.S_ISREG(f.stat().st_mode)
    except (OSError, ValueError):
        return False


def _dir_key(path: str) -> tuple[int, int] | None:
    try:
        st = os.stat(path or ".")
    except (OSError, ValueError):
        return None
    return (st.st_dev, st.st_ino) if stat.S_ISDIR(st.st_mode) else None


def _folder_images(folder: Path, recursive: bool) -> list[Path]:
    found: list[Path] = []
    visited: set[tuple[int, int]] = set()
    for here, dirs, files in os.walk(folder):
        key = _dir_key(here)
        if key is None or key in visited:  # a bind mount can loop even without links
            dirs[:] = []
            continue
        visited.add(key)
        # zarr stores named *.zarr are images; no store is searched for images inside
        stores = [d for d in dirs if _is_zarr_image(Path(here) / d)]
        found.extend(Path(here) / d for d in sorted(stores))
        dirs[:] = (
            sorted(d for d in dirs if not d.startswith(".") and not is_zarr_store(Path(here) / d)) if recursive else []
        )
        for name in sorted(files):
            f = Path(here) / name
            if not name.startswith(".") and _is_regular(f) and _looks_like_image(f):
                found.append(f)
    return found


#: What marks a folder as a zarr store (v3, v2 array, v2 group).
_ZARR_MARKERS = ("zarr.json", ".zarray", ".zgroup")
#: segsoft's own zarr outputs, never taken for inputs in a folder.
_OUTPUT_STORES = ("probabilities.zarr", "uncertainty.zarr")


def is_zarr_store(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a folder holding a zarr store (array or group, zarr v2 or v3)."""
    p = Path(path)
    return p.is_dir() and any((p / m).is_file() for m in _ZARR_MARKERS)


def _is_zarr_image(d: Path) -> bool:
    return (
        d.suffix.lower() == ".zarr"
        and not d.name.startswith(".")
        and d.name.lower() not in _OUTPUT_STORES
        and is_zarr_store(d)
    )


def _read_zarr(p: Path, name: str, max_pixels: int | None, page: int | None) -> Image:
    """A zarr / OME-Zarr store read whole (through :mod:`segsoft.cluster.lazy`, the dask extra)."""
    try:
        from .cluster.lazy import open_lazy
    except ImportError:
        raise SegsoftError(f"{name}: reading a zarr store needs the dask extra: pip install 'segsoft[dask]'") from None
    lz = open_lazy(p, page=page)
    if max_pixels is not None and lz.n_pixels > max_pixels:
        raise SegsoftError(_too_many(name, lz.width, lz.height, max_pixels))
    import dask

    with dask.config.set(scheduler="threads"):
        bands, mask = dask.compute(lz.bands, lz.mask)
    image = lz.to_image(np.asarray(bands), None if mask is None else np.asarray(mask))
    return image


def _looks_like_image(f: Path) -> bool:
    if f.suffix.lower() in IMAGE_EXTENSIONS:
        return True
    if f.suffix.lower() in ARRAY_EXTENSIONS:
        return f.name.lower() not in _OUTPUT_ARRAYS
    # Image.open only reads the header; a huge image must count as an image,
    # not trip Pillow's bomb check
    with _quiet(), _pillow_limit_lifted():
        try:
            with _open_regular(f, str(f)) as fp, PILImage.open(fp):
                return True
        except (SegsoftError, UnidentifiedImageError, *_DECODE_ERRORS):
            return False


def _has_magic(text: str) -> bool:
    return any(c in text for c in "*?[")


def _glob(pattern: str) -> list[str]:
    """``sorted(glob.glob(pattern, recursive=True))``, visiting each folder once per ``**``.

    :func:`glob.glob` follows links to folders under ``**`` as often as they
    lead somewhere, so two links that form a cycle make it run for ever.
    Here a folder reached again (same device and inode) is not listed again,
    which leaves the matches of an ordinary tree unchanged. The rest follows
    glob: hidden names match only a part that starts with a dot, ``**``
    passes no hidden folder, and a pattern ending in a separator matches
    folders only.
    """
    anchor = os.sep if pattern.startswith(os.sep) else ""
    dir_only = pattern.endswith(os.sep)
    parts: list[str] = []
    for part in pattern[len(anchor) :].split(os.sep):
        if part and not (part == "**" and parts and parts[-1] == "**"):
            parts.append(part)
    found: set[str] = set()
    visited: dict[int, set[tuple[int, int]]] = {}  # per ** part: the folders it has expanded

    def entries(folder: str) -> list[os.DirEntry]:
        try:
            with os.scandir(folder or ".") as it:
                return sorted(it, key=lambda e: e.name)
        except (OSError, ValueError):
            return []

    def is_dir(entry: os.DirEntry) -> bool:
        try:
            return entry.is_dir()  # follows links, as glob does
        except OSError:
            return False

    def match(base: str, i: int) -> None:
        if i == len(parts):
            if base and (not dir_only or os.path.isdir(base)):
                found.add(base)
            return
        part, last = parts[i], i == len(parts) - 1
        if part == "**":
            seen = visited.setdefault(i, set())
            stack = [base]
            while stack:
                folder = stack.pop()
                key = _dir_key(folder)
                if key is None or key in seen:
                    continue
                seen.add(key)
                match(folder, i + 1)  # ** matching no folder at all, or this one
                subfolders = []
                for entry in entries(folder):
                    if entry.name.startswith("."):
                        continue
                    path = os.path.join(folder, entry.name)
                    if is_dir(entry):
                        subfolders.append(path)
                    elif last and not dir_only:
                        found.add(path)
                stack.extend(reversed(subfolders))
            return
        if not _has_magic(part):
            path = os.path.join(base, part)
            if last:
                if os.path.lexists(path):
                    match(path, i + 1)
            elif os.path.isdir(path):
                match(path, i + 1)
            return
        hidden_ok = part.startswith(".")
        for entry in entries(base):
            if (hidden_ok or not entry.name.startswith(".")) and fnmatch.fnmatch(entry.name, part):
                if last or is_dir(entry):
                    match(os.path.join(base, entry.name), i + 1)

    match(anchor, 0)
    return sorted(found)


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
            # the extension is part of a folder name now: made safe, and short
            ext = _fit_name(safe_component(f.suffix[1:].lower(), ""), 16)
            base = _suffixed(stem, f"_{ext}") if ext else stem
            stem, n = base, 1
            while key(stem) in taken:
                n += 1
                stem = _suffixed(base, f"_{n}")
            taken.add(key(stem))
        out.append((f, stem))
    return out


def _suffixed(stem: Path, suffix: str) -> Path:
    """``stem`` with ``suffix`` added to its last part, which stays within :data:`_NAME_BYTES`.

    The name is shortened (with a hash of it, see :func:`_fit_name`) rather
    than the suffix, so that the result is still a fixed point of
    :func:`safe_component`: the output folder is the one this stem names.
    """
    return stem.with_name(_fit_name(stem.name, _NAME_BYTES - _fs_bytes(suffix)) + suffix)


# --------------------------------------------------------------------------
# writing

_UNSAFE_CHARS = re.compile(r"[\x00-\x1f\x7f/\\:]")

#: The file system limit on one name (NAME_MAX), in bytes of its encoding.
_NAME_MAX = 255
#: The most bytes :func:`safe_component` gives: well below :data:`_NAME_MAX`, so
#: that the suffixes added to a name later (``_png_2`` for colliding stems, the
#: ``.tmp`` names of atomic writes) still fit.
_NAME_BYTES = 200


def _fs_raw(text: str) -> bytes:
    """``text`` as the file system stores it (surrogate escapes back to their bytes)."""
    try:
        return os.fsencode(text)
    except UnicodeEncodeError:  # a lone surrogate that stands for no byte: counted as UTF-8 would
        return text.encode("utf-8", "surrogatepass")


def _fs_bytes(text: str) -> int:
    return len(_fs_raw(text))


def _cut_bytes(text: str, limit: int) -> str:
    """The longest prefix of ``text`` whose encoding fits in ``limit`` bytes, cut between characters."""
    total = 0
    for i, ch in enumerate(text):
        total += _fs_bytes(ch)
        if total > limit:
            return text[:i]
    return text


def _fit_name(text: str, limit: int = _NAME_BYTES) -> str:
    """``text`` if it fits in ``limit`` bytes, else its start plus ``~`` and 8 hex digits of its hash.

    The hash (BLAKE2b of the whole name) keeps two long names that share
    their first ``limit`` bytes apart.

    Examples
    --------
    >>> short = _fit_name("A" * 300)
    >>> len(short), short[-9], short == _fit_name("A" * 300), short != _fit_name("A" * 301)
    (200, '~', True, True)
    """
    raw = _fs_raw(text)
    if len(raw) <= limit:
        return text
    tag = "~" + hashlib.blake2b(raw, digest_size=4).hexdigest()
    return _cut_bytes(text, max(0, limit - len(tag))) + tag


def safe_component(name: str, fallback: str = "image") -> str:
    """Turn ``name`` into a safe single path component for an output folder.

    Separators, control characters and ``:`` become ``_``; names made only
    of dots (``.``, ``..``, ``...``) or nothing, and names a file system
    treats specially (trailing dots or spaces) are fixed, so that
    ``OUTPUT / safe_component(x)`` is always a child of ``OUTPUT``. A name
    longer than 200 bytes (UTF-8, or the raw bytes of a name that is not
    UTF-8) is cut there on a character boundary, ending in ``~`` and 8 hex
    digits of a hash of the whole name: within the 255-byte limit of a file
    name with room for the ``_png_2`` that :func:`find_images` adds to
    colliding stems. A result is its own safe component (applying it again
    changes nothing).

    Examples
    --------
    >>> safe_component(".."), safe_component("a/b"), safe_component(""), safe_component("photo")
    ('_..', 'a_b', 'image', 'photo')
    >>> long = safe_component("A" * 251)
    >>> len(long.encode()), long[-9:-8], safe_component(long) == long
    (200, '~', True)
    """
    text = _UNSAFE_CHARS.sub("_", os.fsdecode(name)).strip(" ")
    if not text:
        return fallback
    if set(text) == {"."}:
        text = "_" + text
    return _fit_name(text, _NAME_BYTES)


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
def signals_deferred() -> Iterator[None]:
    """Hold SIGINT and SIGTERM back for a few statements that must not be cut in two.

    A signal raises (KeyboardInterrupt, or the CLI's terminated error) between
    any two bytecodes: between creating a file and storing its name, the
    ``finally`` that would remove it cannot know it. Inside the block the
    Python-level handlers are swapped for one that only records the signal;
    recorded signals are raised again when the block ends, inside the caller's
    ``try``. Swapping handlers, not blocking the signal with
    ``pthread_sigmask``, is what holds when the kernel delivers a ``kill`` to
    another thread (a writer or BLAS thread): Python then runs the handler in
    the main thread at its next bytecode, which a mask on the main thread
    alone does not prevent. Handlers can only be set from the main thread, so
    elsewhere this does nothing.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    pending: list[int] = []

    def hold(signum: int, frame: Any) -> None:
        pending.append(signum)

    previous: dict[int, Any] = {}
    try:
        for signum in (signal.SIGINT, signal.SIGTERM):
            handler = signal.getsignal(signum)
            if handler is None or handler is signal.SIG_IGN:  # set outside Python, or ignored: leave it
                continue
            previous[signum] = signal.signal(signum, hold)
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        for signum in dict.fromkeys(pending):
            signal.raise_signal(signum)


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
        the folder or file, inside the block, or when moving it into place;
        a full disk or quota (ENOSPC, EDQUOT, or numpy's errno-less short
        write) reads ``No space left on device``.

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
        with signals_deferred():  # Ctrl-C or kill between creating the file and knowing its name would orphan it
            tmp = _create_temp(target)
        yield tmp
        with signals_deferred():  # replaced, and known to be: not removed afterwards as a leftover
            os.replace(tmp, target)
            tmp = None
    except OSError as e:
        raise SegsoftError(f"{target}: cannot write ({_write_reason(target, e)})") from e
    finally:
        if tmp is not None:
            with suppress(OSError):
                tmp.unlink()


def atomic_write_bytes(path: str | os.PathLike, data: bytes | Iterable[bytes]) -> None:
    """Write ``data`` to ``path`` so that the file is either complete or untouched.

    Parameters
    ----------
    path : str or os.PathLike
        The final file; its folder is created if needed.
    data : bytes, or an iterable of bytes
        The whole content, or its pieces in order (written one after another, never joined).

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
    if not isinstance(data, (bytes, bytearray, memoryview)):
        data = list(data)
        if len(data) == 1:  # one piece: written as whole contents are
            data = data[0]
    with atomic_path(path) as tmp:
        if isinstance(data, (bytes, bytearray, memoryview)):
            tmp.write_bytes(data)
        else:
            with open(tmp, "wb") as f:
                f.writelines(data)


def _create_temp(target: Path) -> Path:
    # os.open with 0o666 lets the umask set the permissions, as for a plain
    # open(); tempfile.mkstemp would make every output private (0o600)
    stem, suffix = target.stem, target.suffix
    # ".", "." + 8 hex, ".tmp": a target near the 255-byte limit of a name would
    # give a temporary name past it, so the stem is shortened (only in the
    # temporary name: the random part keeps it unique, the suffix its format)
    fixed = 1 + 9 + 4
    if _fs_bytes(suffix) > _NAME_MAX - fixed:
        suffix = ""  # no writer goes by an extension that long
    if _fs_bytes(stem) + _fs_bytes(suffix) + fixed > _NAME_MAX:
        stem = _cut_bytes(stem, _NAME_MAX - fixed - _fs_bytes(suffix))
    for _ in range(100):
        tmp = target.with_name(f".{stem}.{secrets.token_hex(4)}.tmp{suffix}")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        except FileExistsError:
            continue
        os.close(fd)
        return tmp
    raise FileExistsError(errno.EEXIST, "cannot create a temporary file", str(target.parent))


# numpy's tofile (np.save) reports a short write as "262144 requested and
# 17376 written", with no errno: on a local disk that is a full disk or quota
_SHORT_WRITE = re.compile(r"\d+ requested and \d+ written")


def _write_reason(target: Path, e: OSError) -> str:
    if e.errno == errno.ENOSPC or (e.errno is None and _SHORT_WRITE.search(str(e))):
        return os.strerror(errno.ENOSPC)  # "No space left on device"
    if e.errno == getattr(errno, "EDQUOT", None):
        return f"{os.strerror(errno.ENOSPC)} ({os.strerror(e.errno).lower()})"
    # mkdir under a regular file says "File exists"; name the culprit instead
    for parent in target.parents:
        if parent.exists() or parent.is_symlink():
            if not parent.is_dir():
                return f"{parent} is not a folder"
            break
    return _reason(e)
