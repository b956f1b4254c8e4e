"""The ``segsoft`` command: a thin Typer layer over the public API.

Commands parse options, call the library and print; every
:class:`~segsoft.errors.SegsoftError` becomes one ``error:`` line on stderr
and exit code 1, never a traceback.
"""

from __future__ import annotations

import functools
import os
import sys
import time
from pathlib import Path
from typing import Any, Callable, Optional

import typer

from . import __version__
from .errors import SegsoftError
from .io import DEFAULT_MAX_PIXELS

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
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
        except KeyboardInterrupt:
            raise _error("interrupted", 130) from None
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
    version: bool = typer.Option(False, "--version", callback=_version_callback, is_eager=True,
                                 help="Show the version and exit."),
) -> None:
    """Soft image segmentation with Gaussian mixtures, soft k-means and fuzzy c-means."""


def _parse_k(k: str) -> int:
    try:
        value = int(k)
    except ValueError:
        raise SegsoftError(f"-k must be a whole number >= 1, got {k!r}") from None
    if value < 1:
        raise SegsoftError(f"-k must be a whole number >= 1, got {k!r}")
    return value


def _fmt(value: Any, spec: str = ".4f") -> str:
    if value is None:
        return "n/a"
    return format(value, spec) if isinstance(value, float) else str(value)


def _summary(seg: Any, folder: Path, seconds: float) -> None:
    model = seg.model
    rows = [
        ("image", f"{seg.image.path}  ({seg.image.width}x{seg.image.height})"),
        ("model", f"{seg.settings.get('model')}  k={seg.k}  features={'+'.join(seg.spec.feature_names)}"),
        ("iterations", f"{model.n_iter_}  ({'converged' if model.converged_ else 'not converged: raise --max-iter'})"),
        ("log-likelihood", _fmt(seg.log_likelihood)),
        ("BIC", _fmt(seg.bic, ".1f")),
        ("cluster sizes", "  ".join(f"{j}:{f:.0%}" for j, f in enumerate(_fractions(seg)))),
        ("seconds", f"{seconds:.2f}"),
        ("output", str(folder)),
    ]
    collapsed = getattr(model, "collapsed_", None)
    if collapsed is not None and collapsed.any():
        rows.append(("warning", f"clusters {', '.join(map(str, collapsed.nonzero()[0]))} collapsed (no pixels)"))
    # plain aligned lines: a rich table would cut long paths at the terminal width
    for key, value in rows:
        typer.echo(f"{key:<16}{value}")


def _fractions(seg: Any) -> list[float]:
    import numpy as np

    labels = seg.labels
    counts = np.bincount(labels[labels >= 0].ravel(), minlength=seg.k)
    return list(counts / max(seg.n_used, 1))


@app.command()
@_guard
def run(
    image: Path = typer.Argument(..., help="Image file to segment (JPEG, PNG, TIFF, BMP, WebP, ...)."),
    k: str = typer.Option("4", "-k", "--k", help="Number of clusters."),
    output: Path = typer.Option(Path("outputs"), "-o", "--output",
                                help="Output folder; results go to OUTPUT/<image name>/."),
    color: str = typer.Option("lab", "--color", help="Colour space: lab, rgb, hsv or gray."),
    spatial_weight: float = typer.Option(0.0, "--spatial-weight",
                                         help="Weight of x,y position features (0 = colour only)."),
    model: str = typer.Option("gmm", "--model", help="gmm, soft-kmeans or fcm (fuzzy c-means)."),
    covariance: str = typer.Option("full", "--covariance", help="GMM covariance: full, diag, spherical or tied."),
    alpha: float = typer.Option(0.5, "--alpha", help="Opacity of the cluster colours in overlay.png."),
    cmap: str = typer.Option("viridis", "--cmap", help="Matplotlib colormap for the heatmaps."),
    max_iter: int = typer.Option(100, "--max-iter", help="Most EM iterations."),
    tol: float = typer.Option(1e-4, "--tol", help="Stop when the mean log-likelihood changes by less."),
    n_init: int = typer.Option(1, "--n-init", help="Restarts; the best fit is kept."),
    sample: int = typer.Option(200_000, "--sample",
                               help="Fit on this many random pixels, then polish on all (0 = fit on all)."),
    seed: int = typer.Option(0, "--seed", help="Random seed: same seed, same result."),
    beta: Optional[float] = typer.Option(None, "--beta", help="Soft k-means stiffness (default: learned)."),
    fuzzifier: float = typer.Option(2.0, "--fuzzifier", "-m", help="Fuzzy c-means fuzzifier m > 1."),
    max_pixels: int = typer.Option(DEFAULT_MAX_PIXELS, "--max-pixels", help="Refuse images with more pixels."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="Print nothing on success."),
) -> None:
    """Soft-segment one image and write pictures, probabilities and model.json."""
    from .segment import segment

    if max_iter < 0 or n_init < 1 or tol < 0 or sample < 0:
        raise SegsoftError("--max-iter and --sample must be >= 0, --n-init >= 1 and --tol >= 0")
    start = time.perf_counter()
    kk = _parse_k(k)
    if not image.exists():
        raise SegsoftError(f"{image}: no such file")
    folder = output / image.stem
    # fail before the slow work on what can be checked up front
    from .outputs import check_writable
    from .render import colormap_lut

    check_writable(folder)
    colormap_lut(cmap)
    if not 0.0 <= alpha <= 1.0:
        raise SegsoftError(f"--alpha must be between 0 and 1, got {alpha}")
    seg = segment(image, kk, color=color, spatial_weight=spatial_weight, model=model, covariance=covariance,
                  max_iter=max_iter, tol=tol, n_init=n_init, sample=sample or None, seed=seed, beta=beta,
                  m=fuzzifier, max_pixels=max_pixels)
    seg.save(folder, alpha=alpha, cmap=cmap)
    if not quiet:
        _summary(seg, folder, time.perf_counter() - start)


def entry() -> None:
    """Console-script entry point."""
    app(prog_name="segsoft")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(entry())
