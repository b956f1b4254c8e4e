"""`segsoft run --scheduler`: the chunked passes on Dask give the in-memory result."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image as PILImage

pytest.importorskip("distributed", reason="needs the dask extra: pip install 'segsoft[dask]'")

import segsoft  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}


def cli(*args) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "segsoft", *map(str, args)], capture_output=True, text=True, timeout=180, env=ENV
    )


def test_run_on_a_local_cluster_equals_the_in_memory_run(tmp_path):
    image = ROOT / "images" / "coffee.jpg"
    plain = cli("run", image, "-k", "3", "--spatial-weight", "0.5", "-o", tmp_path / "a", "-q")
    local = cli("run", image, "-k", "3", "--spatial-weight", "0.5", "-o", tmp_path / "b", "-q", "--scheduler", "local")
    assert plain.returncode == 0 and local.returncode == 0, plain.stderr + local.stderr
    a, b = (np.load(tmp_path / x / "coffee" / "probabilities.npy") for x in "ab")
    assert np.abs(a - b).max() <= 1e-6
    la, lb = (json.loads((tmp_path / x / "coffee" / "model.json").read_text())["result"]["log_likelihood"] for x in "ab")
    assert abs(la - lb) <= 1e-10 * abs(la)


@pytest.mark.parametrize("model", ["gmm", "soft-kmeans", "fcm"])
def test_threads_with_a_mask_equal_the_in_memory_result(model):
    rng = np.random.default_rng(0)
    rgba = rng.integers(0, 255, (60, 70, 4)).astype(np.uint8)
    rgba[..., 3] = 255
    rgba[10:30, 5:25, 3] = 0  # a transparent hole
    rgba[:, 35:, :3] //= 3
    ours = segsoft.segment(rgba, k=3, model=model, seed=1)
    chunked = segsoft.segment(rgba, k=3, model=model, seed=1, scheduler="threads")
    used = ~np.isnan(ours.probabilities[..., 0])
    np.testing.assert_array_equal(used, ~np.isnan(chunked.probabilities[..., 0]))
    assert np.abs(ours.probabilities[used] - chunked.probabilities[used]).max() <= 1e-6
    assert abs(ours.log_likelihood - chunked.log_likelihood) <= 1e-10 * abs(ours.log_likelihood)


def test_what_the_chunked_path_does_not_do_yet_is_an_error(tmp_path):
    image = tmp_path / "p.png"
    PILImage.fromarray(np.random.default_rng(0).integers(0, 255, (20, 20, 3)).astype(np.uint8)).save(image)
    for extra in (("-k", "auto"),):
        result = cli("run", image, *extra, "--scheduler", "threads", "-o", tmp_path / "o")
        assert result.returncode == 1 and len(result.stderr.strip().splitlines()) == 1, result.stderr
        assert "-k auto with --scheduler works out of core only" in result.stderr


def test_smoothing_tile_by_tile_equals_the_in_memory_run():
    """--smooth on the chunked path: the sub-grid fit gathered from the tiles, the final sweeps on
    tiles with halos; the same memberships as the whole-grid sweeps in memory."""
    rgb = np.asarray(PILImage.open(ROOT / "images" / "coffee.jpg").convert("RGB"))[:150, :200]
    ref = segsoft.segment(rgb, k=3, smoothing=1.0)
    from segsoft.cluster.em import segment_image
    from segsoft.features import FeatureSpec
    from segsoft.segment import make_model

    probs, mean, _, _ = segment_image(
        ref.image, FeatureSpec(color="lab"), make_model("gmm", 3), "threads", chunks=(64, 64), smoothing=1.0
    )
    assert np.abs(probs - ref.probabilities).max() <= 1e-6
    assert abs(mean - ref.log_likelihood) <= 1e-10 * abs(ref.log_likelihood)
