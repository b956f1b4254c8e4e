"""Pixels to feature vectors: colour in a chosen space, optionally position.

``extract(image, spec)`` turns an :class:`~segsoft.io.Image` into a float32
``(N, D)`` array, one row per used pixel in raster order (pixels masked out
by transparency are left out). Colour conversions are written out here in
numpy rather than called from ``skimage.color`` because the latter works in
float64 on the whole image at once (about 4 s and several GiB at 12 MP); the
tests check these agree with ``skimage.color`` to float32 precision.
"""

from __future__ import annotations

import math
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, replace
from typing import Any

import numpy as np

from .errors import SegsoftError
from .io import Image
from .mixture.base import current_threads

__all__ = ["COLOR_SPACES", "RGB_SPACES", "FeatureSpec", "extract", "rgb_to_hsv_cone", "rgb_to_lab"]

COLOR_SPACES = ("lab", "rgb", "hsv", "gray", "bands")
#: the colour spaces proper: they need a colour (or grey) image; "bands" takes any number of bands
RGB_SPACES = ("lab", "rgb", "hsv", "gray")
_CHANNELS = {"lab": ("L", "a", "b"), "rgb": ("R", "G", "B"), "hsv": ("C*cos(H)", "C*sin(H)", "V"), "gray": ("Y",)}
# smallest scale standardisation may use, in each channel's own units, so a
# flat channel (a and b of a grey photo) is not blown up into noise
_SCALE_FLOOR = {"lab": (0.5, 1.0, 1.0), "rgb": (0.005,) * 3, "hsv": (0.005,) * 3, "gray": (0.005,)}
_BAND_FLOOR = 0.005  # the same floor for every band (bands are in [0, 1], like rgb)
# pixels per conversion chunk: bounds the float32 temporaries (and stays in cache: 1 << 20 measured 1.7x slower for lab)
_CHUNK = 1 << 18

# sRGB (D65) to CIE XYZ and the D65 white point, as in skimage.color
_XYZ_FROM_RGB = np.array(
    [[0.412453, 0.357580, 0.180423], [0.212671, 0.715160, 0.072169], [0.019334, 0.119193, 0.950227]]
)
_WHITE_D65 = np.array([0.95047, 1.0, 1.08883])
_GRAY_WEIGHTS = np.array([0.2125, 0.7154, 0.0721], dtype=np.float32)  # skimage.color.rgb2gray


def _srgb_to_linear(c: np.ndarray) -> np.ndarray:
    c = c.astype(np.float64)
    return np.where(c > 0.04045, ((c + 0.055) / 1.055) ** 2.4, c / 12.92)


_LINEAR_LUT8 = _srgb_to_linear(np.arange(256) / 255.0).astype(np.float32)


def rgb_to_lab(rgb: np.ndarray, eight_bit: bool = False) -> np.ndarray:
    """CIE L*a*b* (D65, 2 degree observer) of float sRGB rows in [0, 1].

    Parameters
    ----------
    rgb : ndarray, shape (n, 3)
    eight_bit : bool
        The values are exact multiples of 1/255: linearise through a 256-entry
        lookup table instead of a power function (several times faster).

    Returns
    -------
    ndarray, float32, shape (n, 3)

    Examples
    --------
    >>> rgb_to_lab(np.array([[1.0, 0.0, 0.0]])).round(1)  # sRGB red
    array([[53.2, 80.1, 67.2]], dtype=float32)
    """
    rgb = np.asarray(rgb, dtype=np.float32)
    if eight_bit:
        lin = _LINEAR_LUT8[np.rint(rgb * 255.0).astype(np.uint8)]
    else:
        lin = _srgb_to_linear(rgb).astype(np.float32)
    # fold the white point into the matrix: t = XYZ / white
    m = (_XYZ_FROM_RGB / _WHITE_D65[:, None]).T.astype(np.float32)
    t = lin @ m
    small = t <= 0.008856
    f = np.cbrt(t)
    f[small] = 7.787 * t[small] + 16.0 / 116.0
    out = np.empty_like(f)
    out[:, 0] = 116.0 * f[:, 1] - 16.0
    out[:, 1] = 500.0 * (f[:, 0] - f[:, 1])
    out[:, 2] = 200.0 * (f[:, 1] - f[:, 2])
    return out


def rgb_to_hsv_cone(rgb: np.ndarray) -> np.ndarray:
    """The HSV cone ``(C cos H, C sin H, V)`` of float RGB rows in [0, 1].

    ``C = max - min`` is the chroma. Unlike raw H, the cone keeps reds at
    H = 0 and H = 1 together and puts every grey on the axis whatever its
    (meaningless) hue.

    Examples
    --------
    >>> rgb_to_hsv_cone(np.array([[1.0, 0.0, 0.0]])).round(3)
    array([[1., 0., 1.]], dtype=float32)
    """
    rgb = np.asarray(rgb, dtype=np.float32)
    r, g, b = rgb[:, 0], rgb[:, 1], rgb[:, 2]
    v = rgb.max(axis=1)
    c = v - rgb.min(axis=1)
    safe = np.where(c > 0, c, 1.0)
    # hue in sixths of a turn, as in skimage.color.rgb2hsv
    h = np.where(v == r, (g - b) / safe, np.where(v == g, 2.0 + (b - r) / safe, 4.0 + (r - g) / safe))
    angle = h * np.float32(math.pi / 3.0)
    out = np.empty_like(rgb)
    out[:, 0] = c * np.cos(angle)
    out[:, 1] = c * np.sin(angle)
    out[:, 2] = v
    return out


def _convert(rgb: np.ndarray, color: str, eight_bit: bool) -> np.ndarray:
    if color == "lab":
        return rgb_to_lab(rgb, eight_bit)
    if color == "hsv":
        return rgb_to_hsv_cone(rgb)
    if color == "gray":
        return (rgb @ _GRAY_WEIGHTS)[:, None]
    return rgb


@dataclass(frozen=True)
class FeatureSpec:
    """How pixels become feature vectors.

    Parameters
    ----------
    color : {"lab", "rgb", "hsv", "gray", "bands"}
        Colour space: CIE L*a*b* (perceptually even, the default), sRGB, the
        HSV cone ``(C cos H, C sin H, V)``, or luminance alone; these need a
        colour or grey image. ``"bands"``: the image's bands themselves
        (``image.bands``), for any number of them (multispectral,
        microscopy channels, feature stacks).
    bands : tuple of int or None
        With ``color="bands"``: which bands, 0-based (None: all of them;
        a fitted spec lists them, so a model knows how many it needs).
    band_names : tuple of str or None
        Names of the chosen bands (from the image's metadata, else
        ``b0..``), filled in when the spec is fitted; the feature names.
    spatial_weight : float
        0 leaves position out. Otherwise each pixel gets x, y columns
        scaled so that the long side of the image has standard deviation
        ``spatial_weight`` (colour columns have 1 after standardising):
        larger values favour compact, contiguous clusters. A full-covariance
        Gaussian mixture is invariant to this scale (it learns its own), so
        there the weight only matters through initialisation; for soft
        k-means, fuzzy c-means and spherical/diagonal mixtures it sets the
        balance between colour and position.
    standardize : bool
        Shift and scale each colour channel to zero mean and unit variance.
    offset, scale : tuple of float or None
        The standardisation in use. None until the spec is fitted to an
        image; a fitted spec (as stored in ``model.json``) applies the same
        transform to any image, so one model can segment many images.

    Examples
    --------
    >>> FeatureSpec(color="lab", spatial_weight=0.5).n_features
    5
    >>> spec = FeatureSpec(color="bands", bands=(1, 2, 5), band_names=("red", "nir", "swir"))
    >>> spec.feature_names, FeatureSpec.from_dict(spec.to_dict()) == spec
    (['red', 'nir', 'swir'], True)
    """

    color: str = "lab"
    spatial_weight: float = 0.0
    standardize: bool = True
    offset: tuple[float, ...] | None = None
    scale: tuple[float, ...] | None = None
    bands: tuple[int, ...] | None = None
    band_names: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        if self.color not in COLOR_SPACES:
            raise SegsoftError(f"unknown colour space {self.color!r} (choose from {', '.join(COLOR_SPACES)})")
        if not (self.spatial_weight >= 0 and math.isfinite(self.spatial_weight)):
            raise SegsoftError(f"spatial weight must be a finite number >= 0, got {self.spatial_weight!r}")
        if self.bands is not None:
            if self.color != "bands":
                raise SegsoftError(f"--bands needs --color bands (--color {self.color} makes its own channels)")
            try:
                picked = tuple(int(b) for b in self.bands)
            except (TypeError, ValueError):
                raise SegsoftError(f"--bands must be whole band numbers, got {self.bands!r}") from None
            if not picked:
                raise SegsoftError("--bands must name at least one band")
            if any(b < 0 for b in picked) or len(set(picked)) != len(picked):
                raise SegsoftError(f"--bands must be distinct band numbers >= 0, got {','.join(map(str, picked))}")
            object.__setattr__(self, "bands", picked)
        if self.band_names is not None:
            object.__setattr__(self, "band_names", tuple(str(n) for n in self.band_names))

    @property
    def n_color(self) -> int:
        """Number of colour (or band) columns; for unfitted ``bands=None``, 0 until fitted to an image."""
        if self.color != "bands":
            return len(_CHANNELS[self.color])
        if self.bands is not None:
            return len(self.bands)
        return 0 if self.offset is None else len(self.offset)

    @property
    def n_features(self) -> int:
        return self.n_color + (2 if self.spatial_weight > 0 else 0)

    @property
    def channel_names(self) -> list[str]:
        """Names of the colour (or band) columns."""
        if self.color != "bands":
            return list(_CHANNELS[self.color])
        if self.band_names is not None and len(self.band_names) == self.n_color:
            return list(self.band_names)
        return [f"b{b}" for b in (self.bands or range(self.n_color))]

    @property
    def feature_names(self) -> list[str]:
        return self.channel_names + (["x", "y"] if self.spatial_weight > 0 else [])

    @property
    def fitted(self) -> bool:
        return not self.standardize or self.offset is not None

    def to_dict(self) -> dict[str, Any]:
        """The spec as JSON-ready values; band names travel as the feature ``names``.

        Colour-space specs keep their old keys (no ``bands``), so their model.json is unchanged.
        """
        data = asdict(self)
        names = data.pop("band_names")
        if self.color != "bands":
            data.pop("bands")
        else:
            data["bands"] = None if self.bands is None else list(self.bands)
            if names is not None:
                data["names"] = self.feature_names
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> FeatureSpec:
        data = dict(data)
        names = data.pop("names", None)
        for key in ("offset", "scale"):
            if data.get(key) is not None:
                data[key] = tuple(float(v) for v in data[key])
        if data.get("bands") is not None:
            data["bands"] = tuple(int(v) for v in data["bands"])
        if data.get("color") == "bands" and names is not None and data.get("bands") is not None:
            data["band_names"] = tuple(str(n) for n in names[: len(data["bands"])])
        return cls(**data)

    def color_to_features(self, color_values: np.ndarray) -> np.ndarray:
        """Standardise colour values (n, n_color) in this space the way the
        features are, e.g. to put cluster means back in colour units use the
        inverse: ``value * scale + offset``."""
        if not self.standardize:
            return np.asarray(color_values, dtype=np.float64)
        return (np.asarray(color_values) - np.array(self.offset)) / np.array(self.scale)

    def features_to_color(self, features: np.ndarray) -> np.ndarray:
        """Inverse of :meth:`color_to_features` on the colour columns."""
        f = np.asarray(features, dtype=np.float64)[..., : self.n_color]
        if not self.standardize:
            return f
        return f * np.array(self.scale) + np.array(self.offset)


_STATS_SAMPLE = 1 << 18  # pixels used to fit the standardisation


def _image_name(image: Image) -> str:
    return str(image.path) if image.path is not None else "image"


def _resolve(image: Image, spec: FeatureSpec) -> tuple[FeatureSpec, np.ndarray, tuple[int, ...] | None]:
    """The spec with its bands made explicit, the (n_pixels, C) source rows, and the columns to take.

    Colour spaces read RGB: a colour image's bands, or a grey image's band
    three times (a broadcast view, no copy), never ``pixels``, so that a
    display composite cannot change the features.
    """
    name = _image_name(image)
    c = image.n_bands
    flat = image._band_rows()  # from an 8-bit file's kept samples: no image-sized float copy
    if spec.color != "bands":
        if image.is_color:
            return spec, flat, None
        if image.is_gray:
            return spec, np.broadcast_to(flat, (flat.shape[0], 3)), None
        if spec.fitted:  # a saved model's features (segsoft apply): no --color to change there
            raise SegsoftError(
                f"{name}: the model's {spec.color} features need an RGB image; this one has {c} bands "
                "(fit a model on it with --color bands)"
            )
        raise SegsoftError(
            f"{name}: --color {spec.color} needs an RGB image; this one has {c} bands (use --color bands)"
        )
    bands = spec.bands if spec.bands is not None else tuple(range(c))
    if max(bands) >= c:
        if spec.fitted and spec.offset is not None:
            raise SegsoftError(
                f"{name}: the model uses {len(bands)} bands (up to band {max(bands)}) but this image has {c} bands"
            )
        bad = next(b for b in bands if b >= c)
        raise SegsoftError(f"{name}: --bands {bad} is out of range: the image has {c} bands (0-{c - 1})")
    names = spec.band_names if spec.band_names is not None else tuple(image.band_names[b] for b in bands)
    spec = replace(spec, bands=bands, band_names=names)
    return spec, flat, None if bands == tuple(range(c)) else bands


def _columns(spec: FeatureSpec, block: np.ndarray, cols: tuple[int, ...] | None, eight_bit: bool) -> np.ndarray:
    if spec.color == "bands":
        return block if cols is None else block[:, list(cols)]
    return _convert(block, spec.color, eight_bit)


def _fit_standardization(
    spec: FeatureSpec,
    image: Image,
    src: np.ndarray,
    cols: tuple[int, ...] | None,
    rows: np.ndarray | None,
    eight_bit: bool,
) -> FeatureSpec:
    """Offset and scale from an evenly strided sample of the used pixels.

    Any fixed affine map will do for standardising, so a quarter-megapixel
    sample is as good as all pixels and saves a pass over a large image;
    images smaller than the sample use every pixel. A band that is the same
    in every used pixel is refused (it cannot separate clusters, and its
    standard deviation is 0); a nearly flat one gets the floor scale.
    """
    n = src.shape[0] if rows is None else rows.size
    step = max(1, n // _STATS_SAMPLE)
    picked = src[::step] if rows is None else src[rows[::step]]
    color = _columns(spec, picked, cols, eight_bit).astype(np.float64)
    mean = color.mean(axis=0)
    std = color.std(axis=0)
    if spec.color == "bands":
        for j in np.flatnonzero(std == 0):
            band = spec.bands[j]
            full = src[:, band] if rows is None else src[rows, band]
            if float(full.min()) == float(full.max()):
                others = [b for b in spec.bands if b != band]
                hint = f"; leave it out with --bands {','.join(map(str, others))}" if others else ""
                raise SegsoftError(
                    f"{_image_name(image)}: band {band} ({spec.channel_names[j]}) is constant "
                    f"({float(full[0]):.6g} in every used pixel), so it cannot separate clusters{hint}"
                )
        std = np.maximum(std, _BAND_FLOOR)
    else:
        std = np.maximum(std, _SCALE_FLOOR[spec.color])
    return replace(spec, offset=tuple(map(float, mean)), scale=tuple(map(float, std)))


def extract(image: Image, spec: FeatureSpec | None = None, *, return_spec: bool = False):
    """Feature matrix of the used pixels of ``image``.

    Parameters
    ----------
    image : Image
    spec : FeatureSpec, optional
        Defaults to ``FeatureSpec()`` (standardised Lab, no position). An
        unfitted spec is fitted to this image (with ``color="bands"`` its
        bands and band names are filled in too).
    return_spec : bool
        Also return the fitted spec (what to store to reuse the transform).

    Returns
    -------
    X : ndarray, float32, shape (n_used_pixels, spec.n_features)
    spec : FeatureSpec, only when ``return_spec`` is True

    Raises
    ------
    SegsoftError
        A colour space on an image that is neither colour nor grey, a band
        index the image does not have, or a constant band.

    Examples
    --------
    >>> from segsoft.io import Image
    >>> img = Image.from_array(np.zeros((4, 6, 3), dtype=np.uint8))
    >>> extract(img, FeatureSpec(spatial_weight=1.0)).shape
    (24, 5)
    >>> six = Image.from_array(np.random.default_rng(0).random((4, 6, 6)))
    >>> X, spec = extract(six, FeatureSpec(color="bands", bands=(0, 5)), return_spec=True)
    >>> X.shape, spec.feature_names
    ((24, 2), ['b0', 'b5'])
    """
    spec = FeatureSpec() if spec is None else spec
    h, w = image.height, image.width
    spec, src, cols = _resolve(image, spec)
    rows = None if image.mask is None else np.flatnonzero(image.mask.ravel())
    n = src.shape[0] if rows is None else rows.size
    nc = spec.n_color
    X = np.empty((n, spec.n_features), dtype=np.float32)
    eight_bit = image.bit_depth == 8
    if spec.standardize and spec.offset is None:
        spec = _fit_standardization(spec, image, src, cols, rows, eight_bit)
    if spec.standardize:
        if len(spec.offset) != nc:
            raise SegsoftError(
                f"{_image_name(image)}: the feature spec has {len(spec.offset)} offsets for {nc} channels"
            )
        off = np.asarray(spec.offset, dtype=np.float32)
        inv = (1.0 / np.asarray(spec.scale)).astype(np.float32)

    def convert(s: int) -> None:
        e = min(s + _CHUNK, n)
        block = src[s:e] if rows is None else src[rows[s:e]]
        color = _columns(spec, block, cols, eight_bit)
        if spec.standardize:
            if color is block or not color.flags.writeable:  # a view of the image: never modify it
                color = color - off
            else:
                color -= off
            color *= inv
        X[s:e, :nc] = color

    starts = range(0, n, _CHUNK)
    jobs = min(current_threads(), len(starts))
    if jobs > 1:
        # chunks are independent and write disjoint rows; the same chunk boundaries as
        # on one thread, so the same numbers (numpy releases the GIL in the ufuncs)
        with ThreadPoolExecutor(jobs) as ex:
            list(ex.map(convert, starts))
    else:
        for s in starts:
            convert(s)

    if spec.spatial_weight > 0:
        # centred coordinates; sqrt(12) gives the long side unit variance
        k = spec.spatial_weight * math.sqrt(12.0) / max(h, w)
        xs = ((np.arange(w) - (w - 1) / 2.0) * k).astype(np.float32)
        ys = ((np.arange(h) - (h - 1) / 2.0) * k).astype(np.float32)
        if rows is None:
            grid = X.reshape(h, w, -1)
            grid[:, :, nc] = xs[None, :]
            grid[:, :, nc + 1] = ys[:, None]
        else:
            X[:, nc] = xs[rows % w]
            X[:, nc + 1] = ys[rows // w]
    return (X, spec) if return_spec else X
