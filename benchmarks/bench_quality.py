"""Segmentation quality against human outlines (BSDS500), side by side.

Scores every method with ONE fixed setting for all images (nothing is tuned
per image) on the bsds-dev set in the team's shared data: 20 BSDS500 train
images with 5-7 human segmentations each. Probabilistic Rand Index (higher is
better), Variation of Information in bits (lower is better) and Segmentation
Covering (higher is better), averaged over images, each averaged over the
humans (see :mod:`segsoft.evaluate`).

    python benchmarks/bench_quality.py                 # ../shared/data/bsds-dev next to the repo
    python benchmarks/bench_quality.py --data DIR --jobs 2
    python benchmarks/bench_quality.py --sweep         # also the k=12 regions at other thresholds
    python benchmarks/bench_quality.py --scale 2.5     # every method on the images enlarged 2.5x

Methods: segsoft's cluster labels (k = 4, plain and with the spatial prior),
the same as connected regions (patches, specks under 1 % merged), segsoft's
merged regions (``seg.regions()``: superpixels merged along weak boundaries,
described by their mean memberships; default threshold 0.15) at k = 4, k = 12
and k chosen by ICL; for reference scikit-image's Felzenszwalb-Huttenlocher
graph segmentation, SLIC superpixels merged by mean colour on a region
adjacency graph (``skimage.graph.cut_threshold``), and the trivial one-region
segmentation.
"""

from __future__ import annotations

import argparse
import time
from multiprocessing import Pool
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = ROOT.parent / "shared" / "data" / "bsds-dev"
SWEEP = (0.075, 0.1, 0.125, 0.15, 0.175, 0.2, 0.25, 0.3)

# name -> (segment() keyword arguments or a reference method, how to turn the result into a label map)
METHODS: dict[str, tuple[dict | str, str]] = {
    "segsoft k=4 (labels)": ({"k": 4}, "labels"),
    "segsoft k=4 smooth=1 (labels)": ({"k": 4, "smoothing": 1.0}, "labels"),
    "segsoft k=4 smooth=1 (connected regions)": ({"k": 4, "smoothing": 1.0}, "connected"),
    "segsoft k=4 (merged regions)": ({"k": 4}, "merged"),
    "segsoft k=auto ICL 2..12 (merged regions)": ({"k": "auto", "k_range": (2, 12)}, "merged"),
    "segsoft k=12 (merged regions)": ({"k": 12}, "merged"),
    "skimage felzenszwalb scale=500": ("felzenszwalb", ""),
    "skimage slic + rag cut_threshold=29": ("slic-rag", ""),
    "one region": ("one", ""),
}


def score_image(
    args: tuple[str, Path, str, tuple[float, ...], float],
) -> tuple[str, dict[str, dict[str, float]], float]:
    """Scores of one method on one image: {label: {pri, voi, covering, regions}}, seconds.

    With ``scale`` != 1 the image is resized first (bilinear) and each label
    map is sampled back to the ground truth's grid (nearest).
    """
    method, data, image_id, sweep, scale = args
    from PIL import Image as PILImage

    import segsoft
    from segsoft.evaluate import evaluate_labels, load_ground_truth
    from segsoft.regions import MERGE_THRESHOLD, connected_regions

    rgb = np.asarray(PILImage.open(data / "images" / f"{image_id}.jpg").convert("RGB"))
    gts = load_ground_truth(data / "gt" / f"{image_id}.npz")
    height, width = rgb.shape[:2]
    if scale != 1:
        rgb = np.asarray(
            PILImage.fromarray(rgb).resize((round(width * scale), round(height * scale)), PILImage.Resampling.BILINEAR)
        )
    setting, mode = METHODS[method]
    start = time.perf_counter()
    maps: dict[str, np.ndarray] = {}
    if setting == "felzenszwalb":
        from skimage.segmentation import felzenszwalb

        maps[method] = felzenszwalb(rgb, scale=500, sigma=0.8, min_size=500)
    elif setting == "slic-rag":
        from skimage import graph
        from skimage.segmentation import slic

        # the setting of scikit-image's own RAG-thresholding example
        sp = slic(rgb, n_segments=400, compactness=30, start_label=1)
        maps[method] = graph.cut_threshold(sp, graph.rag_mean_color(rgb, sp), 29)
    elif setting == "one":
        maps[method] = np.zeros(rgb.shape[:2], dtype=int)
    else:
        seg = segsoft.segment(rgb, seed=0, **setting)
        if mode == "labels":
            maps[method] = seg.labels
        elif mode == "connected":
            maps[method] = connected_regions(seg.labels, round(0.01 * seg.n_used))
        else:
            maps[method] = seg.regions(MERGE_THRESHOLD)
            for t in sweep:
                maps[f"{method[: method.index('(')]}threshold {t}"] = seg.regions(t)
    seconds = time.perf_counter() - start
    rows = np.minimum((np.arange(height) * scale).astype(int), rgb.shape[0] - 1)
    cols = np.minimum((np.arange(width) * scale).astype(int), rgb.shape[1] - 1)
    scores = {}
    for name, labels in maps.items():
        labels = np.asarray(labels)[rows][:, cols]
        scores[name] = {**evaluate_labels(labels, gts), "regions": float(len(np.unique(labels)))}
    return method, scores, seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="folder with images/ and gt/")
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--methods", default=",".join(METHODS), help="comma-separated subset of the method names")
    parser.add_argument("--sweep", action="store_true", help="also score the k=12 regions at other thresholds")
    parser.add_argument("--scale", type=float, default=1.0, help="resize the images by this factor first")
    args = parser.parse_args()
    ids = sorted(p.stem for p in (args.data / "images").glob("*.jpg"))
    if not ids:
        raise SystemExit(f"no images in {args.data / 'images'}")
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise SystemExit(f"unknown method {unknown[0]!r}; the methods are:\n  " + "\n  ".join(METHODS))
    scaled = f", enlarged {args.scale:g}x" if args.scale != 1 else ""
    print(f"# {len(ids)} images from {args.data.name}{scaled}; one fixed setting per method for every image")
    header = f"{'method':<46} {'PRI':>6} {'VoI':>6} {'Covering':>9} {'regions':>8} {'s/image':>8}"
    print(header)
    print("-" * len(header))
    with Pool(args.jobs) as pool:
        for method in methods:
            sweep = SWEEP if args.sweep and method == "segsoft k=12 (merged regions)" else ()
            rows = pool.map(score_image, [(method, args.data, i, sweep, args.scale) for i in ids])
            seconds = np.mean([r[2] for r in rows])
            for name in rows[0][1]:
                mean = {key: np.mean([r[1][name][key] for r in rows]) for key in ("pri", "voi", "covering", "regions")}
                time_column = f"{seconds:8.2f}" if name == method else f"{'':8}"
                print(
                    f"{name:<46} {mean['pri']:6.3f} {mean['voi']:6.3f} {mean['covering']:9.3f} "
                    f"{mean['regions']:8.1f} {time_column}",
                    flush=True,
                )


if __name__ == "__main__":
    main()
