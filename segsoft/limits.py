"""The accepted range of every setting, in one table.

The command line checks its options against it (naming the flag), and a
``model.json`` is checked against it when it is loaded (naming the field),
so a value that the command line refuses can't come back through a model
file. The ranges are wide enough for any sensible use and tight enough that
an absurd value (``--spatial-weight 1e300``, ``-k 500``) is refused up front
instead of surfacing later as NaN, hours of work or gigabytes of files.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

__all__ = ["CHOICES", "FLAGS", "LIMITS", "MAX_K", "Limit", "check_choice", "check_setting"]

#: The most clusters segsoft fits: every cluster costs a heatmap, a colour and a
#: probability plane per pixel, and past 64 no colour palette tells them apart.
MAX_K = 64


@dataclass(frozen=True)
class Limit:
    """A numeric range; ``low_open`` excludes ``low`` itself; ``integer`` asks for whole numbers."""

    low: float
    high: float | None  # None: no upper bound
    integer: bool = False
    low_open: bool = False

    def describe(self) -> str:
        def num(v: float) -> str:
            return str(int(v)) if self.integer else f"{v:g}"

        low = f"> {num(self.low)}" if self.low_open else f">= {num(self.low)}"
        kind = "a whole number" if self.integer else "a number"
        return f"{kind} {low}" + ("" if self.high is None else f" and <= {num(self.high)}")

    def accepts(self, value: Any) -> bool:
        if isinstance(value, bool):
            return False
        if self.integer:
            if not hasattr(value, "__index__"):  # int and numpy integers, not floats or strings
                return False
            value = int(value)
        else:
            try:
                value = float(value)
            except (TypeError, ValueError):
                return False
            if not math.isfinite(value):
                return False
        above = value > self.low if self.low_open else value >= self.low
        return above and (self.high is None or value <= self.high)


#: Settings (as :func:`segsoft.segment` names them) and their ranges.
LIMITS: dict[str, Limit] = {
    "k": Limit(1, MAX_K, integer=True),
    "spatial_weight": Limit(0.0, 100.0),
    "smoothing": Limit(0.0, 100.0),
    "max_iter": Limit(1, 100_000, integer=True),
    "tol": Limit(0.0, 1e3),
    "n_init": Limit(1, 1000, integer=True),
    "sample": Limit(0, None, integer=True),
    "seed": Limit(0, None, integer=True),
    "beta": Limit(0.0, 1e6, low_open=True),
    "m": Limit(1.0, 100.0, low_open=True),
    "reg_covar": Limit(0.0, 1.0),
    "max_pixels": Limit(1, 10**12, integer=True),
    "alpha": Limit(0.0, 1.0),
    "region_threshold": Limit(0.0, 1e6),
}

#: Settings with a fixed set of values (compared case-insensitively on the command line).
CHOICES: dict[str, tuple[str, ...]] = {
    "color": ("lab", "rgb", "hsv", "gray", "bands"),
    "model": ("gmm", "soft-kmeans", "fcm"),
    "covariance": ("full", "diag", "spherical", "tied"),
    "criterion": ("icl", "bic"),
    "palette": ("categorical", "mean"),
}

#: The command-line flag of each setting.
FLAGS: dict[str, str] = {
    "k": "-k",
    "k_range": "--k-range",
    "criterion": "--criterion",
    "color": "--color",
    "spatial_weight": "--spatial-weight",
    "smoothing": "--smooth",
    "model": "--model",
    "covariance": "--covariance",
    "max_iter": "--max-iter",
    "tol": "--tol",
    "n_init": "--n-init",
    "sample": "--sample",
    "seed": "--seed",
    "beta": "--beta",
    "m": "-m/--fuzzifier",
    "max_pixels": "--max-pixels",
    "alpha": "--alpha",
    "cmap": "--cmap",
    "regions": "--regions",
    "palette": "--palette",
    "region_threshold": "--region-threshold",
}


def check_setting(name: str, value: Any, label: str | None = None) -> Any:
    """Return ``value`` if it is in the range of setting ``name``, else raise ValueError.

    ``label`` names the setting in the message (default: its flag).

    Examples
    --------
    >>> check_setting("spatial_weight", 0.5)
    0.5
    >>> check_setting("spatial_weight", 1e300)
    Traceback (most recent call last):
    ...
    ValueError: --spatial-weight must be a number >= 0 and <= 100, got 1e+300
    """
    limit = LIMITS[name]
    if not limit.accepts(value):
        raise ValueError(f"{label or FLAGS.get(name, name)} must be {limit.describe()}, got {value!r}")
    return value


def check_choice(name: str, value: Any, label: str | None = None) -> str:
    """Return the canonical spelling of choice ``value`` for setting ``name`` (case-insensitive), else ValueError.

    Examples
    --------
    >>> check_choice("color", "LAB")
    'lab'
    >>> check_choice("model", "kmeans")
    Traceback (most recent call last):
    ...
    ValueError: --model must be one of gmm, soft-kmeans, fcm, got 'kmeans'
    """
    choices = CHOICES[name]
    if isinstance(value, str) and value.strip().lower() in choices:
        return value.strip().lower()
    raise ValueError(f"{label or FLAGS.get(name, name)} must be one of {', '.join(choices)}, got {value!r}")
