"""The ``segsoft`` command: a thin Typer layer over the public API.

Commands parse options, call the library and print; every
:class:`~segsoft.errors.SegsoftError` becomes one ``error:`` line on stderr
and exit code 1, never a traceback.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import math
import os
import re
import signal
import stat
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, get_type_hints

import typer

from . import __version__
from .errors import SegsoftError
from .io import DEFAULT_MAX_PIXELS
from .limits import CHOICES, check_choice
from .outputs import PROBABILITY_DTYPES, PROBABILITY_FORMATS
from .regions import MERGE_THRESHOLD

# ----------------------------------------------------------------------------- help
#
# Options are grouped into panels, in this order (the default "Options" panel,
# with --help, comes first); the shared model options get theirs from _PANELS.
_PANEL_ORDER = ("Model", "Fitting", "Pictures", "Input", "Output", "Scoring", "Performance")


def _panel_rank(param: Any) -> int:
    panel = getattr(param, "rich_help_panel", None)
    return _PANEL_ORDER.index(panel) + 1 if panel in _PANEL_ORDER else 0


class _HelpStyle:
    """Help as the best Typer tools show it, whatever the installed Typer's defaults.

    Flags are shown as flags (``--regions``, not ``--regions <bool>``), the
    arguments by name in the usage line (``IMAGE``, not ``{IMAGE}``), and the
    options in panel order. Parsing is unchanged: only the display is.
    """

    def get_params(self, ctx: Any) -> list[Any]:
        params = super().get_params(ctx)  # type: ignore[misc]
        for param in params:
            if getattr(param, "is_flag", False) and param.metavar is None:
                param.metavar = ""  # no type column for a flag: its name says it all
            if param.default is None:
                # None means "not given": the help text says what applies then (older Typers
                # would add "[default: None]" after it, a second default that says nothing)
                param.show_default = False
        # stable: arguments (rank 0) keep their order, which is what the parser reads
        return sorted(params, key=_panel_rank)

    def collect_usage_pieces(self, ctx: Any) -> list[str]:
        pieces = [self.options_metavar] if self.options_metavar else []  # type: ignore[attr-defined]
        for param in self.get_params(ctx):
            if param.param_type_name != "argument":
                pieces.extend(param.get_usage_pieces(ctx))
                continue
            name = param.metavar or param.name.upper()
            if param.nargs != 1 and not name.endswith("..."):
                name += "..."
            pieces.append(name if param.required else f"[{name}]")
        if isinstance(self, typer.core.TyperGroup):
            pieces.append(self.subcommand_metavar)
        return pieces


class _Command(_HelpStyle, typer.core.TyperCommand):
    """A segsoft command (see :class:`_HelpStyle`)."""


class _Group(_HelpStyle, typer.core.TyperGroup):
    """The ``segsoft`` group (see :class:`_HelpStyle`)."""


def _choices(names: tuple[str, ...]) -> tuple[str, Callable[..., list[str]]]:
    """The metavar (``[lab|rgb|hsv|gray|bands]``) and the shell completion of a choice option.

    ``names`` come from the library's tables (:data:`segsoft.limits.CHOICES`, ...), not
    from an Enum type: the value stays a string that the library checks, case-insensitively,
    with its own one-line error naming the flag (an Enum would get click's exit-2 message).

    Examples
    --------
    >>> metavar, complete = _choices(("gmm", "soft-kmeans", "fcm"))
    >>> metavar, complete("s"), complete("S")
    ('[gmm|soft-kmeans|fcm]', ['soft-kmeans'], ['Soft-kmeans'])
    """

    def complete(incomplete: str) -> list[str]:  # Typer passes the parameters by their annotations
        # the typed prefix kept as typed: Typer keeps only candidates that start with it, and the
        # value is read case-insensitively anyway
        lower = incomplete.lower()
        return [incomplete + name[len(lower) :] for name in names if name.startswith(lower)]

    return "[" + "|".join(names) + "]", complete


app = typer.Typer(
    cls=_Group,
    add_completion=True,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",  # the same on every Typer; help texts escape their brackets: \[dask]
    help="Soft image segmentation: every pixel gets a membership in each of k clusters.",
)


def _error(message: str, code: int = 1) -> typer.Exit:
    # plain echo, not rich: rich would wrap a long path onto a second line
    typer.echo(f"segsoft: error: {message}", err=True)
    return typer.Exit(code)


def _guard(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Turn expected failures into one-line errors with a non-zero exit."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except SegsoftError as exc:
            raise _error(str(exc)) from None
        except BrokenPipeError:
            # the reader went away (segsoft ... | head): stop quietly, as Unix tools do
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            raise typer.Exit(141) from None
        except _Terminated:
            raise _error("terminated", 143) from None
        except KeyboardInterrupt as exc:
            report = getattr(exc, "report", None)  # a BatchInterrupted
            if report is None:
                raise _error("interrupted", 130) from None
            code = 143 if isinstance(exc.__context__, _Terminated) else 130
            raise _error(
                f"{'terminated' if code == 143 else 'interrupted'}: {len(report.rows)} of {report.total} "
                f"images done, listed in {report.summary}; rerun with --skip-existing to resume",
                code,
            ) from None
        except MemoryError:
            raise _error("out of memory: try a smaller image, --sample, or fewer clusters") from None
        except (typer.Exit, typer.Abort):
            raise
        except Exception as exc:  # noqa: BLE001 - the last line of defence against tracebacks
            if os.environ.get("SEGSOFT_DEBUG"):
                raise
            raise _error(f"unexpected {type(exc).__name__}: {exc} (set SEGSOFT_DEBUG=1 for a traceback)") from None

    return wrapper


def _version_callback(value: bool) -> None:
    if value:
        typer.echo(f"segsoft {__version__}")
        raise typer.Exit()


@app.callback()
def main(
    version: bool = typer.Option(
        False, "--version", callback=_version_callback, is_eager=True, help="Show the version and exit."
    ),
) -> None:
    """Soft image segmentation with Gaussian mixtures, soft k-means and fuzzy c-means."""


def _parse_k(k: str) -> int | str:
    if k.strip().lower() == "auto":
        return "auto"
    try:
        value = int(k)
    except ValueError:
        raise SegsoftError(f"-k must be a whole number >= 1 or auto, got {k!r}") from None
    if value < 1:
        raise SegsoftError(f"-k must be a whole number >= 1 or auto, got {k!r}")
    return value


def _parse_bands(text: str, flag: str) -> tuple[int, ...]:
    """'4,3,2' -> (4, 3, 2): band numbers from 0."""
    try:
        picked = tuple(int(part) for part in text.replace(" ", "").split(","))
    except ValueError:
        raise SegsoftError(
            f"{flag} must be band numbers from 0 separated by commas, like 4,3,2; got {text!r}"
        ) from None
    if any(b < 0 for b in picked):
        raise SegsoftError(f"{flag} must be band numbers from 0 separated by commas, like 4,3,2; got {text!r}")
    return picked


def _parse_range(text: str) -> tuple[int, int]:
    """'2..10' (or '2-10', '2:10') -> (2, 10)."""
    parts = re.split(r"\.\.|-|:", text.strip())
    try:
        lo, hi = (int(p) for p in parts)
    except ValueError:
        raise SegsoftError(f"--k-range must look like 2..10, got {text!r}") from None
    if not 1 <= lo <= hi:
        raise SegsoftError(f"--k-range must satisfy 1 <= low <= high, got {text!r}")
    return lo, hi


def _fmt(value: Any, spec: str = ".4f") -> str:
    if value is None:
        return "n/a"
    return format(value, spec) if isinstance(value, float) else str(value)


def _summary(seg: Any, folder: Path, seconds: float, regions: float | None = None) -> None:
    model = seg.model
    rows = [
        ("image", f"{seg.image.path}  ({seg.image.width}x{seg.image.height})"),
        (
            "model",
            f"{seg.settings.get('model')}  k={seg.k}  features={'+'.join(seg.spec.feature_names)}"
            + (f"  smoothing={seg.settings['smoothing']}" if seg.settings.get("smoothing") else ""),
        ),
        ("iterations", f"{model.n_iter_}  ({'converged' if model.converged_ else 'not converged: raise --max-iter'})"),
        (
            "score (-J)" if seg.settings.get("model") == "fcm" else "log-likelihood",  # c-means has no likelihood
            _fmt(seg.log_likelihood),
        ),
        *([("BIC", _fmt(seg.bic, ".1f"))] if seg.bic is not None else []),  # fuzzy c-means has no BIC
        ("cluster sizes", _sizes(_fractions(seg))),
        ("seconds", f"{seconds:.2f}"),
        ("output", str(folder)),
    ]
    if regions is not None:
        count = int(seg.regions(regions).max()) + 1
        rows.insert(-2, ("regions", f"{count}  (threshold {regions:g}; regions.png)"))
    if seg.selection is not None:
        sel = seg.selection
        rows.insert(
            2,
            (
                "k chosen",
                f"{sel['k']} by {sel['criterion'].upper()} from {sel['ks'][0]}..{sel['ks'][-1]} (see k_selection.png)",
            ),
        )
    collapsed = getattr(model, "collapsed_", None)
    if collapsed is not None and collapsed.any():
        which = collapsed.nonzero()[0].tolist()
        named = ", ".join(map(str, which[:8])) + (f", ... ({len(which)} of {seg.k})" if len(which) > 8 else "")
        rows.append(
            (
                "warning",
                f"cluster{'s' * (len(which) > 1)} {named} collapsed: too little "
                "membership to estimate their own shape (more clusters than the image supports?)",
            )
        )
    # plain aligned lines: a rich table would cut long paths at the terminal width
    for key, value in rows:
        typer.echo(f"{key:<16}{value}")


def _sizes(fractions: list[float], most: int = 12) -> str:
    """Each cluster's share of the pixels; past ``most`` clusters, the largest ones and a count of the rest."""
    if len(fractions) <= most:
        return "  ".join(f"{j}:{f:.0%}" for j, f in enumerate(fractions))
    order = sorted(range(len(fractions)), key=lambda j: -fractions[j])[: most - 2]
    rest = 1.0 - sum(fractions[j] for j in order)
    shown = "  ".join(f"{j}:{fractions[j]:.0%}" for j in order)
    return f"{shown}  +{len(fractions) - len(order)} more: {rest:.0%}  (largest first; all in model.json)"


def _fractions(seg: Any) -> list[float]:
    import numpy as np

    labels = seg.labels
    counts = np.bincount(labels[labels >= 0].ravel(), minlength=seg.k)
    return list(counts / max(seg.n_used, 1))


class _Terminated(KeyboardInterrupt):
    """SIGTERM (``kill PID``), handled like Ctrl-C so a batch stops cleanly."""


@contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    def handler(signum: int, frame: Any) -> None:
        raise _Terminated()

    try:
        previous = signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread (e.g. an embedding app): leave SIGTERM alone
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


# ----------------------------------------------------------------------------- shared options
#
# run and batch take the same model options, and apply the rendering ones.
# Each is declared once here; @_options(...) adds them to a command's
# signature (which is what Typer reads) and hands the command one
# SegmentOptions instead of fifteen parameters.

_OPTIONS: dict[str, tuple[Any, Any, str]] = {  # name: (type, typer.Option, SegmentOptions field)
    "k": (str, typer.Option("4", "-k", "--k", help="Number of clusters, or auto to choose it by --criterion."), "k"),
    # None: not given (the SegmentOptions default applies); given where it has no effect, it is an error
    "k_range": (
        str | None,
        typer.Option(None, "--k-range", help="With -k auto: the smallest and largest k tried (default 2..10)."),
        "k_range",
    ),
    "criterion": (
        str | None,
        typer.Option(None, "--criterion", help="With -k auto: icl (default) or bic (lower is better)."),
        "criterion",
    ),
    "color": (
        str | None,
        typer.Option(
            None,
            "--color",
            help="Features: a colour space or the image's bands "
            "(default: lab for colour and grey images, bands for other band counts).",
        ),
        "color",
    ),
    "bands": (
        str | None,
        typer.Option(None, "--bands", help="With bands: the bands to use, e.g. 1,2,5 (default: all)."),
        "bands",
    ),
    "display_bands": (
        str | None,
        typer.Option(
            None,
            "--display-bands",
            help="Bands shown in the pictures, e.g. 4,3,2 (false colour) or 5 (grey); display only.",
        ),
        "display_bands",
    ),
    "spatial_weight": (
        float,
        typer.Option(0.0, "--spatial-weight", help="Weight of x,y position features (0 = colour only)."),
        "spatial_weight",
    ),
    "smoothing": (
        float,
        typer.Option(
            0.0, "--smooth", help="Spatial prior: reward per agreeing neighbour (0 = none; 0.5-2 removes speckle)."
        ),
        "smoothing",
    ),
    "model": (str, typer.Option("gmm", "--model", help="gmm, soft-kmeans or fcm (fuzzy c-means)."), "model"),
    "covariance": (
        str,
        typer.Option("full", "--covariance", help="GMM covariance: full, diag, spherical or tied."),
        "covariance",
    ),
    "alpha": (float, typer.Option(0.5, "--alpha", help="Opacity of the cluster colours in overlay.png."), "alpha"),
    "cmap": (str, typer.Option("viridis", "--cmap", help="Matplotlib colormap for the heatmaps."), "cmap"),
    "palette": (
        str,
        typer.Option(
            "categorical",
            "--palette",
            help="Cluster colours: categorical (distinguishable up to k = 64) or mean (each cluster's mean colour).",
        ),
        "palette",
    ),
    "regions": (
        bool,
        typer.Option(
            False,
            "--regions",
            help="Also write regions.png and regions.npy (connected segments merged along weak boundaries), "
            "boundaries.png and ucm.npy (every merge level).",
        ),
        "regions",
    ),
    "probabilities": (
        str,
        typer.Option(
            "npy",
            "--probabilities",
            help="Memberships file: npy (probabilities.npy), tiff (a k-band probabilities.tif and labels.tif) "
            "or none (labels.tif only).",
        ),
        "probabilities",
    ),
    "probabilities_dtype": (
        str,
        typer.Option(
            "float32",
            "--probabilities-dtype",
            help="float32 or float16 (NaN where transparent), or uint8 (membership x 254; 255 where transparent).",
        ),
        "probabilities_dtype",
    ),
    "region_threshold": (
        float | None,
        typer.Option(
            None,
            "--region-threshold",
            help=f"With --regions: merge cost to stop at (default {MERGE_THRESHOLD}; higher = fewer, larger regions).",
        ),
        "region_threshold",
    ),
    "max_iter": (int, typer.Option(100, "--max-iter", help="Most EM iterations."), "max_iter"),
    "tol": (float, typer.Option(1e-4, "--tol", help="Stop when the mean log-likelihood changes by less."), "tol"),
    "n_init": (int, typer.Option(1, "--n-init", help="Restarts; the best fit is kept."), "n_init"),
    "sample": (
        int | None,
        typer.Option(
            None,
            "--sample",
            help="Fit on this many random pixels, then polish on all (0 = fit on all). Default: the exact fit on "
            "every pixel through its distinct colours where that applies (an 8-bit colour image with at most a "
            "quarter of its pixels distinct, colour-only features, no --smooth), else 200000.",
        ),
        "sample",
    ),
    "seed": (int, typer.Option(0, "--seed", help="Random seed: same seed, same result."), "seed"),
    "beta": (float | None, typer.Option(None, "--beta", help="Soft k-means stiffness (default: learned)."), "beta"),
    "fuzzifier": (float, typer.Option(2.0, "--fuzzifier", "-m", help="Fuzzy c-means fuzzifier m > 1."), "m"),
    "max_pixels": (
        int,
        typer.Option(DEFAULT_MAX_PIXELS, "--max-pixels", help="Refuse images with more pixels."),
        "max_pixels",
    ),
}
_MODEL_OPTIONS = tuple(_OPTIONS)
_PANELS = {  # option: help panel
    **dict.fromkeys(
        (
            "k",
            "k_range",
            "criterion",
            "model",
            "covariance",
            "beta",
            "fuzzifier",
            "color",
            "bands",
            "spatial_weight",
            "smoothing",
        ),
        "Model",
    ),
    **dict.fromkeys(("max_iter", "tol", "n_init", "sample", "seed"), "Fitting"),
    **dict.fromkeys(("display_bands", "alpha", "cmap", "palette", "regions", "region_threshold"), "Pictures"),
    **dict.fromkeys(("probabilities", "probabilities_dtype"), "Output"),
    "max_pixels": "Input",
}
_METAVARS = {  # what a value looks like, where its type alone (<str>) would not say
    "k": "<int|auto>",
    "k_range": "<low..high>",
    "bands": "<band,...>",
    "display_bands": "<band,...>",
    "cmap": "<colormap>",
}
_TABLES = {**CHOICES, "probabilities": PROBABILITY_FORMATS, "probabilities_dtype": PROBABILITY_DTYPES}
for _name, (_, _info, _field) in _OPTIONS.items():
    _info.rich_help_panel = _PANELS[_name]
    if _field in _TABLES:  # shown as [gmm|soft-kmeans|fcm] and completed, yet checked by the library
        _info.metavar, _info.autocompletion = _choices(_TABLES[_field])
    elif _name in _METAVARS:
        _info.metavar = _METAVARS[_name]
del _name, _info, _field
# options that mean something only together with another: field -> (in effect?, flag, with what).
# Given on the command line where they have no effect, they are an error, never silently ignored.
_ONLY_WITH: dict[str, tuple[Callable[[dict[str, Any]], bool], str, str]] = {
    "k_range": (lambda v: v.get("k") == "auto", "--k-range", "-k auto"),
    "criterion": (lambda v: v.get("k") == "auto", "--criterion", "-k auto"),
    "region_threshold": (lambda v: bool(v.get("regions")), "--region-threshold", "--regions"),
    "beta": (lambda v: v.get("model", "gmm") == "soft-kmeans", "--beta", "--model soft-kmeans"),
    "m": (lambda v: v.get("model", "gmm") == "fcm", "-m/--fuzzifier", "--model fcm"),
    "covariance": (lambda v: v.get("model", "gmm") == "gmm", "--covariance", "--model gmm"),
    "probabilities_dtype": (
        lambda v: str(v.get("probabilities", "npy")).strip().lower() != "none",
        "--probabilities-dtype",
        "--probabilities npy or tiff (none writes no memberships)",
    ),
}
_CHOICE_FIELDS = ("color", "model", "covariance", "criterion", "palette")  # case-insensitive on the command line
_OUTPUT_ONLY = ("alpha", "cmap", "palette", "probabilities", "probabilities_dtype")
# nothing is written or drawn, and regions do not depend on the display bands
_EVALUATE_OPTIONS = tuple(name for name in _OPTIONS if name not in (*_OUTPUT_ONLY, "display_bands"))
_RENDER_OPTIONS = (
    "alpha",
    "cmap",
    "palette",
    "regions",
    "region_threshold",
    "probabilities",
    "probabilities_dtype",
    "max_pixels",
)


def _given(ctx: Any, name: str) -> bool:
    """The option was typed (or came from the environment), not left at its default."""
    source = ctx.get_parameter_source(name)
    return source is not None and source.name not in ("DEFAULT", "DEFAULT_MAP")


def _colormap_name(name: str) -> str:
    """Matplotlib names are case-sensitive (``Blues``); take another case when it names exactly one."""
    from .render import _BUILTIN_LUTS

    if name in _BUILTIN_LUTS:  # the default maps: no matplotlib import (tenths of a second, ~12 MB)
        return name
    from matplotlib import colormaps

    if name in colormaps:
        return name
    matches = [known for known in colormaps if known.lower() == name.lower()]
    return matches[0] if len(matches) == 1 else name


def _options(names: tuple[str, ...]) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Put the shared options ``names`` in place of the command's ``opts`` parameter."""

    def decorate(fn: Callable[..., Any]) -> Callable[..., Any]:
        hints = get_type_hints(fn)
        own = [p.replace(annotation=hints.get(p.name, p.annotation)) for p in inspect.signature(fn).parameters.values()]
        at = [p.name for p in own].index("opts")
        shared = [
            inspect.Parameter(
                name, inspect.Parameter.KEYWORD_ONLY, default=_OPTIONS[name][1], annotation=_OPTIONS[name][0]
            )
            for name in names
        ]
        params = [p.replace(kind=inspect.Parameter.KEYWORD_ONLY) for p in own]
        params[at : at + 1] = shared

        @functools.wraps(fn)
        def wrapper(**kwargs: Any) -> Any:
            ctx = kwargs.pop("_ctx")
            sources = {_OPTIONS[name][2]: _given(ctx, name) for name in names}
            values = {_OPTIONS[name][2]: kwargs.pop(name) for name in names}
            given = {field for field in _ONLY_WITH if sources.get(field) and values.get(field) is not None}
            # --sample left out: SegmentOptions' default (the exact fit where it applies, else a sample)
            values = {f: v for f, v in values.items() if v is not None or (f not in _ONLY_WITH and f != "sample")}
            for field in _CHOICE_FIELDS:
                if isinstance(values.get(field), str):
                    values[field] = values[field].strip().lower()
            if "cmap" in values:
                values["cmap"] = _colormap_name(values["cmap"])
            for field, flag in (("bands", "--bands"), ("display_bands", "--display-bands")):
                if values.get(field) is not None:
                    values[field] = _parse_bands(values[field], flag)
            if "k" in values:
                values["k"] = _parse_k(values["k"])
            if values.get("k_range") is not None:
                values["k_range"] = _parse_range(values["k_range"])
            for field in _CHOICE_FIELDS:  # a misspelt --model must not read as "--beta only applies with ..."
                if values.get(field) is not None:
                    try:
                        check_choice(field, values[field])
                    except ValueError as exc:
                        raise SegsoftError(str(exc)) from None
            for field in sorted(given):
                in_effect, flag, other = _ONLY_WITH[field]
                if not in_effect(values):
                    raise SegsoftError(f"{flag} only applies with {other}")
            from .batch import SegmentOptions

            return fn(opts=SegmentOptions(**values), **kwargs)

        params.insert(0, inspect.Parameter("_ctx", inspect.Parameter.KEYWORD_ONLY, annotation=typer.Context))
        wrapper.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
        wrapper.__annotations__ = {p.name: p.annotation for p in params}
        return wrapper

    return decorate


# ----------------------------------------------------------------------------- commands


@app.command(cls=_Command)
@_guard
@_options(_MODEL_OPTIONS)
def run(
    image: Path = typer.Argument(..., metavar="IMAGE", help="Image file to segment (JPEG, PNG, TIFF, BMP, WebP, ...)."),
    output: Path = typer.Option(
        Path("outputs"),
        "-o",
        "--output",
        help="Output folder; results go to OUTPUT/<image name>/.",
        rich_help_panel="Output",
    ),
    opts: Any = None,
    save_model: Path | None = typer.Option(
        None, "--save-model", help="Also save the fitted model here, for segsoft apply.", rich_help_panel="Output"
    ),
    page: int | None = typer.Option(
        None,
        "--page",
        min=0,
        help="The page or frame of a multi-frame file (from 0); its outputs go to OUTPUT/<name>/frame_NNNN/.",
        rich_help_panel="Input",
    ),
    scheduler: str | None = typer.Option(
        None,
        "--scheduler",
        metavar="local|threads|ADDRESS",
        help="Features, fit and memberships tile by tile on Dask (pip install 'segsoft\\[dask]'): local = a local "
        "cluster, threads = threads of this process, tcp://host:8786 = a running cluster; same numbers as without.",
        rich_help_panel="Performance",
    ),
    report: bool = typer.Option(
        False,
        "--report",
        help="Also write report.html in the image's folder: its pictures and numbers on one page.",
        rich_help_panel="Output",
    ),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="Print nothing on success."),
) -> None:
    """Soft-segment one image and write pictures, probabilities and model.json."""
    from .outputs import check_targets, check_writable, image_folder
    from .segment import segment

    start = time.perf_counter()
    opts.check()
    if scheduler is not None:
        from .cluster.client import check_scheduler

        scheduler = check_scheduler(scheduler)
    if not image.exists() and not image.is_symlink():
        raise SegsoftError(f"{image}: no such file")
    folder = image_folder(output, Path(image.stem) / f"frame_{page:04d}" if page is not None else image.stem)
    # fail before the slow work on what can be checked up front
    check_writable(folder)
    check_targets(folder, [image])
    if save_model is not None:
        _check_save_model(save_model, image, folder)
        check_writable(save_model.parent)
    if _out_of_core(image, scheduler, opts):
        _run_large(image, folder, scheduler, opts, page, quiet, save_model, report, start)
        return
    score = "score (-J)" if opts.model == "fcm" else "log-likelihood"  # c-means has no likelihood
    if opts.smoothing:  # EM climbs the smoothed objective; the summary's log-likelihood is the plain one
        score = "smoothed objective"
    with _sigterm_as_interrupt(), _StatusLine(quiet, image.name, score) as status:
        seg = segment(
            image,
            **opts.segment_kwargs(),
            page=page,
            scheduler=scheduler,
            progress=status.iteration,
            on_stage=status.stage,
        )
        status.stage(f"writing pictures to {folder}")
        seg.save(folder, **opts.write_kwargs())
        _model_and_report(status, seg, folder, save_model, report)
    if not quiet:
        _summary(seg, folder, time.perf_counter() - start, opts.region_cut)


def _model_and_report(status: Any, seg: Any, folder: Path, save_model: Path | None, report: bool) -> None:
    """The end of ``run``: --save-model and --report."""
    from .outputs import save_model as write_model

    if save_model is not None:
        status.stage(f"saving the model to {save_model}")
        write_model(seg, save_model)
    if report:
        from .report import write_report

        status.stage("writing report.html")
        write_report(folder)


def _check_save_model(path: Path, image: Path, folder: Path) -> None:
    """--save-model may write a new file or replace a segsoft model, nothing else:
    not the input, not another output of this run, not a user's file."""
    from .outputs import LOCK_NAME, check_targets

    real = os.path.realpath(path)
    if real == os.path.realpath(image):
        raise SegsoftError(f"--save-model {path}: is the input image; choose another path")
    if real == os.path.realpath(folder) or os.path.isdir(real):
        raise SegsoftError(f"--save-model {path}: is a folder; give a file name such as {path / 'model.json'}")
    if os.path.dirname(real) == os.path.realpath(folder):
        try:
            check_targets(folder, [path])
        except SegsoftError:
            raise SegsoftError(
                f"--save-model {path}: is one of this run's outputs in {folder}; choose another path"
            ) from None
        if os.path.basename(real) == LOCK_NAME:
            raise SegsoftError(f"--save-model {path}: is this run's lock file; choose another path")
    try:
        mode = os.stat(path).st_mode
    except OSError:
        mode = None
    if mode is not None and not stat.S_ISREG(mode):
        raise SegsoftError(f"--save-model {path}: is not a regular file (a FIFO, socket or device); not written")
    if os.path.lexists(path) and not _is_segsoft_model(path):
        raise SegsoftError(f"--save-model {path}: exists and is not a segsoft model.json; not overwritten")


def _is_segsoft_model(path: Path) -> bool:
    try:
        with open(path, "rb") as f:
            head = f.read(4096)
    except OSError:
        return False
    return head.lstrip().startswith(b"{") and b'"segsoft_version"' in head


_INPUTS_HELP = "Image files, folders and glob patterns (quote them: '*.jpg')."
_JOBS = typer.Option(
    None, "--jobs", "-j", help="Worker processes (default: one per CPU core).", rich_help_panel="Performance"
)
_RECURSIVE = typer.Option(
    False, "--recursive", "-r", help="Also look in the sub-folders of folder inputs.", rich_help_panel="Input"
)
_FRAMES = typer.Option(
    False,
    "--frames",
    help="Segment every frame of multi-frame files (GIF, APNG, WebP, TIFF pages) into OUTPUT/<name>/frame_NNNN/.",
    rich_help_panel="Input",
)
_SKIP = typer.Option(
    False,
    "--skip-existing",
    help="Skip images whose output folder is complete; resumes an interrupted batch.",
    rich_help_panel="Output",
)
_QUIET = typer.Option(False, "--quiet", "-q", help="No progress bar and no report on success.")
_SCHEDULER = typer.Option(
    None,
    "--scheduler",
    metavar="local|threads|ADDRESS",
    help="Run on Dask (pip install 'segsoft\\[dask]'): local = a local cluster of --jobs worker processes, "
    "threads = --jobs threads of this process, tcp://host:8786 = a running Dask cluster.",
    rich_help_panel="Performance",
)


@app.command(cls=_Command)
@_guard
@_options(_MODEL_OPTIONS)
def batch(
    inputs: list[Path] = typer.Argument(..., metavar="INPUT...", help=_INPUTS_HELP),
    output: Path = typer.Option(
        Path("outputs"),
        "-o",
        "--output",
        help="Output folder; results go to OUTPUT/<path below the input folder>/.",
        rich_help_panel="Output",
    ),
    jobs: int | None = _JOBS,
    recursive: bool = _RECURSIVE,
    frames: bool = _FRAMES,
    skip_existing: bool = _SKIP,
    shared_model: bool = typer.Option(
        False,
        "--shared-model",
        help="Fit one model on pixels from all images and apply it to each, "
        "so cluster numbers and colours agree across the batch.",
        rich_help_panel="Model",
    ),
    scheduler: str | None = _SCHEDULER,
    opts: Any = None,
    quiet: bool = _QUIET,
) -> None:
    """Soft-segment many images on all cores; write summary.csv; exit 1 if any failed."""
    from .batch import run_batch

    with _sigterm_as_interrupt(), _ProgressBar(quiet) as bar:
        report = run_batch(
            inputs,
            output,
            opts,
            recursive=recursive,
            frames=frames,
            jobs=jobs,
            skip_existing=skip_existing,
            shared_model=shared_model,
            progress=bar.update,
            scheduler=scheduler,
            on_start=bar.start,
        )
    _batch_report(report, quiet)


@app.command(cls=_Command)
@_guard
@_options(_RENDER_OPTIONS)
def apply(
    model: Path = typer.Argument(
        ..., metavar="MODEL.json", help="A model.json (from run, batch or run --save-model) or shared_model.json."
    ),
    inputs: list[Path] = typer.Argument(..., metavar="INPUT...", help=_INPUTS_HELP),
    output: Path = typer.Option(
        Path("outputs"),
        "-o",
        "--output",
        help="Output folder; results go to OUTPUT/<path below the input folder>/.",
        rich_help_panel="Output",
    ),
    jobs: int | None = _JOBS,
    recursive: bool = _RECURSIVE,
    frames: bool = _FRAMES,
    skip_existing: bool = _SKIP,
    scheduler: str | None = _SCHEDULER,
    opts: Any = None,
    quiet: bool = _QUIET,
) -> None:
    """Apply a saved model to images: same clusters, numbers and colours; exit 1 if any failed."""
    from .batch import apply_batch

    with _sigterm_as_interrupt(), _ProgressBar(quiet) as bar:
        report = apply_batch(
            model,
            inputs,
            output,
            alpha=opts.alpha,
            cmap=opts.cmap,
            max_pixels=opts.max_pixels,
            regions=opts.regions,
            region_threshold=opts.region_threshold,
            probabilities=opts.probabilities,
            probabilities_dtype=opts.probabilities_dtype,
            palette=opts.palette,
            recursive=recursive,
            frames=frames,
            jobs=jobs,
            skip_existing=skip_existing,
            progress=bar.update,
            scheduler=scheduler,
            on_start=bar.start,
        )
    _batch_report(report, quiet)


class _StatusLine:
    """What ``run`` is doing, as one rich status line on stderr; only on a terminal and without --quiet.

    :func:`segsoft.segment.segment` reports its stages (``on_stage``) and every
    EM iteration (``progress``); the line shows the latest. It is transient:
    gone before the summary or an error is printed.
    """

    _EVERY = 0.1  # seconds between forced redraws; the live display also redraws 12.5 times a second

    def __init__(self, quiet: bool, name: str, score: str = "log-likelihood", console: Any = None):
        self.name, self.score = name, score
        self.enabled = False
        if not quiet:  # rich's live display costs 0.05-0.1 s to import: not for a line never drawn
            from rich.console import Console

            console = console or Console(stderr=True)
            # a dumb terminal cannot rewrite a line: it would get one line per redraw
            self.enabled = console.is_terminal and not console.is_dumb_terminal
        if self.enabled:
            from rich.live import Live
            from rich.spinner import Spinner

            self.spinner = Spinner("dots")
            # stdout is left alone: what goes there (the summary, a pipe) must stay there
            self.live = Live(
                self.spinner, console=console, transient=True, refresh_per_second=12.5, redirect_stdout=False
            )
        self.current = ""
        self.drawn = 0.0
        self.iterated = False  # the current stage has reported an iteration

    def __enter__(self) -> _StatusLine:
        if self.enabled:
            self.live.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.enabled:
            self.live.stop()

    def stage(self, name: str) -> None:
        """A new stage: always drawn at once, so even a stage shorter than a refresh is seen."""
        self.current, self.iterated = name, False
        self._show(f"{name}...", force=True)

    def iteration(self, iteration: int, value: float) -> None:
        """An EM iteration: the first of a stage is drawn at once, later ones at most every 0.1 s."""
        first, self.iterated = not self.iterated, True
        self._show(f"{self.current or 'fitting'}: iteration {iteration}, {self.score} {value:.4f}", force=first)

    def _show(self, text: str, force: bool) -> None:
        if not self.enabled:
            return
        from rich.text import Text

        # Text, not markup: a file name may hold [brackets]; one line, cut to the terminal's
        # width (less the spinner), or a long path would wrap and each redraw add lines
        line = Text(f"{self.name}: {text}")
        line.truncate(max(self.live.console.width - 3, 10), overflow="ellipsis")
        self.spinner.update(text=line)
        now = time.monotonic()
        if force or now - self.drawn >= self._EVERY:
            self.drawn = now
            self.live.refresh()


class _ProgressBar:
    """A rich progress bar on stderr (counts, failures, elapsed, ETA); only on a terminal and without --quiet.

    It shows at once, while the images are still being found; a batch then
    announces each stage with every image's pixel count (``on_start``), and
    the bar advances by pixels, so its ETA is weighted by pixels, not by
    images: one 24 MP photo is not taken for as much work as one thumbnail.
    Without ``on_start`` (``evaluate``) every item weighs the same.
    """

    def __init__(self, quiet: bool):
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        console = Console(stderr=True)
        self.progress = Progress(
            TextColumn("{task.description:<10}"),
            BarColumn(),
            TextColumn("{task.fields[done]}/{task.fields[count]}"),  # images; the bar itself counts pixels
            TextColumn("{task.fields[failed]} failed"),
            TimeElapsedColumn(),
            TextColumn("ETA"),
            TimeRemainingColumn(),
            console=console,
            disable=quiet or not console.is_terminal,
        )
        self.task: Any = None
        self.stage = ""
        self.failed = 0
        self.started = False  # an image was processed (not skipped) in this stage
        self.weights: dict[str, float] | None = None  # this stage's pixels per row path
        self.mean = 1.0  # the weight of a row not in weights (or of every row without them)
        self.work = 0.0  # weight done in this stage
        self.total_work = 0.0

    def __enter__(self) -> _ProgressBar:
        self.progress.start()
        # at once, not after the first image: finding the images and reading their headers take time too
        self._new_task("starting", None, None)
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.stop()

    def _new_task(self, stage: str, count: int | None, weights: dict[str, float] | None) -> None:
        if self.task is not None:
            self.progress.update(self.task, visible=False)
        self.weights = weights
        self.total_work = sum(weights.values()) if weights else float(count or 0)
        self.mean = self.total_work / len(weights) if weights else 1.0
        self.work = 0.0
        self.task = self.progress.add_task(
            stage,
            total=None if count is None else self.total_work,  # None: a pulsing bar until the counts are known
            done=0,
            count="?" if count is None else count,
            failed=self.failed,
        )
        self.stage, self.started = stage, False

    def start(self, stage: str, weights: dict[str, float]) -> None:
        """A batch stage begins: ``weights`` maps each row's path to its image's pixels (see run_batch)."""
        self._new_task(stage, len(weights), weights)

    def update(self, done: int, total: int, row: Any, stage: str | None = None) -> None:
        stage = stage or ("sampling" if row is None else "segmenting")
        if stage != self.stage:
            self._new_task(stage, total, None)
        if row is not None and row.status == "failed":
            self.failed += 1
        weight = self.weights.get(row.path) if self.weights and row is not None else None
        self.work += self.mean if weight is None else weight
        if done >= total:
            self.work = self.total_work  # estimates must not leave a finished stage short of the end
        fields = {"done": done, "count": total, "failed": self.failed}
        if row is not None and row.status == "skipped" and not self.started:
            # skipped images come first: count them without letting them fake a high speed in the ETA
            self.progress.reset(self.task, total=self.total_work, completed=self.work, **fields)
            return
        self.started = True
        self.progress.update(self.task, total=self.total_work, completed=self.work, **fields)


def _batch_report(report: Any, quiet: bool) -> None:
    """Counts on stdout (unless --quiet); each failure on stderr; exit 1 if any failed."""
    failed = report.failed
    if not quiet:
        extra = f"; shared model {report.shared_model}" if report.shared_model is not None else ""
        if report.html is not None:
            extra += f"; report {report.html}"
        if report.excluded:
            extra += (
                f"; {report.excluded} image{'s' * (report.excluded != 1)} under the output folder "
                f"{report.output} not taken as input{'s' * (report.excluded != 1)}"
            )
        typer.echo(
            f"{report.total} image{'s' * (report.total != 1)}: {report.count('ok')} ok, {report.count('skipped')} skipped, "
            f"{len(failed)} failed in {report.seconds:.1f} s; summary {report.summary}{extra}"
        )
    if report.html_error:  # the images and summary.csv are written: a warning, not a failed batch
        typer.echo(f"segsoft: warning: report.html not written: {report.html_error}", err=True)
    for row in failed:
        typer.echo(f"segsoft: error: {row.path}: {row.error}", err=True)
    if failed:
        raise typer.Exit(1)


@app.command(cls=_Command)
@_guard
@_options(_EVALUATE_OPTIONS)
def evaluate(
    path: Path = typer.Argument(
        ...,
        metavar="PRED_OR_IMAGE_DIR",
        help="segsoft output folders or label maps (.npy, .png) named by image id; "
        "or a folder of images, which are segmented first with the model options.",
    ),
    gt: Path = typer.Option(
        ...,
        "--gt",
        help="Ground truth: <id>.npz (key segs: humans x H x W), .npy or .png.",
        rich_help_panel="Scoring",
    ),
    min_region: float = typer.Option(
        0.01,
        "--min-region",
        help="Score connected patches of cluster labels, merging those under this share of the image; "
        "0 scores the labels as they are (region maps from --regions are always scored as they are).",
        rich_help_panel="Scoring",
    ),
    csv: Path | None = typer.Option(None, "--csv", help="Also write one row per image here.", rich_help_panel="Output"),
    allow_missing: bool = typer.Option(
        False,
        "--allow-missing",
        help="Score only the images that have a prediction; ground truth without one is counted, not an error.",
        rich_help_panel="Scoring",
    ),
    thresholds: str | None = typer.Option(
        None,
        "--thresholds",
        help="Also cut each image's one region hierarchy (images with --regions, or output folders' ucm.npy) "
        "at START:STOP:STEP or a list a,b,c, and report ODS and OIS.",
        rich_help_panel="Scoring",
    ),
    boundaries: bool = typer.Option(
        False,
        "--boundaries",
        help="Also score each output folder's ucm.npy with the BSDS boundary benchmark: precision, recall and F "
        "at --thresholds (default the benchmark's 99, 0.01 to 0.99), ODS, OIS and AP.",
        rich_help_panel="Scoring",
    ),
    opts: Any = None,
    jobs: int | None = _JOBS,
    scheduler: str | None = _SCHEDULER,
    quiet: bool = typer.Option(False, "--quiet", "-q", help="Print nothing but errors."),
) -> None:
    """Score segmentations against human ones: PRI, VoI (bits) and Covering, as the BSDS benchmark."""
    from .evaluate import evaluate_directory, find_predictions, parse_thresholds

    opts.check()
    if jobs is not None and jobs < 1:
        raise SegsoftError(f"--jobs must be a whole number >= 1, got {jobs}")
    if scheduler is not None:
        from .cluster.client import check_scheduler

        scheduler = check_scheduler(scheduler)
    cuts = None if thresholds is None else parse_thresholds(thresholds)
    if not (math.isfinite(min_region) and 0.0 <= min_region < 1.0):
        raise SegsoftError(f"--min-region must be a number >= 0 and < 1 (a share of the image), got {min_region!r}")
    if find_predictions(path):
        changed = _changed_options(opts, _EVALUATE_OPTIONS)
        if changed:
            raise SegsoftError(
                f"{path}: holds predictions, which are scored as they are; {changed[0]} applies to a folder of images"
            )
    if csv is not None:
        from .outputs import check_writable

        if csv.is_dir():
            raise SegsoftError(f"--csv {csv}: is a folder; give a file name such as {csv / 'scores.csv'}")
        if csv.exists() and csv.suffix.lower() != ".csv":
            # it may be a prediction or a ground truth: never write over what is being read
            raise SegsoftError(f"--csv {csv}: exists and is not a .csv file; not overwritten")
        check_writable(csv.parent)
    with _ProgressBar(quiet) as bar:
        report = evaluate_directory(
            path,
            gt,
            min_region=min_region or None,
            segment_kwargs=opts.segment_kwargs(),
            regions=opts.region_cut,
            allow_missing=allow_missing,
            progress=lambda done, total, image_id: bar.update(done, total, None, "scoring"),
            thresholds=cuts,
            scheduler=scheduler,
            jobs=jobs,
            boundaries=boundaries,
        )
    if csv is not None:
        report.to_csv(csv)
    if not quiet:
        typer.echo(report.summary())
    if not report.ok:
        raise typer.Exit(1)


def _changed_options(opts: Any, names: tuple[str, ...]) -> list[str]:
    """Flags among ``names`` whose value differs from the default (an option left at its default changes nothing)."""
    from .batch import SegmentOptions

    default = SegmentOptions()
    return [
        _OPTIONS[name][1].param_decls[0]
        for name in names
        if getattr(opts, _OPTIONS[name][2]) != getattr(default, _OPTIONS[name][2])
    ]


def _out_of_core(image: Path, scheduler: str | None, opts: Any) -> bool:
    """Whether ``run`` reads the image tile by tile: with --scheduler, a TIFF or a zarr store
    over --max-pixels or too large for the memory free now."""
    if scheduler is None:
        return False
    from .budget import available_memory, estimate_bytes, header_shape
    from .io import is_zarr_store

    if not image.is_file() and not is_zarr_store(image):
        return False  # the reader says what is wrong with it (never opened here: a FIFO would block)
    if image.is_file():
        with open(image, "rb") as f:
            if f.read(4) not in (b"II*\0", b"MM\0*", b"II+\0", b"MM\0+"):
                return False  # JPEG, PNG, ...: no tiles to read one by one
    shape = header_shape(image)
    if shape is None:
        return False
    free = available_memory()
    k = opts.k if isinstance(opts.k, int) else 10
    need = estimate_bytes(*shape, k=k, smoothing=bool(opts.smoothing))
    return shape[0] * shape[1] > opts.max_pixels or (free is not None and need > free)


def _run_large(
    image: Path,
    folder: Path,
    scheduler: str,
    opts: Any,
    page: int | None,
    quiet: bool,
    save_model: Path | None,
    report: bool,
    start: float,
) -> None:
    """``run`` out of core: OME-Zarr memberships and PNG previews (see :mod:`segsoft.cluster.large`)."""
    from .cluster.large import segment_large

    kwargs = opts.segment_kwargs()
    kwargs.pop("max_pixels", None)
    write = opts.write_kwargs()
    if write.get("probabilities") == "npy":
        write["probabilities"] = "zarr"  # the default out of core: no single file holds a gigapixel's memberships
    if write.get("probabilities") == "tiff":
        raise SegsoftError(
            f"{image}: out of core the memberships are written as probabilities.zarr: "
            "leave --probabilities at its default, or give --probabilities none"
        )
    chunk = os.environ.get("SEGSOFT_CHUNK")  # tile side (tests force small tiles with it)
    if chunk is not None and not (chunk.isdigit() and int(chunk) > 0):
        raise SegsoftError(f"SEGSOFT_CHUNK={chunk!r}: must be a whole number of pixels > 0")
    from .io import inside
    from .outputs import folder_lock

    if image.is_dir() and os.path.realpath(folder).startswith(os.path.realpath(image) + os.sep):
        raise SegsoftError(f"-o {folder}: is inside the input store {image}; choose an output folder outside it")
    folder.mkdir(parents=True, exist_ok=True)
    inside(folder.parent, folder)
    with folder_lock(folder):
        pass  # another process writing this folder: say so now, not after the fit
    score = "score (-J)" if opts.model == "fcm" else "log-likelihood"
    with _sigterm_as_interrupt(), _StatusLine(quiet, image.name, score) as status:
        status.stage("features tile by tile (kept in the output folder while it runs)")
        large = segment_large(
            image,
            scheduler=scheduler,
            page=page,
            chunks=int(chunk) if chunk else None,
            workdir=folder,
            progress=status.iteration,
            **kwargs,
        )
        try:
            status.stage("memberships tile by tile: probabilities.zarr, uncertainty.zarr, previews")
            large.save(folder, **write)
        finally:
            large.close()
        seg = large.preview
        _model_and_report(status, seg, folder, save_model, report)
    if quiet:
        return
    model = large.model
    n = max(int(large.counts.sum()), 1)
    rows = [
        ("image", f"{image}  ({large.image.width}x{large.image.height}, out of core)"),
        ("model", f"{large.settings.get('model')}  k={large.k}  features={'+'.join(large.spec.feature_names)}"),
        ("iterations", f"{model.n_iter_}  ({'converged' if model.converged_ else 'not converged: raise --max-iter'})"),
        ("score (-J)" if large.settings.get("model") == "fcm" else "log-likelihood", _fmt(large.log_likelihood)),
        ("BIC", _fmt(large.bic, ".1f")),
        ("cluster sizes", _sizes([c / n for c in large.counts.tolist()])),
        *(
            [("k chosen", f"{large.k} by {large.selection['criterion'].upper()} (see k_selection.png)")]
            if large.selection
            else []
        ),
        ("previews", f"{seg.image.width}x{seg.image.height} (means of {large.preview_factor}x{large.preview_factor})"),
        ("seconds", f"{time.perf_counter() - start:.2f}"),
        ("output", str(folder)),
    ]
    for key, value in rows:
        typer.echo(f"{key:<16}{value}")


@app.command(cls=_Command)
@_guard
def report(
    output: Path = typer.Argument(
        ...,
        metavar="OUTPUT",
        help="A segsoft output folder: of a batch (summary.csv) or of one image (model.json).",
    ),
    thumbnails: bool = typer.Option(
        True, "--thumbnails/--no-thumbnails", help="Make small thumbnails of large overlays for the table."
    ),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="Print nothing but errors."),
) -> None:
    """Write OUTPUT/report.html again from what the folder holds.

    For a batch written before reports existed, a folder filled by several
    runs (--skip-existing), or one image's folder from `segsoft run`. Reads
    summary.csv, or each image folder's model.json where there is none; writes
    only report.html (and its thumbnails) inside OUTPUT, under the folder's
    lock, so it never mixes with a batch still writing there.
    """
    from .outputs import folder_lock
    from .report import report_rows, write_report

    if not output.exists():
        raise SegsoftError(f"{output}: no such output folder")
    if not output.is_dir():
        raise SegsoftError(f"{output}: is not a folder; give a segsoft output folder")
    entries, _ = report_rows(output)
    if not entries:
        raise SegsoftError(
            f"{output}: no segsoft outputs in it (no summary.csv, no model.json in it or its image folders)"
        )
    with folder_lock(output):
        page = write_report(output, thumbnails=thumbnails)
    if not quiet:
        typer.echo(f"{len(entries)} image{'s' * (len(entries) != 1)}; report {page}")


def entry() -> None:
    """Console-script entry point.

    Usage errors (an unknown flag, a missing argument, a value of the wrong
    type) are one ``segsoft: error:`` line like every other error, exit
    code 2, instead of Typer's framed box.
    """
    # a file name that is not valid UTF-8 must not turn a report into a UnicodeEncodeError
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(AttributeError, ValueError):
            stream.reconfigure(errors="backslashreplace")
    try:
        command = typer.main.get_command(app)
        code = command.main(args=sys.argv[1:], prog_name="segsoft", standalone_mode=False)
    except Exception as exc:  # the click exception types differ between Typer versions
        if type(exc).__name__ == "Abort":  # Ctrl-C while click itself was working
            typer.echo("segsoft: error: interrupted", err=True)
            sys.exit(130)
        if not (hasattr(exc, "format_message") and hasattr(exc, "exit_code")):
            raise
        context = getattr(getattr(exc, "ctx", None), "command_path", None) or "segsoft"
        message = " ".join(str(exc.format_message()).split())
        if message:  # bare `segsoft` printed the help and has nothing to add
            typer.echo(f"segsoft: error: {message} (see {context} --help)", err=True)
        sys.exit(exc.exit_code)
    except (KeyboardInterrupt, EOFError):  # before or after a command's own handling
        typer.echo("segsoft: error: interrupted", err=True)
        sys.exit(130)
    if isinstance(code, int):
        sys.exit(code)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(entry())
