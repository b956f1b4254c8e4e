"""Segmentation quality against human outlines (BSDS500), side by side.

Scores every method with ONE fixed setting for all images (nothing is tuned
per image) on the bsds-dev set in the team's shared data: 20 BSDS500 train
images with 5-7 human segmentations each. Probabilistic Rand Index (higher is
better), Variation of Information in bits (lower is better) and Segmentation
Covering (higher is better), averaged over images, each averaged over the
humans (see :mod:`segsoft.evaluate`).

    python benchmarks/bench_quality.py                 # ../shared/data/bsds-dev next to the repo
    python benchmarks/bench_quality.py --data DIR --jobs 2

Methods: segsoft plain (k = 4), with the spatial prior (smoothing 1.0), with
k chosen by ICL, each as cluster labels and as regions (connected patches,
specks under 1 % merged); for reference scikit-image's Felzenszwalb-Huttenlocher
graph segmentation and the trivial one-region segmentation.
"""

from __future__ import annotations

import argparse
import time
from multiprocessing import Pool
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = ROOT.parent / "shared" / "data" / "bsds-dev"

# name -> (segment() keyword arguments or a reference method, use regions)
METHODS: dict[str, tuple[dict | str, bool]] = {
    "segsoft k=4 (labels)": ({"k": 4}, False),
    "segsoft k=4 (regions)": ({"k": 4}, True),
    "segsoft k=4 smooth=1 (labels)": ({"k": 4, "smoothing": 1.0}, False),
    "segsoft k=4 smooth=1 (regions)": ({"k": 4, "smoothing": 1.0}, True),
    "segsoft k=auto (ICL 2..8) smooth=1 (regions)": ({"k": "auto", "k_range": (2, 8), "smoothing": 1.0}, True),
    "skimage felzenszwalb scale=500": ("felzenszwalb", False),
    "one region": ("one", False),
}


def score_image(args: tuple[str, Path, str]) -> tuple[str, dict[str, float], float, int]:
    method, data, image_id = args
    from PIL import Image as PILImage

    import segsoft
    from segsoft.evaluate import evaluate_labels, load_ground_truth

    rgb = np.asarray(PILImage.open(data / "images" / f"{image_id}.jpg").convert("RGB"))
    gts = load_ground_truth(data / "gt" / f"{image_id}.npz")
    setting, regions = METHODS[method]
    start = time.perf_counter()
    if setting == "felzenszwalb":
        from skimage.segmentation import felzenszwalb

        labels = felzenszwalb(rgb, scale=500, sigma=0.8, min_size=500)
    elif setting == "one":
        labels = np.zeros(rgb.shape[:2], dtype=int)
    else:
        seg = segsoft.segment(rgb, seed=0, **setting)
        labels = seg.regions() if regions else seg.labels
    seconds = time.perf_counter() - start
    return method, evaluate_labels(labels, gts), seconds, int(len(np.unique(labels)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="folder with images/ and gt/")
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--methods", default=",".join(METHODS), help="comma-separated subset of the method names")
    args = parser.parse_args()
    ids = sorted(p.stem for p in (args.data / "images").glob("*.jpg"))
    if not ids:
        raise SystemExit(f"no images in {args.data / 'images'}")
    methods = [m for m in args.methods.split(",") if m]
    print(f"# {len(ids)} images from {args.data.name}; one fixed setting per method for every image")
    header = f"{'method':<46} {'PRI':>6} {'VoI':>6} {'Covering':>9} {'regions':>8} {'s/image':>8}"
    print(header)
    print("-" * len(header))
    with Pool(args.jobs) as pool:
        for method in methods:
            rows = pool.map(score_image, [(method, args.data, i) for i in ids])
            pri, voi, cov = (np.mean([r[1][key] for r in rows]) for key in ("pri", "voi", "covering"))
            regions = np.mean([r[3] for r in rows])
            seconds = np.mean([r[2] for r in rows])
            print(f"{method:<46} {pri:6.3f} {voi:6.3f} {cov:9.3f} {regions:8.1f} {seconds:8.2f}", flush=True)


if __name__ == "__main__":
    main()
