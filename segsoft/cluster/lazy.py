"""Images that are never read whole: tiled and pyramidal TIFFs and zarr / OME-Zarr stores as dask arrays.

:func:`open_lazy` gives a :class:`LazyImage` whose ``bands`` are a dask array
of float32 tiles in the units :class:`segsoft.io.Image` uses (integers mapped
onto [0, 1] by their type's full range, floats of multiband data as stored),
and whose ``mask`` marks transparent (alpha 0) and NaN pixels. Each tile is
read from the file by the task that needs it, on whichever worker runs it:
the graph holds only a small picklable reader (path, series, level), which
opens the file once per worker process and caches the handle.

Sources:

* TIFF (tiled, striped or pyramidal; level 0 of a pyramid) through
  tifffile's zarr view of its pages, with the same axes rules as
  :func:`segsoft.io.read_image` (``YX`` rows and columns; ``S``, ``C`` bands;
  other axes are frames chosen with ``page``);
* a zarr array, read as a ``.npy`` is: (H, W) or (H, W, C);
* an OME-Zarr image (a group with ``multiscales``, NGFF 0.4 or 0.5): its
  first dataset, axes by name (``y``, ``x``, ``c``; ``t``/``z`` are frames).
"""

from __future__ import annotations

import functools
import logging
import math
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dask.array as da
import numpy as np

from ..errors import SegsoftError

__all__ = ["LazyImage", "is_lazy_source", "open_lazy"]

# zarr reads chunks on an asyncio loop: when one fails, the reads still pending log "Task was destroyed"
# and "exception was never retrieved" on the way out, after the one-line error that names the file
logging.getLogger("asyncio").setLevel(logging.CRITICAL)
warnings.filterwarnings("ignore", message="coroutine .* was never awaited", category=RuntimeWarning)

#: Target tile side of the dask chunks (a multiple of the source's own tiles near it).
DEFAULT_CHUNK = 1024
_CHANNEL_AXES = "SC"


def is_lazy_source(path: str | os.PathLike) -> bool:
    """Whether ``path`` is something :func:`open_lazy` reads tile by tile: a zarr store or a TIFF."""
    p = Path(path)
    if p.is_dir():
        from ..io import is_zarr_store

        return is_zarr_store(p)
    try:
        with open(p, "rb") as f:
            return f.read(4) in (b"II*\0", b"MM\0*", b"II+\0", b"MM\0+")
    except OSError:
        return False


def _zarr_kind(p: Path) -> str | None:
    for name in ("zarr.json", ".zarray", ".zgroup"):
        if (p / name).is_file():
            return name
    return None


@dataclass
class LazyImage:
    """An image as dask arrays, read tile by tile.

    Attributes
    ----------
    bands : dask array, float32 (H, W, C)
        As :attr:`segsoft.io.Image.bands` (NaN samples are 0).
    mask : dask array of bool (H, W), or None
        True where the pixel is used (None: all are).
    path : Path
    bit_depth : int
    is_color, is_gray : bool
        A 3-band colour image; a single grey band.
    band_names : tuple of str
    mode : str
        ``"zarr:<dtype>"`` or ``"tifffile:<dtype>"``.
    """

    bands: da.Array
    mask: da.Array | None
    path: Path
    bit_depth: int
    is_color: bool
    is_gray: bool
    band_names: tuple[str, ...]
    mode: str
    frame: int | None = None

    @property
    def height(self) -> int:
        return int(self.bands.shape[0])

    @property
    def width(self) -> int:
        return int(self.bands.shape[1])

    @property
    def n_pixels(self) -> int:
        return self.height * self.width

    @property
    def n_bands(self) -> int:
        return int(self.bands.shape[2])

    @property
    def name(self) -> str:
        return str(self.path)

    def to_image(self, bands: np.ndarray, mask: np.ndarray | None) -> Any:
        """An in-memory :class:`segsoft.io.Image` of these computed ``bands`` and ``mask`` (all of them, or
        block means for a preview), with a picture of it for people as :func:`segsoft.io.read_image` makes."""
        from ..io import Image, display_composite

        if mask is not None and mask.all():
            mask = None
        if mask is not None and not mask.any():
            raise SegsoftError(f"{self.name}: every pixel is transparent")
        bands = np.ascontiguousarray(bands, dtype=np.float32)
        if self.is_color:
            return Image(bands, mask, self.path, self.bit_depth, self.mode, False, None, self.band_names, True, self.frame)
        if self.is_gray:
            pixels = np.repeat(bands, 3, axis=2)
            return Image(pixels, mask, self.path, self.bit_depth, self.mode, True, None, self.band_names, None, self.frame)
        pixels = display_composite(bands, None, mask)
        return Image(pixels, mask, self.path, self.bit_depth, self.mode, False, bands, self.band_names, False, self.frame)


# --------------------------------------------------------------------------
# readers: picklable, opened once per process


@functools.lru_cache(maxsize=8)
def _open_store(kind: str, path: str, series: int, level: int, key: str, stamp: tuple[int, int]) -> Any:
    import zarr

    if kind == "tiff":
        import tifffile

        tif = tifffile.TiffFile(path)  # kept open for the process's life, with the cache entry
        store = tif.series[series].aszarr(level=level)
        z = zarr.open(store, mode="r")
    else:
        z = zarr.open(path, mode="r")
        if key:
            z = z[key]
    return z


class _Reader:
    """``shape``, ``dtype`` and ``__getitem__`` of one array of a file, for ``da.from_array``."""

    def __init__(self, kind: str, path: str, series: int, level: int, key: str, shape: tuple, dtype: Any, name: str):
        self.kind, self.path, self.series, self.level, self.key = kind, path, series, level, key
        self.shape = tuple(int(s) for s in shape)
        self.dtype = np.dtype(dtype)
        self.ndim = len(self.shape)
        self.name = name
        st = os.stat(path)
        self.stamp = (int(st.st_mtime_ns), int(st.st_size))

    def __getitem__(self, index: Any) -> np.ndarray:
        try:
            z = _open_store(self.kind, self.path, self.series, self.level, self.key, self.stamp)
            return np.asarray(z[index])
        except Exception as exc:  # noqa: BLE001 - codecs raise anything on damaged data
            where = (
                ", ".join(f"{s.start}:{s.stop}" for s in index if isinstance(s, slice))
                if isinstance(index, tuple)
                else str(index)
            )
            raise SegsoftError(f"{self.name}: a chunk cannot be read (at {where}): {_reason(exc)}") from None

    def __reduce__(self) -> Any:
        return (_Reader._rebuild, (self.__dict__,))

    @staticmethod
    def _rebuild(state: dict) -> _Reader:
        r = _Reader.__new__(_Reader)
        r.__dict__.update(state)
        return r


def _reason(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text[:200]


# --------------------------------------------------------------------------
# opening


def open_lazy(
    path: str | os.PathLike,
    page: int | None = None,
    chunks: int | tuple[int, int] | None = None,
) -> LazyImage:
    """Open a TIFF or a zarr / OME-Zarr store as a :class:`LazyImage`, reading nothing but metadata.

    Parameters
    ----------
    path : path
        A TIFF file, or a zarr store folder (an array, or an OME-Zarr image group).
    page : int, optional
        The frame of a multi-frame source (T, Z, further series).
    chunks : int or (int, int), optional
        Tile side of the dask chunks; default a multiple of the source's own
        tiles near :data:`DEFAULT_CHUNK`.

    Raises
    ------
    SegsoftError
        Naming the file: not a store, no rows and columns, an unsupported
        sample type, no pixels, a frame that does not exist.

    Examples
    --------
    >>> img = open_lazy("scan.ome.zarr")  # doctest: +SKIP
    >>> img.bands  # doctest: +SKIP
    dask.array<..., shape=(40000, 60000, 3), dtype=float32, chunksize=(2048, 2048, 3), ...>
    """
    p = Path(path)
    name = str(p)
    if not p.exists():
        raise SegsoftError(f"{name}: no such file or folder")
    if p.is_dir():
        if _zarr_kind(p) is None:
            raise SegsoftError(f"{name}: a folder that is not a zarr store (no zarr.json, .zarray or .zgroup)")
        reader, axes, meta = _zarr_source(p, name)
    else:
        reader, axes, meta = _tiff_source(p, name)
    arr = da.from_array(reader, chunks=_native_chunks(reader, axes, meta.get("native"), chunks), asarray=False)
    return _assemble(arr, axes, meta, p, name, page, chunks)


def _native_chunks(reader: _Reader, axes: str, native: tuple | None, chunks: Any) -> tuple:
    """dask chunks: whole along every axis but Y and X, whose chunks are multiples of the source's."""
    if chunks is not None:
        cy, cx = (chunks, chunks) if isinstance(chunks, (int, np.integer)) else chunks
        cy, cx = int(cy), int(cx)
        if cy < 1 or cx < 1:
            raise SegsoftError(f"chunk size must be >= 1, got {chunks!r}")
    else:
        ny, nx = (native[axes.index("Y")], native[axes.index("X")]) if native else (DEFAULT_CHUNK, DEFAULT_CHUNK)
        cy = max(1, round(DEFAULT_CHUNK / ny)) * ny if ny < DEFAULT_CHUNK else ny
        cx = max(1, round(DEFAULT_CHUNK / nx)) * nx if nx < DEFAULT_CHUNK else nx
        # a strip of few rows: whole rows, as many as make a chunk of about DEFAULT_CHUNK^2 pixels
        if nx >= reader.shape[axes.index("X")] and ny < DEFAULT_CHUNK:
            cy = max(ny, (DEFAULT_CHUNK * DEFAULT_CHUNK // max(nx, 1)) // ny * ny)
    out = []
    for a, n in zip(axes, reader.shape):
        out.append(cy if a == "Y" else cx if a == "X" else 1 if a not in _CHANNEL_AXES else n)
    return tuple(min(c, n) if n else 1 for c, n in zip(out, reader.shape))


def _tiff_source(p: Path, name: str) -> tuple[_Reader, str, dict]:
    try:
        import tifffile

        with tifffile.TiffFile(p) as tif:
            if not len(tif.pages):
                raise SegsoftError(f"{name}: truncated or corrupt TIFF (no image in it)")
            s = tif.series[0]
            axes, shape = s.axes, tuple(int(n) for n in s.shape)
            if tif.is_shaped and axes == "QYX":
                axes = "YXS"  # a plain tifffile.imwrite(path, (H, W, C) array): read as numpy holds it
            p0 = s.pages[0] if s.pages and s.pages[0] is not None else tif.pages[0]
            photometric = int(getattr(p0, "photometric", 1))
            extras = tuple(int(e) for e in (getattr(p0, "extrasamples", None) or ()))
            store = s.aszarr(level=0)
            import zarr

            z = zarr.open(store, mode="r")
            native = tuple(int(c) for c in z.chunks)
            dtype = z.dtype
            store.close()
    except SegsoftError:
        raise
    except Exception as e:  # noqa: BLE001 - tifffile raises many kinds on bad data
        raise SegsoftError(f"{name}: truncated or corrupt TIFF data ({_reason(e)})") from None
    if len(native) != len(axes):
        native = None
    reader = _Reader("tiff", str(p), 0, 0, "", shape, dtype, name)
    band_axes = "".join(a for a in axes if a in _CHANNEL_AXES)
    if len(axes) == 3 and axes[0] == "Q" and not band_axes:
        axes = "C" + axes[1:]
        band_axes = "C"
    meta = {"photometric": photometric, "extras": extras, "band_axes": band_axes, "native": native, "mode": "tifffile"}
    return reader, axes, meta


def _zarr_source(p: Path, name: str) -> tuple[_Reader, str, dict]:
    try:
        import zarr

        node = zarr.open(str(p), mode="r")
    except Exception as e:  # noqa: BLE001
        raise SegsoftError(f"{name}: not a readable zarr store ({_reason(e)})") from None
    key = ""
    axes_names = None
    if isinstance(node, zarr.Group):
        attrs = dict(node.attrs)
        ms = attrs.get("multiscales") or (attrs.get("ome") or {}).get("multiscales")
        if not ms or not isinstance(ms, list) or not isinstance(ms[0], dict):
            raise SegsoftError(f"{name}: a zarr group that is not an OME-Zarr image (no multiscales metadata)")
        try:
            key = str(ms[0]["datasets"][0]["path"])
            axes_names = [a["name"] if isinstance(a, dict) else str(a) for a in ms[0].get("axes", [])]
            arr = node[key]
        except Exception as e:  # noqa: BLE001
            raise SegsoftError(f"{name}: OME-Zarr multiscales metadata without a readable dataset ({_reason(e)})")
    else:
        arr = node
    shape = tuple(int(n) for n in arr.shape)
    try:
        dtype = np.dtype(arr.dtype)
    except TypeError:
        raise SegsoftError(f"{name}: unsupported sample type {arr.dtype}") from None
    if axes_names:
        if len(axes_names) != len(shape):
            raise SegsoftError(f"{name}: {len(axes_names)} axes named for an array of shape {shape}")
        letters = {"y": "Y", "x": "X", "c": "C", "t": "T", "z": "Z"}
        axes = "".join(letters.get(a.lower(), "I") for a in axes_names)
    elif len(shape) == 2:
        axes = "YX"
    elif len(shape) == 3:
        axes = "YXS"  # as a .npy: (H, W, C)
    else:
        raise SegsoftError(f"{name}: a zarr array of shape {shape} is not an image (expected (H, W) or (H, W, C))")
    native = tuple(int(c) for c in arr.chunks)
    reader = _Reader("zarr", str(p), 0, 0, key, shape, dtype, name)
    band_axes = "".join(a for a in axes if a in _CHANNEL_AXES)
    meta = {"photometric": None, "extras": (), "band_axes": band_axes, "native": native, "mode": "zarr"}
    return reader, axes, meta


def _assemble(arr: da.Array, axes: str, meta: dict, p: Path, name: str, page: int | None, chunks: Any) -> LazyImage:
    if "Y" not in axes or "X" not in axes:
        raise SegsoftError(f"{name}: an array with axes {axes} has no rows and columns")
    if arr.dtype.kind == "c":
        raise SegsoftError(f"{name}: complex-valued samples are not supported")
    if arr.dtype.kind not in "biuf":
        raise SegsoftError(f"{name}: unsupported sample type {arr.dtype}")
    band = [i for i, a in enumerate(axes) if a in _CHANNEL_AXES]
    frame = [i for i, a in enumerate(axes) if a not in "YX" and i not in band]
    shape = arr.shape
    h, w = int(shape[axes.index("Y")]), int(shape[axes.index("X")])
    if h == 0 or w == 0:
        raise SegsoftError(f"{name}: no pixels")
    n_frames = int(np.prod([shape[i] for i in frame], dtype=np.int64)) if frame else 1
    c = int(np.prod([shape[i] for i in band], dtype=np.int64)) if band else 1
    if c < 1:
        raise SegsoftError(f"{name}: no bands")
    if n_frames > 1 and page is None:
        raise SegsoftError(f"{name}: has {n_frames} frames; choose one with --page N (0 to {n_frames - 1})")
    index = int(page or 0)
    if index >= n_frames:
        raise SegsoftError(f"{name}: has {n_frames} frame{'s' if n_frames != 1 else ''}; --page {index} is not one")
    order = frame + [axes.index("Y"), axes.index("X")] + band
    arr = arr.transpose(order)
    if frame:
        arr = arr.reshape((n_frames, h, w, c)) if len(frame) > 1 or len(band) != 1 else arr
        arr = arr[index]
    if arr.ndim == 2:
        arr = arr[:, :, None]
    elif arr.ndim != 3:
        arr = arr.reshape((h, w, c))
    band_axes = meta["band_axes"]
    photometric, extras = meta["photometric"], meta["extras"]
    alpha_extra = extras[:1] in ((1,), (2,))
    if meta["mode"] == "zarr":
        kind = (
            {1: "gray", 3: "rgb", 4: "rgba"}.get(c, "bands")
            if band_axes in ("S", "")
            else ("gray" if c == 1 else "bands")
        )
    elif band_axes != "S" or c == 1:
        kind = "gray" if c == 1 else "bands"
    elif c == 2:
        kind = "gray+alpha" if alpha_extra else "bands"
    elif c in (3, 4) and photometric == 2:
        kind = "rgb" if c == 3 else ("rgba" if alpha_extra else "bands")
    else:
        kind = "bands"
    dtype = arr.dtype
    if dtype.kind == "f":
        bit_depth = 32
    elif dtype.kind == "b":
        bit_depth = 8
    else:
        bit_depth = 8 * dtype.itemsize
    top = 1.0
    if dtype.kind == "f" and kind != "bands" and meta["mode"] != "zarr":
        # float colour or grey TIFF: as read_image, divided by the maximum when it exceeds 1 (one pass);
        # a zarr array is clipped to [0, 1] tile by tile, as a .npy is
        top = float(da.nanmax(arr).compute())
        if not math.isfinite(top):
            raise SegsoftError(f"{name}: image contains NaN or infinite values")
        top = max(1.0, top)
    has_alpha = kind in ("rgba", "gray+alpha")
    nodata = dtype.kind == "f" and kind == "bands"
    out_c = c - 1 if has_alpha else c
    width = out_c + (1 if (has_alpha or nodata) else 0)
    unit = arr.map_blocks(
        _unit_block,
        kind=kind,
        top=top,
        source=name,
        has_alpha=has_alpha,
        nodata=nodata,
        dtype=np.float32,
        chunks=(arr.chunks[0], arr.chunks[1], (width,)),
        meta=np.empty((0, 0, 0), dtype=np.float32),
    )
    bands = unit[:, :, :out_c] if width != out_c else unit
    mask = unit[:, :, out_c] > 0.5 if width != out_c else None
    gray = kind in ("gray", "gray+alpha")
    is_color = kind in ("rgb", "rgba")
    from ..io import _default_band_names

    names = _default_band_names(out_c, is_color, gray)
    return LazyImage(
        bands=bands,
        mask=mask,
        path=p,
        bit_depth=bit_depth,
        is_color=is_color,
        is_gray=gray,
        band_names=tuple(names),
        mode=f"{meta['mode']}:{dtype}",
        frame=index if n_frames > 1 else None,
    )


def _unit_block(a: np.ndarray, *, kind: str, top: float, has_alpha: bool, nodata: bool, source: str = "") -> np.ndarray:
    """One tile in the units of :class:`segsoft.io.Image` (see :func:`segsoft.io._array_image`),
    with the used-pixel mask as a last channel (1.0 used) when there is one."""
    from ..io import _int_unit, _unit_bands

    a = np.asarray(a)
    used = None
    if a.dtype.kind == "f":
        if kind == "bands":
            finite = np.isfinite(a)
            used = finite.all(axis=2)
            a = np.where(finite, a, 0).astype(np.float32)
        else:
            if not np.isfinite(a).all():
                raise SegsoftError(f"{source}: image contains NaN or infinite values")
            a = (a / top if top > 1.0 else a).astype(np.float32)
    else:
        a, _ = _int_unit(a)
    if kind == "bands":
        body = _unit_bands(a)
    elif a.dtype == np.uint8:
        body = np.divide(a, np.float32(255.0), dtype=np.float32)  # correctly rounded, as _unit_rgb
    elif a.dtype == np.uint16:
        body = a.astype(np.float32)
        body /= np.float32(65535)
    else:
        body = np.clip(a, 0.0, 1.0).astype(np.float32)
    if has_alpha:
        used = body[:, :, -1] > 0  # after the scaling: transparent where alpha maps to 0, for every dtype
        body = body[:, :, :-1]
    body = np.ascontiguousarray(body, dtype=np.float32)
    if not (has_alpha or nodata):
        return body
    out = np.empty(body.shape[:2] + (body.shape[2] + 1,), dtype=np.float32)
    out[:, :, :-1] = body
    out[:, :, -1] = used
    return out
