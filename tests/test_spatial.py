"""The spatial prior (neighbourhood EM / mean-field Potts) and choosing k automatically."""

from __future__ import annotations

import numpy as np
import pytest

import segsoft
from segsoft.errors import SegsoftError
from segsoft.mixture import GaussianMixture, SoftKMeans
from segsoft.segment import select_k
from segsoft.spatial import PottsPrior


def noisy_halves(size=48, noise=40.0, seed=0):
    """Two flat halves drowned in noise: a plain mixture speckles, a prior should not."""
    rng = np.random.default_rng(seed)
    truth = np.zeros((size, size), dtype=int)
    truth[:, size // 2 :] = 1
    base = np.where(truth[..., None] == 1, [150.0, 110.0, 90.0], [90.0, 110.0, 150.0])
    img = np.clip(base + rng.normal(0, noise, base.shape), 0, 255).astype(np.uint8)
    return img, truth


def accuracy(labels, truth):
    acc = np.mean(labels == truth)
    return max(acc, 1 - acc)


@pytest.mark.parametrize("beta", [0.3, 1.0, 3.0])
def test_objective_never_decreases_with_the_prior(beta):
    img, _ = noisy_halves()
    seg = segsoft.segment(img, k=2, smoothing=beta, tol=0, max_iter=40)
    trace = seg.model.log_likelihood_trace_
    assert len(trace) == 40
    assert np.all(np.diff(trace) >= -1e-9 * np.abs(trace[:-1]))


def test_each_half_sweep_raises_the_objective():
    rng = np.random.default_rng(1)
    log_joint = rng.normal(size=(12 * 10, 3)) * 3
    prior = PottsPrior((12, 10), beta=1.5)
    c, before = prior.memberships(log_joint, sweeps=0)
    values = [before]
    for _ in range(5):
        _, u = prior.memberships(log_joint, sweeps=1)
        values.append(u)
    assert np.all(np.diff(values) >= -1e-9)
    np.testing.assert_allclose(prior.memberships(log_joint, sweeps=0)[0].sum(1), 1.0)


def test_zero_smoothing_is_exactly_the_plain_mixture():
    img, _ = noisy_halves()
    plain = segsoft.segment(img, k=2)
    zero = segsoft.segment(img, k=2, smoothing=0.0)
    np.testing.assert_array_equal(plain.probabilities, zero.probabilities)
    # and the prior with beta = 0 gives the plain posterior and log-likelihood
    X = segsoft.features.extract(plain.image, plain.spec)
    lj = plain.model.weighted_log_prob(X)
    c, u = PottsPrior((48, 48), beta=0.0).memberships(lj)
    np.testing.assert_allclose(c, plain.model.predict_proba(X), atol=1e-10)
    assert u / len(X) == pytest.approx(plain.model.score(X), rel=1e-10)


def test_smoothing_removes_speckle():
    img, truth = noisy_halves()
    plain = segsoft.segment(img, k=2)
    smooth = segsoft.segment(img, k=2, smoothing=1.0)
    assert accuracy(plain.labels, truth) < 0.9  # the noise really does speckle
    assert accuracy(smooth.labels, truth) > 0.97
    assert smooth.entropy().mean() < plain.entropy().mean()


def test_smoothing_with_a_mask_and_a_subgrid():
    img, truth = noisy_halves(size=64)
    rgba = np.dstack([img, np.full(truth.shape, 255, np.uint8)])
    rgba[:10, :10, 3] = 0
    seg = segsoft.segment(rgba, k=2, smoothing=1.0, sample=1000)  # fitted on every 2nd row and column
    assert np.isnan(seg.probabilities[:10, :10]).all()
    np.testing.assert_allclose(seg.probabilities[10:, 10:].sum(-1), 1.0, atol=1e-5)
    used = seg.labels >= 0
    assert np.mean((seg.labels == truth)[used]) > 0.97 or np.mean((seg.labels != truth)[used]) > 0.97


def test_soft_kmeans_takes_the_prior_but_fuzzy_cmeans_cannot():
    img, truth = noisy_halves()
    seg = segsoft.segment(img, k=2, model="soft-kmeans", smoothing=1.0)
    assert accuracy(seg.labels, truth) > 0.95
    with pytest.raises(SegsoftError, match="likelihood model"):
        segsoft.segment(img, k=2, model="fcm", smoothing=1.0)
    with pytest.raises(SegsoftError, match="smoothing"):
        segsoft.segment(img, k=2, smoothing=-1.0)


def blobs(k, n=400, seed=0):
    rng = np.random.default_rng(seed)
    return np.vstack([rng.normal((4 * i, (-1) ** i * 3), 0.5, (n, 2)) for i in range(k)])


@pytest.mark.parametrize("criterion", ["bic", "icl"])
@pytest.mark.parametrize("true_k", [2, 4])
def test_select_k_finds_the_true_number_of_clusters(criterion, true_k):
    X = blobs(true_k)
    model, sel = select_k(X, range(1, 7), lambda k: GaussianMixture(k, seed=0), criterion)
    assert sel["k"] == model.n_components == true_k
    assert sel["ks"] == list(range(1, 7)) and len(sel["bic"]) == len(sel["icl"]) == 6
    assert all(i >= b for i, b in zip(sel["icl"], sel["bic"]))  # ICL adds a non-negative entropy term
    assert select_k(X, [true_k], lambda k: SoftKMeans(k), criterion)[1]["k"] == true_k


def test_auto_k_on_an_image_reports_the_curve(tmp_path):
    rng = np.random.default_rng(0)
    colors = np.array([[30, 30, 30], [200, 40, 40], [40, 180, 60]], float)
    truth = rng.integers(0, 3, size=(8, 8)).repeat(6, 0).repeat(6, 1)
    img = np.clip(colors[truth] + rng.normal(0, 6, truth.shape + (3,)), 0, 255).astype(np.uint8)
    seg = segsoft.segment(img, k="auto", k_range=(2, 6))
    assert seg.k == 3 and seg.selection["k"] == 3
    written = seg.save(tmp_path)
    assert "k_selection.png" in written
    import json

    record = json.loads((tmp_path / "model.json").read_text())
    assert record["k_selection"]["ks"] == [2, 3, 4, 5, 6] and record["settings"]["k"] == "auto"


@pytest.mark.parametrize(
    "kwargs,match",
    [({"k_range": (5, 2)}, "k range"), ({"criterion": "aic"}, "criterion"), ({"model": "fcm"}, "likelihood")],
)
def test_auto_k_bad_arguments(kwargs, match):
    img, _ = noisy_halves(size=16)
    with pytest.raises(SegsoftError, match=match):
        segsoft.segment(img, k="auto", **kwargs)


def test_regions_split_patches_and_merge_specks():
    from segsoft.regions import connected_regions

    labels = np.zeros((30, 30), dtype=int)
    labels[5:10, 5:10] = 1  # a patch of cluster 1 (25 px)
    labels[20:25, 20:25] = 1  # another patch of the same cluster
    labels[15, 15] = 1  # a one-pixel speck
    regions = connected_regions(labels)
    assert regions.max() + 1 == 4  # background, two patches, the speck
    merged = connected_regions(labels, min_size=10)
    assert merged.max() + 1 == 3 and merged[15, 15] == merged[0, 0]
    assert merged[5, 5] != merged[20, 20]  # same cluster, separate regions
    labels[0, :] = -1
    assert (connected_regions(labels, 10)[0] == -1).all()


def test_segmentation_regions_default_to_one_percent():
    img, _ = noisy_halves(size=40)
    seg = segsoft.segment(img, k=2)
    regions = seg.regions()
    sizes = np.bincount(regions.ravel())
    assert sizes.min() >= 16 and len(sizes) < len(np.unique(seg.labels)) + 50


def test_a_smoothed_model_applied_again_gives_the_same_memberships(tmp_path):
    img, _ = noisy_halves()
    seg = segsoft.segment(img, k=2, smoothing=1.0)
    seg.save(tmp_path)
    model, spec, record = segsoft.load_model(tmp_path / "model.json")
    again = segsoft.apply_model(img, model, spec, settings=record["settings"])
    np.testing.assert_allclose(again.probabilities, seg.probabilities, atol=1e-5)
    plain = segsoft.apply_model(img, model, spec, smoothing=0.0)
    assert not np.allclose(plain.probabilities, seg.probabilities, atol=1e-3)
    with pytest.raises(SegsoftError, match="up to 64"):
        segsoft.segment(img, k="auto", k_range=(2, 1000))


def _reference_sweep(prior, c, log_joint):
    """The plain checkerboard sweep: whole-grid neighbour sums, softmax, kept on one colour at a time."""
    h, w = prior.shape
    parity = (np.arange(h)[:, None] + np.arange(w)[None, :]) % 2 == 0
    for color in (parity, ~parity):
        if prior.mask is not None:
            color = color & prior.mask
        s = np.zeros_like(c)
        s[:, 1:] += c[:, :-1]
        s[:, :-1] += c[:, 1:]
        s[:, :, 1:] += c[:, :, :-1]
        s[:, :, :-1] += c[:, :, 1:]
        logits = prior.beta * s + log_joint
        logits = np.exp(logits - logits.max(axis=0))
        logits /= logits.sum(axis=0)
        np.copyto(c, logits, where=color)


@pytest.mark.parametrize("shape", [(1, 1), (1, 6), (7, 1), (2, 2), (5, 7), (6, 8), (9, 4), (33, 20)])
@pytest.mark.parametrize("masked", [False, True])
def test_sublattice_sweep_equals_the_plain_checkerboard_sweep(shape, masked):
    from segsoft.spatial import PottsPrior

    rng = np.random.default_rng(sum(shape) + masked)
    k = 3
    mask = rng.random(shape) > 0.3 if masked else None
    prior = PottsPrior(shape, 0.8, mask)
    log_joint = rng.normal(size=(k, *shape))
    c = rng.dirichlet(np.ones(k), size=shape).transpose(2, 0, 1).copy()
    if prior.mask is not None:
        c[:, ~prior.mask] = 0.0
    expected = c.copy()
    for _ in range(3):
        prior._sweep(c, log_joint)
        _reference_sweep(prior, expected, log_joint)
    np.testing.assert_allclose(c, expected, rtol=1e-12, atol=1e-15)
