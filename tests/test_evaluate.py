"""Region benchmark measures (PRI, VoI, covering), ground truth and prediction files, folder evaluation."""

from __future__ import annotations

import csv
import itertools
import math
from pathlib import Path

import numpy as np
import pytest
from PIL import Image as PILImage

from segsoft.errors import SegsoftError
from segsoft.evaluate import (
    EvaluationReport,
    evaluate_folder,
    evaluate_labels,
    evaluate_many,
    find_ground_truth,
    find_predictions,
    load_ground_truth,
    load_prediction,
    probabilistic_rand_index,
    segmentation_covering,
    variation_of_information,
)

BSDS_DEV = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "bsds-dev"

# the 2x3 example worked out below
SEG = np.array([[0, 0, 1], [0, 1, 1]])
GT = np.array([[1, 1, 1], [2, 2, 2]])


def random_maps(shape=(23, 31), k=(4, 6), n=3, seed=0):
    rng = np.random.default_rng(seed)
    seg = rng.integers(0, k[0], size=shape)
    gts = [rng.integers(1, k[1] + 1, size=shape) for _ in range(n)]
    return seg, gts


# --------------------------------------------------------------------------
# the measures


def test_identical_segmentation_scores_perfectly():
    _, gts = random_maps()
    assert evaluate_labels(gts[0], gts[0]) == {"pri": 1.0, "voi": 0.0, "covering": 1.0}
    # same partition, other label values
    assert evaluate_labels(gts[0] * 7 - 3, [gts[0], gts[0]]) == {"pri": 1.0, "voi": 0.0, "covering": 1.0}


def test_hand_computed_2x3_example():
    # contingency table (rows: SEG 0, 1; columns: GT 1, 2): [[2, 1], [1, 2]], N = 6
    # Rand index: 15 pairs; pairs together in SEG but apart in GT: (3*3 + 3*3 - (4+1+1+4)) / 2 = 4,
    #   apart in SEG but together in GT: likewise 4  ->  RI = 1 - 8/15 = 7/15
    assert probabilistic_rand_index(SEG, [GT]) == pytest.approx(7 / 15, abs=1e-15)
    # VoI: H(SEG) = H(GT) = 1 bit; H(SEG, GT) = 2 * (1/3) log2 3 + 2 * (1/6) log2 6 = log2 3 + 1/3
    #   VoI = 2 H(SEG, GT) - H(SEG) - H(GT) = 2 log2 3 - 4/3
    assert variation_of_information(SEG, [GT]) == pytest.approx(2 * math.log2(3) - 4 / 3, abs=1e-14)
    # covering: GT region 1 (3 px) meets SEG 0 in 2 px, union 3 + 3 - 2 = 4 -> 1/2 (SEG 1: 1/5);
    #   GT region 2 likewise 1/2  ->  (3 * 1/2 + 3 * 1/2) / 6 = 1/2
    assert segmentation_covering(SEG, [GT]) == pytest.approx(0.5, abs=1e-15)


def test_pri_and_voi_average_over_humans():
    # against itself RI = 1 and VoI = 0; against GT as above  ->  the means
    assert probabilistic_rand_index(SEG, [SEG, GT]) == pytest.approx((1 + 7 / 15) / 2, abs=1e-15)
    assert variation_of_information(SEG, np.stack([SEG, GT])) == pytest.approx(math.log2(3) - 2 / 3, abs=1e-14)
    assert segmentation_covering(SEG, (GT, SEG)) == pytest.approx(0.75, abs=1e-15)


def test_voi_hand_computed_coarser_and_finer():
    # one region against regions of 1/2, 1/4, 1/4: H(GT | SEG) = H(GT) = 1.5 bits, H(SEG | GT) = 0
    assert variation_of_information(np.zeros((1, 4), int), np.array([[1, 1, 2, 3]])) == pytest.approx(1.5)
    # every pixel its own region against one region: H(SEG) = log2 4 = 2 bits
    assert variation_of_information(np.array([[0, 1, 2, 3]]), np.ones((1, 4), int)) == pytest.approx(2.0)


def test_covering_is_of_the_ground_truth_by_the_segmentation():
    one = np.zeros((2, 3), int)
    gt = np.array([[1, 1, 2], [1, 1, 2]])
    # GT regions of 4 and 2 px, each inside the single 6 px region: (4 * 4/6 + 2 * 2/6) / 6 = 5/9
    assert segmentation_covering(one, gt) == pytest.approx(5 / 9, abs=1e-15)
    # the other way round, the single GT region's best match is the 4 px region: 6 * 4/6 / 6 = 2/3
    assert segmentation_covering(gt, one) == pytest.approx(2 / 3, abs=1e-15)
    # the PRI and VoI are symmetric
    assert probabilistic_rand_index(one, gt) == probabilistic_rand_index(gt, one)
    assert variation_of_information(one, gt) == pytest.approx(variation_of_information(gt, one), abs=1e-15)


def test_pri_is_the_pair_probability_definition():
    # Unnikrishnan et al.: mean over pixel pairs of c p + (1 - c)(1 - p), where c says the pair is
    # together in the segmentation and p is the fraction of humans who put it together
    seg, gts = random_maps(shape=(5, 6), k=(3, 3), n=3, seed=4)
    s, g = seg.ravel(), np.stack([x.ravel() for x in gts])
    total = 0.0
    pairs = list(itertools.combinations(range(s.size), 2))
    for i, j in pairs:
        c = s[i] == s[j]
        p = np.mean(g[:, i] == g[:, j])
        total += c * p + (1 - c) * (1 - p)
    assert probabilistic_rand_index(seg, gts) == pytest.approx(total / len(pairs), abs=1e-12)


def test_label_permutation_invariance():
    seg, gts = random_maps(k=(5, 7), seed=1)
    rng = np.random.default_rng(2)
    before = evaluate_labels(seg, gts)
    relabel_seg = rng.permutation(5) * 10**12 + 3  # large labels: renumbered, not tabulated directly
    relabel_gts = [rng.permutation(8)[g] for g in gts]
    after = evaluate_labels(relabel_seg[seg], relabel_gts)
    assert after == pytest.approx(before, abs=1e-13)
    # and the order of the humans does not matter
    assert evaluate_labels(seg, gts[::-1]) == pytest.approx(before, abs=1e-13)


def test_many_labels_take_the_sparse_path():
    rng = np.random.default_rng(3)
    seg = rng.integers(0, 2000, size=(60, 70))  # 2000 x 2000 table >> 4 N: only non-empty cells
    gt = rng.integers(0, 2000, size=(60, 70))
    small = rng.integers(0, 3, size=(60, 70))
    pytest.importorskip("sklearn")
    from sklearn.metrics import rand_score

    assert probabilistic_rand_index(seg, gt) == pytest.approx(rand_score(gt.ravel(), seg.ravel()), abs=1e-12)
    assert evaluate_labels(seg, gt) == pytest.approx(evaluate_labels(seg + 10**9, gt), abs=1e-13)
    assert evaluate_labels(small, gt) == pytest.approx(evaluate_labels(small * 10**9, gt + 10**6), abs=1e-13)


@pytest.mark.parametrize("seed", range(5))
def test_rand_index_and_voi_match_scikit_learn(seed):
    metrics = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(seed)
    shape = (int(rng.integers(5, 40)), int(rng.integers(5, 40)))
    seg = rng.integers(0, int(rng.integers(1, 12)), size=shape)
    gt = rng.integers(0, int(rng.integers(1, 12)), size=shape)
    s, g = seg.ravel(), gt.ravel()
    assert probabilistic_rand_index(seg, gt) == pytest.approx(metrics.rand_score(g, s), abs=1e-12)

    def entropy_bits(x):
        p = np.unique(x, return_counts=True)[1] / x.size
        return float(-(p * np.log2(p)).sum())

    mi_bits = metrics.mutual_info_score(g, s) / math.log(2)  # scikit-learn's MI is in nats
    expected = entropy_bits(s) + entropy_bits(g) - 2 * mi_bits
    assert variation_of_information(seg, gt) == pytest.approx(expected, abs=1e-12)


def test_negative_labels_are_left_out():
    seg, gts = random_maps(seed=5)
    rng = np.random.default_rng(6)
    masked_seg = np.where(rng.random(seg.shape) < 0.2, -1, seg)
    keep = masked_seg >= 0
    expected = evaluate_labels(seg[keep], [g[keep] for g in gts])
    assert evaluate_labels(masked_seg, gts) == pytest.approx(expected, abs=1e-14)
    # a pixel masked by one human only is left out against that human only
    masked_gts = [np.where(rng.random(g.shape) < 0.3, -1, g) for g in gts]
    per_human = []
    for g in masked_gts:
        both = keep & (g >= 0)
        per_human.append(evaluate_labels(seg[both], g[both]))
    expected = {k: np.mean([r[k] for r in per_human]) for k in ("pri", "voi", "covering")}
    assert evaluate_labels(masked_seg, masked_gts) == pytest.approx(expected, abs=1e-14)
    # the masked pixels' own labels do not matter, and every negative label counts as masked
    other = np.where(keep, seg, -7)
    assert evaluate_labels(other, masked_gts) == pytest.approx(expected, abs=1e-14)


def test_float_labels_and_bad_input():
    assert evaluate_labels(SEG.astype(float), GT.astype(np.uint16)) == evaluate_labels(SEG, GT)
    nan_seg = np.where(SEG == 1, np.nan, 0.0)
    assert evaluate_labels(nan_seg, GT) == evaluate_labels(np.where(SEG == 1, -1, 0), GT)
    with pytest.raises(SegsoftError, match="non-integer"):
        evaluate_labels(SEG + 0.5, GT)
    with pytest.raises(SegsoftError, match="does not match"):
        evaluate_labels(SEG, [GT, GT.T])
    with pytest.raises(SegsoftError, match="does not match"):
        evaluate_labels(SEG, GT[None, None])
    with pytest.raises(SegsoftError, match="no ground truth"):
        evaluate_labels(SEG, [])
    with pytest.raises(SegsoftError, match="no pixel is labelled in both"):
        evaluate_labels(SEG, [GT, -np.ones_like(GT)])
    with pytest.raises(SegsoftError, match="dtype"):
        evaluate_labels(SEG.astype(str), GT)


# --------------------------------------------------------------------------
# the shared BSDS500 development set


@pytest.fixture(scope="module")
def bsds():
    if not (BSDS_DEV / "gt").is_dir():
        pytest.skip(f"shared BSDS data not found at {BSDS_DEV}")
    return {i: load_ground_truth(p) for i, p in find_ground_truth(BSDS_DEV).items()}


def test_bsds_one_region_baseline(bsds):
    assert len(bsds) == 20 and all(5 <= len(g) <= 7 for g in bsds.values())
    pri, voi, cov = [], [], []
    for gts in bsds.values():
        one = np.zeros(gts[0].shape, int)
        scores = evaluate_labels(one, gts)
        # independent closed forms for one region, with b = the sizes of a human's regions:
        # RI = (sum b^2 - N) / (N (N - 1)), VoI = H(human), covering = sum (b / N)^2
        sizes = [np.unique(g, return_counts=True)[1].astype(float) for g in gts]
        n = float(gts[0].size)
        assert scores["pri"] == pytest.approx(np.mean([((b**2).sum() - n) / (n * (n - 1)) for b in sizes]), abs=1e-12)
        assert scores["voi"] == pytest.approx(np.mean([-(b / n * np.log2(b / n)).sum() for b in sizes]), abs=1e-12)
        assert scores["covering"] == pytest.approx(np.mean([((b / n) ** 2).sum() for b in sizes]), abs=1e-12)
        pri.append(scores["pri"]), voi.append(scores["voi"]), cov.append(scores["covering"])
    # one region agrees with the humans on few pairs and covers their many regions poorly
    assert 0.2 < np.mean(pri) < 0.5 and 0.2 < np.mean(cov) < 0.5 and 1.5 < np.mean(voi) < 3.0
    # each human matches itself perfectly
    gts = next(iter(bsds.values()))
    assert evaluate_labels(gts[0], gts[:1]) == {"pri": 1.0, "voi": 0.0, "covering": 1.0}


def test_bsds_folder_as_ground_truth(bsds):
    found = find_ground_truth(BSDS_DEV)  # the data set folder: its gt/ subfolder is used
    assert list(found)[:3] == ["2092", "22090", "28075"]
    assert found == find_ground_truth(BSDS_DEV / "gt")


# --------------------------------------------------------------------------
# files and folders


def save_png(path: Path, labels: np.ndarray, mode: str = "P") -> Path:
    img = PILImage.fromarray(labels.astype(np.uint8), "L")
    if mode == "P":
        img = img.convert("P")
        img.putpalette([v for i in range(256) for v in (i, 255 - i, 0)])
    elif mode == "RGB":
        img = img.convert("RGB")
    img.save(path)
    return path


def test_load_ground_truth_formats(tmp_path):
    segs = np.random.default_rng(0).integers(1, 5, size=(3, 4, 5)).astype(np.uint16)
    np.savez_compressed(tmp_path / "a.npz", segs=segs)
    got = load_ground_truth(tmp_path / "a.npz")
    assert len(got) == 3 and all(np.array_equal(g, s) for g, s in zip(got, segs))
    np.save(tmp_path / "b.npy", segs[0])
    assert len(load_ground_truth(tmp_path / "b.npy")) == 1
    save_png(tmp_path / "c.png", segs[1], mode="L")
    assert np.array_equal(load_ground_truth(tmp_path / "c.png")[0], segs[1])


@pytest.mark.parametrize(
    "name, content, message",
    [
        ("gone.npz", None, "no such file"),
        ("bad.npz", b"not a zip at all", "cannot read"),
        ("nosegs.npz", "labels", "no 'segs' array"),
        ("flat.npz", "flat", "shape"),
        ("float.npy", np.full((2, 2), 0.5), "non-integer"),
        ("rgb.png", "rgb", "not a label map"),
        ("trunc.png", b"\x89PNG\r\n\x1a\n garbage", "cannot read"),
        ("labels.txt", b"1 2", "unknown ground truth format"),
    ],
)
def test_load_ground_truth_errors_name_the_file(tmp_path, name, content, message):
    path = tmp_path / name
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif isinstance(content, np.ndarray):
        np.save(path, content)
    elif content == "labels":
        np.savez(path, labels=np.ones((2, 2), int))
    elif content == "flat":
        np.savez(path, segs=np.ones(4, int))
    elif content == "rgb":
        save_png(path, np.ones((3, 3)), mode="RGB")
    with pytest.raises(SegsoftError, match=message) as err:
        load_ground_truth(path)
    assert str(err.value).startswith(str(path) + ": ")
    assert "\n" not in str(err.value)


def test_load_prediction_forms(tmp_path):
    probs = np.random.default_rng(0).random((4, 5, 3)).astype(np.float32)
    probs[0, 0] = np.nan  # transparent pixel in segsoft's output
    (tmp_path / "out").mkdir()
    np.save(tmp_path / "out" / "probabilities.npy", probs)
    labels = load_prediction(tmp_path / "out")
    expected = np.argmax(np.nan_to_num(probs), axis=-1)
    expected[0, 0] = -1
    assert labels.dtype == np.int64 and np.array_equal(labels, expected)
    # labels.npy wins over probabilities.npy
    np.save(tmp_path / "out" / "labels.npy", np.full((4, 5), 9, np.int32))
    assert (load_prediction(tmp_path / "out") == 9).all()
    # files
    np.save(tmp_path / "m.npy", probs)
    assert np.array_equal(load_prediction(tmp_path / "m.npy"), expected)
    save_png(tmp_path / "p.png", expected % 3 + 1)
    assert np.array_equal(load_prediction(tmp_path / "p.png"), expected % 3 + 1)
    for bad, message in [("empty", "no labels.npy or probabilities.npy"), ("x.jpg", "unknown prediction format")]:
        (tmp_path / bad).mkdir() if bad == "empty" else (tmp_path / bad).write_bytes(b"x")
        with pytest.raises(SegsoftError, match=message):
            load_prediction(tmp_path / bad)
    np.save(tmp_path / "cube.npy", np.ones((2, 2, 2), int))
    with pytest.raises(SegsoftError, match=r"cube.npy: label map of shape \(2, 2, 2\)"):
        load_prediction(tmp_path / "cube.npy")


def make_folders(tmp_path: Path):
    """Ground truth for ids 1..6 and 10; predictions in every supported form, with problems."""
    rng = np.random.default_rng(7)
    gt_dir, pred_dir = tmp_path / "gt", tmp_path / "pred"
    gt_dir.mkdir(), pred_dir.mkdir()
    gts = {}
    for i in ["1", "2", "3", "4", "6", "10"]:
        gts[i] = rng.integers(1, 4, size=(2, 6, 8)).astype(np.uint16)
        np.savez_compressed(gt_dir / f"{i}.npz", segs=gts[i])
    gts["5"] = rng.integers(1, 4, size=(1, 6, 8)).astype(np.uint16)
    save_png(gt_dir / "5.png", gts["5"][0], mode="L")
    (gt_dir / "notes.txt").write_text("ignored")

    preds = {}
    # 1: a segsoft output folder with memberships, one transparent pixel
    probs = rng.random((6, 8, 3)).astype(np.float32)
    probs[2, 3] = np.nan
    (pred_dir / "1").mkdir()
    np.save(pred_dir / "1" / "probabilities.npy", probs)
    (pred_dir / "1" / "labels.png").write_bytes(b"not read")
    preds["1"] = np.where(np.isnan(probs[..., 0]), -1, np.argmax(np.nan_to_num(probs), axis=-1))
    # 2: a folder with labels.npy
    preds["2"] = gts["2"][0].astype(np.int32)
    (pred_dir / "2").mkdir()
    np.save(pred_dir / "2" / "labels.npy", preds["2"])
    # 3: a palette PNG, plus an RGB picture under the same id that must not be taken
    preds["3"] = rng.integers(0, 5, size=(6, 8))
    save_png(pred_dir / "3.png", preds["3"])
    # 4: missing; 5: .npy against a PNG ground truth; 6: unreadable; 10: transposed
    preds["5"] = rng.integers(0, 2, size=(6, 8))
    np.save(pred_dir / "5.npy", preds["5"])
    (pred_dir / "6.npy").write_bytes(b"\x93NUMPY broken")
    np.save(pred_dir / "10.npy", np.zeros((8, 6), int))
    # predictions without ground truth, a picture, an atomic-write leftover
    np.save(pred_dir / "extra.npy", np.zeros((6, 8), int))
    save_png(pred_dir / "photo.png", np.ones((6, 8)), mode="RGB")
    np.save(pred_dir / ".7.1234.tmp.npy", np.zeros((6, 8), int))
    return gt_dir, pred_dir, gts, preds


def test_evaluate_folder(tmp_path):
    gt_dir, pred_dir, gts, preds = make_folders(tmp_path)
    assert list(find_predictions(pred_dir)) == ["1", "2", "3", "5", "6", "10", "extra"]
    calls = []
    report = evaluate_folder(pred_dir, gt_dir, progress=lambda done, total, i: calls.append((done, total, i)))

    assert calls == [(n, 7, i) for n, i in enumerate(["1", "2", "3", "4", "5", "6", "10"], 1)]
    assert [r.id for r in report.rows] == ["1", "2", "3", "5"]
    assert report.missing == ["4"]
    assert report.extra == ["extra"]
    assert set(report.errors) == {"6", "10"}
    assert report.errors["6"].startswith(str(pred_dir / "6.npy") + ": cannot read")
    assert report.errors["10"] == (
        f"{pred_dir / '10.npy'}: shape (8, 6) does not match the ground truth's (6, 8) ({gt_dir / '10.npz'})"
    )
    assert not report.ok and report.n_images == 7

    for row in report.rows:
        assert (row.pri, row.voi, row.covering) == pytest.approx(
            tuple(evaluate_labels(preds[row.id], list(gts[row.id])).values()), abs=1e-15
        )
        assert row.n_humans == len(gts[row.id])
    assert report.rows[0].n_regions == 3 and report.rows[2].n_regions == len(np.unique(preds["3"]))
    assert report.means["pri"] == pytest.approx(np.mean([r.pri for r in report.rows]))
    # covering pools the covered pixels over images and humans, as the benchmark does (not the mean of images)
    weights = [r.weight for r in report.rows]
    # pixels scored times humans: image 1's transparent pixel is left out against both humans
    assert weights == [gts[r.id].size - (2 if r.id == "1" else 0) for r in report.rows]
    assert report.means["covering"] == pytest.approx(np.average([r.covering for r in report.rows], weights=weights))
    assert report.means["covering"] != pytest.approx(np.mean([r.covering for r in report.rows]))

    out = report.to_csv(tmp_path / "scores" / "evaluation.csv")
    with open(out, newline="") as f:
        lines = list(csv.DictReader(f))
    assert [line["id"] for line in lines] == ["1", "2", "3", "4", "5", "6", "10"]
    assert float(lines[0]["voi"]) == report.rows[0].voi  # full precision
    assert lines[3]["error"] == "missing prediction" and lines[3]["pri"] == ""
    assert lines[6]["error"] == report.errors["10"]
    assert [p.name for p in out.parent.iterdir()] == ["evaluation.csv"]

    text = report.summary()
    assert "4 scored, 1 missing, 2 failed (7 with ground truth)" in text and "missing   4" in text


def test_evaluate_many_in_memory_and_folder_errors(tmp_path):
    gt = np.array([[1, 1, 2, 2]])
    report = evaluate_many({"a": gt - 1, "b": gt.T}, {"a": gt[None], "b": [gt], "c": gt})
    assert [r.id for r in report.rows] == ["a"] and report.rows[0].covering == 1.0
    assert report.errors["b"].startswith("prediction b: shape (4, 1) does not match")
    assert report.missing == ["c"]
    assert math.isnan(EvaluationReport().means["pri"]) and not EvaluationReport().ok

    with pytest.raises(SegsoftError, match="no such folder"):
        evaluate_folder(tmp_path / "nope", tmp_path)
    (tmp_path / "empty").mkdir()
    with pytest.raises(SegsoftError, match="no ground truth files"):
        evaluate_folder(tmp_path, tmp_path / "empty")
    np.save(tmp_path / "1.npy", gt)
    with pytest.raises(SegsoftError, match="not a folder"):
        evaluate_folder(tmp_path / "1.npy", tmp_path)
    # a folder of pictures holds no predictions: every image is missing
    save_png(tmp_path / "empty" / "1.png", np.ones((1, 4)), mode="RGB")
    assert find_predictions(tmp_path / "empty") == {}
    assert evaluate_folder(tmp_path / "empty", tmp_path).missing == ["1"]
