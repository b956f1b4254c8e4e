"""The hierarchy as an ultrametric contour map (ucm.npy, boundaries.png) and evaluate's threshold sweep."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from PIL import Image as PILImage
from test_cli_evaluate import make_dataset

from segsoft.boundaries import boundary_image, level_of_grey
from segsoft.evaluate import EvaluationReport, ImageScore, cut_ucm, evaluate_directory, parse_thresholds
from segsoft.regions import region_hierarchy


def segsoft(*args) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "segsoft", *map(str, args)], capture_output=True, text=True, timeout=180, check=False
    )


def same_partition(a: np.ndarray, b: np.ndarray) -> bool:
    """Two label maps cut the image into the same parts (ids aside)."""
    pairs = np.unique(a.astype(np.int64) * (int(b.max()) + 2) + b, return_counts=False)
    return len(pairs) == len(np.unique(a)) == len(np.unique(b))


def four_blocks(seed: int = 0, shape=(48, 64)) -> tuple[np.ndarray, np.ndarray]:
    """A noisy picture of four colour blocks and memberships of a two-cluster fit that mixes two of them."""
    rng = np.random.default_rng(seed)
    h, w = shape
    truth = np.zeros(shape, int)
    truth[:, w // 2 :] = 1
    truth[h // 2 :, :] += 2
    colours = np.array([[0.1, 0.1, 0.1], [0.9, 0.2, 0.1], [0.2, 0.5, 0.9], [0.8, 0.8, 0.3]])
    rgb = np.clip(colours[truth] + rng.normal(0, 0.03, (h, w, 3)), 0, 1)
    p = np.zeros((h, w, 2))
    p[..., 0] = (truth % 2 == 0) * 0.9 + 0.05
    p[..., 1] = 1 - p[..., 0]
    return rgb, p


def test_every_cut_of_the_ucm_is_the_hierarchy_cut_at_that_threshold():
    rgb, p = four_blocks()
    h = region_hierarchy(rgb, p, superpixel_size=40)
    ucm2 = h.ucm()
    assert ucm2.shape == (97, 129) and ucm2.dtype == np.float32
    assert not ucm2[1::2, 1::2].any()  # pixels hold no boundary
    levels = h.levels
    assert (np.diff(levels) >= 0).all() and levels[-1] == pytest.approx(ucm2.max())
    # at each level (and between levels) the benchmark's 8-connected cut gives exactly labels(t)
    for t in [0.0, *levels[:: max(1, len(levels) // 12)], levels[-1] * 0.999, levels[-1]]:
        cut = cut_ucm(ucm2, float(t))
        assert same_partition(cut, h.labels(float(t))), t
        assert cut.max() + 1 == h.n_regions(float(t))
    # the thin (H, W) map is the BSDS thinning of the same levels
    thin = h.ucm(bsds=False)
    assert thin.shape == (48, 64) and np.array_equal(thin, ucm2[2::2, 2::2])


def test_ucm_of_a_block_averaged_image_matches_its_labels(monkeypatch):
    from segsoft import regions

    monkeypatch.setattr(regions, "WORK_PIXELS", 800)  # 48 x 64 merged on 2x2 blocks
    rgb, p = four_blocks(1)
    h = region_hierarchy(rgb, p, superpixel_size=20)
    assert h.factor == 2
    ucm2 = h.ucm()
    for t in np.quantile(h.levels, [0.0, 0.5, 0.9, 0.97]):
        assert same_partition(cut_ucm(ucm2, float(t)), h.labels(float(t)))


def test_cut_ucm_reads_the_bsds_layout():
    # 2 x 3 pixels; a boundary of level 0.3 between columns 1 and 2, continued into the frame as BSDS500 does
    u = np.zeros((5, 7), np.float32)
    u[:, 4] = 0.3
    assert cut_ucm(u, 0.2).tolist() == [[0, 0, 1], [0, 0, 1]]
    assert cut_ucm(u, 0.3).tolist() == [[0, 0, 0], [0, 0, 0]]


def test_boundary_image_is_white_off_boundaries_and_darker_for_later_merges():
    u = np.zeros((5, 7), np.float32)
    u[:, 2] = 0.1  # a weak boundary after column 0
    u[:, 4] = 2.0  # a strong one, past black
    grey = boundary_image(u, black=0.5)
    assert grey.dtype == np.uint8 and grey.shape == (2, 3)
    assert grey[:, 2].tolist() == [255, 255]  # no boundary right of the last column
    assert grey[0, 1] == 0 and 0 < grey[0, 0] < 255
    assert level_of_grey(grey[0, 0], black=0.5) == pytest.approx(0.1, abs=0.5 / 255)
    tiny = np.zeros((5, 7), np.float32)
    tiny[:, 2] = 1e-6
    assert boundary_image(tiny)[0, 0] == 254  # the weakest boundary is still drawn
    with pytest.raises(ValueError, match="black"):
        boundary_image(u, black=0)


def test_parse_thresholds():
    assert parse_thresholds("0.05:0.4:0.025")[:4] == (0.05, 0.075, 0.1, 0.125)
    assert len(parse_thresholds("0.05:0.4:0.025")) == 15 and parse_thresholds("0.05:0.4:0.025")[-1] == 0.4
    assert parse_thresholds("0.2,0.1,0.2") == (0.1, 0.2)
    for bad in ("", "a:b:c", "0.1:0.2", "0.3:0.1:0.05", "0.1:0.2:0", "-1,0.2", "nan", "0:1e9:1e-9"):
        with pytest.raises(Exception, match="--thresholds"):
            parse_thresholds(bad)


def test_report_pools_covering_and_picks_ods_and_ois():
    rows = [ImageScore("1", 0.8, 1.5, 0.6, 4, 5, 500), ImageScore("2", 0.7, 2.2, 0.4, 6, 5, 1500)]
    sweeps = {  # per threshold: pri, voi, covering, regions, weight (the rows are the middle threshold)
        "1": np.array([[0.9, 1.0, 0.7, 9, 500], [0.8, 1.5, 0.6, 4, 500], [0.7, 2.0, 0.5, 2, 500]]),
        "2": np.array([[0.4, 3.0, 0.3, 9, 1500], [0.7, 2.2, 0.4, 6, 1500], [0.6, 2.4, 0.5, 2, 1500]]),
    }
    r = EvaluationReport(rows, thresholds=(0.1, 0.2, 0.3), sweeps=sweeps)
    assert r.means["covering"] == pytest.approx((0.6 * 500 + 0.4 * 1500) / 2000)  # pooled: 0.45, not 0.5
    assert r.means["pri"] == pytest.approx(0.75)
    ods = r.ods  # one threshold for every image, chosen per measure
    assert ods["pri"] == pytest.approx((0.75, 0.2))
    assert ods["voi"] == pytest.approx((1.85, 0.2))
    assert ods["covering"] == pytest.approx((0.5, 0.3))  # pooled at each threshold
    ois = r.ois  # each image at its own best threshold
    assert ois["pri"] == pytest.approx(0.8) and ois["voi"] == pytest.approx(1.6)
    assert ois["covering"] == pytest.approx((0.7 * 500 + 0.5 * 1500) / 2000)
    text = r.summary()
    assert "ODS       PRI 0.7500 (t=0.2), VoI 1.8500 bits (t=0.2), Covering 0.5000 (t=0.3)" in text
    assert "OIS       PRI 0.8000, VoI 1.6000 bits, Covering 0.5500" in text
    assert "3 thresholds from 0.1 to 0.3" in text
    assert EvaluationReport(rows).ods == {} and "ODS" not in EvaluationReport(rows).summary()


def test_evaluate_directory_sweeps_one_hierarchy_per_image(tmp_path):
    images, gt = make_dataset(tmp_path)
    report = evaluate_directory(images, gt, segment_kwargs={"k": 3}, regions=0.15, thresholds=[0.3, 0.0, 0.15])
    assert report.thresholds == (0.0, 0.15, 0.3) and set(report.sweeps) == {"100", "101"}
    middle = report.sweeps["100"][1]
    row = report.rows[0]
    assert (row.pri, row.voi, row.covering, row.n_regions) == pytest.approx(tuple(middle[:4]))
    assert report.sweeps["100"][0, 3] > report.sweeps["100"][2, 3]  # threshold 0: the superpixels
    assert report.ods["pri"][0] == pytest.approx(
        max(np.mean([s[j, 0] for s in report.sweeps.values()]) for j in range(3))
    )
    assert report.ods["pri"][0] <= report.ois["pri"] + 1e-12
    with pytest.raises(Exception, match="--regions"):
        evaluate_directory(images, gt, segment_kwargs={"k": 3}, thresholds=[0.1])


def test_run_writes_ucm_and_boundaries_and_evaluate_cuts_them(tmp_path):
    images, gt = make_dataset(tmp_path, n=2)
    out = tmp_path / "out"
    ok = segsoft("batch", images, "-o", out, "-k", "3", "--regions", "-q", "--jobs", "1")
    assert ok.returncode == 0, ok.stderr
    folder = out / "100"
    ucm2 = np.load(folder / "ucm.npy")
    assert ucm2.shape == (81, 121) and ucm2.dtype == np.float32
    regions = np.load(folder / "regions.npy")
    assert same_partition(cut_ucm(ucm2, 0.15), regions)  # the default cut, one comparison away
    grey = np.asarray(PILImage.open(folder / "boundaries.png"))
    assert grey.shape == (40, 60) and grey.dtype == np.uint8 and grey.min() < 255 and (grey == 255).mean() > 0.5
    result = segsoft("evaluate", out, "--gt", gt, "--thresholds", "0.05:0.3:0.05")
    assert result.returncode == 0, result.stderr
    assert "ODS       PRI" in result.stdout and "6 thresholds from 0.05 to 0.3" in result.stdout
    bad = segsoft("evaluate", out, "--gt", gt, "--thresholds", "0.3:0.1")
    assert bad.returncode != 0 and "--thresholds" in bad.stderr and "Traceback" not in bad.stderr
    assert len(bad.stderr.strip().splitlines()) == 1
    (folder / "ucm.npy").unlink()
    missing = segsoft("evaluate", out, "--gt", gt, "--thresholds", "0.1")
    assert missing.returncode == 1 and "no ucm.npy" in missing.stdout
    # a run without --regions removes the old hierarchy files
    again = segsoft("run", images / "101.png", "-o", out, "-k", "3")
    assert again.returncode == 0, again.stderr
    assert not (out / "101" / "ucm.npy").exists() and not (out / "101" / "boundaries.png").exists()


def test_a_transparent_line_is_a_boundary_that_never_merges():
    rgb, p = four_blocks(2)
    mask = np.ones(rgb.shape[:2], bool)
    mask[:, 30:34] = False  # a transparent band through the left blocks
    h = region_hierarchy(rgb, p, mask=mask, superpixel_size=40)
    ucm2 = h.ucm()
    assert np.isinf(ucm2[1::2, 2::2][:, 29]).all()  # the band's left edge, on every row
    top = float(h.levels[-1])
    cut = cut_ucm(ucm2, top)  # every merge done: the two sides stay apart, the band is its own region
    assert len(np.unique(cut[:, :30])) == 1 and cut[0, 0] != cut[0, 40] and cut[0, 31] not in (cut[0, 0], cut[0, 40])
    labels = h.labels(top)
    assert same_partition(cut[mask], labels[mask])
    assert boundary_image(ucm2)[:, 29].max() == 0  # drawn black
