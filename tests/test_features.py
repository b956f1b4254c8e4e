"""Feature extraction: colour conversions against scikit-image, standardisation, position, masks."""

from __future__ import annotations

import numpy as np
import pytest
from skimage import color as skcolor

from segsoft.errors import SegsoftError
from segsoft.features import FeatureSpec, extract, rgb_to_hsv_cone, rgb_to_lab
from segsoft.io import Image


@pytest.fixture
def rgb8():
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, size=(40, 30, 3), dtype=np.uint8)


def test_lab_matches_skimage_for_8bit_and_float(rgb8):
    expected = skcolor.rgb2lab(rgb8).reshape(-1, 3)
    flat = (rgb8 / 255.0).reshape(-1, 3)
    np.testing.assert_allclose(rgb_to_lab(flat, eight_bit=True), expected, atol=2e-3)
    np.testing.assert_allclose(rgb_to_lab(flat), expected, atol=2e-3)
    # dark values exercise the linear branches of both piecewise functions
    dark = np.linspace(0, 0.05, 300).repeat(3).reshape(-1, 3)
    np.testing.assert_allclose(rgb_to_lab(dark), skcolor.rgb2lab(dark[None])[0], atol=2e-3)


def test_hsv_cone_agrees_with_skimage_hue(rgb8):
    flat = (rgb8 / 255.0).reshape(-1, 3)
    hsv = skcolor.rgb2hsv(flat[None])[0]
    cone = rgb_to_hsv_cone(flat)
    chroma = flat.max(1) - flat.min(1)
    np.testing.assert_allclose(cone[:, 0], chroma * np.cos(2 * np.pi * hsv[:, 0]), atol=1e-5)
    np.testing.assert_allclose(cone[:, 1], chroma * np.sin(2 * np.pi * hsv[:, 0]), atol=1e-5)
    np.testing.assert_allclose(cone[:, 2], hsv[:, 2], atol=1e-6)


@pytest.mark.parametrize("color,d", [("lab", 3), ("rgb", 3), ("hsv", 3), ("gray", 1)])
def test_standardised_features_have_zero_mean_unit_variance(rgb8, color, d):
    X, spec = extract(Image.from_array(rgb8), FeatureSpec(color=color), return_spec=True)
    assert X.shape == (40 * 30, d) and X.dtype == np.float32
    np.testing.assert_allclose(X.mean(0), 0, atol=1e-5)
    np.testing.assert_allclose(X.std(0), 1, atol=1e-4)
    assert spec.fitted and len(spec.offset) == d
    # the fitted spec maps the colour back
    assert spec.features_to_color(X[:1]).shape == (1, d)


def test_fitted_spec_is_reused_not_refitted(rgb8):
    _, spec = extract(Image.from_array(rgb8), FeatureSpec(), return_spec=True)
    other = Image.from_array(rgb8 // 2)
    X = extract(other, spec)
    raw = skcolor.rgb2lab(rgb8 // 2).reshape(-1, 3)
    np.testing.assert_allclose(X, (raw - spec.offset) / spec.scale, atol=1e-3)


def test_flat_channels_are_not_blown_up():
    grey = np.full((10, 10, 3), 128, dtype=np.uint8)
    grey[:5] = 30
    X = extract(Image.from_array(grey), FeatureSpec())
    assert np.abs(X[:, 1:]).max() < 1e-3  # a and b are ~0 for grey, and stay ~0


def test_spatial_columns_are_centred_and_weighted():
    img = Image.from_array(np.zeros((20, 40, 3), dtype=np.uint8))
    X = extract(img, FeatureSpec(spatial_weight=2.0))
    x, y = X[:, 3].reshape(20, 40), X[:, 4].reshape(20, 40)
    assert np.all(np.diff(x, axis=1) > 0) and np.all(np.diff(y, axis=0) > 0)
    assert abs(x.mean()) < 1e-6 and abs(y.mean()) < 1e-6
    assert x.std() == pytest.approx(2.0, rel=0.01)  # the long side has std = weight
    assert y.std() == pytest.approx(2.0 * 20 / 40, rel=0.02)


def test_masked_pixels_are_left_out():
    rgba = np.zeros((6, 5, 4), dtype=np.uint8)
    rgba[..., 3] = 255
    rgba[2:4, 1:3, 3] = 0
    img = Image.from_array(rgba)
    X = extract(img, FeatureSpec(spatial_weight=1.0))
    assert X.shape == (30 - 4, 5)
    full = extract(Image.from_array(rgba[..., :3]), FeatureSpec(spatial_weight=1.0))
    np.testing.assert_allclose(X[:, 3:], full[img.mask.ravel(), 3:])


def test_bad_spec_values_are_clear_errors():
    with pytest.raises(SegsoftError, match="colour space"):
        FeatureSpec(color="cmyk")
    with pytest.raises(SegsoftError, match="spatial weight"):
        FeatureSpec(spatial_weight=-1)


def test_spec_round_trips_through_dict(rgb8):
    _, spec = extract(Image.from_array(rgb8), FeatureSpec(color="hsv", spatial_weight=0.5), return_spec=True)
    assert FeatureSpec.from_dict(spec.to_dict()) == spec
