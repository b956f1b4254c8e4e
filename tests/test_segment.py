"""segment(), SoftSegmentation and the output folder, through the public API."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image as PILImage

import segsoft
from segsoft.errors import SegsoftError
from segsoft.outputs import output_files

ROOT = Path(__file__).resolve().parents[1]


def quadrants(noise=8.0, seed=0, size=64):
    """Four flat colour quadrants plus noise: the true labels are known."""
    rng = np.random.default_rng(seed)
    colors = np.array([[20, 20, 20], [220, 40, 40], [40, 200, 60], [230, 230, 240]], dtype=float)
    truth = np.zeros((size, size), dtype=int)
    half = size // 2
    truth[:half, half:], truth[half:, :half], truth[half:, half:] = 1, 2, 3
    img = colors[truth] + rng.normal(0, noise, (size, size, 3))
    return np.clip(img, 0, 255).astype(np.uint8), truth


def agreement(labels, truth):
    """Fraction of pixels labelled right under the best matching of cluster ids."""
    from itertools import permutations

    k = truth.max() + 1
    return max(np.mean(np.array(p)[labels] == truth) for p in permutations(range(k)))


@pytest.mark.parametrize("model", ["gmm", "soft-kmeans", "fcm"])
def test_recovers_known_regions(model):
    img, truth = quadrants()
    seg = segsoft.segment(img, k=4, model=model, seed=0)
    assert seg.probabilities.shape == (64, 64, 4) and seg.probabilities.dtype == np.float32
    np.testing.assert_allclose(seg.probabilities.sum(-1), 1.0, atol=1e-5)
    assert agreement(seg.labels, truth) > 0.99
    np.testing.assert_array_equal(seg.labels, seg.probabilities.argmax(-1))


def test_clusters_are_numbered_by_lightness_and_mean_rgb_is_right():
    img, truth = quadrants(noise=2.0)
    seg = segsoft.segment(img, k=4)
    # Lab features: cluster 0 is the darkest, the last the lightest
    lightness = seg.mean_rgb @ [0.2126, 0.7152, 0.0722]
    assert np.all(np.diff(lightness) > 0)
    np.testing.assert_allclose(seg.mean_rgb[0] * 255, [20, 20, 20], atol=2)
    np.testing.assert_allclose(seg.mean_rgb[-1] * 255, [230, 230, 240], atol=2)


def test_same_seed_same_result_and_sampling_stays_close():
    img, _ = quadrants(noise=20.0, size=128)
    a = segsoft.segment(img, k=3, seed=3, sample=2000)
    b = segsoft.segment(img, k=3, seed=3, sample=2000)
    np.testing.assert_array_equal(a.probabilities, b.probabilities)
    full = segsoft.segment(img, k=3, seed=3, sample=None)
    assert a.model.n_iter_sample_ > 0 and full.model.n_iter_sample_ == 0
    assert abs(a.log_likelihood - full.log_likelihood) < 1e-3


def test_transparent_pixels_are_left_out():
    img, truth = quadrants()
    rgba = np.dstack([img, np.full(truth.shape, 255, np.uint8)])
    rgba[:8, :8, 3] = 0
    seg = segsoft.segment(rgba, k=4)
    assert np.isnan(seg.probabilities[:8, :8]).all()
    assert (seg.labels[:8, :8] == -1).all()
    used = seg.probabilities[8:, 8:]
    np.testing.assert_allclose(used.sum(-1), 1.0, atol=1e-5)
    assert seg.n_used == 64 * 64 - 64
    for picture in (seg.overlay(), seg.label_image(), seg.uncertainty(), seg.heatmap(0)):
        assert picture.shape == (64, 64, 3) and picture.dtype == np.uint8


def test_save_writes_everything_and_model_json_round_trips(tmp_path):
    img, _ = quadrants()
    seg = segsoft.segment(img, k=4, color="rgb", spatial_weight=0.3)
    written = seg.save(tmp_path / "q")
    assert sorted(written) == sorted(output_files(4))
    assert sorted(p.name for p in (tmp_path / "q").iterdir()) == sorted(output_files(4))
    np.testing.assert_array_equal(np.load(tmp_path / "q" / "probabilities.npy"), seg.probabilities)
    record = json.loads((tmp_path / "q" / "model.json").read_text())
    assert record["features"]["names"] == ["R", "G", "B", "x", "y"]
    assert record["result"]["bic"] == pytest.approx(
        seg.model.bic(segsoft.features.extract(seg.image, seg.spec)), rel=1e-6
    )
    for key in ("read", "features", "fit", "memberships", "render_write"):
        assert record["timings"][key] >= 0
    # the files decode to exactly the pictures the API returns
    folder = tmp_path / "q"
    for name, picture in [
        ("overlay.png", seg.overlay()),
        ("labels.png", seg.label_image()),
        ("uncertainty.png", seg.uncertainty()),
        ("prob_2.png", seg.heatmap(2)),
    ]:
        np.testing.assert_array_equal(np.asarray(PILImage.open(folder / name).convert("RGB")), picture, err_msg=name)
    # the saved model reproduces the memberships on the same image
    model, spec, _ = segsoft.load_model(tmp_path / "q" / "model.json")
    again = segsoft.apply_model(img, model, spec)
    np.testing.assert_allclose(again.probabilities, seg.probabilities, atol=1e-5)


def test_no_temporary_files_are_left_behind(tmp_path):
    img, _ = quadrants()
    segsoft.segment(img, k=2).save(tmp_path)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_progress_callback_sees_every_iteration():
    img, _ = quadrants(noise=30.0)
    seen = []
    seg = segsoft.segment(img, k=3, progress=lambda it, ll: seen.append((it, ll)))
    assert [it for it, _ in seen] == list(range(1, seg.model.n_iter_ + 1))


def test_reads_sample_images_from_disk():
    seg = segsoft.segment(ROOT / "images" / "chelsea.jpg", k=3)
    w, h = PILImage.open(ROOT / "images" / "chelsea.jpg").size
    assert seg.labels.shape == (h, w)
    assert seg.model.converged_


def test_constant_image_with_spatial_features_still_segments():
    flat = np.full((20, 30, 3), 90, np.uint8)
    seg = segsoft.segment(flat, k=3, spatial_weight=1.0)
    np.testing.assert_allclose(seg.probabilities.sum(-1), 1.0, atol=1e-5)
    assert len(np.unique(seg.labels)) == 3  # split by position


@pytest.mark.parametrize("k,match", [(0, "k must be"), (5, "distinct colours"), (2.5, "k must be")])
def test_bad_k_is_a_clear_error(k, match):
    img = np.zeros((6, 6, 3), np.uint8)
    img[3:] = 255
    with pytest.raises(SegsoftError, match=match):
        segsoft.segment(img, k=k)


def test_saving_again_into_a_folder_leaves_no_stale_files(tmp_path):
    img, _ = quadrants()
    segsoft.segment(img, k="auto", k_range=(4, 5)).save(tmp_path)
    (tmp_path / ".overlay.0123abcd.tmp.png").write_bytes(b"half")  # what a killed write leaves
    seg = segsoft.segment(img, k=2)
    seg.save(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(output_files(2))
