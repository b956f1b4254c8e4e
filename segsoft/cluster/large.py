"""One image larger than memory: segmented tile by tile, written as OME-Zarr with PNG previews.

:func:`segment_large` opens the image lazily (:func:`segsoft.cluster.lazy.open_lazy`),
makes the features per tile, and fits the model as :func:`segsoft.cluster.em.fit_chunked`
does (a seeded sample gathered from the tiles, then full-data EM iterations as
per-tile sufficient statistics summed as a tree). :meth:`LargeSegmentation.save`
computes the memberships tile by tile in one pass that writes, at once:

* ``probabilities.zarr``: an OME-Zarr image (NGFF 0.4), axes (c, y, x), one
  channel per cluster, in the chosen dtype, with a pyramid of 2x2 means; the
  hard labels as its label image ``labels/clusters`` (uint8, 255 where
  transparent; a pyramid by 2x2 striding);
* ``uncertainty.zarr``: the normalised entropy (0 certain, 1 uniform), axes (y, x), a pyramid of means;
* the mean log-likelihood, the cluster sizes, and block means of the image
  and the memberships at the factor that brings the longer side to at most
  :data:`PREVIEW_SIDE` pixels.

The previews are then the in-memory pictures (overlay, labels, uncertainty,
heatmaps, montage, and regions on request) of that block-averaged image,
written by :func:`segsoft.outputs.write`'s own code, so a person can look at
the result at once; ``model.json`` records the full size and the preview's.

With ``smoothing`` (neighbourhood EM), the model is fitted on the strided
sub-grid the in-memory path uses (gathered from the tiles), and the final
memberships run the checkerboard sweeps on each tile with a halo of
``2 * FINAL_SWEEPS + 2`` pixels: a sweep moves information by two pixels, so after
``FINAL_SWEEPS`` sweeps a tile's interior is the whole-grid result exactly.
"""

from __future__ import annotations

import math
import os
import shutil
import time
import uuid
import warnings
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import dask
import dask.array as da
import numpy as np

from ..errors import SegsoftError
from .lazy import LazyImage, open_lazy

__all__ = ["PREVIEW_SIDE", "LargeSegmentation", "segment_large"]

#: Longest side of the PNG previews of an out-of-core result.
PREVIEW_SIDE = 4096
#: Pyramid levels are added until the longer side is at most this.
PYRAMID_SMALLEST = 512


def _final_sweeps() -> int:
    from ..segment import FINAL_SWEEPS

    return FINAL_SWEEPS


@dataclass
class LargeSegmentation:
    """A fitted model on a lazy image; the memberships are computed and written by :meth:`save`.

    Attributes
    ----------
    image : LazyImage
    features : dask array (H, W, D)
    model, spec :
        The fitted model and feature transform.
    settings : dict
    timings : dict
    log_likelihood : float or None
        Mean log-likelihood per used pixel (fuzzy c-means: minus the mean
        weighted squared distance); None until :meth:`save` has run the
        memberships pass.
    """

    image: LazyImage
    features: da.Array
    model: Any
    spec: Any
    settings: dict[str, Any]
    scheduler: str
    jobs: int | None = None
    timings: dict[str, float] = field(default_factory=dict)
    log_likelihood: float | None = None
    counts: np.ndarray | None = None
    preview: Any = None
    preview_factor: int = 1
    cache_path: Path | None = None
    selection: dict[str, Any] | None = None

    def close(self) -> None:
        """Remove the features kept on disk (see ``workdir`` in :func:`segment_large`); idempotent."""
        _remove_cache(self.cache_path)
        self.cache_path = None

    @property
    def n_used(self) -> int:
        """Pixels the memberships were computed on (every unmasked pixel of the full image)."""
        return int(self.counts.sum()) if self.counts is not None else self.image.height * self.image.width

    @property
    def bic(self) -> float | None:
        """BIC of the model on every used pixel of the full image (None for fuzzy c-means, or before memberships)."""
        if not hasattr(self.model, "n_parameters") or self.log_likelihood is None:
            return None
        n = max(self.n_used, 1)
        return float(-2.0 * self.log_likelihood * n + self.model.n_parameters() * np.log(n))

    @property
    def aic(self) -> float | None:
        """AIC on every used pixel of the full image (None for fuzzy c-means, or before memberships)."""
        if not hasattr(self.model, "n_parameters") or self.log_likelihood is None:
            return None
        return float(-2.0 * self.log_likelihood * self.n_used + 2.0 * self.model.n_parameters())

    @property
    def k(self) -> int:
        return int(self.model.n_components)

    def save(
        self,
        folder: str | os.PathLike,
        *,
        alpha: float = 0.5,
        cmap: str = "viridis",
        montage: bool = True,
        regions: bool = False,
        region_threshold: float | None = None,
        probabilities: str = "zarr",
        probabilities_dtype: str = "float32",
        palette: str = "categorical",
        protect: tuple = (),
    ) -> dict[str, Path]:
        """Compute the memberships tile by tile and write every output into ``folder`` (see the module docstring).

        Returns the written paths by name. ``model.json`` is written last.
        """
        from ..outputs import (
            _prepare_folder,
            _write_locked,
            check_targets,
            folder_lock,
            probability_settings,
        )
        from ..regions import MERGE_THRESHOLD, check_regions_flag, check_threshold

        folder = Path(folder)
        if probabilities not in ("zarr", "none"):
            raise SegsoftError(
                f"--probabilities {probabilities}: an image this large is written as zarr (or none); "
                "use --probabilities zarr"
            )
        region_threshold = MERGE_THRESHOLD if region_threshold is None else region_threshold
        try:
            check_regions_flag(regions)
            region_threshold = check_threshold(region_threshold)
        except ValueError as exc:
            raise SegsoftError(f"{folder}: {exc}") from None
        stored = probability_settings("none", probabilities_dtype)
        dtype = probabilities_dtype
        protect = [self.image.path, *protect]
        check_targets(folder, protect)
        _prepare_folder(folder)
        from .client import dask_client

        with folder_lock(folder):
            check_targets(folder, protect)
            _sweep_temp_stores(folder)
            with suppress(OSError):
                (folder / "model.json").unlink()  # incomplete until written again
            t0 = time.perf_counter()
            try:
                with dask_client(self.scheduler, self.jobs):
                    written, preview = self._memberships_pass(folder, dtype, probabilities == "zarr")
            finally:
                self.close()
            self.timings["memberships"] = time.perf_counter() - t0
            self.preview = preview
            preview.use_palette(palette)
            files = {}
            if probabilities == "zarr":
                files = {
                    "file": "probabilities.zarr",
                    "labels_file": "probabilities.zarr/labels/clusters",
                    "uncertainty_file": "uncertainty.zarr",
                    "levels": written["levels"],
                }
            H, W = self.image.height, self.image.width
            patch = {
                "probabilities": {
                    **stored,
                    "format": probabilities,
                    "dtype": dtype if probabilities == "zarr" else None,
                    **files,
                    **(
                        {
                            "shape": [self.k, H, W],
                            "transparent": "NaN" if dtype != "uint8" else 255,
                            "scale": 254 if dtype == "uint8" else None,
                        }
                        if probabilities == "zarr"
                        else {}
                    ),
                },
                "out_of_core": {
                    "scheduler": self.scheduler,
                    "chunks": [int(self.features.chunks[0][0]), int(self.features.chunks[1][0])],
                    "preview": {
                        "factor": self.preview_factor,
                        "width": preview.image.width,
                        "height": preview.image.height,
                    },
                },
            }
            out = _write_locked(
                preview,
                folder,
                alpha,
                cmap,
                montage,
                regions,
                region_threshold,
                {"format": "external", "dtype": dtype},
                record_patch=lambda record: _patch_record(record, self, patch),
            )
            if probabilities == "zarr":
                out["probabilities.zarr"] = folder / "probabilities.zarr"
                out["uncertainty.zarr"] = folder / "uncertainty.zarr"
            return out

    # ------------------------------------------------------------------

    def _memberships_pass(self, folder: Path, dtype: str, write: bool) -> tuple[dict, Any]:
        """One task per tile: memberships, then at once the stored planes, the cluster counts,
        the score and the preview's block means. Each tile's intermediates live in its task only
        (one large array per tile in flight, not one per output), which bounds the memory."""
        from .em import _Grid

        k = self.k
        img = self.image
        g = _Grid(self.features, img.mask)
        both = self._both(g)  # (H, W, k + 1): memberships and per-pixel score, NaN where masked
        factor = self.preview_factor
        # each tile writes whole chunks of the stores (chunked as the first tile) and whole preview blocks:
        # every tile but the last starts on a multiple of the first one's size, itself a multiple of the factor
        for ch in both.chunks[:2]:
            if any(c != ch[0] for c in ch[:-1]) or ch[0] % factor:
                raise RuntimeError(f"tiles {both.chunks[:2]} do not fit the stores' chunks or the preview's blocks")
        bands = img.bands.rechunk({0: both.chunks[0], 1: both.chunks[1]})
        mask = None if img.mask is None else img.mask.rechunk({0: both.chunks[0], 1: both.chunks[1]})
        stores = _new_stores(folder, self, both.chunks, dtype) if write else {}
        arrays = {key: stores[key] for key in ("prob", "labels", "unc")} if write else None
        y0s = np.r_[0, np.cumsum(both.chunks[0])]
        x0s = np.r_[0, np.cumsum(both.chunks[1])]
        pb, bb = both.to_delayed(), bands.to_delayed()
        mb = None if mask is None else mask.to_delayed()
        tasks, where = [], []
        for i in range(pb.shape[0]):
            for j in range(pb.shape[1]):
                tasks.append(
                    dask.delayed(_finish_tile, pure=False)(
                        pb[i, j, 0],
                        bb[i, j, 0],
                        None if mb is None else mb[i, j],
                        int(y0s[i]),
                        int(x0s[j]),
                        k=k,
                        factor=factor,
                        dtype_name=dtype,
                        arrays=arrays,
                    )
                )
                where.append((int(y0s[i]) // factor, int(x0s[j]) // factor))
        H, W = img.height, img.width
        hs, ws = math.ceil(H / factor), math.ceil(W / factor)
        nb = img.n_bands + (1 if mask is not None else 0)
        small_p = np.empty((hs, ws, k), dtype=np.float32)
        small_b = np.empty((hs, ws, nb), dtype=np.float32)
        total, counts = 0.0, np.zeros(k, dtype=np.int64)
        # all at once (no barrier for a slow tile to hold up): the results are the preview, small
        for (ys, xs), (sc, cnt, sp, sb) in zip(where, dask.compute(*tasks)):
            total += sc
            counts += cnt
            small_p[ys : ys + sp.shape[0], xs : xs + sp.shape[1]] = sp
            small_b[ys : ys + sb.shape[0], xs : xs + sb.shape[1]] = sb
        self.counts = counts
        self.log_likelihood = float(total) / max(int(counts.sum()), 1)
        levels = _finish_stores(folder, stores, self, dtype) if write else 1
        return {"levels": levels}, self._preview(small_p, small_b)

    def _both(self, g: Any) -> da.Array:
        from .em import _memberships_array

        if not self.settings.get("smoothing"):
            return _memberships_array(self.model, g, with_score=True, dtype=np.float64)
        return _smoothed_both(self.model, g, float(self.settings["smoothing"]), align=self.preview_factor)

    def _preview(self, small_p: np.ndarray, small_b: np.ndarray) -> Any:
        """The block-averaged image and memberships as an in-memory SoftSegmentation (for the pictures)."""
        from ..io import Image, display_composite
        from ..segment import SoftSegmentation

        img = self.image
        if img.mask is not None:
            share = small_b[..., -1]
            used = share >= 0.5
            bands = np.ascontiguousarray(small_b[..., :-1])
            mask = used if not used.all() else None
            if mask is not None and not mask.any():
                mask = share > 0
        else:
            bands, mask = np.ascontiguousarray(small_b), None
        p = np.ascontiguousarray(small_p, dtype=np.float32)
        if mask is not None:
            p[~mask] = np.nan
        display = self.settings.get("display_bands")
        if img.is_color:
            pixels = np.clip(bands, 0, 1)
            image = Image(pixels, mask, img.path, img.bit_depth, img.mode, False, None, img.band_names, True)
        elif img.is_gray:
            pixels = np.repeat(np.clip(bands, 0, 1), 3, axis=2)
            image = Image(pixels, mask, img.path, img.bit_depth, img.mode, True, None, img.band_names)
        else:
            pixels = display_composite(bands, display, mask)
            image = Image(pixels, mask, img.path, img.bit_depth, img.mode, False, bands, img.band_names, False)
        seg = SoftSegmentation(
            image,
            p,
            self.model,
            self.spec,
            float(self.log_likelihood),
            dict(self.settings),
            self.timings,
            self.selection,
        )
        # the montage header and the notebook table describe the whole image, not the preview
        described = seg._describe()
        f = self.preview_factor
        described["size"] = f"{img.width} x {img.height} px, out of core" + (
            f" (pictures: means of {f} x {f} blocks)" if f > 1 else ""
        )
        if self.counts is not None:
            n = int(self.counts.sum())
            if n < img.n_pixels:
                described["size"] += f", {100.0 * (1 - n / img.n_pixels):.1f} % masked out"
        seg._source = _Described(described)
        return seg


class _Described:
    """Stands in for the full-size segmentation in a preview's ``_describe``."""

    def __init__(self, described: dict[str, str]):
        self.described = described

    def _describe(self) -> dict[str, str]:
        return dict(self.described)


def _finish_tile(
    both: np.ndarray,
    bands: np.ndarray,
    mask: np.ndarray | None,
    y0: int,
    x0: int,
    *,
    k: int,
    factor: int,
    dtype_name: str,
    arrays: dict[str, Any] | None,
) -> tuple[float, np.ndarray, np.ndarray, np.ndarray]:
    """Everything one tile's memberships give: (score sum, cluster counts, preview blocks of the
    memberships and of the bands); the stored planes are written here, into this tile's zarr chunks."""
    from ..outputs import encode_probabilities
    from ..render import normalized_entropy

    probs = np.ascontiguousarray(both[..., :k], dtype=np.float32)  # as segment() keeps them
    score = float(np.nansum(both[..., k]))
    labels = _labels_block(probs, k=k)
    counts = np.bincount(labels[labels < k].ravel(), minlength=k)[:k].astype(np.int64)
    h, w = labels.shape
    if arrays is not None:
        arrays["prob"][:, y0 : y0 + h, x0 : x0 + w] = np.moveaxis(encode_probabilities(probs, dtype_name), -1, 0)
        arrays["labels"][0, y0 : y0 + h, x0 : x0 + w] = labels
        arrays["unc"][y0 : y0 + h, x0 : x0 + w] = encode_probabilities(normalized_entropy(probs), dtype_name)
    small_p = _mean_block(probs, factor=factor)
    if mask is None:
        small_b = _mean_block(bands, factor=factor)
    else:
        m = np.asarray(mask, dtype=np.float32)[..., None]
        small_b = _mean_block(np.concatenate([bands * m, m], axis=2), factor=factor, weighted=True)
    return score, counts, small_p, small_b


def _multiple(c: int, f: int) -> int:
    return max(1, round(c / f)) * f if c % f else c


def _block_sum(a: np.ndarray, f: int) -> np.ndarray:
    """Sums of f x f blocks of ``a`` (sides multiples of f) by strided adds: no strided reduction."""
    rows = a[0::f].copy()
    for i in range(1, f):
        rows += a[i::f]
    out = rows[:, 0::f].copy()
    for j in range(1, f):
        out += rows[:, j::f]
    return out


def _mean_block(b: np.ndarray, *, factor: int, weighted: bool = False) -> np.ndarray:
    """Means of ``factor`` x ``factor`` blocks (the last ones partial), NaN left out.

    With ``weighted``, the last channel holds the weights and the others are
    weighted values: the result is (weighted means, mean weight)."""
    b = np.asarray(b, dtype=np.float32)
    f = factor
    h, w = b.shape[:2]
    H, W = math.ceil(h / f), math.ceil(w / f)
    bad = np.isnan(b)
    has_nan = bool(bad.any())
    if f == 1 and not has_nan:
        s, c = b.astype(np.float64), np.ones(b.shape, dtype=np.float64)
    else:
        pad = np.zeros((H * f, W * f) + b.shape[2:], dtype=np.float32)
        pad[:h, :w] = np.where(bad, 0, b) if has_nan else b
        s = _block_sum(pad, f).astype(np.float64)
        if has_nan:
            valid = np.zeros(pad.shape, dtype=np.float32)
            valid[:h, :w] = ~bad
            c = _block_sum(valid, f).astype(np.float64)
        else:  # every block is full but those on the far edges
            ry = np.minimum(f, h - f * np.arange(H)).astype(np.float64)
            rx = np.minimum(f, w - f * np.arange(W)).astype(np.float64)
            c = np.broadcast_to((ry[:, None] * rx[None, :]).reshape((H, W) + (1,) * (b.ndim - 2)), s.shape)
    with np.errstate(invalid="ignore", divide="ignore"):
        if not weighted:
            return (s / c).astype(np.float32)  # NaN where every value was NaN
        wsum = s[..., -1:]
        means = np.where(wsum > 0, s[..., :-1] / np.where(wsum > 0, wsum, 1), 0)
        return np.concatenate([means, wsum / np.maximum(c[..., -1:], 1)], axis=-1).astype(np.float32)


def _labels_block(p: np.ndarray, *, k: int) -> np.ndarray:
    bad = np.isnan(p[..., 0])
    lab = np.argmax(np.where(np.isnan(p), -1, p), axis=2).astype(np.uint8)
    lab[bad] = 255
    return lab


def _halo() -> int:
    """Halo of the smoothed tiles: a sweep moves information two pixels; even, so tiles keep their parity."""
    return 2 * _final_sweeps() + 2


def _even_tiles(n: int, size: int, halo: int, align: int = 2) -> tuple[int, ...]:
    """Tiles along an axis of ``n``: all of one ``size`` (a multiple of ``align``, which is even, and at
    least ``2 * halo``) but the last, which takes in a remainder shorter than the halo; so every tile
    starts on a multiple of ``align`` (an even index keeps the checkerboard's parity)."""
    size = max(size, 2 * halo)
    size = -(-size // align) * align
    tiles = [size] * (n // size)
    rest = n - size * len(tiles)
    if rest:
        if tiles and rest < halo:
            tiles[-1] += rest
        else:
            tiles.append(rest)
    return tuple(tiles) or (n,)


def _smoothed_both(model: Any, g: Any, beta: float, align: int = 2) -> da.Array:
    import copy

    k = model.n_components
    halo = _halo()
    X = g.X
    align = max(2, align)
    ty = _even_tiles(int(X.shape[0]), int(X.chunks[0][0]), halo, align)
    tx = _even_tiles(int(X.shape[1]), int(X.chunks[1][0]), halo, align)
    X = X.rechunk((ty, tx, -1))
    depth = {0: halo, 1: halo, 2: 0}
    ov = da.overlap.overlap(X, depth=depth, boundary="none")
    if tuple(len(c) for c in ov.chunks[:2]) != (len(ty), len(tx)):  # dask re-tiled: parity would be lost
        raise RuntimeError(f"overlap changed the tiles {ty}, {tx} into {ov.chunks[:2]}")
    args = [ov]
    if g.mask is not None:
        m = g.mask.rechunk(X.chunks[:2])
        args.append(da.overlap.overlap(m[..., None], depth=depth, boundary="none"))
    out = da.map_blocks(
        _smooth_tile,
        *args,
        model=copy.deepcopy(model),
        beta=beta,
        sweeps=_final_sweeps(),
        dtype=np.float64,
        chunks=tuple(ov.chunks[:2]) + ((k + 1,),),
        meta=np.empty((0, 0, 0), dtype=np.float64),
    )
    return da.overlap.trim_internal(out, depth, boundary="none")


def _smooth_tile(f: np.ndarray, m: np.ndarray | None = None, *, model: Any, beta: float, sweeps: int) -> np.ndarray:
    from ..spatial import PottsPrior

    h, w, d = f.shape
    k = model.n_components
    mask = None if m is None else np.asarray(m)[..., 0]
    rows = f.reshape(-1, d) if mask is None else f.reshape(-1, d)[mask.ravel()]
    out = np.full((h * w, k + 1), np.nan, dtype=np.float64)
    if rows.shape[0]:
        # as segment's _smoothed_memberships: a float32 log-joint, its log-sum-exp per pixel
        lj = model.weighted_log_prob(rows, out=np.empty((rows.shape[0], k), dtype=np.float32))
        top = lj.max(axis=1, keepdims=True)
        score = top[:, 0] + np.log(np.exp(lj - top).sum(axis=1))
        used = None if mask is None or mask.all() else mask
        c, _ = PottsPrior((h, w), beta, used).memberships(lj, sweeps=sweeps)
        sel = slice(None) if mask is None else mask.ravel()
        out[sel, :k] = c
        out[sel, k] = score
    return out.reshape(h, w, k + 1)


# --------------------------------------------------------------------------
# OME-Zarr stores


def _tmp_name(name: str) -> str:
    return f".{name}.{uuid.uuid4().hex[:8]}.tmp.zarr"


def _sweep_temp_stores(folder: Path) -> None:
    """Temporary stores of a write that was killed (its lock died with it)."""
    with suppress(OSError):
        for entry in os.scandir(folder):
            if (
                entry.name.startswith(".")
                and entry.name.endswith(".tmp.zarr")
                and entry.is_dir(follow_symlinks=False)
                and not (entry.name.endswith(_CACHE_SUFFIX) and _owner_alive(entry.name))
            ):
                shutil.rmtree(entry.path, ignore_errors=True)


def _owner_alive(name: str) -> bool:
    """Whether the process that keeps features cached under this name (``.<host>-<pid>-<hex>...``) still
    runs; one on another machine (a shared output folder) is taken to."""
    try:
        host, pid_text, _ = name[1:].rsplit("-", 2)
        if host != _host():
            return True
        os.kill(int(pid_text), 0)
    except (ValueError, ProcessLookupError):
        return False
    except PermissionError:
        return True
    return True


def _new_stores(folder: Path, seg: LargeSegmentation, chunks: tuple, dtype: str) -> dict[str, Any]:
    import zarr

    k, H, W = seg.k, seg.image.height, seg.image.width
    cy, cx = int(chunks[0][0]), int(chunks[1][0])
    fill = 255 if dtype == "uint8" else np.nan
    prob_tmp = folder / _tmp_name("probabilities")
    unc_tmp = folder / _tmp_name("uncertainty")
    pg = zarr.open_group(str(prob_tmp), mode="w", zarr_format=2)
    prob = pg.create_array("0", shape=(k, H, W), chunks=(1, cy, cx), dtype=dtype, fill_value=fill, **_V2_KEYS)
    lg = pg.create_group("labels").create_group("clusters")
    lab = lg.create_array("0", shape=(1, H, W), chunks=(1, cy, cx), dtype="uint8", fill_value=255, **_V2_KEYS)
    ug = zarr.open_group(str(unc_tmp), mode="w", zarr_format=2)
    unc = ug.create_array("0", shape=(H, W), chunks=(cy, cx), dtype=dtype, fill_value=fill, **_V2_KEYS)
    return {"prob": prob, "labels": lab, "unc": unc, "prob_path": prob_tmp, "unc_path": unc_tmp}


def _level_factors(H: int, W: int) -> list[tuple[int, int]]:
    """Per pyramid level, the (y, x) factor from level 0: each level halves every axis of 2 or more
    pixels, until the longer side is at most :data:`PYRAMID_SMALLEST` or nothing can be halved."""
    out, (h, w), (fy, fx) = [(1, 1)], (H, W), (1, 1)
    while max(h, w) > PYRAMID_SMALLEST and (h >= 2 or w >= 2):
        if h >= 2:
            h, fy = h // 2, fy * 2
        if w >= 2:
            w, fx = w // 2, fx * 2
        out.append((fy, fx))
    return out


def _pyramid(group: Any, first: Any, how: str, dtype: str, factors: list[tuple[int, int]]) -> None:
    """Levels 1, 2, ... of ``first``, each from the one before: 2x2 means (NaN and, for uint8, 255
    left out), or for labels every second pixel, of the same (trimmed) extent so levels line up."""
    src = first
    for level in range(1, len(factors)):
        a = da.from_zarr(src)
        sy = factors[level][0] // factors[level - 1][0]
        sx = factors[level][1] // factors[level - 1][1]
        h, w = a.shape[-2] // sy, a.shape[-1] // sx
        a = a[..., : h * sy, : w * sx]
        if how == "labels":
            nxt = a[..., ::sy, ::sx]
        else:
            f = a.astype(np.float32)
            if dtype == "uint8":
                f = da.where(a == 255, np.nan, f / np.float32(254))  # back to memberships before the mean
            axes = {f.ndim - 2: sy, f.ndim - 1: sx}
            f = f.rechunk({f.ndim - 2: _multiple(f.chunks[-2][0], sy), f.ndim - 1: _multiple(f.chunks[-1][0], sx)})
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)
                f = da.coarsen(np.nanmean, f, axes, trim_excess=True)
            nxt = da.map_blocks(_encode_any, f, dtype_name=dtype, dtype=np.dtype(dtype))
        shape = tuple(int(v) for v in nxt.shape)
        chunks = tuple(min(int(c), n) for c, n in zip(src.chunks, shape))
        fill = 255 if (how == "labels" or dtype == "uint8") else np.nan
        arr = group.create_array(str(level), shape=shape, chunks=chunks, dtype=src.dtype, fill_value=fill, **_V2_KEYS)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            da.store(nxt.rechunk(chunks), arr, lock=False)
        src = arr


#: NGFF 0.4 wants "/" between the chunk indices of a key (zarr v2's default is ".").
_V2_KEYS = {"chunk_key_encoding": {"name": "v2", "separator": "/"}}


def _encode_any(f: np.ndarray, *, dtype_name: str) -> np.ndarray:
    from ..outputs import encode_probabilities

    return encode_probabilities(f, dtype_name)


def _multiscales(name: str, factors: list[tuple[int, int]], axes: list[dict], kind: str) -> dict:
    n = len(axes)
    datasets = []
    for i, (fy, fx) in enumerate(factors):
        scale = [1.0] * (n - 2) + [float(fy), float(fx)]
        datasets.append({"path": str(i), "coordinateTransformations": [{"type": "scale", "scale": scale}]})
    return {"version": "0.4", "name": name, "axes": axes, "datasets": datasets, "type": kind}


def _finish_stores(folder: Path, stores: dict, seg: LargeSegmentation, dtype: str) -> int:
    import zarr

    from ..render import cluster_colors

    k = seg.k
    pg = zarr.open_group(str(stores["prob_path"]), mode="r+")
    ug = zarr.open_group(str(stores["unc_path"]), mode="r+")
    lg = pg["labels"]["clusters"]
    factors = _level_factors(seg.image.height, seg.image.width)
    levels = len(factors)
    _pyramid(pg, stores["prob"], "mean", dtype, factors)
    _pyramid(lg, stores["labels"], "labels", dtype, factors)
    _pyramid(ug, stores["unc"], "mean", dtype, factors)
    cyx = [{"name": "c", "type": "channel"}, {"name": "y", "type": "space"}, {"name": "x", "type": "space"}]
    yx = cyx[1:]
    colors = np.asarray(cluster_colors(k), dtype=int)
    top = 254 if dtype == "uint8" else 1
    pg.attrs.update(
        {
            "multiscales": [_multiscales("probabilities", factors, cyx, "mean")],
            "omero": {
                "channels": [
                    {
                        "label": f"cluster {j}",
                        "color": "{:02X}{:02X}{:02X}".format(*tuple(int(c) for c in colors[j])),
                        "window": {"start": 0, "end": top, "min": 0, "max": top},
                        "active": True,
                    }
                    for j in range(k)
                ],
                "rdefs": {"model": "color"},
            },
            "segsoft": {
                "what": "memberships",
                "dtype": dtype,
                "nodata": 255 if dtype == "uint8" else "NaN",
                "scale": 254 if dtype == "uint8" else 1,
            },
        }
    )
    pg["labels"].attrs.update({"labels": ["clusters"]})
    lg.attrs.update(
        {
            "multiscales": [_multiscales("clusters", factors, cyx, "nearest")],
            "image-label": {
                "version": "0.4",
                "colors": [{"label-value": j, "rgba": [*map(int, colors[j]), 255]} for j in range(k)]
                + [{"label-value": 255, "rgba": [0, 0, 0, 0]}],
                "source": {"image": "../../"},
            },
        }
    )
    ug.attrs.update(
        {
            "multiscales": [_multiscales("uncertainty", factors, yx, "mean")],
            "segsoft": {"what": "normalised entropy of the memberships (0 certain, 1 uniform)"},
        }
    )
    zarr.consolidate_metadata(str(stores["prob_path"]), zarr_format=2)
    zarr.consolidate_metadata(str(stores["unc_path"]), zarr_format=2)
    for tmp, final in (
        (stores["prob_path"], folder / "probabilities.zarr"),
        (stores["unc_path"], folder / "uncertainty.zarr"),
    ):
        _replace_store(tmp, final)
    return levels


def _replace_store(tmp: Path, final: Path) -> None:
    """Put a finished store in place; an old one is moved aside first and removed after."""
    old = None
    if final.is_symlink() or final.is_file():
        final.unlink()
    elif final.exists():
        old = final.parent / _tmp_name(final.stem + "-old")
        os.rename(final, old)
    os.rename(tmp, final)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _patch_record(record: dict, seg: LargeSegmentation, patch: dict) -> None:
    H, W = seg.image.height, seg.image.width
    n_used = seg.n_used
    record["image"]["width"], record["image"]["height"] = W, H
    record["image"]["pixels_used"] = n_used
    # the preview's criteria would describe its block means: those of the full image instead
    record["result"].update(log_likelihood=seg.log_likelihood, bic=seg.bic, aic=seg.aic)
    for j, c in enumerate(record["clusters"]):
        c["pixel_fraction"] = float(seg.counts[j]) / max(n_used, 1)
    record["probabilities"] = patch["probabilities"]
    record["out_of_core"] = patch["out_of_core"]
    record["timings"] = {**record.get("timings", {}), **{k: float(v) for k, v in seg.timings.items()}}


# --------------------------------------------------------------------------
# the fit


def segment_large(
    image: str | os.PathLike | LazyImage,
    k: int = 4,
    *,
    scheduler: str = "threads",
    jobs: int | None = None,
    chunks: int | tuple[int, int] | None = None,
    page: int | None = None,
    color: str | None = None,
    bands: Any = None,
    display_bands: Any = None,
    spatial_weight: float = 0.0,
    smoothing: float = 0.0,
    model: str = "gmm",
    covariance: str = "full",
    max_iter: int = 100,
    tol: float = 1e-4,
    n_init: int = 1,
    sample: int | None = 200_000,
    seed: int | None = 0,
    reg_covar: float = 1e-6,
    beta: float | None = None,
    m: float = 2.0,
    progress: Any = None,
    k_range: tuple[int, int] = (2, 10),
    criterion: str = "icl",
    workdir: str | os.PathLike | None = None,
    **ignored: Any,
) -> LargeSegmentation:
    """Fit a mixture on an image that is read tile by tile; :meth:`LargeSegmentation.save` writes the result.

    The arguments are :func:`segsoft.segment`'s; ``k="auto"`` fits every k
    of ``k_range`` tile by tile and chooses as in memory (the criteria on the
    same seeded sample, gathered from the tiles). ``sample`` defaults to segment's sample; an
    exact fit on every pixel (``sample=0``) would gather them all into memory
    and is refused. With ``workdir`` (a folder every worker can reach: ``run``
    uses the output folder) the features are computed once and kept there
    (float32, 4 bytes a feature a pixel) until :meth:`LargeSegmentation.save`
    or :meth:`LargeSegmentation.close`; without it every pass makes them again.

    Examples
    --------
    >>> seg = segment_large("slide.ome.zarr", k=4, scheduler="local")  # doctest: +SKIP
    >>> seg.save("outputs/slide")  # doctest: +SKIP
    """
    from ..features import FeatureSpec
    from ..segment import _check_full_covariance, _check_k, model_factory
    from .client import dask_client
    from .em import extract_chunked, fit_chunked

    t0 = time.perf_counter()
    auto, k_lo, k_hi = _check_k(k, k_range, criterion, model)
    if not sample:
        raise SegsoftError("--sample 0 (every pixel in memory) is not possible out of core: give a sample size")
    if smoothing > 0 and model == "fcm":
        raise SegsoftError("smoothing needs a likelihood model: use --model gmm or soft-kmeans")
    if color is not None and color != "bands" and bands is not None:
        raise SegsoftError(f"--bands needs --color bands (--color {color} makes its own channels)")
    lz = image if isinstance(image, LazyImage) else open_lazy(image, page=page, chunks=chunks)
    name = lz.name
    factor = 1
    while max(lz.height, lz.width) / factor > PREVIEW_SIDE:
        factor *= 2
    # tiles whose sides are multiples of the preview's factor: its block means are then made per tile
    cy, cx = _multiple(lz.bands.chunks[0][0], factor), _multiple(lz.bands.chunks[1][0], factor)
    if (cy, cx) != (lz.bands.chunks[0][0], lz.bands.chunks[1][0]):
        lz.bands = lz.bands.rechunk({0: cy, 1: cx})
        lz.mask = None if lz.mask is None else lz.mask.rechunk({0: cy, 1: cx})
    if color is None:
        color = "lab" if (lz.is_color or lz.is_gray) and bands is None else "bands"
    spec = FeatureSpec(color=color, spatial_weight=float(spatial_weight), bands=None if bands is None else tuple(bands))
    _check_full_covariance(name, model, covariance, lz, spec)

    settings = {
        "k": k,
        "model": model,
        "covariance": covariance,
        "color": color,
        "bands": None if bands is None else list(bands),
        "display_bands": None if display_bands is None else list(display_bands),
        "spatial_weight": spatial_weight,
        "smoothing": smoothing,
        "max_iter": max_iter,
        "tol": tol,
        "n_init": n_init,
        "sample": sample,
        "seed": seed,
        "reg_covar": reg_covar,
        "beta": beta,
        "m": m,
    }
    if auto:
        settings.update(k_range=[k_lo, k_hi], criterion=criterion)
    new_model = model_factory(model, settings)
    estimator = new_model(k_lo if auto else k)
    selection = None
    t_open = time.perf_counter()
    cache_path = None
    try:
        with dask_client(scheduler, jobs):
            F, spec = extract_chunked(
                lz.bands,
                spec,
                mask=lz.mask,
                bit_depth=lz.bit_depth,
                is_color=lz.is_color,
                is_gray=lz.is_gray,
                band_names=lz.band_names,
                name=name,
                return_spec=True,
            )
            from .em import _Grid

            if workdir is not None:
                # the features once to disk (the output folder: every worker sees it): each later pass
                # reads them back instead of converting every pixel's colour again
                cache_path = _cache_features(F, lz.mask, Path(workdir), name)
                F = da.from_zarr(str(cache_path), component="0")
                if lz.mask is not None:
                    lz.mask = da.from_zarr(str(cache_path), component="mask")
            g = _Grid(F, lz.mask)
            k_min = k_lo if auto else k
            if g.n_used < k_min:
                raise SegsoftError(f"{name}: k={k_min} is more than the {g.n_used} usable pixels")
            if auto:
                from ..segment import select_k
                from .em import _gather

                def take(idx: np.ndarray | None) -> np.ndarray:
                    ys, xs = g.pixels_of_rows(np.arange(g.n_used) if idx is None else idx)
                    return _gather(F, ys, xs)

                estimator, selection = select_k(
                    None,
                    range(k_lo, k_hi + 1),
                    new_model,
                    criterion,
                    seed=seed,
                    sample=sample,
                    progress=progress,
                    n_rows=g.n_used,
                    fit=lambda mdl, prog: fit_chunked(mdl, F, mask=lz.mask, progress=prog),
                    take_rows=take,
                )
                if smoothing > 0:
                    start = estimator.means_
                    estimator = new_model(estimator.n_components)
                    fit_smoothed(estimator, F, lz.mask, smoothing, progress, n_used=g.n_used, means_init=start)
            elif smoothing > 0:
                fit_smoothed(estimator, F, lz.mask, smoothing, progress, n_used=g.n_used)
            else:
                fit_chunked(estimator, F, mask=lz.mask, progress=progress)
    except ValueError as exc:
        _remove_cache(cache_path)
        raise SegsoftError(f"{name}: {exc}") from exc
    except BaseException:
        _remove_cache(cache_path)
        raise
    t_fit = time.perf_counter()
    timings = {"read": t_open - t0, "features": 0.0, "fit": t_fit - t_open, "memberships": 0.0, "total": t_fit - t0}
    seg = LargeSegmentation(lz, F, estimator, spec, settings, scheduler, jobs, timings, selection=selection)
    seg.preview_factor = factor
    seg.cache_path = cache_path
    return seg


def fit_smoothed(
    model: Any,
    F: da.Array,
    mask: Any,
    smoothing: float,
    progress: Any = None,
    n_used: int | None = None,
    means_init: Any = None,
) -> Any:
    """The in-memory path's fit under the spatial prior: on the strided sub-grid of about
    ``model.sample_size`` pixels (:func:`segsoft.segment._fit_grid`), gathered from the tiles."""
    from ..spatial import PottsPrior
    from .em import _Grid

    n = _Grid(F, mask).n_used if n_used is None else n_used
    stride = _grid_stride(n, model.sample_size)
    sub_mask = None if mask is None else mask[::stride, ::stride]
    Xs, ms = dask.compute(F[::stride, ::stride], sub_mask)
    Xs = np.asarray(Xs)
    rows = Xs.reshape(-1, Xs.shape[2]) if ms is None else Xs[np.asarray(ms)]
    grid_mask = np.ones(Xs.shape[:2], bool) if ms is None else np.asarray(ms)
    prior = PottsPrior(grid_mask.shape, smoothing, grid_mask)
    return model.fit(np.ascontiguousarray(rows), means_init=means_init, progress=progress, prior=prior)


_CACHE_SUFFIX = ".features.tmp.zarr"


def _cache_features(F: da.Array, mask: da.Array | None, workdir: Path, name: str) -> Path:
    """Features (and the mask: decoding it again would read the source again) stored once, uncompressed."""
    import zarr

    workdir.mkdir(parents=True, exist_ok=True)
    _sweep_dead_caches(workdir)
    need = int(np.prod(F.shape)) * F.dtype.itemsize + (0 if mask is None else int(np.prod(mask.shape)))
    free = shutil.disk_usage(workdir).free
    if need > free:
        raise SegsoftError(
            f"{name}: the features need {need / 2**30:.1f} GiB in {workdir} while it runs, "
            f"and {free / 2**30:.1f} GiB is free there"
        )
    path = workdir / f".{_host()}-{os.getpid()}-{uuid.uuid4().hex[:8]}{_CACHE_SUFFIX}"
    g = zarr.open_group(str(path), mode="w", zarr_format=2)
    chunks = (F.chunks[0][0], F.chunks[1][0])
    arr = g.create_array("0", shape=F.shape, chunks=(*chunks, F.shape[2]), dtype=F.dtype, compressors=None)
    targets, sources = [arr], [F]
    if mask is not None:
        targets.append(g.create_array("mask", shape=mask.shape, chunks=chunks, dtype="bool", compressors=None))
        sources.append(mask.rechunk(F.chunks[:2]))
    try:
        da.store(sources, targets, lock=False)
    except BaseException:
        _remove_cache(path)
        raise
    return path


def _host() -> str:
    import socket

    return "".join(c if c.isalnum() else "_" for c in socket.gethostname())[:40] or "host"


def _sweep_dead_caches(folder: Path) -> None:
    """Features left by a run that was killed (its process is gone)."""
    with suppress(OSError):
        for entry in os.scandir(folder):
            if (
                entry.name.endswith(_CACHE_SUFFIX)
                and entry.is_dir(follow_symlinks=False)
                and not _owner_alive(entry.name)
            ):
                shutil.rmtree(entry.path, ignore_errors=True)


def _remove_cache(path: Path | None) -> None:
    if path is not None:
        shutil.rmtree(path, ignore_errors=True)


def _grid_stride(n: int, sample: int | None) -> int:
    """The in-memory path's sub-grid stride (:func:`segsoft.segment._fit_grid`)."""
    return 1 if not sample or n <= sample else int(np.ceil(np.sqrt(n / sample)))
