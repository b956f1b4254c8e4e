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
from dataclasses import asdict, dataclass, replace
from typing import Any

import numpy as np

from .errors import SegsoftError
from .io import Image

__all__ = ["COLOR_SPACES", "FeatureSpec", "extract", "rgb_to_lab", "rgb_to_hsv_cone"]

COLOR_SPACES = ("lab", "rgb", "hsv", "gray")
_CHANNELS = {"lab": ("L", "a", "b"), "rgb": ("R", "G", "B"), "hsv": ("C*cos(H)", "C*sin(H)", "V"), "gray": ("Y",)}
# smallest scale standardisation may use, in each channel's own units, so a
# flat channel (a and b of a grey photo) is not blown up into noise
_SCALE_FLOOR = {"lab": (0.5, 1.0, 1.0), "rgb": (0.005,) * 3, "hsv": (0.005,) * 3, "gray": (0.005,)}
_CHUNK = 1 << 20  # pixels per conversion chunk: bounds the float32 temporaries

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
    color : {"lab", "rgb", "hsv", "gray"}
        Colour space: CIE L*a*b* (perceptually even, the default), sRGB, the
        HSV cone ``(C cos H, C sin H, V)``, or luminance alone.
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
    """

    color: str = "lab"
    spatial_weight: float = 0.0
    standardize: bool = True
    offset: tuple[float, ...] | None = None
    scale: tuple[float, ...] | None = None

    def __post_init__(self) -> None:
        if self.color not in COLOR_SPACES:
            raise SegsoftError(f"unknown colour space {self.color!r} (choose from {', '.join(COLOR_SPACES)})")
        if not (self.spatial_weight >= 0 and math.isfinite(self.spatial_weight)):
            raise SegsoftError(f"spatial weight must be a finite number >= 0, got {self.spatial_weight!r}")

    @property
    def n_color(self) -> int:
        return len(_CHANNELS[self.color])

    @property
    def n_features(self) -> int:
        return self.n_color + (2 if self.spatial_weight > 0 else 0)

    @property
    def feature_names(self) -> list[str]:
        return list(_CHANNELS[self.color]) + (["x", "y"] if self.spatial_weight > 0 else [])

    @property
    def fitted(self) -> bool:
        return not self.standardize or self.offset is not None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> FeatureSpec:
        data = dict(data)
        for key in ("offset", "scale"):
            if data.get(key) is not None:
                data[key] = tuple(float(v) for v in data[key])
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


def _fit_standardization(spec: FeatureSpec, rgb: np.ndarray, rows: np.ndarray | None, eight_bit: bool) -> FeatureSpec:
    """Offset and scale from an evenly strided sample of the used pixels.

    Any fixed affine map will do for standardising, so a quarter-megapixel
    sample is as good as all pixels and saves a pass over a large image;
    images smaller than the sample use every pixel.
    """
    n = rgb.shape[0] if rows is None else rows.size
    step = max(1, n // _STATS_SAMPLE)
    picked = rgb[::step] if rows is None else rgb[rows[::step]]
    color = _convert(picked, spec.color, eight_bit).astype(np.float64)
    mean = color.mean(axis=0)
    std = np.maximum(color.std(axis=0), _SCALE_FLOOR[spec.color])
    return replace(spec, offset=tuple(map(float, mean)), scale=tuple(map(float, std)))


def extract(image: Image, spec: FeatureSpec | None = None, *, return_spec: bool = False):
    """Feature matrix of the used pixels of ``image``.

    Parameters
    ----------
    image : Image
    spec : FeatureSpec, optional
        Defaults to ``FeatureSpec()`` (standardised Lab, no position). An
        unfitted spec is fitted to this image.
    return_spec : bool
        Also return the fitted spec (what to store to reuse the transform).

    Returns
    -------
    X : ndarray, float32, shape (n_used_pixels, spec.n_features)
    spec : FeatureSpec, only when ``return_spec`` is True

    Examples
    --------
    >>> from segsoft.io import Image
    >>> img = Image.from_array(np.zeros((4, 6, 3), dtype=np.uint8))
    >>> extract(img, FeatureSpec(spatial_weight=1.0)).shape
    (24, 5)
    """
    spec = FeatureSpec() if spec is None else spec
    h, w = image.height, image.width
    rgb = image.pixels.reshape(-1, 3)
    rows = None if image.mask is None else np.flatnonzero(image.mask.ravel())
    n = rgb.shape[0] if rows is None else rows.size
    nc = spec.n_color
    X = np.empty((n, spec.n_features), dtype=np.float32)
    eight_bit = image.bit_depth == 8
    if spec.standardize and spec.offset is None:
        spec = _fit_standardization(spec, rgb, rows, eight_bit)
    if spec.standardize:
        off = np.asarray(spec.offset, dtype=np.float32)
        inv = (1.0 / np.asarray(spec.scale)).astype(np.float32)
    for s in range(0, n, _CHUNK):
        e = min(s + _CHUNK, n)
        block = rgb[s:e] if rows is None else rgb[rows[s:e]]
        color = _convert(block, spec.color, eight_bit)
        if spec.standardize:
            if color is block:  # rgb features are a view of the image: never modify it
                color = color - off
            else:
                color -= off
            color *= inv
        X[s:e, :nc] = color

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
