"""Many images, one call: worker processes, per-file errors, resume, a shared model.

``run_batch`` segments every image named by files, folders and glob patterns;
``apply_batch`` applies one saved model to each. Both write each image's
outputs to ``OUTPUT/<relative stem>/`` (the input folders are mirrored, see
:func:`segsoft.io.find_images`), one row per image to ``OUTPUT/summary.csv``
and then the page :mod:`segsoft.report` makes of them, ``OUTPUT/report.html``.

How nothing gets lost
---------------------
* Each image is handled end to end (read, segment, write) by one worker and
  comes back as a small :class:`BatchResult` row. An exception becomes a
  ``failed`` row with a one-line error; the batch goes on. A worker process
  that dies (killed, out of memory) takes only its own image down: the images
  it shared the pool with are retried one at a time in a fresh pool.
* Every file is written atomically and ``model.json`` last, so a folder with
  a ``model.json`` is complete. ``skip_existing`` skips such folders when
  they were made with the same settings (or the same model) and redoes the
  rest, so a killed batch resumes where it stopped.
* On Ctrl-C the workers are stopped, the temporary files of the images in
  flight are removed, ``summary.csv`` is written with what finished, and
  :class:`BatchInterrupted` (a ``KeyboardInterrupt``) is raised.
"""

from __future__ import annotations

import csv
import datetime as _dt
import hashlib
import io as _io
import json
import math
import multiprocessing
import os
import re
import signal
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from contextlib import closing, contextmanager, suppress
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from . import __version__, render
from .errors import SegsoftError
from .features import FeatureSpec, extract
from .limits import CHOICES, LIMITS, MAX_K, check_choice, check_setting
from .io import DEFAULT_MAX_PIXELS, Image, atomic_write_bytes, count_frames, find_images, read_image
from .mixture import model_from_dict
from .modelfile import read_json
from .regions import MERGE_THRESHOLD, check_regions_flag, check_threshold
from .outputs import (
    _FOLDER_TEMP,
    probability_settings,
    _sweep,
    _write_json,
    check_writable,
    file_identity,
    folder_lock,
    image_folder,
    load_model,
    output_files,
    write,
)
from .outputs import _jsonable as _plain
from .segment import (
    DEFAULT_SAMPLE,
    _check_k_range,
    _count_distinct,
    apply_model,
    is_default_sample,
    make_model,
    segment,
)

__all__ = [
    "SUMMARY_COLUMNS",
    "BatchInterrupted",
    "BatchReport",
    "BatchResult",
    "SegmentOptions",
    "apply_batch",
    "default_jobs",
    "run_batch",
    "write_summary",
]

SUMMARY_COLUMNS = (
    "path",
    "status",
    "width",
    "height",
    "k",
    "iterations",
    "converged",
    "log_likelihood",
    "bic",
    "seconds",
    "error",
)
SUMMARY_NAME = "summary.csv"
SHARED_MODEL_NAME = "shared_model.json"


# --------------------------------------------------------------------------
# options and results


@dataclass(frozen=True)
class SegmentOptions:
    """The model and rendering options of ``segsoft run`` and ``segsoft batch``.

    The fields are :func:`segsoft.segment` arguments (``sample`` 0 or None fits
    on every pixel; ``m`` is the fuzzy c-means fuzzifier) plus ``alpha`` and
    ``cmap`` for the pictures and ``regions`` / ``region_threshold`` for the
    region outputs (``regions.png``, ``regions.npy``).

    Examples
    --------
    >>> opts = SegmentOptions(k=3, color="rgb")
    >>> opts.check()
    >>> opts.segment_kwargs()["color"], opts.segment_kwargs()["sample"]
    ('rgb', 200000)
    """

    k: int | str = 4
    k_range: tuple[int, int] = (2, 10)
    criterion: str = "icl"
    color: str | None = None  # None: lab for colour images, bands for any other band count
    spatial_weight: float = 0.0
    smoothing: float = 0.0
    model: str = "gmm"
    covariance: str = "full"
    max_iter: int = 100
    tol: float = 1e-4
    n_init: int = 1
    sample: int | None = DEFAULT_SAMPLE
    seed: int | None = 0
    beta: float | None = None
    m: float = 2.0
    max_pixels: int = DEFAULT_MAX_PIXELS
    alpha: float = 0.5
    cmap: str = "viridis"
    regions: bool = False
    region_threshold: float = MERGE_THRESHOLD
    probabilities: str = "npy"
    probabilities_dtype: str = "float32"
    palette: str = "categorical"
    bands: tuple[int, ...] | None = None
    display_bands: tuple[int, ...] | None = None

    def check(self) -> None:
        """Raise :class:`SegsoftError` for a bad option, naming its flag, before any slow work.

        Every value is checked against :data:`segsoft.limits.LIMITS` and
        :data:`segsoft.limits.CHOICES`, the ranges ``model.json`` files are
        checked against too.
        """
        try:
            for name, value in (
                ("max_pixels", self.max_pixels),
                ("spatial_weight", self.spatial_weight),
                ("smoothing", self.smoothing),
                ("max_iter", self.max_iter),
                ("tol", self.tol),
                ("n_init", self.n_init),
                ("seed", self.seed if self.seed is not None else 0),
                ("sample", self.sample or 0),
                ("m", self.m),
                ("alpha", self.alpha),
                ("region_threshold", self.region_threshold),
            ):
                check_setting(name, value)
            if self.beta is not None:
                check_setting("beta", self.beta)
            for name in CHOICES:
                if getattr(self, name) is not None or name != "color":
                    check_choice(name, getattr(self, name))
        except ValueError as exc:
            raise SegsoftError(str(exc)) from None
        if self.k == "auto":
            try:
                _check_k_range(self.k_range)
            except SegsoftError as exc:
                raise SegsoftError(f"--k-range: {exc}") from None
            if self.model == "fcm":
                raise SegsoftError("-k auto needs a likelihood model: use --model gmm or soft-kmeans")
        elif not LIMITS["k"].accepts(self.k):
            if isinstance(self.k, (int, np.integer)) and not isinstance(self.k, bool) and self.k > MAX_K:
                raise SegsoftError(
                    f"-k {self.k} is more than the {MAX_K} clusters segsoft supports "
                    "(each cluster is a heatmap and a probability plane)"
                )
            raise SegsoftError(f"-k must be a whole number from 1 to {MAX_K} or auto, got {self.k!r}")
        if self.smoothing > 0 and self.model == "fcm":
            raise SegsoftError("--smooth needs a likelihood model: use --model gmm or soft-kmeans")
        if self.beta is not None and self.model != "soft-kmeans":
            raise SegsoftError(f"--beta only applies with --model soft-kmeans, not {self.model}")
        check_render_options(self.alpha, self.cmap, self.region_threshold)
        probability_settings(self.probabilities, self.probabilities_dtype)
        for flag, picked in (("--bands", self.bands), ("--display-bands", self.display_bands)):
            if picked is not None and not (
                picked and all(isinstance(b, (int, np.integer)) and not isinstance(b, bool) and b >= 0 for b in picked)
            ):
                raise SegsoftError(f"{flag} must be band numbers >= 0 like 0,2,3, got {picked!r}")
        if self.display_bands is not None and len(self.display_bands) not in (1, 3):
            raise SegsoftError(f"--display-bands takes 1 band (grey) or 3 (red, green, blue), got {len(self.display_bands)}")
        if self.bands is not None and self.color not in (None, "bands"):
            raise SegsoftError(f"--bands only applies with --color bands, not --color {self.color}")
        make_model(
            self.model,
            1,
            covariance=self.covariance,
            max_iter=self.max_iter,
            tol=self.tol,
            n_init=self.n_init,
            sample=self.sample,
            seed=self.seed,
            beta=self.beta,
            m=self.m,
        )

    def model_settings(self) -> dict[str, Any]:
        """The options that decide the result (what ``model.json`` records as settings)."""
        auto = self.k == "auto"
        settings = {
            "k": "auto" if auto else int(self.k),
            "model": self.model,
            "covariance": self.covariance,
            "color": self.color,
            "spatial_weight": float(self.spatial_weight),
            "smoothing": float(self.smoothing),
            "max_iter": self.max_iter,
            "tol": self.tol,
            "n_init": self.n_init,
            "sample": self.sample or None,
            "seed": self.seed,
            "beta": self.beta,
            "m": self.m,
        }
        if self.color is None:
            settings.pop("color")  # chosen per image: lab for colour, bands otherwise
        if self.bands is not None:
            settings["bands"] = list(self.bands)
        if self.display_bands is not None:
            settings["display_bands"] = list(self.display_bands)
        if auto:
            settings.update(k_range=list(_check_k_range(self.k_range)), criterion=self.criterion)
        return settings

    @property
    def region_cut(self) -> float | None:
        """The merge threshold for ``regions.png``/``regions.npy``, or None when regions are not asked for."""
        return float(self.region_threshold) if self.regions else None

    def write_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for :func:`segsoft.outputs.write` (and ``SoftSegmentation.save``)."""
        return {
            "alpha": self.alpha,
            "cmap": self.cmap,
            "regions": self.regions,
            "region_threshold": self.region_threshold,
            "probabilities": self.probabilities,
            "probabilities_dtype": self.probabilities_dtype,
            "palette": self.palette,
        }

    def expect(self) -> dict[str, Any]:
        """What a complete output folder's model.json must say about the pictures and files asked for."""
        return {
            **_expect_regions(self.region_cut),
            **_expect_probabilities(self.probabilities, self.probabilities_dtype),
            "pictures": {"palette": self.palette},
        }

    def segment_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for :func:`segsoft.segment` (everything but ``alpha`` and ``cmap``)."""
        return {**self.model_settings(), "max_pixels": self.max_pixels}


def check_render_options(alpha: float, cmap: str, region_threshold: float = MERGE_THRESHOLD) -> None:
    """Raise :class:`SegsoftError` for an overlay opacity outside [0, 1], an unknown colormap
    or a region threshold that is not a finite number >= 0."""
    render.colormap_lut(cmap)
    if not 0.0 <= alpha <= 1.0:
        raise SegsoftError(f"--alpha must be between 0 and 1, got {alpha}")
    try:
        check_threshold(region_threshold)
    except ValueError:
        raise SegsoftError(f"--region-threshold must be a finite number >= 0, got {region_threshold!r}") from None


@dataclass
class BatchResult:
    """One image's row of ``summary.csv``.

    ``status`` is ``ok``, ``failed`` (``error`` says why, one line, without
    the path) or ``skipped`` (complete outputs already there; the numbers come
    from their ``model.json`` and ``seconds`` is empty). ``output`` is the
    image's output folder (not a CSV column).
    """

    path: str
    status: str = "failed"
    width: int | None = None
    height: int | None = None
    k: int | None = None
    iterations: int | None = None
    converged: bool | None = None
    log_likelihood: float | None = None
    bic: float | None = None
    seconds: float | None = None
    error: str = ""
    output: str = ""

    def csv_row(self) -> list[str]:
        values = asdict(self)
        out = []
        for name in SUMMARY_COLUMNS:
            v = values[name]
            if v is None or (isinstance(v, float) and not math.isfinite(v)):
                out.append("")
            elif name == "seconds":
                out.append(f"{v:.3f}")
            else:
                out.append(str(v))
        return out


@dataclass
class BatchReport:
    """What a batch did: one row per image in input order, and where the summary went."""

    rows: list[BatchResult]
    total: int
    output: Path
    summary: Path
    shared_model: Path | None = None
    seconds: float = 0.0
    interrupted: bool = False
    excluded: int = 0  # images found under the output folder, never taken as inputs
    html: Path | None = None  # report.html, once written (after summary.csv)
    html_error: str = ""  # why report.html could not be written; the batch's results stand

    def count(self, status: str) -> int:
        return sum(row.status == status for row in self.rows)

    @property
    def failed(self) -> list[BatchResult]:
        return [row for row in self.rows if row.status == "failed"]


class BatchInterrupted(KeyboardInterrupt):
    """Ctrl-C (or a SIGTERM turned into one) stopped a batch; ``report`` holds what finished."""

    def __init__(self, report: BatchReport):
        super().__init__(f"interrupted after {len(report.rows)} of {report.total} images")
        self.report = report


ProgressFn = Callable[[int, int, "BatchResult | None"], None]
#: ``on_start(stage, weights)``: a stage ("sampling" or "segmenting") begins; ``weights`` maps the
#: ``path`` each of its rows will carry to the image's estimated pixel count (read from the headers).
StartFn = Callable[[str, "dict[str, float]"], None]


def default_jobs() -> int:
    """Worker processes by default: the CPU cores this process may use."""
    if hasattr(os, "sched_getaffinity"):
        with suppress(OSError):
            return max(1, len(os.sched_getaffinity(0)))
    return os.cpu_count() or 1


# --------------------------------------------------------------------------
# public entry points


def run_batch(
    inputs: Iterable[str | os.PathLike],
    output: str | os.PathLike = "outputs",
    options: SegmentOptions | None = None,
    *,
    recursive: bool = False,
    frames: bool = False,
    jobs: int | None = None,
    skip_existing: bool = False,
    shared_model: bool = False,
    progress: ProgressFn | None = None,
    scheduler: str | None = None,
    on_start: StartFn | None = None,
) -> BatchReport:
    """Soft-segment every image named by ``inputs`` into ``output``.

    Parameters
    ----------
    inputs : iterable of str or os.PathLike
        Files, folders and glob patterns (see :func:`segsoft.io.find_images`).
    output : str or os.PathLike
        Each image's outputs go to ``output/<relative stem>/``; ``summary.csv``
        (and with ``shared_model``, ``shared_model.json``) to ``output``.
    options : SegmentOptions, optional
        Model and rendering options (defaults: those of ``segsoft run``).
    recursive : bool
        Also look in the sub-folders of folder inputs.
    frames : bool
        Segment every frame of a multi-frame file (GIF, APNG, WebP,
        multi-page TIFF) into ``output/<stem>/frame_0000/`` ...; without it
        such a file fails with a message that says how many frames it has.
    jobs : int, optional
        Worker processes (default: every core). 1 works in this process.
    skip_existing : bool
        Leave alone images whose output folder is complete (has its
        ``model.json``) and was made with the same settings; redo the rest.
    shared_model : bool
        Fit one model (and one feature standardisation) on an equal random
        share of ``options.sample`` pixels from every image, save it as
        ``output/shared_model.json`` and apply it to each image, so cluster
        numbers and colours mean the same across the batch. With
        ``skip_existing``, a matching ``shared_model.json`` is reused.
    progress : callable(done, total, row), optional
        Called in this process after each image with its :class:`BatchResult`
        (skipped images first); with ``shared_model`` also after each image
        of the sampling pass, with ``row`` None.
    on_start : callable(stage, weights), optional
        Called in this process as a stage begins, before its first image:
        ``"segmenting"`` (and first ``"sampling"`` with ``shared_model``).
        ``weights`` maps the ``path`` each row of the stage will carry to the
        image's pixel count, read cheaply from the file headers (estimated
        from the file size where a header says nothing), so a progress bar
        can weight its ETA by pixels instead of by images.
    scheduler : str, optional
        Run the images on Dask instead of the process pool (the ``dask``
        extra): ``"local"`` (a LocalCluster of ``jobs`` worker processes on
        this machine), ``"threads"`` (``jobs`` threads of this process) or a
        scheduler address such as ``"tcp://host:8786"`` (all of its workers).
        The outputs are byte-identical to the process pool's; see
        :mod:`segsoft.cluster.client`.

    Returns
    -------
    BatchReport
        Rows in input order; ``summary.csv`` has been written.

    Raises
    ------
    SegsoftError
        Before any image is processed: a bad option, an input that does not
        exist, no images found, an unwritable output folder; with
        ``shared_model``, a model that cannot be fitted.
    BatchInterrupted
        On Ctrl-C, after stopping the workers and writing ``summary.csv``.

    Notes
    -----
    With ``jobs`` > 1 the workers start from a fresh interpreter (the
    "forkserver" method, "spawn" where there is none), as with every
    multiprocessing start method but fork: a script that calls this must
    keep its top-level code under ``if __name__ == "__main__":``.

    Examples
    --------
    >>> import tempfile
    >>> from PIL import Image as PILImage
    >>> with tempfile.TemporaryDirectory() as tmp:
    ...     for name in ("a.png", "b.png"):
    ...         rgb = np.zeros((8, 8, 3), np.uint8); rgb[:, 4:] = 200; rgb[0, 0] = 90
    ...         PILImage.fromarray(rgb).save(f"{tmp}/{name}")
    ...     report = run_batch([tmp], f"{tmp}/out", SegmentOptions(k=2), jobs=1)
    ...     print([(row.path[-5:], row.status) for row in report.rows], report.summary.name)
    [('a.png', 'ok'), ('b.png', 'ok')] summary.csv
    """
    t0 = time.perf_counter()
    opts = options or SegmentOptions()
    opts.check()
    if shared_model and opts.k == "auto":
        raise SegsoftError("--shared-model needs a fixed -k: choose it with `segsoft run IMAGE -k auto` first")
    if shared_model and opts.smoothing > 0:
        raise SegsoftError(
            "--shared-model cannot be combined with --smooth (the shared model is fitted on a pixel sample, "
            "which has no grid for the spatial prior)"
        )
    scheduler = _scheduler(scheduler)
    items, out, excluded = _prepare(inputs, output, recursive, frames, opts.max_pixels)
    batch = _Batch(items, out, _jobs(jobs), skip_existing, progress, t0, scheduler, on_start)
    batch.report.excluded = excluded
    with batch.reporting():
        if not shared_model:
            # sample_default as segment() records it: --skip-existing tells the exact fit from a typed sample
            expect_settings = {**opts.model_settings(), "sample_default": is_default_sample(opts.sample)}
            batch.process(_segment_task, (opts,), {"settings": expect_settings, **opts.expect()})
            return batch.report
        model_path = out / SHARED_MODEL_NAME
        shared = _reuse_shared(model_path, opts) if skip_existing else None
        if shared is None:
            shared = batch.fit_shared(opts, model_path)
            if shared is None:
                return batch.report
        batch.report.shared_model = model_path
        model, spec, digest = shared
        settings = {**opts.model_settings(), "shared_model": digest}
        job = _ApplyJob(model.to_dict(), spec.to_dict(), settings, opts.max_pixels, opts.write_kwargs())
        batch.process(_apply_task, (job,), {"settings": {"shared_model": digest}, **opts.expect()})
        return batch.report


def apply_batch(
    model: str | os.PathLike,
    inputs: Iterable[str | os.PathLike],
    output: str | os.PathLike = "outputs",
    *,
    alpha: float = 0.5,
    cmap: str = "viridis",
    max_pixels: int = DEFAULT_MAX_PIXELS,
    regions: bool = False,
    region_threshold: float = MERGE_THRESHOLD,
    probabilities: str = "npy",
    probabilities_dtype: str = "float32",
    palette: str = "categorical",
    recursive: bool = False,
    frames: bool = False,
    jobs: int | None = None,
    skip_existing: bool = False,
    progress: ProgressFn | None = None,
    scheduler: str | None = None,
    on_start: StartFn | None = None,
) -> BatchReport:
    """Apply the model saved in ``model`` (a ``model.json`` or ``shared_model.json``) to many images.

    Every image goes through the model's fitted feature transform and gets
    the model's memberships: same clusters, same numbers, same colours. The
    outputs, ``summary.csv``, errors, ``jobs``, ``skip_existing``,
    ``progress``, ``on_start`` and ``scheduler`` work as in :func:`run_batch`; ``regions`` also writes each
    image's regions, cut at ``region_threshold``.

    Raises
    ------
    SegsoftError
        The model file is missing or not a segsoft model (the message names
        it), or as in :func:`run_batch`.

    Examples
    --------
    >>> report = apply_batch("outputs/coffee/model.json", ["frames/"], "outputs/frames")  # doctest: +SKIP
    >>> report.count("ok"), report.count("failed")  # doctest: +SKIP
    (120, 0)
    """
    t0 = time.perf_counter()
    check_render_options(alpha, cmap, region_threshold)
    try:
        check_setting("max_pixels", max_pixels)
        check_regions_flag(regions)
    except ValueError as exc:
        raise SegsoftError(str(exc)) from None
    cut = float(region_threshold) if regions else None
    probability_settings(probabilities, probabilities_dtype)
    scheduler = _scheduler(scheduler)
    writing = {
        "alpha": alpha,
        "cmap": cmap,
        "regions": regions,
        "region_threshold": region_threshold,
        "probabilities": probabilities,
        "probabilities_dtype": probabilities_dtype,
        "palette": palette,
    }
    if palette not in CHOICES["palette"]:
        raise SegsoftError(f"--palette must be one of {', '.join(CHOICES['palette'])}, got {palette!r}")
    fitted, spec, record = load_model(model)
    if not spec.fitted:
        raise SegsoftError(f"{model}: the feature spec in this model.json has no standardisation")
    digest = _model_digest(fitted)
    items, out, excluded = _prepare(inputs, output, recursive, frames, max_pixels)
    settings = {**(record.get("settings") or {}), "applied_model": digest, "model_file": os.fspath(model)}
    settings.pop("exact_fit", None)  # how the model was fitted on its own image, not on these
    job = _ApplyJob(fitted.to_dict(), spec.to_dict(), settings, max_pixels, writing, (os.fspath(model),))
    batch = _Batch(items, out, _jobs(jobs), skip_existing, progress, t0, scheduler, on_start)
    batch.report.excluded = excluded
    expect = {
        **_expect_regions(cut),
        **_expect_probabilities(probabilities, probabilities_dtype),
        "pictures": {"palette": palette},
    }
    with batch.reporting():
        batch.process(_apply_task, (job,), {"settings": {"applied_model": digest}, **expect})
    return batch.report


def _prepare(
    inputs: Iterable[str | os.PathLike],
    output: str | os.PathLike,
    recursive: bool,
    frames: bool = False,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
) -> tuple[list, Path, int]:
    """The (image, stem, page) items of a batch, its output folder and how many images found
    under that folder were left out; every frame its own item with ``frames``."""
    inputs = list(inputs)
    out = Path(output)
    # outputs of an earlier run inside an input folder are not inputs
    # (`segsoft batch photos -r -o photos/seg` twice would segment the heatmaps)
    inside = out.resolve()
    found = find_images(inputs, recursive=recursive)
    items = [(p, stem) for p, stem in found if not p.resolve().is_relative_to(inside)]
    if not items:
        named = ", ".join(os.fsdecode(i) for i in inputs[:3]) + (", ..." if len(inputs) > 3 else "")
        if found:
            raise SegsoftError(
                f"{named}: the {len(found)} image{'s' * (len(found) != 1)} found "
                f"{'lie' if len(found) != 1 else 'lies'} under the output folder "
                f"{out}, whose files are never inputs; choose another -o (e.g. -o {out.name or 'out'}_segsoft)"
            )
        hint = "" if recursive else " (use --recursive to look in sub-folders)"
        raise SegsoftError(f"no images found in {named or 'the inputs'}{hint}")
    check_writable(out)
    excluded = len(found) - len(items)
    if not frames:
        return [(p, stem, None) for p, stem in items], out, excluded
    expanded = []
    for p, stem in items:
        try:
            n = count_frames(p)
        except SegsoftError:
            n = 1  # unreadable: it fails as an item of its own, with its error
        if n <= 1:
            expanded.append((p, stem, None))
        else:
            expanded.extend((p, Path(stem) / f"frame_{i:04d}", i) for i in range(n))
    return _distinct_stems(expanded), out, excluded


def _distinct_stems(items: list[tuple[Path, Path, int | None]]) -> list[tuple[Path, Path, int | None]]:
    """Frame folders (``anim/frame_0001``) can meet an input's own (``anim/frame_0001.png``): the later
    one gets ``_2``, ``_3``, ... as :func:`segsoft.io.find_images` does for its collisions."""
    seen: set[str] = set()
    out = []
    for p, stem, page in items:
        stem = Path(stem)
        base, n = stem, 1
        while stem.as_posix().casefold() in seen:
            n += 1
            stem = base.with_name(f"{base.name}_{n}")
        seen.add(stem.as_posix().casefold())
        out.append((p, stem, page))
    return out


def _jobs(jobs: int | None) -> int:
    if jobs is None:
        return default_jobs()
    if isinstance(jobs, bool) or not isinstance(jobs, int) or jobs < 1:
        raise SegsoftError(f"--jobs must be a whole number >= 1, got {jobs!r}")
    return jobs


def _scheduler(scheduler: str | None) -> str | None:
    """The checked ``--scheduler`` value (None: the process pool); needs the dask extra."""
    if scheduler is None:
        return None
    from .cluster.client import check_scheduler

    return check_scheduler(scheduler)


# --------------------------------------------------------------------------
# the batch driver (runs in the calling process)


class _Batch:
    def __init__(
        self,
        items: list[tuple[Path, Path]],
        output: Path,
        jobs: int,
        skip_existing: bool,
        progress: ProgressFn | None,
        t0: float,
        scheduler: str | None = None,
        on_start: StartFn | None = None,
    ):
        self.items = items
        self.on_start = on_start
        self.weights: dict[str, float] | None = None  # estimated pixels per row path, for on_start
        self.scheduler = scheduler  # None: the process pool; else a segsoft.cluster.client.Executor runs the tasks
        self.executor: Any = None
        self.output = output
        self.jobs = jobs
        self.skip_existing = skip_existing
        self.progress = progress
        self.t0 = t0
        self.rows: dict[int, BatchResult] = {}
        self.unreadable: dict[int, BatchResult] = {}  # failed in the shared model's sampling pass
        self.in_flight: set[int] = set()
        self.report = BatchReport([], len(items), output, output / SUMMARY_NAME)

    def folder(self, i: int) -> Path:
        return image_folder(self.output, self.items[i][1])

    def row_path(self, i: int) -> str:
        """The ``path`` of image ``i``'s row, as :meth:`record` writes it."""
        path, _, page = self.items[i]
        return str(path) if page is None else f"{path} [frame {page}]"

    def start(self, stage: str) -> None:
        """Tell ``on_start`` that ``stage`` begins, with every image's estimated pixels."""
        if self.on_start is None:
            return
        self.on_start(stage, dict(self.pixel_weights()))

    def pixel_weights(self) -> dict[str, float]:
        """Every image's estimated pixels (from the headers), by row path; read once: the shared
        model's two stages, and a scheduler's tasks of several small images, weigh the same images."""
        if self.weights is None:
            sizes: dict[str, tuple[int | None, int]] = {}  # per file: frames of one file share its header
            found = {}
            for i, (path, _, _) in enumerate(self.items):
                key = os.fspath(path)
                if key not in sizes:
                    sizes[key] = _header_pixels(path)
                found[self.row_path(i)] = sizes[key]
            self.weights = _pixel_weights(found)
        return self.weights

    def sweep(self, i: int) -> None:
        """Remove the temporary files a stopped or dead worker left in image ``i``'s folder,
        unless another live process holds that folder (they may be its files)."""
        with suppress(SegsoftError), folder_lock(self.folder(i)) as _:
            _sweep(self.folder(i), _FOLDER_TEMP)

    @contextmanager
    def reporting(self) -> Iterator[None]:
        """Write summary.csv at the end, also when interrupted or failing."""
        _sweep(self.output, _ROOT_TEMP)
        if self.scheduler is not None:
            from .cluster.client import Executor

            # an address: connected now
            self.executor = Executor(self.scheduler, self.jobs, reuse_memory=True).__enter__()
        try:
            yield
        except KeyboardInterrupt as exc:
            self.close_executor(kill=True)
            # the workers are stopped by now: their unfinished files can go
            for i in self.in_flight:
                self.sweep(i)
            self.finish(interrupted=True)
            if isinstance(exc, BatchInterrupted):
                raise
            raise BatchInterrupted(self.report) from None
        except BaseException:
            self.close_executor(kill=True)
            with suppress(Exception):
                self.finish(interrupted=False)
            raise
        else:
            self.close_executor(kill=False)
            self.finish(interrupted=False)

    def close_executor(self, kill: bool) -> None:
        executor, self.executor = self.executor, None
        if executor is not None:
            executor.close(kill=kill)

    def execute(
        self, fn: Callable, calls: Sequence[tuple], in_flight: Any, images: Sequence[int]
    ) -> Iterator[tuple[int, Any]]:
        """The tasks' results in completion order, on the process pool or on the scheduler
        (``images``: the image of each call; a scheduler runs several small ones as one task)."""
        if self.executor is None:
            return _execute(fn, calls, self.jobs, in_flight)
        weights = self.pixel_weights()
        sizes = [weights[self.row_path(i)] for i in images]
        return self.executor.execute(fn, calls, in_flight, sizes)

    def finish(self, interrupted: bool) -> None:
        rows = {**self.unreadable, **self.rows}
        self.report.rows = [rows[i] for i in sorted(rows)]
        self.report.interrupted = interrupted
        self.report.seconds = time.perf_counter() - self.t0
        write_summary(self.report.rows, self.report.summary)
        self.write_html(interrupted)

    def write_html(self, interrupted: bool) -> None:
        """report.html, after summary.csv: a page that cannot be written is reported, and loses nothing."""
        from .report import write_report

        r = self.report
        try:
            # interrupted: no new thumbnails (the overlays are linked as they are), so Ctrl-C stops fast
            r.html = write_report(
                r.output, r.rows, seconds=r.seconds, total=r.total, interrupted=interrupted, thumbnails=not interrupted
            )
        except Exception as exc:  # noqa: BLE001 - summary.csv and every image folder are written already
            r.html_error = _one_line(str(exc) if isinstance(exc, SegsoftError) else f"{type(exc).__name__}: {exc}")

    def record(self, i: int, row: BatchResult) -> None:
        row.output = str(self.folder(i))
        page = self.items[i][2]
        if page is not None and not row.path.endswith("]"):
            row.path = f"{row.path} [frame {page}]"  # one row per frame of a multi-frame file
        self.rows[i] = row
        with suppress(OSError):  # a name the file system refuses (too long) has no folder to sweep
            if row.status == "failed" and self.folder(i).is_dir():
                self.sweep(i)  # a worker that died leaves its temporary files
        if self.progress is not None:
            self.progress(len(self.rows), len(self.items), row)

    def process(self, task: Callable, extra: tuple, expect: dict[str, Any]) -> None:
        """Run ``task(path, folder, *extra)`` for each image not skipped and not failed already."""
        self.start("segmenting")
        todo = []
        for i, (path, _, _) in enumerate(self.items):
            if i in self.unreadable:
                self.record(i, self.unreadable[i])
                continue
            try:
                folder = self.folder(i)
            except SegsoftError as exc:  # e.g. a link in the output folder that leads outside it: this image only
                self.rows[i] = _failed(str(path), exc)
                if self.progress is not None:
                    self.progress(len(self.rows), len(self.items), self.rows[i])
                continue
            record = _complete_record(folder, expect, path) if self.skip_existing else None
            if record is not None:
                self.record(i, _skipped_row(path, record))
            else:
                todo.append(i)
        # absolute: a worker of a cluster at an address has its own working folder
        calls = [
            (os.path.abspath(self.items[i][0]), os.path.abspath(self.folder(i)), self.items[i][2], *extra) for i in todo
        ]
        in_flight = _Mapped(self.in_flight, todo)
        with closing(self.execute(task, calls, in_flight, todo)) as results:
            for j, result in results:
                row = _as_row(result, calls[j][0])
                row.path = str(self.items[todo[j]][0])  # as the user named it
                if row.error.startswith(calls[j][0] + ": "):
                    row.error = row.error[len(calls[j][0]) + 2 :]
                self.record(todo[j], row)

    def fit_shared(self, opts: SegmentOptions, path: Path) -> tuple[Any, FeatureSpec, str] | None:
        """Sample every image, fit one model, write it to ``path`` and load it back
        (None when no image could be read)."""
        self.start("sampling")
        n = len(self.items)
        per = None if not opts.sample else max(1, math.ceil(opts.sample / n))
        calls = [
            (str(p), page, per, opts.seed, i, float(opts.spatial_weight), opts.max_pixels)
            for i, (p, _, page) in enumerate(self.items)
        ]
        samples: dict[int, _Sample] = {}
        with closing(self.execute(_sample_task, calls, set(), range(n))) as results:
            for i, result in results:
                if isinstance(result, _Sample):
                    samples[i] = result
                else:
                    row = self.unreadable[i] = _as_row(result, calls[i][0])
                    row.output = str(self.folder(i))
                if self.progress is not None:
                    self.progress(len(samples) + len(self.unreadable), n, None)
        if not samples:  # nothing to fit on: report every image's error
            for i in sorted(self.unreadable):
                self.record(i, self.unreadable[i])
            return None
        model, spec, X = _fit_shared(opts, [samples[i] for i in sorted(samples)])
        used = [str(self.items[i][0]) for i in sorted(samples)]
        _write_json(_shared_record(model, spec, X, opts, used, per), path)
        loaded, spec, _ = load_model(path)  # what every image and every resume will use
        return loaded, spec, _model_digest(loaded)


class _Mapped:
    """The driver's set of in-flight image indices, seen through a task list's positions."""

    def __init__(self, target: set[int], todo: list[int]):
        self.target, self.todo = target, todo

    def add(self, j: int) -> None:
        self.target.add(self.todo[j])

    def discard(self, j: int) -> None:
        self.target.discard(self.todo[j])


def _header_pixels(path: str | os.PathLike) -> tuple[int | None, int]:
    """(width x height from the file's header, or None; the file's size in bytes), without decoding pixels.

    For progress only: any failure gives None, and the image then fails (or not)
    on its own when it is read. Only regular files are opened: a FIFO would block.
    """
    import stat
    import warnings

    try:
        info = os.stat(path)
    except OSError:
        return None, 0
    if not stat.S_ISREG(info.st_mode):
        return None, 0
    from PIL import Image as PILImage

    from .io import _pillow_limit_lifted, _quiet

    def pillow(p: str | os.PathLike) -> int:
        # lazy: reads the header only; --max-pixels, not Pillow's limit (nor its warning), judges the size
        with _pillow_limit_lifted(), _quiet(), PILImage.open(p) as pil:
            return int(pil.width) * int(pil.height)

    def tiff(p: str | os.PathLike) -> int:  # multiband and float TIFFs that Pillow refuses
        import tifffile

        with tifffile.TiffFile(p) as tif:
            page = tif.pages[0]
            return int(page.imagewidth) * int(page.imagelength)

    def npy(p: str | os.PathLike) -> int:  # an array image: its shape, from the header
        with open(p, "rb") as f:
            major, _ = np.lib.format.read_magic(f)
            read = np.lib.format.read_array_header_1_0 if major == 1 else np.lib.format.read_array_header_2_0
            shape = read(f)[0]
        if len(shape) < 2:
            raise ValueError("not an image's shape")
        big = sorted(shape)[-2:]  # H and W, whether the bands come first or last
        return int(big[0]) * int(big[1])

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a decompression-bomb warning is read_image's business, not ours
        for reader in (pillow, tiff, npy):
            try:
                return reader(path), info.st_size
            except Exception:  # noqa: BLE001, S112 - not this reader's format (or damaged): the next, else the size
                continue
    return None, info.st_size


def _pixel_weights(sizes: dict[str, tuple[int | None, int]]) -> dict[str, float]:
    """Pixels per row path: the header's, else the file size times the median pixels per byte of the others.

    Examples
    --------
    >>> _pixel_weights({"a.jpg": (1000, 100), "b.raw": (None, 300), "c.raw": (None, 0)})
    {'a.jpg': 1000.0, 'b.raw': 3000.0, 'c.raw': 1.0}
    >>> _pixel_weights({"x": (None, 10), "y": (None, 20)})  # no header read: file sizes
    {'x': 10.0, 'y': 20.0}
    """
    ratios = sorted(p / b for p, b in sizes.values() if p is not None and b > 0)
    per_byte = ratios[len(ratios) // 2] if ratios else 1.0
    # at least 1: an empty or unreadable file still counts as an image done
    return {key: float(max(p if p is not None else b * per_byte, 1)) for key, (p, b) in sizes.items()}


def write_summary(rows: Sequence[BatchResult], path: str | os.PathLike) -> Path:
    """Write ``summary.csv`` (columns :data:`SUMMARY_COLUMNS`) atomically.

    Examples
    --------
    >>> import tempfile
    >>> with tempfile.TemporaryDirectory() as tmp:
    ...     p = write_summary([BatchResult("a.jpg", "failed", error="not an image")], f"{tmp}/s.csv")
    ...     print(p.read_text().splitlines()[1])
    a.jpg,failed,,,,,,,,,not an image
    """
    buf = _io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(SUMMARY_COLUMNS)
    writer.writerows(row.csv_row() for row in rows)
    path = Path(path)
    # surrogateescape: a file name that is not UTF-8 goes back as its own bytes
    atomic_write_bytes(path, buf.getvalue().encode("utf-8", "surrogateescape"))
    return path


# --------------------------------------------------------------------------
# skip-existing


def _complete_record(folder: Path, expect: dict[str, Any], source: Path | None = None) -> dict[str, Any] | None:
    """The folder's model.json when the folder is complete, ``expect`` matches it
    and it was made from the file now at ``source`` (same size and content hash)."""
    try:
        record = read_json(folder / "model.json")  # bounded: a planted huge or deep file is just "incomplete"
        k = int(record["result"]["k"])
        auto = record.get("k_selection") is not None
        made_from = record["image"].get("source") if source is not None else None
    except (SegsoftError, OSError, ValueError, KeyError, TypeError, AttributeError, ArithmeticError):
        return None
    if not _matches(_plain(expect), record):
        return None
    if source is not None and not _same_source(made_from, source):
        return None
    fmt = (expect.get("probabilities") or {}).get("format", "npy")
    if not all((folder / name).is_file() for name in output_files(k, auto, "regions" in expect, probabilities=fmt)):
        return None
    return record


def _same_source(recorded: Any, path: Path) -> bool:
    """``path`` still holds the file a model.json was made from: the size first (cheap), then the hash."""
    if not isinstance(recorded, dict):
        return False  # made before inputs were recorded, or from an array: redo
    try:
        if os.stat(path).st_size != recorded.get("size"):
            return False
    except OSError:
        return False
    now = file_identity(path)
    return now is not None and now["blake2b"] == recorded.get("blake2b")


def _expect_probabilities(fmt: str, dtype: str) -> dict[str, Any]:
    """What model.json must say about the memberships file; nothing for the default npy/float32,
    so folders written before the option existed are still complete."""
    return {"probabilities": probability_settings(fmt, dtype)}


def _expect_regions(threshold: float | None) -> dict[str, Any]:
    """What a complete folder's model.json must say about regions when they are asked for."""
    return {} if threshold is None else {"regions": {"threshold": float(threshold)}}


def _matches(expected: Any, actual: Any) -> bool:
    """Every key of ``expected`` (recursively) has the same value in ``actual``."""
    if isinstance(expected, dict):
        return isinstance(actual, dict) and all(k in actual and _matches(v, actual[k]) for k, v in expected.items())
    return expected == actual


def _skipped_row(path: Path, record: dict[str, Any]) -> BatchResult:
    image, result = record.get("image") or {}, record.get("result") or {}
    return BatchResult(
        str(path),
        "skipped",
        image.get("width"),
        image.get("height"),
        result.get("k"),
        result.get("n_iter"),
        result.get("converged"),
        result.get("log_likelihood"),
        result.get("bic"),
    )


# temporary names made by io.atomic_path (".<stem>.<8 hex>.tmp<suffix>") for
# the files segsoft writes; a killed process leaves them behind
_ROOT_TEMP = re.compile(r"^\.(summary|shared_model|report)\.[0-9a-f]{8}\.tmp\.(csv|json|html)$")


# --------------------------------------------------------------------------
# worker tasks (module level, so they pickle by name)


@dataclass(frozen=True)
class _ApplyJob:
    model: dict[str, Any]
    spec: dict[str, Any]
    settings: dict[str, Any]
    max_pixels: int
    writing: dict[str, Any]  # outputs.write keyword arguments
    protect: tuple[str, ...] = ()  # files no output may replace (the model file being applied)


@dataclass
class _Sample:
    rgb: np.ndarray  # float32 (n, C) the sampled used pixels' bands (RGB for a colour image)
    xy: np.ndarray | None  # float32 (n, 2) their position features, with a spatial weight
    eight_bit: bool
    is_color: bool = True
    is_gray: bool = False
    band_names: tuple[str, ...] = ()


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def _failed(path: str, exc: BaseException) -> BatchResult:
    if isinstance(exc, SegsoftError):
        message = str(exc)
        if message.startswith(f"{path}: "):  # the path has its own column
            message = message[len(path) + 2 :]
    elif isinstance(exc, MemoryError):
        message = "out of memory: try --sample, fewer --jobs or a smaller image"
    elif isinstance(exc, BrokenProcessPool):
        message = "the worker process died on this image (killed, out of memory, or could not start)"
    else:
        message = f"unexpected {type(exc).__name__}: {exc}"
    return BatchResult(path, "failed", error=_one_line(message))


def _as_row(result: Any, path: str) -> BatchResult:
    if isinstance(result, BatchResult):
        return result
    if isinstance(result, BaseException):
        return _failed(path, result)
    return _failed(path, RuntimeError(f"worker returned {type(result).__name__}"))


def _finish(
    seg: Any, folder: Path, path: str, t0: float, writing: dict[str, Any], protect: Sequence[str] = ()
) -> BatchResult:
    write(seg, folder, **writing, protect=protect)
    model = seg.model
    applied = "applied_model" in seg.settings or "shared_model" in seg.settings
    fitted_here = not applied  # an applied model's iterations belong to the image it was fitted on
    return BatchResult(
        path,
        "ok",
        seg.image.width,
        seg.image.height,
        seg.k,
        _int_or_none(getattr(model, "n_iter_", None)) if fitted_here else None,
        None if not fitted_here or getattr(model, "converged_", None) is None else bool(model.converged_),
        float(seg.log_likelihood),
        seg.bic,
        time.perf_counter() - t0,
    )


def _int_or_none(value: Any) -> int | None:
    return None if value is None else int(value)


def _segment_task(path: str, folder: str, page: int | None, opts: SegmentOptions) -> BatchResult:
    t0 = time.perf_counter()
    try:
        seg = segment(path, **opts.segment_kwargs(), page=page, n_jobs=_task_jobs())
        return _finish(seg, Path(folder), path, t0, opts.write_kwargs())
    except Exception as exc:  # noqa: BLE001 - one bad image must not stop the batch
        row = _failed(path, exc)
    row.seconds = time.perf_counter() - t0
    return row


def _apply_task(path: str, folder: str, page: int | None, job: _ApplyJob) -> BatchResult:
    t0 = time.perf_counter()
    try:
        model, spec = model_from_dict(job.model), FeatureSpec.from_dict(job.spec)
        image = read_image(path, max_pixels=job.max_pixels, page=page)
        display = job.settings.get("display_bands")
        if display is not None:
            image = image.with_display(display)
        seg = apply_model(image, model, spec, max_pixels=job.max_pixels, settings=job.settings, n_jobs=_task_jobs())
        return _finish(seg, Path(folder), path, t0, job.writing, job.protect)
    except Exception as exc:  # noqa: BLE001 - one bad image must not stop the batch
        row = _failed(path, exc)
    row.seconds = time.perf_counter() - t0
    return row


def _sample_task(
    path: str,
    page: int | None,
    per: int | None,
    seed: int | None,
    index: int,
    spatial_weight: float,
    max_pixels: int,
) -> _Sample | BatchResult:
    """A seeded random sample of ``per`` used pixels of one image (all of them when None)."""
    t0 = time.perf_counter()
    try:
        img = read_image(path, max_pixels=max_pixels, page=page)
        # colour and grey photos pool as RGB (a grey one among colour photos is fine, as it always was);
        # only multiband images pool their own bands
        picture = bool(img.is_color or img.is_gray)
        rgb = img.pixels.reshape(-1, 3) if picture else img.bands.reshape(-1, img.n_bands)
        if img.mask is not None:
            rgb = rgb[img.mask.ravel()]
        n = rgb.shape[0]
        rows = None
        if per is not None and per < n:
            # seeded per image, so the sample does not depend on worker timing
            rng = np.random.default_rng(None if seed is None else [seed, index])
            rows = np.sort(rng.choice(n, size=per, replace=False))
        xy = None
        if spatial_weight > 0:
            # position columns as features.extract makes them (grey is the cheapest colour part)
            pos = extract(img, FeatureSpec(color="gray", spatial_weight=spatial_weight, standardize=False))[:, 1:]
            xy = np.ascontiguousarray(pos if rows is None else pos[rows])
        rgb = np.ascontiguousarray(rgb if rows is None else rgb[rows])
        if picture:
            return _Sample(rgb, xy, img.bit_depth == 8)
        return _Sample(rgb, xy, img.bit_depth == 8, False, False, img.band_names)
    except Exception as exc:  # noqa: BLE001 - one bad image must not stop the batch
        row = _failed(path, exc)
    row.seconds = time.perf_counter() - t0
    return row


# --------------------------------------------------------------------------
# the shared model


def _fit_shared(opts: SegmentOptions, samples: list[_Sample]) -> tuple[Any, FeatureSpec, np.ndarray]:
    """Fit the feature standardisation and the model on the pooled samples."""
    kinds = {(s.is_color, s.rgb.shape[1]) for s in samples}
    if len(kinds) > 1:
        what = sorted(f"{c} bands" if not color else "colour or grey" for color, c in kinds)
        raise SegsoftError(f"one shared model cannot serve images of {' and '.join(what)}: batch them separately")
    rgb = np.concatenate([s.rgb for s in samples])
    eight_bit = all(s.eight_bit for s in samples)
    first = samples[0]
    if opts.spatial_weight == 0 and opts.k > 1:
        distinct = _count_distinct(rgb, opts.k)  # early-stopping and chunked; no sort of the whole pool
        if distinct < opts.k:
            raise SegsoftError(f"k={opts.k} is more than the {distinct} distinct colours in the images' pixel sample")
    if rgb.shape[0] < opts.k:
        raise SegsoftError(f"k={opts.k} is more than the {rgb.shape[0]} usable pixels of the images")
    # the pooled pixels as a one-column image: extract fits the standardisation
    # exactly as it does for one image (8-bit sources keep their lookup table)
    column = rgb[:, None, :]
    if first.is_color:
        pool = Image(column, bit_depth=8 if eight_bit else 32)
    else:
        shown = column[:, :, :1].repeat(3, axis=2) if column.shape[2] < 3 else column[:, :, :3]
        pool = Image(
            np.ascontiguousarray(shown), bit_depth=8 if eight_bit else 32, is_gray=first.is_gray, bands=column,
            band_names=first.band_names, is_color=False,
        )
    color = opts.color or ("lab" if first.is_color or first.is_gray else "bands")
    bands = None if opts.bands is None else tuple(opts.bands)
    X, color_spec = extract(pool, FeatureSpec(color=color, bands=bands), return_spec=True)
    spec = FeatureSpec(
        color=color,
        spatial_weight=float(opts.spatial_weight),
        offset=color_spec.offset,
        scale=color_spec.scale,
        bands=color_spec.bands,
        band_names=color_spec.band_names,
    )
    if opts.spatial_weight > 0:
        X = np.hstack([X, np.concatenate([s.xy for s in samples])]).astype(np.float32)
    # the pool already is the sample: fit on all of it
    engine = make_model(
        opts.model,
        opts.k,
        covariance=opts.covariance,
        max_iter=opts.max_iter,
        tol=opts.tol,
        n_init=opts.n_init,
        sample=None,
        seed=opts.seed,
        beta=opts.beta,
        m=opts.m,
    )
    try:
        engine.fit(X)
    except ValueError as exc:
        raise SegsoftError(f"shared model: {exc}") from exc
    return engine, spec, X


def _shared_record(
    model: Any, spec: FeatureSpec, X: np.ndarray, opts: SegmentOptions, images: list[str], per: int | None
) -> dict[str, Any]:
    """``shared_model.json``: the ``model.json`` fields :func:`segsoft.load_model` reads, and how it was made."""
    k = model.n_components
    colors = render.cluster_colors(k)
    mean_color = spec.features_to_color(model.means_)
    weights = getattr(model, "weights_", np.full(k, np.nan))
    clusters = [
        {
            "index": j,
            "display_color": "#{:02x}{:02x}{:02x}".format(*map(int, colors[j])),
            "weight": weights[j],
            f"mean_{spec.color}": mean_color[j],
            "mean_features": model.means_[j],
        }
        for j in range(k)
    ]
    return _plain(
        {
            "segsoft_version": __version__,
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "shared": {"images": images, "pixels": int(X.shape[0]), "pixels_per_image": per},
            "settings": {**opts.model_settings(), "shared_model": True},
            "features": {**spec.to_dict(), "names": spec.feature_names},
            "result": {
                "k": k,
                "log_likelihood": model.score(X),
                "bic": model.bic(X) if hasattr(model, "bic") else None,
                "converged": getattr(model, "converged_", None),
                "n_iter": getattr(model, "n_iter_", None),
                "log_likelihood_trace": getattr(model, "log_likelihood_trace_", []),
            },
            "clusters": clusters,
            "model": model.to_dict(),
        }
    )


def _reuse_shared(path: Path, opts: SegmentOptions) -> tuple[Any, FeatureSpec, str] | None:
    """The shared model of an earlier run with the same settings, so a resumed
    batch keeps the cluster meanings of the images already done."""
    if not path.is_file():
        return None
    try:
        model, spec, record = load_model(path)
    except SegsoftError:
        return None
    if not _matches(_plain(opts.model_settings()), record.get("settings")):
        return None
    return model, spec, _model_digest(model)


def _model_digest(model: Any) -> str:
    """A short fingerprint of a fitted model, recorded with each image it was applied to."""
    text = json.dumps(_plain(model.to_dict()), sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


# --------------------------------------------------------------------------
# worker processes


# forkserver: workers fork from a clean server process that has imported
# segsoft once, so they start fast and inherit no threads. Plain fork would
# copy the caller's threads' locks (rich's progress refresher, BLAS pools) and
# can deadlock; spawn would re-import numpy in every worker.
_START_METHOD = "forkserver" if "forkserver" in multiprocessing.get_all_start_methods() else "spawn"


_IN_WORKER = False  # True in a pool's worker process (set by _init_worker)


_task_thread = threading.local()  # .one_core: a scheduler's task thread (a Dask worker's, the threaded scheduler's)


def _task_jobs() -> int | None:
    """Threads for one image: 1 in a worker (one process per core already), else all the cores (None)."""
    return 1 if _IN_WORKER or getattr(_task_thread, "one_core", False) else None


def mark_task_thread() -> None:
    """Say that this thread runs one image among others running beside it: it gets one core.

    A Dask worker runs one task per thread and has as many threads as the
    cores it was given, as the process pool has one process per core; an
    image that spread itself over every core there (the default outside a
    worker) would make each image slower, and the batch with it.
    """
    _task_thread.one_core = True


def _init_worker() -> None:
    global _IN_WORKER
    _IN_WORKER = True
    # Ctrl-C reaches every process of the terminal's group: the parent alone
    # handles it and stops the workers, which would otherwise print tracebacks
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # one process per core already: extra BLAS/OpenMP threads only compete
    with suppress(ImportError):
        from threadpoolctl import threadpool_limits

        threadpool_limits(1)


def _new_pool(jobs: int) -> ProcessPoolExecutor:
    ctx = multiprocessing.get_context(_START_METHOD)
    if _START_METHOD == "forkserver":
        ctx.set_forkserver_preload([__name__])
    return ProcessPoolExecutor(max_workers=jobs, mp_context=ctx, initializer=_init_worker)


def _stop_pool(pool: ProcessPoolExecutor, kill: bool) -> None:
    if not kill:
        pool.shutdown(wait=True)
        return
    if hasattr(pool, "terminate_workers"):  # Python 3.14+
        pool.terminate_workers()
        return
    procs = list((getattr(pool, "_processes", None) or {}).values())
    pool.shutdown(wait=False, cancel_futures=True)
    for p in procs:
        with suppress(Exception):
            p.terminate()
    for p in procs:
        with suppress(Exception):
            p.join(5)
            if p.is_alive():
                p.kill()
                p.join()


def _execute(fn: Callable, calls: Sequence[tuple], jobs: int, in_flight: Any) -> Iterator[tuple[int, Any]]:
    """Yield ``(index, fn(*calls[index]))`` in completion order, on ``jobs`` worker processes.

    ``fn`` returns its own error rows, so a result is an exception only when
    the worker itself failed: a :class:`BrokenProcessPool` for a task that
    killed its worker. When a worker dies, every task then in flight is
    retried alone in a fresh pool, so only the culprit fails. At most ``jobs``
    tasks are submitted at a time, so cancelling on Ctrl-C has nothing queued
    to drain. ``in_flight`` (``add``/``discard``) tracks the running indices.
    """
    if jobs <= 1 or len(calls) <= 1:  # no pool: simpler to debug, no start-up cost
        for i, args in enumerate(calls):
            in_flight.add(i)
            result = fn(*args)
            in_flight.discard(i)
            yield i, result
        return
    jobs = min(jobs, len(calls))
    pending = deque(range(len(calls)))
    suspects: deque[int] = deque()  # in flight when a worker died: retried one at a time
    running: dict[Future, tuple[int, bool]] = {}
    pool = _new_pool(jobs)
    broken = False

    def submit(i: int, alone: bool) -> bool:
        try:
            running[pool.submit(fn, *calls[i])] = (i, alone)
        except (BrokenProcessPool, OSError, RuntimeError):  # the pool broke before a result said so
            (suspects if alone else pending).appendleft(i)
            return False
        in_flight.add(i)
        return True

    try:
        while pending or suspects or running:
            if broken and not running:
                _stop_pool(pool, kill=True)
                pool, broken = _new_pool(jobs), False
            if not broken:
                if suspects:
                    if not running:
                        broken = not submit(suspects.popleft(), True)
                else:
                    while pending and len(running) < jobs and not broken:
                        broken = not submit(pending.popleft(), False)
            if not running:
                continue
            done, _ = wait(running, return_when=FIRST_COMPLETED)
            for fut in done:
                i, alone = running.pop(fut)
                try:
                    result = fut.result()
                except BrokenProcessPool as exc:
                    broken = True
                    if not alone:
                        suspects.append(i)
                        continue
                    result = exc
                except Exception as exc:  # noqa: BLE001 - e.g. a result that cannot be unpickled
                    result = exc
                in_flight.discard(i)
                yield i, result
    finally:
        _stop_pool(pool, kill=bool(running or pending or suspects))
