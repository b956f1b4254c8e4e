"""One image in, soft segmentation out: the pipeline behind ``segsoft run``.

``segment()`` reads the image, extracts features, fits the chosen mixture
and computes every pixel's memberships; the :class:`SoftSegmentation` it
returns renders pictures on demand and saves everything with ``save()``.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any, Callable

import numpy as np

from . import render
from .errors import SegsoftError
from .features import FeatureSpec, extract
from .io import DEFAULT_MAX_PIXELS, Image, as_image
from .mixture import FuzzyCMeans, GaussianMixture, SoftKMeans
from .regions import MERGE_THRESHOLD, RegionHierarchy, check_regions_flag, check_threshold, region_hierarchy
from .spatial import PottsPrior

__all__ = ["CRITERIA", "MODELS", "SoftSegmentation", "segment", "apply_model", "make_model", "select_k"]

MODELS = ("gmm", "soft-kmeans", "fcm")
DEFAULT_SAMPLE = 200_000


@dataclass
class SoftSegmentation:
    """Per-pixel memberships of one image, with the model that made them.

    Attributes
    ----------
    image : Image
        The input, as read.
    probabilities : ndarray, float32 (H, W, k)
        Memberships; each used pixel's sum to 1. Pixels masked out by
        transparency are NaN.
    model : GaussianMixture, SoftKMeans or FuzzyCMeans
        The fitted model, on feature vectors made by ``spec``.
    spec : FeatureSpec
        The fitted feature transform.
    log_likelihood : float
        Mean log-likelihood per used pixel under the final model (for fuzzy
        c-means, minus the mean weighted squared distance).
    settings : dict
        The arguments ``segment()`` was called with.
    timings : dict
        Seconds spent in each stage.
    selection : dict or None
        With ``k="auto"``: the criterion curve over k (see :func:`select_k`).

    Examples
    --------
    >>> rgb = np.zeros((8, 8, 3), dtype=np.uint8)
    >>> rgb[:, 4:] = 255
    >>> seg = segment(rgb, k=2)
    >>> seg.probabilities.shape, seg.labels.shape
    ((8, 8, 2), (8, 8))
    """

    image: Image
    probabilities: np.ndarray
    model: Any
    spec: FeatureSpec
    log_likelihood: float
    settings: dict[str, Any] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)
    selection: dict[str, Any] | None = None
    _region_maps: dict[float, np.ndarray] = field(default_factory=dict, init=False, repr=False, compare=False)

    @property
    def k(self) -> int:
        return self.probabilities.shape[-1]

    @property
    def mask(self) -> np.ndarray | None:
        return self.image.mask

    @property
    def n_used(self) -> int:
        return self.image.n_used

    @cached_property
    def labels(self) -> np.ndarray:
        """Hard labels (H, W): the most probable cluster; -1 where masked."""
        # masked (NaN) pixels come out as 0 here and are set to -1 below
        labels = np.argmax(self.probabilities, axis=-1).astype(np.int32)
        if self.mask is not None:
            labels[~self.mask] = -1
        return labels

    @cached_property
    def hierarchy(self) -> RegionHierarchy:
        """Superpixels and their merge sequence (see :mod:`segsoft.regions`); made once, cut by :meth:`regions`."""
        return region_hierarchy(self.image.pixels, self.probabilities, mask=self.mask)

    def regions(self, threshold: float = MERGE_THRESHOLD) -> np.ndarray:
        """Regions: connected segments merged along weak boundaries, int32 (H, W); -1 where masked.

        Superpixels described by their mean memberships are merged, cheapest
        first, by a cost that grows with how different their memberships are,
        how strong the colour contrast along their boundary is and how large
        they are (:func:`segsoft.regions.merge_regions`). A higher
        ``threshold`` gives fewer, larger regions. Finer memberships (k about
        12) give better regions than the few clusters one would look at.

        Examples
        --------
        >>> rgb = np.zeros((40, 40, 3), dtype=np.uint8)
        >>> rgb[:, 20:] = (200, 40, 30)
        >>> regions = segment(rgb, k=2).regions()
        >>> sorted(np.unique(regions).tolist())
        [0, 1]
        """
        key = check_threshold(threshold)
        if key not in self._region_maps:  # run, save and the summary all ask for the same cut
            self._region_maps.clear()
            self._region_maps[key] = self.hierarchy.labels(threshold)
        return self._region_maps[key].copy()

    @property
    def bic(self) -> float | None:
        """BIC of the model on this image's pixels (None for fuzzy c-means)."""
        if not hasattr(self.model, "n_parameters"):
            return None
        n = self.n_used
        return float(-2.0 * self.log_likelihood * n + self.model.n_parameters() * np.log(n))

    @property
    def aic(self) -> float | None:
        if not hasattr(self.model, "n_parameters"):
            return None
        return float(-2.0 * self.log_likelihood * self.n_used + 2.0 * self.model.n_parameters())

    @cached_property
    def colors(self) -> np.ndarray:
        """Display colour of each cluster, uint8 (k, 3)."""
        return render.cluster_colors(self.k)

    @cached_property
    def mean_rgb(self) -> np.ndarray:
        """Membership-weighted mean sRGB of each cluster, float (k, 3) in [0, 1]."""
        p = self.probabilities.reshape(-1, self.k)
        rgb = self.image.pixels.reshape(-1, 3)
        sums = np.zeros((self.k, 3))
        mass = np.zeros(self.k)
        step = 1 << 18  # float32 products, float64 totals: accurate and fast
        for s in range(0, p.shape[0], step):
            block = p[s : s + step]
            if self.mask is not None:
                block = np.nan_to_num(block, nan=0.0)
            sums += block.T @ rgb[s : s + step]
            mass += block.sum(0, dtype=np.float64)
        return sums / np.maximum(mass, 1e-12)[:, None]

    def overlay(self, alpha: float = 0.5) -> np.ndarray:
        """Soft overlay, uint8 RGB: each pixel blends the cluster colours by its memberships."""
        return render.soft_overlay(
            self.image.pixels, self.probabilities, alpha=alpha, colors=self.colors, mask=self.mask
        )

    def heatmap(self, j: int, cmap: str = "viridis") -> np.ndarray:
        """Membership of cluster ``j`` through a colormap, uint8 RGB."""
        return render.heatmap(self.probabilities, j, cmap=cmap, mask=self.mask)

    def label_image(self) -> np.ndarray:
        """Hard label map in the cluster colours, uint8 RGB."""
        return render.label_image(self.labels, colors=self.colors, k=self.k)

    def uncertainty(self, cmap: str = "magma") -> np.ndarray:
        """Normalised entropy of the memberships (0 = certain) through a colormap, uint8 RGB."""
        return render.uncertainty_image(self.probabilities, cmap=cmap, mask=self.mask)

    def entropy(self) -> np.ndarray:
        """Normalised entropy of each pixel's memberships, float32 (H, W) in [0, 1]."""
        return render.normalized_entropy(self.probabilities)

    def pictures(
        self,
        alpha: float = 0.5,
        cmap: str = "viridis",
        regions: bool = False,
        region_threshold: float = MERGE_THRESHOLD,
    ) -> list[tuple[str, str, Callable[[], Any]]]:
        """(file name, title, renderer) of every picture in the output layout, in montage order.

        Renderers return uint8 RGB arrays or, for the pictures with at most
        256 colours, :class:`~segsoft.render.IndexedImage` (exact, and much
        faster to write as PNG). With ``regions``, the regions at
        ``region_threshold`` are drawn too (``regions.png``).
        """
        check_regions_flag(regions)
        labels = self.labels
        pics = [
            ("overlay.png", "soft overlay", lambda: self.overlay(alpha)),
            ("labels.png", "labels", lambda: render.label_indexed(labels, colors=self.colors, k=self.k)),
        ]
        if regions:
            pics.append(
                (
                    "regions.png",
                    "regions",
                    lambda: render.region_indexed(self.image.pixels, self.regions(region_threshold)),
                )
            )
        pics += [
            ("uncertainty.png", "uncertainty", lambda: render.uncertainty_indexed(self.probabilities, mask=self.mask)),
        ]
        pics += [
            (
                f"prob_{j}.png",
                f"cluster {j}",
                lambda j=j: render.heatmap_indexed(self.probabilities, j, cmap, self.mask),
            )
            for j in range(self.k)
        ]
        return pics

    def original(self, width: int | None = None) -> np.ndarray:
        """The input image as uint8 RGB; with ``width``, shrunk by block averaging
        to at least that wide (cheap on big images)."""
        pixels = self.image.pixels
        f = 1 if width is None else max(1, min(pixels.shape[1] // max(width, 1), pixels.shape[0]))
        if f > 1:
            h, w = (pixels.shape[0] // f) * f, (pixels.shape[1] // f) * f
            pixels = pixels[:h, :w].reshape(h // f, f, w // f, f, 3).mean(axis=(1, 3), dtype=np.float32)
        return np.rint(pixels * 255.0).astype(np.uint8)

    def montage(
        self,
        alpha: float = 0.5,
        cmap: str = "viridis",
        tile_width: int = 256,
        regions: bool = False,
        region_threshold: float = MERGE_THRESHOLD,
    ) -> np.ndarray:
        """Original, overlay, labels, (regions,) uncertainty and every heatmap on one sheet."""
        tiles = [("original", self.original(tile_width))]
        tiles += [
            (title, render.shrink(make(), tile_width))
            for _, title, make in self.pictures(alpha, cmap, regions, region_threshold)
        ]
        return render.montage(tiles, tile_width=tile_width)

    def save(
        self,
        folder: str | os.PathLike,
        *,
        alpha: float = 0.5,
        cmap: str = "viridis",
        regions: bool = False,
        region_threshold: float = MERGE_THRESHOLD,
    ) -> dict[str, Path]:
        """Write every output (pictures, probabilities.npy, model.json) into ``folder``.

        With ``regions`` also ``regions.png`` and ``regions.npy``, cut at
        ``region_threshold`` (see :meth:`regions`). Returns the written paths by
        name. See :func:`segsoft.outputs.write`.
        """
        from .outputs import write

        return write(self, folder, alpha=alpha, cmap=cmap, regions=regions, region_threshold=region_threshold)


def make_model(
    model: str = "gmm",
    k: int = 4,
    *,
    covariance: str = "full",
    max_iter: int = 100,
    tol: float = 1e-4,
    n_init: int = 1,
    sample: int | None = DEFAULT_SAMPLE,
    seed: int | None = 0,
    reg_covar: float = 1e-6,
    beta: float | None = None,
    m: float = 2.0,
):
    """The unfitted engine object for a model name used on the command line.

    Examples
    --------
    >>> make_model("fcm", 3, m=1.5)  # doctest: +ELLIPSIS
    FuzzyCMeans(n_components=3, m=1.5, ...)
    """
    common = dict(max_iter=max_iter, tol=tol, n_init=n_init, seed=seed, sample_size=sample or None)
    if beta is not None and model != "soft-kmeans":
        raise SegsoftError(f"beta (the stiffness) is a soft-kmeans option, not one of {model}")
    if model == "gmm":
        engine = GaussianMixture(k, covariance=covariance, reg_covar=reg_covar, **common)
    elif model == "soft-kmeans":
        engine = SoftKMeans(k, beta=beta, reg_covar=reg_covar, **common)
    elif model == "fcm":
        engine = FuzzyCMeans(k, m=m, **common)
    else:
        raise SegsoftError(f"unknown model {model!r} (choose from {', '.join(MODELS)})")
    try:
        engine.check_params()
    except ValueError as exc:
        raise SegsoftError(str(exc)) from None
    return engine


def _name(image: Image) -> str:
    return str(image.path) if image.path is not None else "image"


def _count_distinct(colors: np.ndarray, at_least: int) -> int:
    """Distinct rows of the colour features, counted exactly only when a
    sample has fewer than ``at_least`` (full counts are slow on big images).
    Features, not RGB: with ``color="gray"`` two RGB colours can be one grey."""
    sample = colors[:: max(1, colors.shape[0] // 50_000)]
    n = len(np.unique(sample, axis=0))
    return n if n >= at_least else len(np.unique(colors, axis=0))


def _memberships(image: Image, model: Any, X: np.ndarray) -> tuple[np.ndarray, float]:
    """(H, W, k) float32 memberships (NaN where masked) and the mean score."""
    h, w, k = image.height, image.width, model.n_components
    if image.mask is None:
        probs = np.empty((h * w, k), dtype=np.float32)
        _, mean = model.predict_proba_and_score(X, out=probs)
        return probs.reshape(h, w, k), mean
    used, mean = model.predict_proba_and_score(X)
    probs = np.full((h * w, k), np.nan, dtype=np.float32)
    probs[image.mask.ravel()] = used
    return probs.reshape(h, w, k), mean


def _fit_grid(image: Image, sample: int | None) -> tuple[np.ndarray, np.ndarray]:
    """Rows of a strided sub-grid of the used pixels to fit a spatial model on.

    A spatial prior needs pixels on a grid, not a random sample: on a large
    image the model is fitted on every s-th row and column (about ``sample``
    pixels). Returns (row indices, sub-grid mask).
    """
    h, w = image.height, image.width
    n = image.n_used
    stride = 1 if not sample or n <= sample else int(np.ceil(np.sqrt(n / sample)))
    rowid = np.full((h, w), -1, dtype=np.int64)
    if image.mask is None:
        rowid[...] = np.arange(n).reshape(h, w)
    else:
        rowid[image.mask] = np.arange(n)
    sub = rowid[::stride, ::stride]
    return sub[sub >= 0], sub >= 0


FINAL_SWEEPS = 10  # checkerboard sweeps for the memberships of the final model


def _smoothed_memberships(image: Image, model: Any, X: np.ndarray, smoothing: float) -> tuple[np.ndarray, float]:
    """Memberships under the spatial prior on the full grid, and the mean
    log-likelihood of the pixels under the fitted mixture."""
    h, w, k = image.height, image.width, model.n_components
    log_joint = model.weighted_log_prob(X, out=np.empty((X.shape[0], k), dtype=np.float32))
    total = 0.0
    for a in range(0, log_joint.shape[0], 1 << 18):  # log-sum-exp in chunks: no full-size temporary
        block = log_joint[a : a + (1 << 18)]
        top = block.max(axis=1, keepdims=True)
        total += float(np.sum(top[:, 0] + np.log(np.exp(block - top).sum(axis=1)), dtype=np.float64))
    mean = total / max(log_joint.shape[0], 1)
    c, _ = PottsPrior((h, w), smoothing, image.mask).memberships(log_joint, sweeps=FINAL_SWEEPS)
    probs = np.full((h * w, k), np.nan, dtype=np.float32)
    if image.mask is None:
        probs[:] = c
    else:
        probs[image.mask.ravel()] = c
    return probs.reshape(h, w, k), mean


def segment(
    image: str | os.PathLike | np.ndarray | Image,
    k: int = 4,
    *,
    color: str = "lab",
    spatial_weight: float = 0.0,
    smoothing: float = 0.0,
    k_range: tuple[int, int] = (2, 10),
    criterion: str = "icl",
    model: str = "gmm",
    covariance: str = "full",
    max_iter: int = 100,
    tol: float = 1e-4,
    n_init: int = 1,
    sample: int | None = DEFAULT_SAMPLE,
    seed: int | None = 0,
    reg_covar: float = 1e-6,
    beta: float | None = None,
    m: float = 2.0,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    progress: Callable[[int, float], None] | None = None,
) -> SoftSegmentation:
    """Soft-segment one image into ``k`` clusters.

    Parameters
    ----------
    image : path, array or Image
        A file Pillow can read, an (H, W[, 3|4]) array, or an :class:`Image`.
    k : int or "auto"
        Number of clusters; "auto" picks it in ``k_range`` by ``criterion``.
    k_range : (int, int)
        Smallest and largest k tried by ``k="auto"``.
    criterion : {"icl", "bic"}
        How ``k="auto"`` chooses (lower is better): ICL, which also
        penalises uncertain memberships, or BIC. See :func:`select_k`.
        With ``smoothing``, k is chosen with the plain mixture first.
    color : {"lab", "rgb", "hsv", "gray"}
        Colour space of the features (see :class:`FeatureSpec`).
    spatial_weight : float
        Weight of the x, y position features; 0 leaves them out.
    smoothing : float
        Strength of the spatial prior on the memberships (neighbourhood EM,
        a mean-field Potts model; see :mod:`segsoft.spatial`): the reward in
        log-likelihood units for each of a pixel's 4 neighbours that shares
        its cluster. 0 is the plain mixture; 0.5-2 removes speckle. Needs a
        likelihood model (gmm or soft-kmeans); on images larger than
        ``sample`` pixels the model is fitted on a strided sub-grid.
    model : {"gmm", "soft-kmeans", "fcm"}
        Gaussian mixture, soft k-means or fuzzy c-means.
    covariance : {"full", "diag", "spherical", "tied"}
        Gaussian mixture covariance structure.
    max_iter, tol, n_init, seed, reg_covar
        EM settings, as in :class:`~segsoft.mixture.GaussianMixture`.
    sample : int or None
        Fit on this many random pixels, then polish on all of them; None or 0
        fits on every pixel (slower on big images, same answer to ~1e-4).
    beta : float or None
        Soft k-means stiffness (None learns it).
    m : float
        Fuzzy c-means fuzzifier.
    max_pixels : int
        Refuse larger images (decompression-bomb guard).
    progress : callable(iteration, log_likelihood), optional
        Called after every EM iteration.

    Returns
    -------
    SoftSegmentation

    Examples
    --------
    >>> import segsoft
    >>> seg = segsoft.segment("images/coffee.jpg", k=3, seed=0)  # doctest: +SKIP
    >>> seg.probabilities.sum(-1).round(4).min()  # doctest: +SKIP
    1.0
    >>> seg.save("outputs/coffee")  # doctest: +SKIP
    """
    t0 = time.perf_counter()
    settings = dict(
        k=k,
        model=model,
        covariance=covariance,
        color=color,
        spatial_weight=spatial_weight,
        smoothing=smoothing,
        max_iter=max_iter,
        tol=tol,
        n_init=n_init,
        sample=sample,
        seed=seed,
        reg_covar=reg_covar,
        beta=beta,
        m=m,
    )
    auto = isinstance(k, str) and k == "auto"
    if auto:
        k_lo, k_hi = _check_k_range(k_range)
        if criterion not in CRITERIA:
            raise SegsoftError(f"unknown criterion {criterion!r} (choose from {', '.join(CRITERIA)})")
        if model == "fcm":
            raise SegsoftError("-k auto needs a likelihood model: use --model gmm or soft-kmeans")
        settings.update(k_range=[k_lo, k_hi], criterion=criterion)
    elif isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise SegsoftError(f"k must be a whole number >= 1 or 'auto', got {k!r}")
    if not (smoothing >= 0 and np.isfinite(smoothing)):
        raise SegsoftError(f"smoothing must be a finite number >= 0, got {smoothing!r}")
    if smoothing > 0 and model == "fcm":
        raise SegsoftError("smoothing needs a likelihood model: use --model gmm or soft-kmeans")
    spec = FeatureSpec(color=color, spatial_weight=float(spatial_weight))

    def new_model(n_clusters: int) -> Any:
        return make_model(
            model,
            n_clusters,
            covariance=covariance,
            max_iter=max_iter,
            tol=tol,
            n_init=n_init,
            sample=sample,
            seed=seed,
            reg_covar=reg_covar,
            beta=beta,
            m=m,
        )

    new_model(1)  # make_model checks the options: fail before the slow work
    img = as_image(image, max_pixels=max_pixels)
    name = _name(img)
    t_read = time.perf_counter()
    k_min = k_lo if auto else k
    if img.n_used < k_min:
        raise SegsoftError(f"{name}: k={k_min} is more than the {img.n_used} usable pixels")
    X, spec = extract(img, spec, return_spec=True)
    t_feat = time.perf_counter()
    if spatial_weight == 0 and (auto or k > 1):
        distinct = _count_distinct(X[:, : spec.n_color], k_hi if auto else k)
        if distinct < k_min:
            what = "grey levels" if color == "gray" else "distinct colours"
            raise SegsoftError(f"{name}: k={k_min} is more than the {distinct} {what} in the image")
        if auto:
            k_hi = min(k_hi, distinct)
    selection = None
    try:
        if auto:
            estimator, selection = select_k(X, range(k_lo, k_hi + 1), new_model, criterion, seed=seed, sample=sample)
            k = estimator.n_components
        if smoothing > 0:
            # with k chosen by the plain mixture, start the smoothed fit from its means
            start = estimator.means_ if auto else None
            estimator = new_model(k)
            rows, grid_mask = _fit_grid(img, sample)
            prior = PottsPrior(grid_mask.shape, smoothing, grid_mask)
            estimator.fit(X[rows], means_init=start, progress=progress, prior=prior)
        elif not auto:
            estimator = new_model(k).fit(X, progress=progress)
    except ValueError as exc:
        raise SegsoftError(f"{name}: {exc}") from exc
    t_fit = time.perf_counter()
    if smoothing > 0:
        probs, mean = _smoothed_memberships(img, estimator, X, smoothing)
    else:
        probs, mean = _memberships(img, estimator, X)
    t_pred = time.perf_counter()
    timings = {
        "read": t_read - t0,
        "features": t_feat - t_read,
        "fit": t_fit - t_feat,
        "memberships": t_pred - t_fit,
        "total": t_pred - t0,
    }
    return SoftSegmentation(img, probs, estimator, spec, float(mean), settings, timings, selection)


CRITERIA = ("icl", "bic")
MAX_AUTO_K = 64


def _check_k_range(k_range: Any) -> tuple[int, int]:
    try:
        lo, hi = (int(v) for v in k_range)
    except (TypeError, ValueError):
        raise SegsoftError(f"k range must be two whole numbers like (2, 10), got {k_range!r}") from None
    if not 1 <= lo <= hi:
        raise SegsoftError(f"k range must satisfy 1 <= low <= high, got {lo}..{hi}")
    if hi > MAX_AUTO_K:
        raise SegsoftError(f"k range goes up to {MAX_AUTO_K} (every k is a separate fit), got {lo}..{hi}")
    return lo, hi


def select_k(
    X: np.ndarray,
    ks: Any,
    new_model: Callable[[int], Any],
    criterion: str = "icl",
    *,
    seed: int | None = 0,
    sample: int | None = DEFAULT_SAMPLE,
) -> tuple[Any, dict[str, Any]]:
    """Fit one model per k and keep the one with the lowest BIC or ICL.

    ``BIC = -2 log L + p log n``; ``ICL = BIC + 2 E`` where
    ``E = -sum_i sum_k t_ik log t_ik`` is the entropy of the memberships
    (Biernacki, Celeux & Govaert 2000), so ICL also penalises clusters that
    overlap. Both are computed on the same rows for every k: all of them, or
    a seeded random ``sample`` of them on large inputs.

    Returns
    -------
    model : the fitted model with the chosen k
    selection : dict
        ``criterion``, ``k`` (the chosen one) and, per candidate, lists
        ``ks``, ``bic``, ``icl``, ``log_likelihood`` (mean per row).

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> X = np.vstack([rng.normal(m, 0.3, (300, 2)) for m in (0, 3, 6)])
    >>> model, sel = select_k(X, range(1, 6), lambda k: GaussianMixture(k))
    >>> sel["k"]
    3
    """
    n = X.shape[0]
    rows = X
    if sample and n > sample:
        rows = X[np.sort(np.random.default_rng(seed).choice(n, size=sample, replace=False))]
    curve: dict[str, Any] = {"ks": [], "bic": [], "icl": [], "log_likelihood": []}
    best = None
    for k in ks:
        model = new_model(k).fit(X)
        resp, mean = model.predict_proba_and_score(rows)
        m = rows.shape[0]
        bic = -2.0 * mean * m + model.n_parameters() * np.log(m)
        safe = np.where(resp > 0, resp, 1.0)
        icl = bic - 2.0 * float(np.sum(resp * np.log(safe), dtype=np.float64))
        curve["ks"].append(int(k))
        curve["bic"].append(float(bic))
        curve["icl"].append(float(icl))
        curve["log_likelihood"].append(float(mean))
        score = icl if criterion == "icl" else bic
        if best is None or score < best[0]:
            best = (score, model)
    if best is None:
        raise SegsoftError("the k range is empty")
    curve.update(criterion=criterion, k=int(best[1].n_components))
    return best[1], curve


def apply_model(
    image: str | os.PathLike | np.ndarray | Image,
    model: Any,
    spec: FeatureSpec,
    *,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    settings: dict[str, Any] | None = None,
    smoothing: float | None = None,
) -> SoftSegmentation:
    """Memberships of a new image under an already fitted model.

    The image goes through the same fitted feature transform ``spec``, so
    cluster numbers and colours mean the same as for the image the model
    was fitted on. ``smoothing`` (default: the ``smoothing`` in
    ``settings``, as stored in ``model.json``, else 0) applies the spatial
    prior to the memberships as :func:`segment` does, so applying a model to
    the image it was fitted on reproduces that image's memberships.

    Examples
    --------
    >>> seg = segment("images/coffee.jpg", k=3)  # doctest: +SKIP
    >>> other = apply_model("images/chelsea.jpg", seg.model, seg.spec)  # doctest: +SKIP
    """
    if not spec.fitted:
        raise SegsoftError("the feature spec must be fitted (as stored in model.json) to apply a model")
    t0 = time.perf_counter()
    img = as_image(image, max_pixels=max_pixels)
    t_read = time.perf_counter()
    X = extract(img, spec)
    t_feat = time.perf_counter()
    if smoothing is None:
        smoothing = float((settings or {}).get("smoothing") or 0.0)
    if smoothing > 0 and hasattr(model, "weighted_log_prob"):
        probs, mean = _smoothed_memberships(img, model, X, smoothing)
    else:
        smoothing = 0.0
        probs, mean = _memberships(img, model, X)
    t_pred = time.perf_counter()
    timings = {
        "read": t_read - t0,
        "features": t_feat - t_read,
        "fit": 0.0,
        "memberships": t_pred - t_feat,
        "total": t_pred - t0,
    }
    return SoftSegmentation(img, probs, model, spec, float(mean), {**(settings or {}), "smoothing": smoothing}, timings)
