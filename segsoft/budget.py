"""Will an image fit in memory? Its size from the file's header, against the memory this machine has free.

:func:`check_fits` runs before any pixel is decoded, so an image that would
exhaust memory is refused up front, with a line that names the way out
(``--scheduler local``: segmented tile by tile, never read whole), instead of
being killed by the system half way.
"""

from __future__ import annotations

import os
from pathlib import Path

from .errors import SegsoftError

__all__ = ["available_memory", "check_fits", "estimate_bytes", "header_shape"]

#: Bytes a pixel costs in memory in ``run`` besides its k memberships: the bands and pixels
#: (float32), the features, the E-step's temporaries and the pictures (measured: about 49 at k=4).
BASE_BYTES_PER_PIXEL = 33
#: And per cluster: the float32 memberships and the E-step's log-probabilities.
BYTES_PER_PIXEL_CLUSTER = 4
#: --smooth keeps a float32 log-joint and the grid memberships per cluster too.
SMOOTH_BYTES_PER_PIXEL_CLUSTER = 12


def available_memory() -> int | None:
    """Bytes of memory available to a new process (Linux ``MemAvailable``, a cgroup limit if lower), or None."""
    best = None
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    best = int(line.split()[1]) * 1024
                    break
    except (OSError, ValueError, IndexError):
        try:
            best = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (ValueError, OSError, AttributeError):
            best = None
    for limit_file, usage_file in (
        ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
        ("/sys/fs/cgroup/memory/memory.limit_in_bytes", "/sys/fs/cgroup/memory/memory.usage_in_bytes"),
    ):
        try:
            text = Path(limit_file).read_text().strip()
            if text == "max":
                continue
            free = int(text) - int(Path(usage_file).read_text().strip())
            if free > 0 and (best is None or free < best):
                best = free
        except (OSError, ValueError):
            continue
    return best


def estimate_bytes(height: int, width: int, bands: int, k: int, smoothing: bool = False) -> int:
    """Peak memory of segmenting an image in memory, roughly (see the constants).

    Examples
    --------
    >>> estimate_bytes(10_000, 10_000, 3, 4) / 1e9  # 100 MP, k = 4
    4.9
    """
    per = BASE_BYTES_PER_PIXEL + 4 * max(bands - 3, 0) + BYTES_PER_PIXEL_CLUSTER * k
    if smoothing:
        per += SMOOTH_BYTES_PER_PIXEL_CLUSTER * k
    return int(height) * int(width) * per


def header_shape(path: str | os.PathLike) -> tuple[int, int, int] | None:
    """(height, width, bands) from the header of a TIFF, a .npy, a zarr store or an image Pillow opens;
    None if unknown."""
    p = Path(path)
    try:
        from .io import is_zarr_store

        if is_zarr_store(p):
            from .cluster.lazy import open_lazy  # the dask extra; its metadata only

            lz = open_lazy(p)
            return lz.height, lz.width, lz.n_bands
        if not p.is_file():
            return None  # a FIFO, a device, a folder: the reader refuses it; never opened here
        with open(p, "rb") as f:
            head = f.read(8)
        if head[:4] in (b"II*\0", b"MM\0*", b"II+\0", b"MM\0+"):
            import tifffile

            with tifffile.TiffFile(p) as tif:
                s = tif.series[0]
                axes, shape = s.axes, s.shape
                if "Y" not in axes or "X" not in axes:
                    return None
                h, w = int(shape[axes.index("Y")]), int(shape[axes.index("X")])
                c = 1
                for a, n in zip(axes, shape):
                    if a in "SC":
                        c *= int(n)
                return h, w, c
        if head[:6] == b"\x93NUMPY":
            import numpy as np

            with open(p, "rb") as f:
                version = np.lib.format.read_magic(f)
                shape, _, _ = np.lib.format._read_array_header(f, version)
            if len(shape) < 2:
                return None
            return int(shape[0]), int(shape[1]), int(shape[2]) if len(shape) > 2 else 1
        from PIL import Image as PILImage

        from .io import _pillow_limit_lifted, _quiet

        # our own --max-pixels check replaces Pillow's limit, and its warning would be noise
        with _pillow_limit_lifted(), _quiet(), PILImage.open(p) as pil:
            return int(pil.height), int(pil.width), len(pil.getbands())
    except Exception:  # noqa: BLE001 - the reader reports a bad file properly; this is only an estimate
        return None


def check_fits(path: str | os.PathLike, k: int, smoothing: bool = False, available: int | None = None) -> None:
    """Refuse an image that would not fit in the memory free now, before it is read.

    Raises
    ------
    SegsoftError
        Naming the file, the memory it would need and ``--scheduler local``.
    """
    shape = header_shape(path)
    if shape is None:
        return
    free = available_memory() if available is None else available
    if free is None:
        return
    need = estimate_bytes(*shape, k=k if isinstance(k, int) else 10, smoothing=smoothing)
    if need > free:
        h, w, _ = shape
        raise SegsoftError(
            f"{path}: {w}x{h} would need about {need / 2**30:.1f} GiB in memory, more than the "
            f"{free / 2**30:.1f} GiB free; segment it tile by tile with --scheduler local "
            "(pip install 'segsoft[dask]'), or give a smaller image"
        )
