"""The output folder: pictures, ``probabilities.npy`` and ``model.json``.

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

Every file is written to a temporary name and renamed into place, so an
interrupted run never leaves a half-written file behind.
"""

from __future__ import annotations

import datetime as _dt
import io as _io
import json
import math
import os
import re
import time
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import suppress
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image as PILImage

from . import __version__, render
from .errors import SegsoftError
from .features import FeatureSpec
from .io import atomic_path, atomic_write_bytes
from .mixture import model_from_dict
from .regions import MERGE_THRESHOLD, check_regions_flag, check_threshold

if TYPE_CHECKING:
    from .segment import SoftSegmentation

__all__ = ["write", "check_writable", "model_record", "load_model", "save_model", "output_files", "PNG_COMPRESS_LEVEL"]

# zlib level 1: PNGs ~10 % larger than the default level 6, written ~4x faster
PNG_COMPRESS_LEVEL = 1
MONTAGE_TILE_WIDTH = 256


def output_files(k: int, auto: bool = False, regions: bool = False) -> list[str]:
    """Names of the files :func:`write` creates for ``k`` clusters (``auto``: k was chosen; ``regions``: asked for)."""
    return (
        ["overlay.png", "labels.png", "uncertainty.png"]
        + [f"prob_{j}.png" for j in range(k)]
        + ["montage.png", "probabilities.npy", "model.json"]
        + (["k_selection.png"] if auto else [])
        + (["regions.png", "regions.npy"] if regions else [])
    )


def _png_bytes(picture: np.ndarray | render.IndexedImage) -> bytes:
    if isinstance(picture, render.IndexedImage):
        img = PILImage.fromarray(picture.indices)
        img.putpalette(picture.palette.tobytes())  # turns the L image into P
    else:
        img = PILImage.fromarray(picture)
    buf = _io.BytesIO()
    img.save(buf, format="PNG", compress_level=PNG_COMPRESS_LEVEL)
    return buf.getvalue()


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
    labels = seg.labels
    counts = np.bincount(labels[labels >= 0].ravel(), minlength=seg.k)
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
                f"mean_{spec.color}": mean_color[j],
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
    path = Path(path)
    try:
        record = json.loads(path.read_text())
    except FileNotFoundError:
        raise SegsoftError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise SegsoftError(f"{path}: is a directory, not a model.json") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise SegsoftError(f"{path}: not a segsoft model.json ({exc.__class__.__name__})") from None
    except OSError as exc:
        raise SegsoftError(f"{path}: cannot read ({exc.strerror})") from None
    try:
        model = model_from_dict(record["model"])
        spec = FeatureSpec.from_dict({k: v for k, v in record["features"].items() if k != "names"})
    except (KeyError, TypeError, ValueError) as exc:
        raise SegsoftError(f"{path}: not a segsoft model.json (missing or bad field: {exc})") from None
    return model, spec, record


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


_FOLDER_TEMP = re.compile(
    r"^\.(overlay|labels|regions|uncertainty|montage|k_selection|probabilities|model|prob_\d+)"
    r"\.[0-9a-f]{8}\.tmp\.(png|npy|json)$"
)


def _sweep(folder: Path, pattern: re.Pattern) -> None:
    with suppress(OSError):
        for entry in os.scandir(folder):
            if pattern.match(entry.name):
                with suppress(OSError):
                    os.unlink(entry.path)


def _start_folder(folder: Path) -> None:
    """Mark ``folder`` incomplete before (re)writing it: an old model.json would
    otherwise vouch for a mix of old and new files if this write is killed."""
    with suppress(OSError):
        (folder / "model.json").unlink()
    _sweep(folder, _FOLDER_TEMP)


def _remove_stale(folder: Path, k: int, auto: bool, regions: bool = False) -> None:
    """Files of an earlier run with more clusters (or k="auto", or regions) would be mistaken for this one's."""
    for entry in os.scandir(folder):
        m = re.fullmatch(r"prob_(\d+)\.png", entry.name)
        if (
            (m and int(m.group(1)) >= k)
            or (entry.name == "k_selection.png" and not auto)
            or (entry.name in ("regions.png", "regions.npy") and not regions)
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
) -> dict[str, Path]:
    """Write every output of ``seg`` into ``folder`` (created if needed).

    With ``regions`` also ``regions.png`` (each region in its mean colour,
    cut at ``region_threshold``, see :mod:`segsoft.regions`) and ``regions.npy``
    (int32 region ids, -1 on unused pixels); ``model.json`` then records
    the threshold and the number of regions. Returns the written paths by
    file name. ``model.json`` is written last, so its presence marks a
    complete output folder.

    Examples
    --------
    >>> paths = write(segsoft.segment("images/coffee.jpg", k=3), "outputs/coffee")  # doctest: +SKIP
    >>> sorted(paths)[:2]  # doctest: +SKIP
    ['labels.png', 'model.json']
    """
    folder = Path(folder)
    try:  # before anything is touched: a bad argument must not leave the folder half rewritten
        check_regions_flag(regions)
        region_threshold = check_threshold(region_threshold)
    except ValueError as exc:
        raise SegsoftError(f"{folder}: {exc}") from None
    _prepare_folder(folder)
    _start_folder(folder)
    t0 = time.perf_counter()
    written: dict[str, Path] = {}

    # Pillow releases the GIL while encoding, so PNGs are encoded and written
    # on worker threads while the next picture renders; a bounded queue keeps
    # at most a few full-size pictures alive at once.
    with ThreadPoolExecutor(max_workers=2) as pool:
        pending: list[Future] = []

        def submit(fn: Any, *args: Any) -> None:
            if len(pending) >= 3:
                pending.pop(0).result()
            pending.append(pool.submit(fn, *args))

        def put_png(name: str, picture: Any) -> None:
            written[name] = folder / name
            submit(lambda: atomic_write_bytes(written[name], _png_bytes(picture)))

        def put_npy() -> None:
            with atomic_path(folder / "probabilities.npy") as tmp:
                np.save(tmp, seg.probabilities)

        written["probabilities.npy"] = folder / "probabilities.npy"
        submit(put_npy)
        if regions:
            region_map = seg.regions(region_threshold)

            def put_regions() -> None:
                with atomic_path(folder / "regions.npy") as tmp:
                    np.save(tmp, region_map)

            written["regions.npy"] = folder / "regions.npy"
            submit(put_regions)
        tiles = [("original", seg.original(MONTAGE_TILE_WIDTH))] if montage else []
        for name, title, make in seg.pictures(alpha, cmap, regions, region_threshold):
            picture = make()
            put_png(name, picture)
            if montage:
                tiles.append((title, render.shrink(picture, MONTAGE_TILE_WIDTH)))
        if montage:
            put_png("montage.png", render.montage(tiles, tile_width=MONTAGE_TILE_WIDTH))
        if seg.selection is not None:
            put_png("k_selection.png", render.selection_plot(seg.selection))
        for job in pending:
            job.result()  # re-raises the first write error
    _remove_stale(folder, seg.k, seg.selection is not None, regions)
    record = model_record(seg)
    if regions:
        record["regions"] = {"threshold": region_threshold, "count": int(region_map.max()) + 1}
    seg.timings["render_write"] = record["timings"]["render_write"] = time.perf_counter() - t0
    written["model.json"] = _write_json(record, folder / "model.json")
    return written
