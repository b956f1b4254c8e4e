"""The output folder: pictures, the memberships (``probabilities.npy`` or ``.tif``) and ``model.json``.

Layout of ``write(seg, folder)``::

    folder/
      overlay.png        soft overlay: cluster colours blended by membership
      labels.png         hard label map in the cluster colours
      uncertainty.png    normalised entropy of the memberships (0 = certain)
      prob_0.png ...     one heatmap per cluster
      montage.png        all of the above on one sheet, with the original
      k_selection.png    with k="auto": BIC and ICL against k, the chosen k marked
      probabilities.npy  float32 (H, W, k), NaN where the image is transparent
      model.json         settings, features, parameters, trace, BIC, timings

``probabilities=`` chooses how the memberships are stored (see
:func:`probability_settings`):

* ``"npy"`` (the default): ``probabilities.npy``, ``(H, W, k)``.
* ``"tiff"``: ``probabilities.tif``, one page of ``k`` planar ("separate")
  grey samples, i.e. ``(k, H, W)``, zlib (Adobe deflate) compressed, no
  predictor: GDAL/QGIS open it as ``k`` bands, tifffile and napari as a
  ``(k, H, W)`` array, Fiji through Bio-Formats as ``k`` channels. Plus
  ``labels.tif``, the hard labels as uint8 palette indices in the cluster
  colours (uint16 grey beyond 254 clusters), 255 (65535) where transparent.
  A GeoTIFF input's georeferencing is copied to both (:func:`geotiff_tags`).
* ``"none"``: no memberships file, only ``labels.tif`` (about one byte per
  pixel), so the folder can still be scored and opened in a GIS.

``probabilities_dtype=`` is ``"float32"`` or ``"float16"`` (NaN where
transparent) or ``"uint8"``: ``round(p * 254)``, so 254 is a membership of
exactly 1, and 255 marks a transparent pixel (it cannot be mistaken for a
membership; 255 would be ``p = 1``). TIFFs carry the transparent value in
the ``GDAL_NODATA`` tag (42113), and for uint8 a ``GDAL_METADATA`` scale of
1/254 per band, so GDAL's unscaled values are memberships in [0, 1].

Every file is written to a temporary name and renamed into place, so an
interrupted run never leaves a half-written file behind.
"""

from __future__ import annotations

import datetime as _dt
import errno
import hashlib
import io as _io
import itertools
import json
import math
import os
import re
import shutil
import socket
import stat
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image as PILImage

from . import __version__, render
from .boundaries import grey_of_levels
from .errors import SegsoftError
from .features import FeatureSpec
from .io import atomic_path, atomic_write_bytes, inside, safe_component, signals_deferred
from .regions import MERGE_THRESHOLD, check_regions_flag, check_threshold

if TYPE_CHECKING:
    from .segment import SoftSegmentation

__all__ = [
    "GEOTIFF_TAGS",
    "LOCK_NAME",
    "PNG_COMPRESS_LEVEL",
    "PROBABILITY_DTYPES",
    "PROBABILITY_FORMATS",
    "UINT8_NODATA",
    "UINT8_SCALE",
    "FolderBusy",
    "check_writable",
    "encode_probabilities",
    "file_identity",
    "folder_lock",
    "geotiff_tags",
    "image_folder",
    "load_model",
    "model_record",
    "output_files",
    "probability_files",
    "probability_settings",
    "save_model",
    "write",
]

# zlib level 1: PNGs ~10 % larger than the default level 6, written ~4x faster
PNG_COMPRESS_LEVEL = 1
# RGB(A) pictures (overlay, montage) are Up-filtered and compressed at level 2 by segsoft itself
# (_rgb_png_bytes): on a 12 MP overlay smaller than Pillow's level 1 (8.2 against 8.4 MiB) and
# 2x faster on one thread; palette pictures stay Pillow's at PNG_COMPRESS_LEVEL
PNG_ZLIB_LEVEL = 2
MONTAGE_TILE_WIDTH = 256


#: How the memberships can be stored (``--probabilities``) and in which dtype (``--probabilities-dtype``).
PROBABILITY_FORMATS = ("npy", "tiff", "none")
PROBABILITY_DTYPES = ("float32", "float16", "uint8")
#: uint8 memberships are ``round(p * UINT8_SCALE)``; ``UINT8_NODATA`` marks a transparent pixel.
#: 254, not 255: with 255 a certain pixel (p = 1) would read as "no data" in a GIS.
UINT8_SCALE = 254
UINT8_NODATA = 255
# zlib level 1, as for the PNGs: memberships compress little more at higher levels, and much slower
TIFF_COMPRESS_LEVEL = 1
#: The GeoTIFF tags copied from a georeferenced input: ModelPixelScale, ModelTiepoint,
#: ModelTransformation, GeoKeyDirectory, GeoDoubleParams, GeoAsciiParams. Not the input's
#: GDAL_NODATA or GDAL_METADATA: they describe the input's values, not memberships.
GEOTIFF_TAGS = (33550, 33922, 34264, 34735, 34736, 34737)
_GDAL_METADATA, _GDAL_NODATA, _ORIENTATION = 42112, 42113, 274


def probability_settings(probabilities: str = "npy", probabilities_dtype: Any = "float32") -> dict[str, Any]:
    """Check ``--probabilities`` and ``--probabilities-dtype``; the normalised pair as model.json records it.

    ``"tif"`` is taken for ``"tiff"``, and a numpy dtype for its name. With
    ``"none"`` nothing holds memberships, so the dtype is recorded as None
    (whatever was asked): compare this dict with ``model.json``'s
    ``"probabilities"`` to tell whether a folder was written this way.

    Raises
    ------
    SegsoftError
        Naming the option and the allowed values.

    Examples
    --------
    >>> probability_settings("tif", "uint8")
    {'format': 'tiff', 'dtype': 'uint8'}
    >>> probability_settings("none", "float16")
    {'format': 'none', 'dtype': None}
    >>> probability_settings("png")
    Traceback (most recent call last):
    ...
    segsoft.errors.SegsoftError: --probabilities must be npy, tiff or none, got 'png'
    """
    fmt = probabilities.lower() if isinstance(probabilities, str) else probabilities
    fmt = "tiff" if fmt == "tif" else fmt
    if fmt not in PROBABILITY_FORMATS:
        raise SegsoftError(f"--probabilities must be npy, tiff or none, got {probabilities!r}")
    try:
        dtype = np.dtype(probabilities_dtype).name if not isinstance(probabilities_dtype, str) else probabilities_dtype
    except TypeError:
        dtype = probabilities_dtype
    if dtype not in PROBABILITY_DTYPES:
        raise SegsoftError(f"--probabilities-dtype must be float32, float16 or uint8, got {probabilities_dtype!r}")
    return {"format": fmt, "dtype": None if fmt == "none" else dtype}


def probability_files(probabilities: str = "npy") -> list[str]:
    """The files that hold the memberships (or, without them, the labels) for a ``--probabilities`` format.

    Examples
    --------
    >>> probability_files("npy"), probability_files("tiff"), probability_files("none")
    (['probabilities.npy'], ['probabilities.tif', 'labels.tif'], ['labels.tif'])
    """
    fmt = probability_settings(probabilities)["format"]
    return {"npy": ["probabilities.npy"], "tiff": ["probabilities.tif", "labels.tif"], "none": ["labels.tif"]}[fmt]


def output_files(k: int, auto: bool = False, regions: bool = False, probabilities: str = "npy") -> list[str]:
    """Names of the files :func:`write` creates for ``k`` clusters (``auto``: k was chosen; ``regions``: asked for;
    ``probabilities``: the format, see :func:`probability_files`).

    Examples
    --------
    >>> [f for f in output_files(2, probabilities="tiff") if f.endswith(".tif")]
    ['probabilities.tif', 'labels.tif']
    """
    return (
        ["overlay.png", "labels.png", "uncertainty.png"]
        + [f"prob_{j}.png" for j in range(k)]
        + ["montage.png", *probability_files(probabilities), "model.json"]
        + (["k_selection.png"] if auto else [])
        + (["regions.png", "regions.npy", "boundaries.png", "ucm.npy"] if regions else [])
    )


#: Rows of an RGB(A) picture filtered and compressed as one piece (a few MB of scratch at a time).
_PNG_BAND_ROWS = 256
#: RGB(A) pictures of at least this many pixels are compressed in this many deflate segments at once.
_PNG_PARALLEL_PIXELS = 1 << 20
_PNG_SEGMENTS = 2
_ADLER_BASE = 65521


def _adler32_combine(a1: int, a2: int, len2: int) -> int:
    """zlib's ``adler32_combine``: the Adler-32 of A + B from those of A and B and B's length."""
    rem = len2 % _ADLER_BASE
    sum1 = (a1 & 0xFFFF) + (a2 & 0xFFFF) + _ADLER_BASE - 1
    sum2 = rem * (a1 & 0xFFFF) + (a1 >> 16) + (a2 >> 16) + _ADLER_BASE - rem
    return (sum1 % _ADLER_BASE) | ((sum2 % _ADLER_BASE) << 16)


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return b"".join(_png_chunk_parts(kind, [data]))


def _png_chunk_parts(kind: bytes, parts: list[bytes]) -> list[bytes]:
    """A PNG chunk holding the concatenation of ``parts``, as pieces to write one after another
    (length and type, the parts themselves, the CRC): the data is never copied into one string."""
    import struct
    import zlib

    crc = zlib.crc32(kind)
    for part in parts:
        crc = zlib.crc32(part, crc)
    return [struct.pack(">I", sum(map(len, parts))) + kind, *parts, struct.pack(">I", crc)]


def _deflate_rows(rows: np.ndarray, above: np.ndarray | None, last: bool) -> tuple[list[bytes], int, int]:
    """Raw deflate of PNG scanlines ``rows`` (uint8 (n, W * C)) under the Up filter.

    ``above`` is the row before the first (None at the top of the picture). Returns the
    compressed bytes in pieces (ending in a sync flush, or the final block where ``last``),
    the Adler-32 of the filtered bytes and their length, so segments made on several
    threads join into one zlib stream (zlib and numpy release the GIL on this work).
    """
    import zlib

    comp = zlib.compressobj(PNG_ZLIB_LEVEL, zlib.DEFLATED, -15)
    parts, adler, length = [], 1, 0
    n, width = rows.shape
    line = np.empty((min(_PNG_BAND_ROWS, n), width + 1), np.uint8)
    line[:, 0] = 2  # filter type Up: each byte minus the one above it (mod 256)
    for a in range(0, n, _PNG_BAND_ROWS):
        band = rows[a : a + _PNG_BAND_ROWS]
        m = band.shape[0]
        out = line[:m]
        prev = above if a == 0 else rows[a - 1]
        if prev is None:
            out[0, 1:] = band[0]
        else:
            np.subtract(band[0], prev, out=out[0, 1:])
        np.subtract(band[1:], band[:-1], out=out[1:, 1:])
        data = out.data if out.flags.c_contiguous else out.tobytes()
        adler = zlib.adler32(data, adler)
        length += out.size
        parts.append(comp.compress(data))
    parts.append(comp.flush(zlib.Z_FINISH if last else zlib.Z_SYNC_FLUSH))
    return parts, adler, length


def _rgb_png_bytes(picture: np.ndarray) -> bytes:
    """:func:`_rgb_png_parts` joined."""
    return b"".join(_rgb_png_parts(picture))


def _rgb_png_parts(picture: np.ndarray) -> list[bytes]:
    """An 8-bit RGB or RGBA PNG of ``picture`` (uint8 (H, W, 3 or 4)), Up-filtered, at zlib level
    :data:`PNG_ZLIB_LEVEL`, a large one compressed in :data:`_PNG_SEGMENTS` pieces on as many threads.

    Same pixels as Pillow's PNG; on a 12 MP overlay 2x faster on one thread and a smaller file
    (the Up filter at level 2: 8.2 MiB, Pillow's adaptive filters at level 1: 8.4 MiB). The file
    comes in pieces, to be written one after another: joined, the 8 MB of a 12 MP overlay were
    copied twice more while the pictures after it were held.
    """
    import struct

    h, w, c = picture.shape
    rows = np.ascontiguousarray(picture).reshape(h, w * c)
    cuts = [0, h]
    if _segmented(h, w):
        cuts = [round(i * h / _PNG_SEGMENTS) for i in range(_PNG_SEGMENTS + 1)]
    jobs = [(rows[a:b], rows[a - 1] if a > 0 else None, b == h) for a, b in itertools.pairwise(cuts)]
    if len(jobs) > 1:
        with ThreadPoolExecutor(len(jobs)) as pool:
            pieces = list(pool.map(lambda job: _deflate_rows(*job), jobs))
    else:
        pieces = [_deflate_rows(*jobs[0])]
    adler = pieces[0][1]
    for _, part_adler, length in pieces[1:]:
        adler = _adler32_combine(adler, part_adler, length)
    level_bits = 0x01 if PNG_ZLIB_LEVEL < 2 else 0x5E  # FLEVEL (informative) with a valid FCHECK
    header = bytes([0x78, level_bits])
    ihdr = struct.pack(">IIBBBBB", w, h, 8, 2 if c == 3 else 6, 0, 0, 0)
    out = [b"\x89PNG\r\n\x1a\n", _png_chunk(b"IHDR", ihdr), _png_chunk(b"IDAT", header)]
    for parts, _, _ in pieces:
        out += _png_chunk_parts(b"IDAT", parts)
    out += [_png_chunk(b"IDAT", struct.pack(">I", adler)), _png_chunk(b"IEND", b"")]
    return out


def _rgb_in_segments(picture: Any) -> bool:
    """Whether :func:`_png_parts` compresses ``picture`` in several segments on threads of its own."""
    return _is_rgb8(picture) and _segmented(picture.shape[0], picture.shape[1])


def _segmented(h: int, w: int) -> bool:
    return h * w >= _PNG_PARALLEL_PIXELS and h >= 2 * _PNG_SEGMENTS


def _is_rgb8(picture: Any) -> bool:
    """An 8-bit RGB(A) array with pixels: compressed by segsoft itself (:func:`_rgb_png_parts`)."""
    return (
        isinstance(picture, np.ndarray)
        and picture.dtype == np.uint8
        and picture.ndim == 3
        and picture.shape[2] in (3, 4)
        and picture.shape[0] * picture.shape[1] > 0
    )


def _png_bytes(picture: np.ndarray | render.IndexedImage) -> bytes:
    """A picture as a PNG file: :func:`_png_parts` joined."""
    return b"".join(_png_parts(picture))  # one piece: join returns it as it is, no copy


def _png_parts(picture: np.ndarray | render.IndexedImage) -> list[bytes]:
    """A picture as a PNG file in pieces, to be written one after another (see :func:`_rgb_png_parts`)."""
    extra: dict[str, Any] = {}
    if _is_rgb8(picture):
        return _rgb_png_parts(picture)
    if isinstance(picture, render.IndexedImage):
        img = PILImage.fromarray(picture.indices)
        img.putpalette(picture.palette.tobytes())  # turns the L image into P
        if picture.transparent is not None:  # transparent pixels: a tRNS entry, so the file stays a palette PNG
            extra["transparency"] = int(picture.transparent)
    else:
        img = PILImage.fromarray(picture)  # RGBA where the image has transparent pixels
    buf = _io.BytesIO()
    img.save(buf, format="PNG", compress_level=PNG_COMPRESS_LEVEL, **extra)
    return [buf.getvalue()]


def _jsonable(value: Any) -> Any:
    """Plain JSON values: arrays to lists, non-finite floats to None."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return _jsonable(value.tolist())
    if isinstance(value, (np.bool_, bool)):
        return bool(value)
    if isinstance(value, (np.integer, int)):
        return int(value)
    if isinstance(value, (np.floating, float)):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, Path):
        return str(value)
    return value


def model_record(seg: SoftSegmentation) -> dict[str, Any]:
    """Everything ``model.json`` holds about a segmentation, as a dict.

    Examples
    --------
    >>> seg = segsoft.segment("images/coffee.jpg", k=3)  # doctest: +SKIP
    >>> model_record(seg)["clusters"][0]["mean_rgb"]  # doctest: +SKIP
    [38, 22, 17]
    """
    model = seg.model
    counts = seg.label_counts
    spec = seg.spec
    mean_color = spec.features_to_color(model.means_)
    weights = getattr(model, "weights_", np.full(seg.k, np.nan))
    collapsed = getattr(model, "collapsed_", np.zeros(seg.k, dtype=bool))
    clusters = []
    for j in range(seg.k):
        clusters.append(
            {
                "index": j,
                "display_color": "#%02x%02x%02x" % tuple(int(c) for c in seg.colors[j]),
                "weight": weights[j],
                "pixel_fraction": counts[j] / max(seg.n_used, 1),
                "mean_rgb": [int(round(c * 255)) for c in seg.mean_rgb[j]],
                # for rgb, mean_rgb above already is the mean colour (and must stay 8-bit)
                **({} if spec.color == "rgb" else {f"mean_{spec.color}": mean_color[j]}),
                "mean_features": model.means_[j],
                "collapsed": bool(collapsed[j]),
            }
        )
    img = seg.image
    return _jsonable(
        {
            "segsoft_version": __version__,
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "image": {
                "path": img.path,
                "width": img.width,
                "height": img.height,
                "mode": img.mode,
                "bit_depth": img.bit_depth,
                "pixels_used": seg.n_used,
                "source": _source_identity(img),  # what --skip-existing compares
            },
            "settings": seg.settings,
            "features": {**spec.to_dict(), "names": spec.feature_names},
            "result": {
                "k": seg.k,
                "log_likelihood": seg.log_likelihood,
                "bic": seg.bic,
                "aic": seg.aic,
                "converged": getattr(model, "converged_", None),
                "n_iter": getattr(model, "n_iter_", None),
                "log_likelihood_trace": getattr(model, "log_likelihood_trace_", []),
                "polish_trace": getattr(model, "polish_trace_", []),
            },
            "clusters": clusters,
            "k_selection": seg.selection,
            "pictures": {"palette": seg.palette},
            "timings": seg.timings,
            "model": model.to_dict(),
        }
    )


def save_model(seg: SoftSegmentation, path: str | os.PathLike) -> Path:
    """Write ``model.json`` for ``seg`` to ``path`` (atomically)."""
    return _write_json(model_record(seg), path)


def _write_json(record: dict[str, Any], path: str | os.PathLike) -> Path:
    path = Path(path)
    atomic_write_bytes(path, (json.dumps(record, indent=2) + "\n").encode())
    return path


def load_model(path: str | os.PathLike) -> tuple[Any, FeatureSpec, dict[str, Any]]:
    """Read a ``model.json``: the fitted model, its feature spec and the whole record.

    Examples
    --------
    >>> model, spec, record = load_model("outputs/coffee/model.json")  # doctest: +SKIP
    >>> segsoft.apply_model("images/chelsea.jpg", model, spec)  # doctest: +SKIP
    """
    # reading, the size and nesting limits and every field check: see segsoft.modelfile
    from .modelfile import read_model

    return read_model(path)


def check_writable(folder: str | os.PathLike) -> None:
    """Raise :class:`SegsoftError` unless ``folder`` exists or could be created,
    and is writable; creates nothing."""
    folder = Path(folder)
    probe = folder
    while not probe.exists():
        if probe.parent == probe:
            break
        probe = probe.parent
    if probe.exists() and not probe.is_dir():
        raise SegsoftError(f"{folder}: cannot create the output folder ({probe} is a file)")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise SegsoftError(f"{folder}: output folder is not writable")


def image_folder(output: str | os.PathLike, stem: str | os.PathLike) -> Path:
    """The output folder of one image: ``output/<stem>``, every part of the stem made safe.

    An input called ``...png`` has the stem ``..``; used as it is, its
    outputs would land in (and its stale-file clean-up would delete from)
    the output folder's parent. Each part goes through
    :func:`segsoft.io.safe_component` and the result must resolve inside
    ``output``.

    Examples
    --------
    >>> image_folder("results", "..").as_posix(), image_folder("results", "2024/coffee").as_posix()
    ('results/_..', 'results/2024/coffee')
    """
    parts = [safe_component(part) for part in Path(os.fsdecode(stem)).parts] or ["image"]
    folder = Path(os.fsdecode(output)).joinpath(*parts)
    inside(output, folder)
    return folder


#: Names in an image folder that :func:`write` creates, replaces or removes.
_OWNED = re.compile(
    r"^(overlay|labels|regions|boundaries|ucm|uncertainty|montage|k_selection|probabilities|model|prob_\d+)"
    r"\.(png|npy|json|tif)$"
)


def check_targets(folder: str | os.PathLike, protect: Iterable[str | os.PathLike]) -> None:
    """Refuse to write ``folder`` when it would replace or remove a ``protect`` file.

    ``protect`` holds the files the command reads (its input image, the
    model it applies). Links are followed, so a path that only leads to the
    same file is caught too.

    Raises
    ------
    SegsoftError
        Naming the protected file and the folder.
    """
    real_folder = os.path.realpath(folder)
    for p in protect:
        if p is None:
            continue
        real = os.path.realpath(p)
        if os.path.dirname(real) == real_folder and (_OWNED.match(os.path.basename(real)) or _FOLDER_TEMP.match(
            os.path.basename(real)
        )):
            raise SegsoftError(
                f"{os.fsdecode(p)}: is an input and writing the outputs to {os.fsdecode(folder)} would replace it; "
                "choose another output folder (-o)"
            )


def file_identity(path: str | os.PathLike) -> dict[str, Any] | None:
    """What identifies an input file: size, mtime_ns and a BLAKE2b hash of its content (None if unreadable).

    ``--skip-existing`` compares it, so replacing ``p.jpg`` by another photo
    of the same name does not keep the old photo's outputs.

    Examples
    --------
    >>> import tempfile
    >>> with tempfile.NamedTemporaryFile() as f:
    ...     _ = f.write(b"abc"); f.flush()
    ...     file_identity(f.name)["size"], file_identity(f.name)["blake2b"][:8]
    (3, 'cf4ab791')
    """
    h = hashlib.blake2b(digest_size=16)
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))  # a FIFO put in its place must not block
    except OSError:
        return None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            return None
        with open(fd, "rb", closefd=False) as f:
            while chunk := f.read(1 << 20):
                h.update(chunk)
    except OSError:
        return None
    finally:
        os.close(fd)
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "blake2b": h.hexdigest()}


def _source_identity(image: Any) -> dict[str, Any] | None:
    """The input's identity for ``model.json``, or None when the file changed since it was read
    (then ``--skip-existing`` redoes the image instead of trusting outputs of other bytes)."""
    if image.path is None:
        return None
    now = file_identity(image.path)
    seen = getattr(image, "source_stat", None)
    if now is None:
        return None
    if seen is not None:
        try:
            st = os.stat(image.path)
        except OSError:
            return None
        # another file renamed into place keeps no inode; cp -p keeps the size and mtime but not the inode
        if (seen["size"], seen["mtime_ns"], seen.get("ino"), seen.get("dev")) != (
            now["size"], now["mtime_ns"], st.st_ino, st.st_dev
        ):
            return None
    return now


LOCK_NAME = ".segsoft.lock"


class FolderBusy(SegsoftError):
    """Another live process is writing the output folder."""


try:
    import fcntl as _fcntl
except ImportError:  # pragma: no cover - Windows
    _fcntl = None


@contextmanager
def folder_lock(folder: str | os.PathLike) -> Iterator[Path]:
    """Hold ``folder/.segsoft.lock`` (holding this process's pid) while the block writes the folder.

    The lock is an OS file lock (``flock``): it is released when its holder
    dies, however it dies, so the lock file a killed process leaves behind is
    simply taken over. A folder locked by a live process raises
    :class:`FolderBusy` at once: two processes never mix their files in one
    folder. The lock file is removed when the block ends.

    Examples
    --------
    >>> import tempfile
    >>> with tempfile.TemporaryDirectory() as tmp:
    ...     with folder_lock(tmp):
    ...         try:
    ...             with folder_lock(tmp):
    ...                 pass
    ...         except FolderBusy as exc:
    ...             print("busy")
    busy
    """
    folder = Path(folder)
    path = folder / LOCK_NAME
    # never follow a link planted as the lock file, never block on a FIFO: the lock
    # must not become a way to empty a file elsewhere (or the input itself)
    flags = os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0)
    fd: int | None = None
    try:
        with signals_deferred():  # a signal while acquiring would leave a lock file that no finally removes
            fd = _acquire_lock(path, folder, flags)
        try:
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()} {socket.gethostname()}\n".encode())
        except OSError as exc:
            raise SegsoftError(f"{folder}: cannot lock the output folder ({exc.strerror or exc})") from None
        yield path
    finally:
        if fd is not None:
            with signals_deferred():
                if _fcntl is not None:  # Windows cannot remove an open file; the next holder reuses it
                    with suppress(OSError):
                        os.unlink(path)
                os.close(fd)


def _acquire_lock(path: Path, folder: Path, flags: int) -> int:
    """Open and flock ``path``; the descriptor, or FolderBusy / SegsoftError."""
    while True:
        try:
            fd = os.open(path, flags, 0o666)
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise SegsoftError(
                    f"{path}: is a symbolic link, not segsoft's lock file; remove it and run again"
                ) from None
            raise SegsoftError(f"{folder}: cannot lock the output folder ({exc.strerror or exc})") from None
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_nlink != 1:
            os.close(fd)
            what = "a hard link to another file" if stat.S_ISREG(st.st_mode) else "not a regular file"
            raise SegsoftError(f"{path}: is {what}, not segsoft's lock file; remove it and run again")
        try:
            _lock_fd(fd)
        except BlockingIOError:
            owner = _lock_owner(fd)
            os.close(fd)
            raise FolderBusy(
                f"{folder}: being written by another segsoft process{owner}; left to it (use another -o)"
            ) from None
        except BaseException:
            os.close(fd)
            raise
        # the previous holder removes the file on release: if it did after our
        # open, we hold a lock on a file nobody else can see; start again
        try:
            same = os.path.samestat(os.fstat(fd), os.lstat(path))
        except OSError:
            same = False
        if same:
            return fd
        os.close(fd)


def _lock_fd(fd: int) -> None:
    if _fcntl is not None:
        _fcntl.flock(fd, _fcntl.LOCK_EX | _fcntl.LOCK_NB)
        return
    import msvcrt  # pragma: no cover - Windows

    try:  # pragma: no cover
        msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
    except OSError as exc:  # pragma: no cover
        raise BlockingIOError(str(exc)) from None


def _lock_owner(fd: int) -> str:
    with suppress(OSError, ValueError, IndexError):
        fields = os.pread(fd, 200, 0).decode("utf-8", "replace").split()
        return f" (pid {int(fields[0])}{' on ' + fields[1] if len(fields) > 1 else ''})"
    return ""


_FOLDER_TEMP = re.compile(
    r"^\.(overlay|labels|regions|boundaries|ucm|uncertainty|montage|k_selection|probabilities|model|prob_\d+)"
    r"\.[0-9a-f]{8}\.tmp\.(png|npy|json|tif)$"
)


def _sweep(folder: Path, pattern: re.Pattern) -> None:
    with suppress(OSError):
        for entry in os.scandir(folder):
            if pattern.match(entry.name):
                with suppress(OSError):
                    os.unlink(entry.path)


def _start_folder(folder: Path) -> None:
    """Mark ``folder`` incomplete before (re)writing it: an old model.json would
    otherwise vouch for a mix of old and new files if this write is killed. An old
    report.html goes too: it would show the earlier run's numbers beside this run's
    pictures (``run --report`` writes a new one after the files)."""
    for name in ("model.json", "report.html"):
        with suppress(OSError):
            (folder / name).unlink()
    _sweep(folder, _FOLDER_TEMP)


def _remove_stale(folder: Path, k: int, auto: bool, regions: bool = False, probabilities: str = "npy") -> None:
    """Files of an earlier run with more clusters (or k="auto", or regions, or
    another ``probabilities`` format) would be mistaken for this one's."""
    external = probabilities == "external"  # out of core: the zarr stores are this run's, the rest stale
    kept = set() if external else set(probability_files(probabilities))
    if not external:
        for store in ("probabilities.zarr", "uncertainty.zarr"):
            if (folder / store).is_dir() and not (folder / store).is_symlink():
                shutil.rmtree(folder / store, ignore_errors=True)
    for entry in os.scandir(folder):
        m = re.fullmatch(r"prob_(\d+)\.png", entry.name)
        if (
            (m and int(m.group(1)) >= k)
            or (entry.name == "k_selection.png" and not auto)
            or (entry.name in ("regions.png", "regions.npy", "boundaries.png", "ucm.npy") and not regions)
            or (entry.name in ("probabilities.npy", "probabilities.tif", "labels.tif") and entry.name not in kept)
        ):
            with suppress(OSError):
                os.unlink(entry.path)


def _prepare_folder(folder: Path) -> None:
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise SegsoftError(f"{folder}: cannot create the output folder ({exc.strerror or exc})") from None
    if not os.access(folder, os.W_OK):
        raise SegsoftError(f"{folder}: output folder is not writable")


def write(
    seg: SoftSegmentation,
    folder: str | os.PathLike,
    *,
    alpha: float = 0.5,
    cmap: str = "viridis",
    montage: bool = True,
    regions: bool = False,
    region_threshold: float = MERGE_THRESHOLD,
    protect: Iterable[str | os.PathLike] = (),
    probabilities: str = "npy",
    probabilities_dtype: str = "float32",
    palette: str = "categorical",
) -> dict[str, Path]:
    """Write every output of ``seg`` into ``folder`` (created if needed).

    With ``regions`` also ``regions.png`` (each region in its mean colour,
    cut at ``region_threshold``, see :mod:`segsoft.regions`) and ``regions.npy``
    (int32 region ids, -1 on unused pixels); ``model.json`` then records
    the threshold and the number of regions. Returns the written paths by
    file name. ``model.json`` is written last, so its presence marks a
    complete output folder.

    ``probabilities`` (``"npy"``, ``"tiff"`` or ``"none"``) and
    ``probabilities_dtype`` (``"float32"``, ``"float16"``, ``"uint8"``)
    choose the memberships file (see the module docstring); ``model.json``
    records them under ``"probabilities"``, and the file of another format
    left by an earlier run is removed.

    The folder is locked while it is written (:func:`folder_lock`): a second
    process writing the same folder gets :class:`FolderBusy` and writes
    nothing. Nothing is written when an output would replace the image's
    own file or one in ``protect`` (e.g. the model being applied).

    Examples
    --------
    >>> paths = write(segsoft.segment("images/coffee.jpg", k=3), "outputs/coffee")  # doctest: +SKIP
    >>> sorted(paths)[:2]  # doctest: +SKIP
    ['labels.png', 'model.json']
    >>> paths = write(seg, "outputs/coffee", probabilities="tiff", probabilities_dtype="uint8")  # doctest: +SKIP
    >>> paths["probabilities.tif"].name, paths["labels.tif"].name  # doctest: +SKIP
    ('probabilities.tif', 'labels.tif')
    """
    folder = Path(folder)
    try:  # before anything is touched: a bad argument must not leave the folder half rewritten
        check_regions_flag(regions)
        region_threshold = check_threshold(region_threshold)
    except ValueError as exc:
        raise SegsoftError(f"{folder}: {exc}") from None
    stored = probability_settings(probabilities, probabilities_dtype)
    seg.use_palette(palette)  # checked here too: before the folder is touched
    protect = [seg.image.path, *protect]
    check_targets(folder, protect)
    _prepare_folder(folder)
    from .mixture import one_blas_thread

    # BLAS on one thread, as in segment(): the pictures' skinny products (the overlay's blend,
    # the mean colours, the regions) gain nothing from OpenBLAS's threads, and on a busy machine
    # those threads spin against other processes (the 12 MP overlay took 3.0 s instead of 0.3 s)
    with folder_lock(folder), one_blas_thread():
        check_targets(folder, protect)  # again, now that no one else can change the folder
        return _write_locked(seg, folder, alpha, cmap, montage, regions, region_threshold, stored)


def _write_locked(
    seg: SoftSegmentation,
    folder: Path,
    alpha: float,
    cmap: str,
    montage: bool,
    regions: bool,
    region_threshold: float,
    stored: dict[str, Any] | None = None,
    record_patch: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Path]:
    # stored["format"] "external": the caller writes the memberships (out of core: OME-Zarr)
    # and record_patch puts what it wrote into model.json's record
    stored = stored or probability_settings()
    fmt, dtype = stored["format"], stored["dtype"]
    _start_folder(folder)
    t0 = time.perf_counter()
    written: dict[str, Path] = {}

    # Pillow releases the GIL while encoding, so PNGs are encoded and written
    # on worker threads while the next picture renders; a bounded queue keeps
    # at most a few full-size pictures alive at once.
    with ThreadPoolExecutor(max_workers=2) as pool, ThreadPoolExecutor(max_workers=1) as merging:
        pending: list[Future] = []
        # jobs that hold no full-size picture of their own, outside the bounded queue: waiting on
        # the memberships file there held back the pictures' rendering until it was written
        unbounded: list[Future] = []

        def submit(fn: Any, *args: Any) -> None:
            if len(pending) >= 3:
                pending.pop(0).result()
            pending.append(pool.submit(fn, *args))

        def put_png(name: str, picture: Any) -> None:
            written[name] = folder / name
            submit(lambda: atomic_write_bytes(written[name], _png_parts(picture)))

        record_probabilities: dict[str, Any] = {**stored, "file": None, "labels_file": None}
        mean_here = False
        if fmt == "external":
            pass
        elif fmt == "npy":
            # model.json's mean colours summed on this worker from the blocks it writes (gathered once for
            # both), unless the pictures need them first (--palette mean)
            mean_here = seg.palette != "mean" and "mean_rgb" not in seg.__dict__

            def put_npy() -> None:
                with atomic_path(folder / "probabilities.npy") as tmp:
                    _save_probabilities_npy(tmp, seg, dtype, mean_rgb=mean_here)

            written["probabilities.npy"] = folder / "probabilities.npy"
            unbounded.append(pool.submit(put_npy))
        else:
            geo, note = geotiff_tags(seg)
            if fmt == "tiff":
                written["probabilities.tif"] = folder / "probabilities.tif"
                submit(_put_probability_tiff, written["probabilities.tif"], seg, dtype, geo)
            written["labels.tif"] = folder / "labels.tif"
            submit(_put_label_tiff, written["labels.tif"], seg, seg.labels, geo)  # labels made here, not twice
            record_probabilities.update(
                labels_file="labels.tif", georeferenced=bool(geo), **({"georeference_note": note} if note else {})
            )
        if fmt not in ("none", "external"):
            h, w = seg.image.height, seg.image.width
            record_probabilities.update(
                file=f"probabilities.{'npy' if fmt == 'npy' else 'tif'}",
                shape=[h, w, seg.k] if fmt == "npy" else [seg.k, h, w],
                transparent="NaN" if dtype != "uint8" else UINT8_NODATA,
                scale=UINT8_SCALE if dtype == "uint8" else None,
            )
        # the original's tile (a block mean of the whole image) on a worker while the regions are merged
        # and the pictures render
        original = pool.submit(seg.original, MONTAGE_TILE_WIDTH, None, True) if montage else None
        region_map_job = None
        if regions:
            # the regions are merged, and regions.npy, ucm.npy (the whole hierarchy: each boundary's merge
            # level, BSDS500's ucm2 layout (2H+1, 2W+1)) and boundaries.png written, on a thread of their own
            # while the other pictures render (on the main thread the merging left a core idle); ucm.npy and
            # boundaries.png a band of rows at a time, without the image-sized map
            for name in ("regions.npy", "ucm.npy", "boundaries.png"):
                written[name] = folder / name
            region_map_job = merging.submit(seg._region_map, region_threshold)  # the cached map: only read

            def put_region_files() -> None:
                region_map = region_map_job.result()
                with atomic_path(written["regions.npy"]) as tmp:
                    np.save(tmp, region_map)
                with atomic_path(written["ucm.npy"]) as tmp:
                    grey = _save_ucm_npy(tmp, seg.hierarchy)
                atomic_write_bytes(written["boundaries.png"], _png_parts(grey))

            unbounded.append(merging.submit(put_region_files))
        if not mean_here:
            # for model.json, made here while the workers write the memberships and the original's tile
            # (made last, it ran alone after every picture was encoded)
            seg.mean_rgb  # noqa: B018
        pictures = seg.pictures(alpha, cmap, regions, region_threshold)
        for name, _, _ in pictures:
            written[name] = folder / name  # in the montage's order, whatever order they are made in
        tiles: list[Any] = [None] * len(pictures)  # shrunk as they are made: never every full-size picture
        # the regions' picture last, when the regions are most likely merged
        for i in sorted(range(len(pictures)), key=lambda i: pictures[i][0] == "regions.png"):
            name, title, make = pictures[i]
            if name == "regions.png" and region_map_job is not None:
                region_map_job.result()
            picture = make()
            if _rgb_in_segments(picture):
                # compressed on threads of its own: written here, so the pictures after it are not made (and held)
                # while it is (the 12 MP overlay, 34 MB, and three heatmaps set the peak memory)
                atomic_write_bytes(written[name], _png_parts(picture))
            else:
                put_png(name, picture)
            if montage:
                tiles[i] = (name, title, render.shrink(picture, MONTAGE_TILE_WIDTH))
        if montage:
            sheet = seg.montage_sheet(tiles, cmap=cmap, tile_width=MONTAGE_TILE_WIDTH, original=original.result())
            put_png("montage.png", sheet)
        if seg.selection is not None:
            put_png("k_selection.png", render.selection_plot(seg.selection))
        for job in [*unbounded, *pending]:
            job.result()  # re-raises the first write error
    _remove_stale(folder, seg.k, seg.selection is not None, regions, fmt)
    record = model_record(seg)
    if regions:
        record["regions"] = {"threshold": region_threshold, "count": int(region_map_job.result().max()) + 1}
    record["probabilities"] = _jsonable(record_probabilities)
    if record_patch is not None:
        record_patch(record)
        record = _jsonable(record)
    seg.timings["render_write"] = record["timings"]["render_write"] = time.perf_counter() - t0
    written["model.json"] = _write_json(record, folder / "model.json")
    return written


# --------------------------------------------------------------------------
# memberships in other formats and dtypes


def _save_npy_blocks(path: str | os.PathLike, dtype: Any, shape: tuple[int, ...], blocks: Iterable[np.ndarray]) -> None:
    """What ``np.save`` writes for a C-ordered array of ``dtype`` and ``shape``, from its consecutive ``blocks``.

    The header is the one ``np.save`` writes (format 1.0); each block is written before the
    next is asked for, so a generator may reuse one buffer.
    """
    header = {"descr": np.lib.format.dtype_to_descr(np.dtype(dtype)), "fortran_order": False, "shape": shape}
    with open(path, "wb") as f:
        np.lib.format.write_array_header_1_0(f, header)
        f.writelines(np.ascontiguousarray(b, dtype=dtype).data for b in blocks)


def _save_probabilities_npy(path: str | os.PathLike, seg: SoftSegmentation, dtype: str, mean_rgb: bool = False) -> None:
    """``np.save(path, encode_probabilities(seg.probabilities, dtype))``, the same bytes, block by block.

    The rows are encoded and written in blocks from :meth:`SoftSegmentation._probability_blocks`:
    after the exact fit on distinct colours no image-sized memberships array (nor its encoded
    copy) is made. ``mean_rgb``: also sum :attr:`SoftSegmentation.mean_rgb` from the same
    blocks (the same numbers) and store it, unless it was made meanwhile.
    """
    from .segment import _MEAN_STEP, _MeanColours

    h, w, k = seg.image.height, seg.image.width, seg.k
    mean = _MeanColours(seg) if mean_rgb else None

    def blocks() -> Iterator[np.ndarray]:
        # each block is written before the next is gathered into the same buffer
        for b in seg._probability_blocks(_MEAN_STEP):
            if mean is not None:
                mean.add(b)
            yield encode_probabilities(b, dtype)

    _save_npy_blocks(path, dtype, (h, w, k), blocks())
    if mean is not None:
        seg.__dict__.setdefault("mean_rgb", mean.result())  # as the cached property stores it


def _save_ucm_npy(path: str | os.PathLike, hierarchy: Any) -> np.ndarray:
    """``np.save(path, hierarchy.ucm())``, the same bytes, a band of rows at a time; returns
    ``boundary_image`` of it, uint8 (H, W), drawn from the same bands.

    The ucm2 layout has four times the image's pixels (192 MB of float32 at 12 MP): neither
    it nor the full-size boundary levels are made (:meth:`RegionHierarchy._ucm_bands`).
    """
    H, W = hierarchy.shape
    grey = np.empty((H, W), np.uint8)

    def bands() -> Iterator[np.ndarray]:
        for r0, band in hierarchy._ucm_bands():
            if r0 == 0:
                yield band[:1]  # the frame's top row copies the first row through the pixels
            # the thin map is ucm2[2::2, 2::2]: the rows below the pixels, at the corners
            grey[r0 : r0 + band.shape[0] // 2] = grey_of_levels(band[1::2, 2::2])
            yield band

    _save_npy_blocks(path, np.float32, (2 * H + 1, 2 * W + 1), bands())
    return grey


def encode_probabilities(p: np.ndarray, dtype: str = "float32") -> np.ndarray:
    """Memberships ``p`` (float, NaN where transparent) in a stored dtype.

    float32 and float16 keep NaN. uint8 is ``round(p * 254)`` with 255
    (:data:`UINT8_NODATA`) on transparent pixels; ``value / 254`` gives the
    membership back to within 1/508.

    Examples
    --------
    >>> encode_probabilities(np.array([0.0, 0.5, 1.0, np.nan]), "uint8").tolist()
    [0, 127, 254, 255]
    >>> encode_probabilities(np.array([0.25, np.nan]), "float16").tolist()
    [0.25, nan]
    """
    if dtype in ("float32", "float16"):
        return np.asarray(p, dtype=dtype)
    if dtype != "uint8":
        raise SegsoftError(f"--probabilities-dtype must be float32, float16 or uint8, got {dtype!r}")
    scaled = np.asarray(p, dtype=np.float32) * np.float32(UINT8_SCALE)
    nan = np.isnan(scaled)
    # clipped: sums of memberships may overshoot 1 by a rounding error
    np.clip(np.rint(scaled, out=scaled), 0, UINT8_SCALE, out=scaled)
    scaled[nan] = UINT8_NODATA
    return scaled.astype(np.uint8)


_TIFF_MAGIC = (b"II*\0", b"MM\0*", b"II+\0", b"MM\0+")  # classic and BigTIFF, both byte orders


def geotiff_tags(seg: SoftSegmentation) -> tuple[list[tuple[int, int, int, Any, bool]], str | None]:
    """The input's georeferencing as tifffile ``extratags``, and why it was not copied (None when it was, or when
    there is none).

    Read from the page of the input that was segmented (``seg.image.page``
    when the reader records one, else the first). The tags are copied only
    when the segmented pixels are that page's pixels as they lie in the file:
    same height and width, and no TIFF Orientation tag other than 1 (an
    image turned upright on reading no longer matches the map transform).

    Examples
    --------
    >>> import segsoft
    >>> rgb = np.zeros((4, 4, 3), np.uint8); rgb[:, 2:] = 255
    >>> geotiff_tags(segsoft.segment(rgb, k=2))  # an array: no file, no map
    ([], None)
    """
    path = seg.image.path
    if path is None:
        return [], None
    try:
        with open(path, "rb") as f:
            if f.read(4) not in _TIFF_MAGIC:
                return [], None
        import tifffile

        with tifffile.TiffFile(path) as tif:
            index = int(getattr(seg.image, "page", None) or 0)
            if index >= len(tif.pages):
                return [], None
            page = tif.pages[index]
            tags = page.tags
            geo = [
                (code, int(tags[code].dtype), int(tags[code].count), tags[code].value, True)
                for code in GEOTIFF_TAGS
                if code in tags
            ]
            if not geo:
                return [], None
            orientation = tags[_ORIENTATION].value if _ORIENTATION in tags else 1
            size = (int(page.imagelength), int(page.imagewidth))
    except Exception:  # noqa: BLE001 - the input was read already: a tag tifffile cannot parse only costs the map
        return [], None
    if int(orientation) != 1:
        return [], f"not copied: the image was turned by its Orientation tag ({int(orientation)})"
    if size != (seg.image.height, seg.image.width):
        shown = f"{seg.image.height}x{seg.image.width}"
        return [], f"not copied: the image segmented is {shown}, its page {size[0]}x{size[1]}"
    return geo, None


def _gdal_metadata(k: int, scale: float | None) -> str:
    """GDAL_METADATA XML: each band's description, and its scale (uint8) so GDAL unscales to memberships."""
    items = []
    for j in range(k):
        items.append(f'<Item name="DESCRIPTION" sample="{j}" role="description">cluster {j}</Item>')
        if scale is not None:
            items.append(f'<Item name="SCALE" sample="{j}" role="scale">{scale!r}</Item>')
            items.append(f'<Item name="OFFSET" sample="{j}" role="offset">0</Item>')
    return "<GDALMetadata>" + "".join(items) + "</GDALMetadata>"


def _write_tiff(path: Path, data: np.ndarray, nodata: str, extratags: list, **kwargs: Any) -> None:
    import tifffile

    tags = [*extratags, (_GDAL_NODATA, 2, 0, nodata, True)]
    with atomic_path(path) as tmp:  # the temporary name keeps .tif
        tifffile.imwrite(
            tmp,
            data,
            compression="zlib",  # Adobe deflate (8) with Python's zlib: no codec package needed, Fiji reads it
            compressionargs={"level": TIFF_COMPRESS_LEVEL},
            metadata=None,  # no tifffile JSON description: GDAL and Fiji would show it as the image's description
            software=f"segsoft {__version__}",
            extratags=tags,
            **kwargs,
        )


def _put_probability_tiff(path: Path, seg: SoftSegmentation, dtype: str, geo: list) -> None:
    """``probabilities.tif``: (k, H, W), one page with k planar samples, which GDAL opens as k bands."""
    data = np.ascontiguousarray(np.moveaxis(encode_probabilities(seg.probabilities, dtype), -1, 0))
    scale = 1 / UINT8_SCALE if dtype == "uint8" else None
    tags = [*geo, (_GDAL_METADATA, 2, 0, _gdal_metadata(seg.k, scale), True)]
    nodata = str(UINT8_NODATA) if dtype == "uint8" else "nan"
    if seg.k == 1:  # one sample: a plain grey page
        _write_tiff(path, data[0], nodata, tags, photometric="minisblack")
    else:
        _write_tiff(path, data, nodata, tags, photometric="minisblack", planarconfig="separate")


def _put_label_tiff(path: Path, seg: SoftSegmentation, labels: np.ndarray, geo: list) -> None:
    """``labels.tif``: the hard labels, 255 (65535) where transparent; a palette of the cluster colours for uint8."""
    if seg.k < UINT8_NODATA:
        data = np.where(labels < 0, UINT8_NODATA, labels).astype(np.uint8)
        cmap = np.zeros((3, 256), np.uint16)
        cmap[:, : seg.k] = np.asarray(seg.colors, np.uint16)[: seg.k].T * 257  # TIFF colour maps are 16-bit
        _write_tiff(path, data, str(UINT8_NODATA), geo, photometric="palette", colormap=cmap)
    else:  # pragma: no cover - k is at most 64 today
        data = np.where(labels < 0, 65535, labels).astype(np.uint16)
        _write_tiff(path, data, "65535", geo, photometric="minisblack")
