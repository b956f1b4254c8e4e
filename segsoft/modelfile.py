"""Reading ``model.json`` and ``shared_model.json``: every field checked before use.

A model file comes from disk, so it may be truncated, hand-edited, from
another version or made to break things. :func:`read_model` refuses it with
one :class:`~segsoft.errors.SegsoftError` line naming the file and the field
unless the whole of it makes sense, so that ``segsoft apply`` fails before
it reads an image or writes an output, never once per image with a NaN
picture or a ``LinAlgError``. In order:

1. size: at most :data:`MAX_MODEL_BYTES`, 16 MB (a real model.json with
   k=64, five features and full covariances is about 0.2 MB; about 6 MB
   with two traces of the longest allowed run, 100,000 iterations);
2. nesting: at most :data:`MAX_DEPTH` levels of lists and objects (the JSON
   parser's own recursion guard stops a 100,000-deep file; what parses is
   then measured without recursion);
3. structure and values of ``settings`` (the command line's ranges,
   :data:`segsoft.limits.LIMITS`),
   ``features`` (a fitted standardisation of the right length) and
   ``model`` (finite means of the model's dimension, weights that sum to 1,
   symmetric positive definite covariances of the right shape, stored
   precisions that match them, k at most :func:`max_k`, traces at most
   :data:`MAX_TRACE` long) and the informational sections;
4. a probe: the rebuilt model is applied to 27 colours, so whatever slipped
   through field by field (an extreme combination of valid values) still
   fails here, on the file, and not on the first image.

The format itself is documented by the JSON Schema ``model.schema.json``
shipped next to this module (see :func:`schema`).
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

import numpy as np

from .errors import SegsoftError
from .features import COLOR_SPACES, FeatureSpec
from .limits import LIMITS, MAX_K
from .mixture import COVARIANCE_TYPES, model_from_dict

__all__ = [
    "MAX_DEPTH",
    "MAX_MODEL_BYTES",
    "MAX_TRACE",
    "SCHEMA_NAME",
    "check_record",
    "max_k",
    "read_json",
    "read_model",
    "schema",
    "setting_range",
]

MAX_MODEL_BYTES = 16 * 1024 * 1024
MAX_DEPTH = 32  # a real model.json nests 6 deep (record > model > fitted > covariances_ (k, d, d))
MAX_TRACE = 100_000  # entries per log-likelihood trace (one per EM iteration)
MAX_ABS_VALUE = 1e6  # features, offsets and means: real ones are within a few hundred
SCALE_RANGE = (1e-6, 1e6)  # standardisation scales (the fit's floors are 0.005 and more)
# variances (and covariance eigenvalues): the fit floors diagonal ones at 1e-12; outside this range
# the precisions or log-determinants stop being representable
VARIANCE_RANGE = (1e-30, 1e12)
WEIGHT_TOLERANCE = 1e-6  # |sum(weights) - 1|
SYMMETRY_TOLERANCE = 1e-6  # |A - A^T| relative to the largest diagonal entry
MATCH_TOLERANCE = 1e-6  # stored precisions against those recomputed from the covariances
MAX_CHUNK = 1 << 20  # rows per chunk: more would allocate gigabytes per pass
MAX_JOBS = 1024
SCHEMA_NAME = "model.schema.json"

_MODEL_NAMES = {"GaussianMixture": "gmm", "SoftKMeans": "soft-kmeans", "FuzzyCMeans": "fcm"}
_CRITERIA = ("icl", "bic")
_DIGEST = re.compile(r"[0-9a-f]{16}")

# fitted attributes each model writes; anything else is refused (from_dict would set it as
# an attribute, and a name like "predict_proba_" or "means_" of the wrong type breaks every image)
_COMMON_FITTED = {
    "means_",
    "collapsed_",
    "reg_covar_",
    "n_iter_sample_",
    "log_likelihood_trace_",
    "polish_trace_",
    "log_likelihood_",
    "converged_",
    "n_iter_",
    "n_features_in_",
    "n_reseeds_",
}
_FITTED = {
    "GaussianMixture": _COMMON_FITTED | {"weights_", "covariances_", "precisions_cholesky_", "precisions_"},
    "SoftKMeans": _COMMON_FITTED | {"weights_", "covariances_", "beta_"},
    "FuzzyCMeans": _COMMON_FITTED,
}
_REQUIRED_FITTED = {
    "GaussianMixture": ("means_", "weights_", "covariances_"),
    "SoftKMeans": ("means_", "beta_", "collapsed_"),
    "FuzzyCMeans": ("means_", "collapsed_"),
}
_COMMON_PARAMS = {"n_components", "max_iter", "tol", "init", "n_init", "seed", "sample_size", "polish_iter"}
_COMMON_PARAMS |= {"chunk_size", "n_jobs"}
_PARAMS = {
    "GaussianMixture": _COMMON_PARAMS | {"covariance", "reg_covar"},
    "SoftKMeans": _COMMON_PARAMS | {"beta", "reg_covar"},
    "FuzzyCMeans": _COMMON_PARAMS | {"m"},
}
_SPEC_FIELDS = ("color", "spatial_weight", "standardize", "offset", "scale", "names", "bands")
MAX_BANDS = 256  # feature bands a model may name: far more than any multispectral sensor or stack here


def max_k() -> int:
    """The largest number of clusters a model may have (:data:`segsoft.limits.MAX_K`, 64).

    Examples
    --------
    >>> max_k()
    64
    """
    return MAX_K


def setting_range(name: str) -> tuple[float, float | None, bool, bool]:
    """The command line's range of setting ``name``: (low, high or None, whole number?, low excluded?).

    From :data:`segsoft.limits.LIMITS`: model files are held to the same ranges,
    so a value the command line refuses cannot come back through a model file.

    Examples
    --------
    >>> setting_range("smoothing")
    (0.0, 100.0, False, False)
    """
    limit = LIMITS[name]
    return limit.low, limit.high, limit.integer, limit.low_open


def schema() -> dict[str, Any]:
    """The JSON Schema (draft 2020-12) of ``model.json`` and ``shared_model.json``.

    Examples
    --------
    >>> schema()["$schema"]
    'https://json-schema.org/draft/2020-12/schema'
    """
    from importlib.resources import files

    return json.loads(files("segsoft").joinpath(SCHEMA_NAME).read_text(encoding="utf-8"))


def read_model(path: str | os.PathLike) -> tuple[Any, FeatureSpec, dict[str, Any]]:
    """Read and check a ``model.json``: the fitted model, its feature spec and the whole record.

    Raises
    ------
    SegsoftError
        One line naming the file and the problem: missing or unreadable, too
        large, nested too deeply, not JSON, or any field missing, of the
        wrong type or out of range (see the module docstring).

    Examples
    --------
    >>> model, spec, record = read_model("outputs/coffee/model.json")  # doctest: +SKIP
    >>> read_model("notes.txt")  # doctest: +SKIP
    Traceback (most recent call last):
    ...
    segsoft.errors.SegsoftError: notes.txt: not valid JSON (Expecting value at line 1 column 1)
    """
    path = Path(path)
    record = read_json(path)
    model, spec = check_record(record, str(path))
    return model, spec, record


def read_json(path: str | os.PathLike) -> Any:
    """Parse a JSON file with the model file's guards: at most :data:`MAX_MODEL_BYTES`,
    at most :data:`MAX_DEPTH` levels deep; no check of what it holds.

    For any code that reads a ``model.json`` it did not just write (e.g. to
    see whether an output folder is complete): a bare ``json.loads`` would
    read a file of any size and raise RecursionError on deep nesting.

    Raises
    ------
    SegsoftError
        Nothing else, for any content: missing, unreadable, too large, not
        UTF-8, not JSON, an integer over Python's 4300-digit limit (its field
        and line named), nested too deeply.

    Examples
    --------
    >>> import tempfile
    >>> with tempfile.NamedTemporaryFile("w", suffix=".json") as f:
    ...     _ = f.write('{"a": [1, 2]}'); f.flush()
    ...     read_json(f.name)
    {'a': [1, 2]}
    """
    path = Path(path)
    data = _read_bytes(path)
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise SegsoftError(f"{path}: not a segsoft model.json (not UTF-8 text)") from None
    too_deep = f"{path}: nested too deeply (a model.json has at most {MAX_DEPTH} levels of lists and objects)"
    try:
        record = json.loads(text)
    except json.JSONDecodeError as exc:
        raise SegsoftError(f"{path}: not valid JSON ({exc.msg} at line {exc.lineno} column {exc.colno})") from None
    except RecursionError:
        # json's C parser counts its own recursion and raises this (at ~1000 levels) before the stack runs out
        raise SegsoftError(too_deep) from None
    except ValueError as exc:
        # an integer with more digits than Python converts (4300): its advice, sys.set_int_max_str_digits(),
        # is for programmers, and no model.json field needs such a number
        where = _long_number(text)
        if where is not None:
            raise SegsoftError(f"{path}: not a segsoft model.json (a number with too many digits{where})") from None
        raise SegsoftError(f"{path}: not valid JSON ({_one_line(exc)})") from None
    except MemoryError:
        raise SegsoftError(f"{path}: not enough memory to parse it") from None
    # below the parser's limit, deep data would still break every later json.dumps and copy of the record
    if _too_deep(record, MAX_DEPTH):
        raise SegsoftError(too_deep)
    return record


def check_record(record: Any, source: str = "model.json") -> tuple[Any, FeatureSpec]:
    """Check a parsed model record and rebuild its model and feature spec.

    ``source`` names the record in messages (the file it came from).

    Examples
    --------
    >>> check_record({"model": None}, "palette.json")
    Traceback (most recent call last):
    ...
    segsoft.errors.SegsoftError: palette.json: model must be an object, got None
    """
    return _Checker(source).record(record)


# --------------------------------------------------------------------------
# reading


def _read_bytes(path: Path) -> bytes:
    try:
        size = path.stat().st_size
        if path.is_dir():
            raise IsADirectoryError
        if size > MAX_MODEL_BYTES:
            raise SegsoftError(f"{path}: {_mb(size)} is too large for a model.json (at most {_mb(MAX_MODEL_BYTES)})")
        # a bounded read: stat says nothing reliable about pipes and special files
        with open(path, "rb") as fh:
            data = fh.read(MAX_MODEL_BYTES + 1)
    except FileNotFoundError:
        raise SegsoftError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise SegsoftError(f"{path}: is a directory, not a model.json") from None
    except OSError as exc:
        raise SegsoftError(f"{path}: cannot read ({exc.strerror or exc})") from None
    if len(data) > MAX_MODEL_BYTES:
        raise SegsoftError(f"{path}: too large for a model.json (more than {_mb(MAX_MODEL_BYTES)})")
    return data


# what may stand between a field's key and a number in its value: "key": [[1, 2], [3, <number>
_NUMBERS_BEFORE = "[]0123456789eE+-., \t\r\n"
_KEY_BEFORE = re.compile(r'"((?:[^"\\\n]|\\.){1,64})"\s*:$')


def _long_number(text: str) -> str | None:
    """Where the first integer over Python's digit limit is: ``' in field "seed" at line 2 column 9'``.

    None if there is none (the ValueError was something else). The field is
    the key whose value holds the number directly or in nested lists of
    numbers; it is left out where that cannot be told from the text nearby.
    """
    import sys

    limit = sys.get_int_max_str_digits()
    found = re.search(rf"\d{{{limit + 1},}}", text) if limit else None
    if found is None:
        return None
    start = found.start()
    line = text.count("\n", 0, start) + 1
    column = start - (text.rfind("\n", 0, start) + 1) + 1
    # back over the list brackets, numbers and commas around it (rstrip: linear, unlike a regex ending in $)
    head = text[:start].rstrip(_NUMBERS_BEFORE)
    key = _KEY_BEFORE.search(head[-100:])
    field = f' in field "{key.group(1)}"' if key else ""
    return f"{field} at line {line} column {column}"


def _mb(n: int) -> str:
    return f"{n / 2**20:.1f} MB" if n < 10 * 2**20 else f"{n / 2**20:.0f} MB"


def _too_deep(value: Any, limit: int) -> bool:
    """Whether a parsed JSON value nests more than ``limit`` levels of lists and objects.

    Iterative, so it cannot overflow the stack itself. (Scanning the text
    instead would have to skip brackets inside strings, and skipping
    strings with a regular expression is quadratic on ``"\\"\\"\\"...``.)
    """
    level = [value] if isinstance(value, (dict, list)) else []
    depth = 0
    while level:  # one level at a time: a comprehension per level is 4x faster than a stack of items
        depth += 1
        if depth > limit:
            return True
        level = [
            child
            for item in level
            for child in (item.values() if isinstance(item, dict) else item)
            if isinstance(child, (dict, list))
        ]
    return False


# --------------------------------------------------------------------------
# checking


def _one_line(value: Any) -> str:
    return " ".join(str(value).split())


def _show(value: Any) -> str:
    """A short one-line repr of a JSON value for a message."""
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, list):
        return f"a list of {len(value)}"
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _apparent_shape(value: Any) -> tuple[int, ...]:
    """The shape nested lists would have if they were regular (following first items)."""
    shape = []
    while isinstance(value, list):
        shape.append(len(value))
        value = value[0] if value else None
    return tuple(shape)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


class _Checker:
    """Checks one record; every failure is one line: ``<source>: <field> <problem>``."""

    def __init__(self, source: str):
        self.source = source

    def fail(self, field: str, problem: str) -> NoReturn:
        raise SegsoftError(_one_line(f"{self.source}: {field} {problem}"))

    # -- primitive checks ---------------------------------------------------

    def get(self, obj: dict[str, Any], key: str, where: str) -> Any:
        if key not in obj:
            self.fail(f"{where}{key}", "is missing (not a segsoft model.json?)")
        return obj[key]

    def obj(self, value: Any, field: str, none: bool = False) -> dict[str, Any] | None:
        if value is None and none:
            return None
        if not isinstance(value, dict):
            self.fail(field, f"must be an object, got {_show(value)}")
        return value

    def integer(self, value: Any, field: str, lo: int, hi: int | None = None, none: bool = False) -> int | None:
        if value is None and none:
            return None
        if not _is_int(value):
            self.fail(field, f"must be a whole number, got {_show(value)}")
        if value < lo or (hi is not None and value > hi):
            bound = f"between {lo} and {hi}" if hi is not None else f"at least {lo}"
            self.fail(field, f"must be {bound}, got {_show(value)}")
        return value

    def number(
        self,
        value: Any,
        field: str,
        lo: float | None = None,
        hi: float | None = None,
        *,
        above: bool = False,
        none: bool = False,
    ) -> float | None:
        """A finite number in [lo, hi] ((lo, hi] with ``above``)."""
        if value is None and none:
            return None
        if not _is_number(value):
            self.fail(field, f"must be a number, got {_show(value)}")
        try:
            x = float(value)
        except OverflowError:
            x = math.inf
        if not math.isfinite(x):
            self.fail(field, f"must be a finite number, got {_show(value)}")
        if (lo is not None and (x < lo or (above and x == lo))) or (hi is not None and x > hi):
            if lo is not None and hi is not None:
                bound = f"above {lo:g} and at most {hi:g}" if above else f"between {lo:g} and {hi:g}"
            elif lo is not None:
                bound = f"{'above' if above else 'at least'} {lo:g}"
            else:
                bound = f"at most {hi:g}"
            self.fail(field, f"must be {bound}, got {_show(value)}")
        return x

    def choice(self, value: Any, field: str, choices: Sequence[Any]) -> Any:
        if not isinstance(value, str) or value not in choices:
            self.fail(field, f"must be one of {', '.join(map(str, choices))}, got {_show(value)}")
        return value

    def boolean(self, value: Any, field: str, none: bool = False) -> bool | None:
        if value is None and none:
            return None
        if not isinstance(value, bool):
            self.fail(field, f"must be true or false, got {_show(value)}")
        return value

    def string(self, value: Any, field: str, none: bool = False) -> str | None:
        if value is None and none:
            return None
        if not isinstance(value, str):
            self.fail(field, f"must be a string, got {_show(value)}")
        return value

    def array(
        self, value: Any, field: str, shape: Sequence[tuple[int, str]], limit: float | None = MAX_ABS_VALUE
    ) -> np.ndarray:
        """Nested lists of exactly ``shape`` ((length, what) per axis) of finite numbers (within ±limit)."""
        seen = _apparent_shape(value)
        if len(seen) != len(shape) and isinstance(value, list):
            # a whole array of the wrong kind (a full covariance where a tied one belongs): say so at once
            want = "x".join(str(n) for n, _ in shape) or "a number"
            got = "x".join(map(str, seen)) or "a number"
            self.fail(field, f"must have shape {want} ({', '.join(w for _, w in shape)}), got {got}")
        self._walk(value, field, shape)
        arr = np.asarray(value, dtype=np.float64).reshape([n for n, _ in shape])
        for test, problem in ((np.isfinite(arr), "a finite number"), (np.abs(arr) <= (limit or math.inf), None)):
            bad = np.argwhere(~test)
            if bad.size:
                at = tuple(int(i) for i in bad[0])
                problem = problem or f"a number between {-limit:g} and {limit:g}"
                self.fail(field + "".join(f"[{i}]" for i in at), f"must be {problem}, got {_show(float(arr[at]))}")
        return arr

    def _walk(self, value: Any, field: str, shape: Sequence[tuple[int, str]]) -> None:
        if not shape:
            if not _is_number(value):
                self.fail(field, f"must be a number, got {_show(value)}")
            try:
                float(value)
            except OverflowError:
                self.fail(field, f"must be a finite number, got {_show(value)}")
            return
        n, what = shape[0]
        if not isinstance(value, list):
            self.fail(field, f"must be a list of {n} ({what}), got {_show(value)}")
        if len(value) != n:
            self.fail(field, f"must have {n} entries ({what}), got {len(value)}")
        for i, item in enumerate(value):
            self._walk(item, f"{field}[{i}]", shape[1:])

    def numbers(self, value: Any, field: str, limit: int, none: bool = True) -> None:
        """A list of at most ``limit`` numbers (or nulls, which JSON has for NaN and infinity)."""
        if not isinstance(value, list):
            self.fail(field, f"must be a list of numbers, got {_show(value)}")
        if len(value) > limit:
            self.fail(field, f"has {len(value)} entries, more than the {limit} allowed")
        for i, item in enumerate(value):
            if not (_is_number(item) or (none and item is None)):
                self.fail(f"{field}[{i}]", f"must be a number, got {_show(item)}")

    def bools(self, value: Any, field: str, k: int) -> None:
        if not isinstance(value, list) or len(value) != k:
            self.fail(field, f"must be a list of {k} true/false values (one per component), got {_show(value)}")
        for i, item in enumerate(value):
            self.boolean(item, f"{field}[{i}]")

    # -- the record -----------------------------------------------------------

    def record(self, record: Any) -> tuple[Any, FeatureSpec]:
        if not isinstance(record, dict):
            self.fail("the top level", f"must be a JSON object (not a segsoft model.json), got {_show(record)}")
        model = self.obj(self.get(record, "model", ""), "model")
        features = self.obj(self.get(record, "features", ""), "features")
        settings = self.obj(self.get(record, "settings", ""), "settings")
        for key in ("segsoft_version", "created"):
            self.string(record.get(key), key, none=True)
        spec = self.features(features)
        k = self.model(model, spec)
        self.settings(settings, model, spec, k)
        self.informational(record, k)
        return self.rebuild(model, spec, settings)

    def settings(self, s: dict[str, Any], model: dict[str, Any], spec: FeatureSpec, k: int) -> None:
        w = "settings."
        name = _MODEL_NAMES[model["type"]]
        if "k" in s and s["k"] != "auto":
            if not _is_int(s["k"]):
                self.fail(w + "k", f"must be a whole number or 'auto', got {_show(s['k'])}")
            self.setting("k", s["k"], w + "k")
            if s["k"] != k:
                self.fail(w + "k", f"is {s['k']} but the model has {k} components")
        if "k_range" in s:
            kr = s["k_range"]
            self._walk(kr, w + "k_range", [(2, "the smallest and largest k")])
            lo = self.setting("k", kr[0], w + "k_range[0]")
            if self.setting("k", kr[1], w + "k_range[1]") < lo:
                self.fail(w + "k_range", f"must have its smallest k first, got {kr[0]}..{kr[1]}")
        if "criterion" in s:
            self.choice(s["criterion"], w + "criterion", _CRITERIA)
        if "model" in s:
            self.choice(s["model"], w + "model", tuple(_MODEL_NAMES.values()))
            if s["model"] != name:
                self.fail(w + "model", f"is {s['model']!r} but the model is a {model['type']} ({name!r})")
        # --covariance and -m mean something to one model only, and the command line checks them
        # only there: a soft-kmeans run records whatever --covariance was given
        if "covariance" in s and name == "gmm":
            self.choice(s["covariance"], w + "covariance", COVARIANCE_TYPES)
            cov = model["params"].get("covariance", "full")
            if s["covariance"] != cov:
                self.fail(w + "covariance", f"is {s['covariance']!r} but the model's covariance is {cov!r}")
        if "color" in s:
            self.choice(s["color"], w + "color", COLOR_SPACES)
            if s["color"] != spec.color:
                self.fail(w + "color", f"is {s['color']!r} but features.color is {spec.color!r}")
        if "spatial_weight" in s:
            sw = self.setting("spatial_weight", s["spatial_weight"], w + "spatial_weight")
            if sw != spec.spatial_weight:
                self.fail(w + "spatial_weight", f"is {sw:g} but features.spatial_weight is {spec.spatial_weight:g}")
        smoothing = self.setting("smoothing", s.get("smoothing"), w + "smoothing", none=True)
        if smoothing and name == "fcm":
            self.fail(w + "smoothing", "needs a likelihood model (gmm or soft-kmeans), but the model is fcm")
        for key in ("max_iter", "tol", "n_init", "reg_covar"):
            if key in s:
                self.setting(key, s[key], w + key)
        for key in ("sample", "seed"):
            self.setting(key, s.get(key), w + key, none=True)
        if self.setting("beta", s.get("beta"), w + "beta", none=True) is not None and name != "soft-kmeans":
            self.fail(w + "beta", f"(the stiffness) is a soft-kmeans setting, but the model is {name}")
        if name == "fcm" and "m" in s:
            self.setting("m", s["m"], w + "m")
        if "shared_model" in s and s["shared_model"] is not True:
            self.digest(s["shared_model"], w + "shared_model", "true or")
        if "applied_model" in s:
            self.digest(s["applied_model"], w + "applied_model")
        self.string(s.get("model_file"), w + "model_file", none=True)

    def setting(self, name: str, value: Any, field: str, none: bool = False) -> float | None:
        """A value within the command line's range for setting ``name``."""
        low, high, integer, low_open = setting_range(name)
        if integer:
            hi = None if high is None else int(high)
            return self.integer(value, field, int(low) + int(low_open), hi, none=none)
        return self.number(value, field, low, high, above=low_open, none=none)

    def digest(self, value: Any, field: str, also: str = "") -> None:
        if not (isinstance(value, str) and _DIGEST.fullmatch(value)):
            self.fail(field, f"must be {also} a 16-digit hex model digest, got {_show(value)}")

    def features(self, f: dict[str, Any]) -> FeatureSpec:
        w = "features."
        for key in f:
            if key not in _SPEC_FIELDS:
                self.fail(f"{w}{key}", f"is not a feature setting (known: {', '.join(_SPEC_FIELDS)})")
        color = self.choice(self.get(f, "color", w), w + "color", COLOR_SPACES)
        weight = self.setting("spatial_weight", f.get("spatial_weight", 0.0), w + "spatial_weight")
        standardize = self.boolean(f.get("standardize", True), w + "standardize")
        bands = None
        if color == "bands":
            raw = f.get("bands")
            if raw is not None:
                if not (isinstance(raw, list) and 1 <= len(raw) <= MAX_BANDS):
                    self.fail(w + "bands", f"must be a list of 1 to {MAX_BANDS} band numbers or null, got {_show(raw)}")
                bands = tuple(self.integer(b, f"{w}bands[{i}]", 0, 1 << 20) or 0 for i, b in enumerate(raw))
            given = f.get("offset")
            n_color = len(bands) if bands is not None else (len(given) if isinstance(given, list) else 0)
            if not 1 <= n_color <= MAX_BANDS:
                self.fail(w + "offset", f"must give one value per band (1 to {MAX_BANDS}), got {_show(given)}")
        elif f.get("bands") is not None:
            self.fail(w + "bands", f"applies only with color bands, not {color}")
        else:
            n_color = FeatureSpec(color=color).n_color
        offset = scale = None
        if standardize or f.get("offset") is not None or f.get("scale") is not None:
            # a spec without its standardisation cannot turn a new image into features
            what = [(n_color, f"one per {color} channel")]
            offset = tuple(self.array(self.get(f, "offset", w), w + "offset", what).tolist())
            scale_arr = self.array(self.get(f, "scale", w), w + "scale", what)
            for i, v in enumerate(scale_arr):
                self.number(float(v), f"{w}scale[{i}]", *SCALE_RANGE)
            scale = tuple(scale_arr.tolist())
        names = f.get("names")
        band_names = None
        if color == "bands" and names is not None:
            n_pos = 2 if weight > 0 else 0
            if not (
                isinstance(names, list) and len(names) == n_color + n_pos and all(isinstance(n, str) for n in names)
            ):
                self.fail(w + "names", f"must be {n_color + n_pos} feature names, got {_show(names)}")
            band_names = tuple(names[:n_color])
        spec = FeatureSpec(
            color=color,
            spatial_weight=weight,
            standardize=standardize,
            offset=offset,
            scale=scale,
            bands=bands,
            band_names=band_names,
        )
        if "names" in f and f["names"] != spec.feature_names:
            self.fail(w + "names", f"must be {spec.feature_names} for these features, got {_show(f['names'])}")
        return spec

    def model(self, m: dict[str, Any], spec: FeatureSpec) -> int:
        w = "model."
        kind = self.choice(self.get(m, "type", w), w + "type", tuple(_MODEL_NAMES))
        params = self.obj(self.get(m, "params", w), w + "params")
        fitted = self.obj(self.get(m, "fitted", w), w + "fitted")
        for key in m:
            if key not in ("type", "params", "fitted"):
                self.fail(f"{w}{key}", "is not a model field (known: type, params, fitted)")
        k = self.params(params, kind)
        self.fitted(fitted, kind, params, k, spec)
        return k

    def params(self, p: dict[str, Any], kind: str) -> int:
        w = "model.params."
        for key in p:
            if key not in _PARAMS[kind]:
                self.fail(f"{w}{key}", f"is not a {kind} parameter")
        k = self.setting("k", self.get(p, "n_components", w), w + "n_components")
        self.integer(p.get("max_iter", 1), w + "max_iter", 1)
        self.number(p.get("tol", 0.0), w + "tol", 0.0)
        self.choice(p.get("init", "k-means++"), w + "init", ("k-means++", "random"))
        self.integer(p.get("n_init", 1), w + "n_init", 1)
        self.integer(p.get("seed"), w + "seed", 0, none=True)
        self.integer(p.get("sample_size"), w + "sample_size", 0, none=True)
        self.integer(p.get("polish_iter", 1), w + "polish_iter", 0)
        self.integer(p.get("chunk_size", 8192), w + "chunk_size", 1, MAX_CHUNK)
        self.integer(p.get("n_jobs"), w + "n_jobs", 1, MAX_JOBS, none=True)
        if kind == "GaussianMixture":
            self.choice(p.get("covariance", "full"), w + "covariance", COVARIANCE_TYPES)
        if kind != "FuzzyCMeans":
            self.number(p.get("reg_covar", 0.0), w + "reg_covar", 0.0)
        if kind == "SoftKMeans":
            self.number(p.get("beta"), w + "beta", 0.0, above=True, none=True)
        if kind == "FuzzyCMeans":
            self.number(p.get("m", 2.0), w + "m", 1.0, above=True)
        return k

    def fitted(self, f: dict[str, Any], kind: str, params: dict[str, Any], k: int, spec: FeatureSpec) -> None:
        w = "model.fitted."
        for key in f:
            if key not in _FITTED[kind]:
                self.fail(f"{w}{key}", f"is not a fitted attribute of {kind}")
        for key in _REQUIRED_FITTED[kind]:
            self.get(f, key, w)
        d = spec.n_features
        comps = (k, "one per component")
        self.array(f["means_"], w + "means_", [comps, (d, "features " + ", ".join(spec.feature_names))])
        if "collapsed_" in f:
            self.bools(f["collapsed_"], w + "collapsed_", k)
        if "n_features_in_" in f:
            self.integer(f["n_features_in_"], w + "n_features_in_", d, d)
        self.number(f.get("reg_covar_", 0.0), w + "reg_covar_", 0.0)
        self.number(f.get("log_likelihood_"), w + "log_likelihood_", none=True)
        self.boolean(f.get("converged_"), w + "converged_", none=True)
        for key in ("n_iter_", "n_iter_sample_", "n_reseeds_"):
            self.integer(f.get(key, 0), w + key, 0)
        for key in ("log_likelihood_trace_", "polish_trace_"):
            if key in f:
                self.numbers(f[key], w + key, MAX_TRACE)
        if kind == "GaussianMixture":
            self.gaussian(f, params.get("covariance", "full"), k, d)
        elif kind == "SoftKMeans":
            self.soft_kmeans(f, k)

    def weights(self, value: Any, field: str, k: int) -> np.ndarray:
        wts = self.array(value, field, [(k, "one per component")])
        for i, x in enumerate(wts.tolist()):
            # the fit floors weights at the smallest float: a 0 would put log(0) into every pixel's posterior
            if x <= 0:
                self.fail(f"{field}[{i}]", f"must be above 0, got {x!r}")
        total = float(wts.sum())
        if abs(total - 1.0) > WEIGHT_TOLERANCE:
            self.fail(field, f"must sum to 1, got {total:.9g}")
        return wts

    def gaussian(self, f: dict[str, Any], cov_type: str, k: int, d: int) -> None:
        w = "model.fitted."
        self.weights(f["weights_"], w + "weights_", k)
        comps, feats = (k, "one per component"), (d, "one per feature")
        shape = {
            "full": [comps, feats, feats],
            "tied": [feats, feats],
            "diag": [comps, feats],
            "spherical": [comps],
        }[cov_type]
        cov = self.array(f["covariances_"], w + "covariances_", shape, limit=None)
        lo, hi = VARIANCE_RANGE
        if cov_type in ("diag", "spherical"):
            bad = np.argwhere(~((cov >= lo) & (cov <= hi)))
            if bad.size:
                at = tuple(int(i) for i in bad[0])
                self.fail(
                    w + "covariances_" + "".join(f"[{i}]" for i in at),
                    f"must be a variance between {lo:g} and {hi:g}, got {float(cov[at])!r}",
                )
            expected_pc = 1.0 / np.sqrt(cov)
            expected_p = expected_pc**2
        else:
            mats = cov[None] if cov_type == "tied" else cov
            chols = []
            for i, a in enumerate(mats):
                at = w + "covariances_" + ("" if cov_type == "tied" else f"[{i}]")
                chols.append(self.spd(a, at))
            chol = np.stack(chols)
            eye = np.broadcast_to(np.eye(d), chol.shape)
            pc = np.swapaxes(np.linalg.solve(chol, eye), -1, -2)  # as GaussianMixture._prec_chol
            expected_pc = pc[0] if cov_type == "tied" else pc
            expected_p = expected_pc @ np.swapaxes(expected_pc, -1, -2)
        for key, expected in (("precisions_cholesky_", expected_pc), ("precisions_", expected_p)):
            if key in f:
                self.matches(f[key], w + key, shape, expected, cov_type)

    def spd(self, a: np.ndarray, field: str) -> np.ndarray:
        """The Cholesky factor of a symmetric positive definite covariance with eigenvalues in range."""
        scale = max(float(np.abs(np.diag(a)).max()), np.finfo(float).tiny)
        asym = float(np.abs(a - a.T).max())
        if asym > SYMMETRY_TOLERANCE * scale:
            self.fail(field, f"is not symmetric (entries differ from their transpose by up to {asym:.3g})")
        try:
            chol = np.linalg.cholesky(a)
            eig = np.linalg.eigvalsh(a)
        except np.linalg.LinAlgError:
            chol, eig = None, np.linalg.eigvals(a).real
        lo, hi = VARIANCE_RANGE
        if chol is None or eig.min() <= 0:
            self.fail(field, f"is not positive definite (smallest eigenvalue {eig.min():.3g})")
        if eig.min() < lo or eig.max() > hi:
            self.fail(
                field,
                f"must have eigenvalues (variances) between {lo:g} and {hi:g}, got {eig.min():.3g} to {eig.max():.3g}",
            )
        return chol

    def matches(self, value: Any, field: str, shape: list, expected: np.ndarray, cov_type: str) -> None:
        stored = self.array(value, field, shape, limit=None)
        mats_s = stored[None] if cov_type == "tied" else stored
        mats_e = expected[None] if cov_type == "tied" else expected
        for i, (s, e) in enumerate(zip(mats_s, mats_e, strict=True)):
            tol = MATCH_TOLERANCE * max(float(np.abs(e).max()), np.finfo(float).tiny)
            if not float(np.abs(s - e).max()) <= tol:
                at = field + ("" if cov_type == "tied" else f"[{i}]")
                self.fail(at, "does not match model.fitted.covariances_ (edited by hand?)")

    def soft_kmeans(self, f: dict[str, Any], k: int) -> None:
        w = "model.fitted."
        lo, hi = VARIANCE_RANGE
        # variance = 1 / (2 beta) must be in range: beta in [1 / (2 hi), 1 / (2 lo)]
        beta = self.number(f["beta_"], w + "beta_", 0.5 / hi, 0.5 / lo)
        if "weights_" in f:
            wts = self.weights(f["weights_"], w + "weights_", k)
            if np.abs(wts - 1.0 / k).max() > WEIGHT_TOLERANCE:
                self.fail(w + "weights_", f"must all be 1/k = {1.0 / k:.6g} (soft k-means has equal weights)")
        if "covariances_" in f:
            var = self.array(f["covariances_"], w + "covariances_", [(k, "one per component")], limit=hi)
            expected = 0.5 / beta
            if np.abs(var - expected).max() > MATCH_TOLERANCE * expected:
                self.fail(w + "covariances_", f"must all be 1 / (2 beta_) = {expected:.6g} (one shared variance)")

    def informational(self, record: dict[str, Any], k: int) -> None:
        """The sections the model does not need: present ones must still be well formed and bounded."""
        result = self.obj(record.get("result"), "result", none=True)
        if result is not None:
            if "k" in result:
                self.integer(result["k"], "result.k", 1, max_k())
                if result["k"] != k:
                    self.fail("result.k", f"is {result['k']} but the model has {k} components")
            for key in ("log_likelihood", "bic", "aic"):
                if result.get(key) is not None:
                    self.number(result[key], f"result.{key}")
            self.boolean(result.get("converged"), "result.converged", none=True)
            self.integer(result.get("n_iter"), "result.n_iter", 0, none=True)
            for key in ("log_likelihood_trace", "polish_trace"):
                if key in result:
                    self.numbers(result[key], f"result.{key}", MAX_TRACE)
        clusters = record.get("clusters")
        if clusters is not None:
            if not isinstance(clusters, list) or len(clusters) != k:
                self.fail("clusters", f"must be a list of {k} objects (one per component), got {_show(clusters)}")
            for j, c in enumerate(clusters):
                self.obj(c, f"clusters[{j}]")
                if c.get("index", j) != j:
                    self.fail(f"clusters[{j}].index", f"must be {j}, got {_show(c['index'])}")
        selection = self.obj(record.get("k_selection"), "k_selection", none=True)
        if selection is not None:
            for key in ("ks", "bic", "icl", "log_likelihood"):
                if key in selection:
                    self.numbers(selection[key], f"k_selection.{key}", max_k())
        for key in ("image", "shared", "timings", "regions"):
            self.obj(record.get(key), key, none=True)
        timings = record.get("timings") or {}
        for key, value in timings.items():
            self.number(value, f"timings.{key}", none=True)

    def rebuild(self, model: dict[str, Any], spec: FeatureSpec, settings: dict[str, Any]) -> tuple[Any, FeatureSpec]:
        try:
            fitted = model_from_dict(model)
        except (KeyError, TypeError, ValueError, ArithmeticError, np.linalg.LinAlgError) as exc:
            self.fail("model", f"cannot be rebuilt ({_one_line(exc)})")
        self.probe(fitted, spec, float(settings.get("smoothing") or 0.0))
        return fitted, spec

    def probe(self, model: Any, spec: FeatureSpec, smoothing: float) -> None:
        """Apply the model to 27 colours (the corners, edges and centre of the RGB cube):
        memberships and score must be finite, as they will be for every image."""
        from .segment import apply_model

        levels = np.array([0, 128, 255], dtype=np.uint8)
        grid = np.stack(np.meshgrid(levels, levels, levels, indexing="ij"), axis=-1).reshape(3, 9, 3)
        if spec.color == "bands":
            # as many bands as the model reads (a 3- or 4-band grid would pass for colour or RGBA)
            n = max(spec.bands) + 1 if spec.bands else spec.n_color
            cube = grid.reshape(27, 3).astype(np.float32) / 255
            grid = np.stack([cube[:, b % 3] for b in range(max(n, 5))], axis=-1).reshape(3, 9, -1)
            if n not in (3, 4) and grid.shape[-1] != n:
                grid = grid[..., :n]
        try:
            with np.errstate(all="ignore"):
                seg = apply_model(grid, model, spec, settings={"smoothing": smoothing})
                probs = seg.probabilities
                ok = bool(np.isfinite(probs).all() and np.abs(probs.sum(-1) - 1.0).max() < 1e-3)
                ok = ok and math.isfinite(seg.log_likelihood)
        except (ValueError, ArithmeticError, np.linalg.LinAlgError) as exc:
            self.fail("model", f"cannot compute memberships ({_one_line(exc)})")
        if not ok:
            self.fail("model", "gives non-finite memberships (extreme parameters?)")
