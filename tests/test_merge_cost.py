"""The learned merge cost of the region hierarchy (issue 15): its features, its model, its default, its refit."""

import importlib.util
import math
from pathlib import Path

import numpy as np
import pytest

from segsoft import regions as R
from segsoft.regions import MERGE_THRESHOLD, merge_regions, region_hierarchy

ROOT = Path(__file__).resolve().parents[1]


def painted(truth, colors, noise=0.02, seed=0):
    rng = np.random.default_rng(seed)
    return np.clip(np.asarray(colors, float)[truth] + rng.normal(0, noise, truth.shape + (3,)), 0, 1)


def step(h=48, w=64, soft=0.0):
    """Two flat noisy halves of different colours; memberships of a two-cluster fit (``soft``: spread to the other)."""
    truth = np.zeros((h, w), int)
    truth[:, w // 2 :] = 1
    rgb = painted(truth, [[0.15, 0.3, 0.6], [0.8, 0.6, 0.2]])
    p = np.eye(2)[truth] * (1 - 2 * soft) + soft
    return truth, rgb, p


def test_the_learned_cost_is_the_default():
    _, rgb, p = step()
    default = region_hierarchy(rgb, p)
    learned = region_hierarchy(rgb, p, cost="learned")
    np.testing.assert_array_equal(default.merges, learned.merges)
    assert R.MERGE_COSTS == ("learned", "contrast")
    contrast = region_hierarchy(rgb, p, cost="contrast")
    np.testing.assert_array_equal(contrast.superpixels, learned.superpixels)  # only the merge order differs
    assert not np.array_equal(contrast.merges[:, 2], learned.merges[:, 2])


@pytest.mark.parametrize("soft", [0.0, 0.2])
def test_a_step_edge_stays_and_each_side_is_one_region(soft):
    truth, rgb, p = step(soft=soft)
    labels = merge_regions(rgb, p)
    assert int(labels.max()) + 1 == 2
    assert np.unique(labels[truth == 0]).size == 1 and np.unique(labels[truth == 1]).size == 1
    h = region_hierarchy(rgb, p)
    # the costs are the model's (shifted) probabilities of "different": in (0, 1), the edge's far above the cut
    assert (h.merges[:, 2] > 0).all() and (h.merges[:, 2] < 1).all()
    assert h.merges[-1, 2] > 3 * MERGE_THRESHOLD and h.merges[:-1, 2].max() < MERGE_THRESHOLD


def test_a_step_in_colour_alone_keeps_apart_what_the_memberships_blur():
    # memberships that only weakly tell the halves apart (0.65 / 0.35: a poor fit), but a clear colour step
    truth, rgb, p = step(soft=0.35)
    assert int(merge_regions(rgb, p).max()) + 1 == 2
    # the same memberships on a flat picture: nothing to keep the halves apart
    flat = painted(np.zeros_like(truth), [[0.5, 0.5, 0.5]])
    assert int(merge_regions(flat, p).max()) + 1 == 1


def test_the_cost_rises_with_every_cue_of_difference():
    w_apart, w_contrast, w_texture, _, w_small, _, _ = R.LEARNED_WEIGHTS
    assert w_apart > 0 and w_contrast > 0 and w_texture > 0  # membership distance, boundary contrast, grain
    assert w_small > 0  # larger regions are harder to merge (specks and slivers go first)
    base = {"na": 200.0, "nb": 300.0, "total": 1e5, "likeness": 0.9, "contrast": 0.2, "length": 20.0}
    base |= {"grain": 0.1, "colour": 5.0}
    x = R._pair_features(**base)
    assert x[4] == pytest.approx(math.log(200 / 1e5)) and x[5] == pytest.approx(math.log(300 / 1e5))
    assert x == R._pair_features(**{**base, "na": 300.0, "nb": 200.0})  # symmetric
    assert R._pair_features(**{**base, "likeness": 1.0})[0] == pytest.approx(math.log(1e-4))  # clipped, finite


def test_observe_sees_every_priced_pair_and_every_merge():
    _, rgb, p = step()
    events = {"superpixels": 0, "pair": 0, "merge": 0}

    def observe(event, a, b=None, x=None):
        events[event] += 1
        if event == "pair":
            assert a < b and len(x) == 7 and all(math.isfinite(v) for v in x)

    h = region_hierarchy(rgb, p, _observe=observe)
    assert events["superpixels"] == 1 and events["merge"] == len(h.merges) == h.n_superpixels - 1
    assert events["pair"] >= len(h.merges)
    np.testing.assert_array_equal(h.merges, region_hierarchy(rgb, p).merges)  # watching changes nothing


@pytest.mark.parametrize("bad", ["colour", "", None, 1])
def test_an_unknown_cost_is_one_clear_error(bad):
    _, rgb, p = step()
    with pytest.raises(ValueError, match="cost must be one of 'learned', 'contrast'"):
        region_hierarchy(rgb, p, cost=bad)


def test_texture_weighs_only_the_contrast_cost():
    _, rgb, p = step()
    with pytest.raises(ValueError, match="texture weighs the texture cue of cost='contrast'"):
        merge_regions(rgb, p, texture=1.0)


def test_the_refit_recovers_a_known_model():
    spec = importlib.util.spec_from_file_location("fit_merge_cost", ROOT / "benchmarks" / "fit_merge_cost.py")
    fit_merge_cost = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(fit_merge_cost)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(20000, 7))
    truth = np.array([0.5, 1.0, -0.5, 0.8, 0.0, 0.3, 0.0, -0.4])
    same = 1 / (1 + np.exp(truth[0] + x @ truth[1:]))  # soft labels: the chance of the same segment
    weights = fit_merge_cost.fit(np.c_[x, same])
    np.testing.assert_allclose(weights, truth, atol=0.05)
