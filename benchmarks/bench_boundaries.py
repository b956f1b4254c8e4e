"""Boundary quality against human outlines (BSDS500 boundary benchmark): segsoft's ucm and gPb-owt-ucm's ucm2.

Each method gives one soft boundary map per image, an ultrametric contour
map in BSDS500's ucm2 layout: segsoft's hierarchy (``segsoft.segment(rgb,
k=12, seed=0).hierarchy.ucm()``, the ``ucm.npy`` that ``segsoft run IMAGE -k
12 --regions`` writes) and gPb-owt-ucm's ucm2 maps that ship with BSDS500
(``bsds-val/gpb-ucm2``, val only). Both are scored the same way by
:mod:`segsoft.contours`, the BSDS500 boundary benchmark (thresholds, thinning,
``seg2bdry``, the ``correspondPixels`` matching at 0.0075 of the diagonal,
and ``collect_eval_bdry``'s ODS, OIS and AP), over the benchmark's 99
thresholds ``0.01 .. 0.99`` unless ``--thresholds`` says otherwise.

    python benchmarks/bench_boundaries.py                    # bsds-val, both methods, 1 process
    python benchmarks/bench_boundaries.py --jobs 2 --limit 10
    python benchmarks/bench_boundaries.py --splits val train --methods segsoft

Columns: ODS (best single threshold for the data set: its threshold,
precision, recall, F), OIS (each image at its best threshold), AP, and the
seconds spent, summed over the images (segmenting included for segsoft).
gPb-owt-ucm's published BSDS500 *test* figures are ODS 0.73, OIS 0.76, AP
0.73 (Arbelaez et al. 2011).
"""

from __future__ import annotations

import argparse
import time
from multiprocessing import Pool
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = ROOT.parent / "shared" / "data"
SEGSOFT = "segsoft k=12 (ucm)"
GPB = "gPb-owt-ucm (ucm2)"
METHODS = {"segsoft": SEGSOFT, "gpb": GPB}


def score_image(args: tuple[str, Path, str, tuple[float, ...] | None]) -> tuple[str, str, object, float]:
    """One method on one image: (method, id, BoundaryCounts, seconds)."""
    method, data, image_id, thresholds = args
    from PIL import Image as PILImage

    import segsoft
    from segsoft.contours import boundary_pr
    from segsoft.evaluate import load_ground_truth

    start = time.process_time()
    gts = load_ground_truth(data / "gt" / f"{image_id}.npz")
    if method == GPB:
        with np.load(data / "gpb-ucm2" / f"{image_id}.npz") as z:
            ucm2 = z["ucm2"]
    else:
        rgb = np.asarray(PILImage.open(data / "images" / f"{image_id}.jpg").convert("RGB"))
        ucm2 = segsoft.segment(rgb, k=12, seed=0).hierarchy.ucm()
    counts = boundary_pr(ucm2, gts, thresholds)
    return method, image_id, counts, time.process_time() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="folder holding bsds-val, bsds-train")
    parser.add_argument("--splits", nargs="+", default=["val"], choices=["val", "train", "dev"])
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    parser.add_argument("--jobs", type=int, default=1, help="processes (the machine's cores are shared: 2 at most)")
    parser.add_argument("--limit", type=int, default=None, help="only the first N images of each split")
    parser.add_argument(
        "--thresholds", default=None, help="START:STOP:STEP or a,b,c (default: the benchmark's 99, 0.01..0.99)"
    )
    args = parser.parse_args()
    if args.jobs < 1:
        parser.error("--jobs must be >= 1")
    from segsoft.contours import ods_ois
    from segsoft.evaluate import parse_thresholds

    thresholds = parse_thresholds(args.thresholds) if args.thresholds else None
    tasks = []
    for split in args.splits:
        data = args.data / f"bsds-{split}"
        ids = sorted(p.stem for p in (data / "gt").glob("*.npz"))[: args.limit]
        if not ids:
            parser.error(f"{data / 'gt'}: no ground truth")
        for key in args.methods:
            method = METHODS[key]
            if method == GPB and not (data / "gpb-ucm2").is_dir():
                continue  # gPb's maps ship for val only
            tasks += [(split, (method, data, i, thresholds)) for i in ids]
    wall = time.perf_counter()
    with Pool(args.jobs) as pool:
        results = pool.map(score_image, [t for _, t in tasks], chunksize=1)
    wall = time.perf_counter() - wall
    rows: dict[tuple[str, str], list] = {}
    for (split, _), (method, _, counts, seconds) in zip(tasks, results):
        rows.setdefault((split, method), []).append((counts, seconds))

    head = (
        f"{'split':<6}{'method':<22}{'images':>7}  {'ODS t':>6}{'P':>7}{'R':>7}{'F':>7}"
        f"  {'OIS P':>6}{'R':>7}{'F':>7}  {'AP':>6}  {'seconds':>8}"
    )
    print(head)
    print("-" * len(head))
    for (split, method), items in rows.items():
        s = ods_ois([c for c, _ in items])
        o, i = s.ods, s.ois
        print(
            f"{split:<6}{method:<22}{s.n_images:>7}  {o['threshold']:>6.3f}{o['precision']:>7.3f}{o['recall']:>7.3f}"
            f"{o['f']:>7.3f}  {i['precision']:>6.3f}{i['recall']:>7.3f}{i['f']:>7.3f}  {s.ap:>6.3f}"
            f"  {sum(sec for _, sec in items):>8.1f}"
        )
    print(f"\n{len(tasks)} image scorings in {wall:.1f} s wall with {args.jobs} process(es); seconds are CPU per row")
    print("gPb-owt-ucm published on the BSDS500 test split: ODS 0.73, OIS 0.76, AP 0.73")


if __name__ == "__main__":
    main()
