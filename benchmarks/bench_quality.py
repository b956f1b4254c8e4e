"""Segmentation quality against human outlines (BSDS500 train and val), side by side.

Scores every method with ONE fixed setting for all images (nothing is tuned
per image) on the team's shared copies of BSDS500: ``bsds-train`` (200
images, where settings are chosen) and ``bsds-val`` (100 images no setting
was chosen on), 4-9 human segmentations each. Probabilistic Rand Index
(higher is better) and Variation of Information in bits (lower is better)
are averaged over images, each averaged over its humans; Segmentation
Covering (higher is better) is pooled as the benchmark pools it: covered
pixels summed over images and humans over the total (see
:mod:`segsoft.evaluate`).

    python benchmarks/bench_quality.py                   # ../shared/data/bsds-{train,val} next to the repo
    python benchmarks/bench_quality.py --splits val --jobs 2
    python benchmarks/bench_quality.py --sweep           # also the k=12 regions at other thresholds, and ODS/OIS
    python benchmarks/bench_quality.py --methods "segsoft k=12 (merged regions)"
    python benchmarks/bench_quality.py --splits dev --scale 2.5   # the images enlarged 2.5x first

Methods: segsoft's merged regions (``seg.regions()``, what
``segsoft run IMAGE -k 12 --regions`` writes: the learned merge cost, cut at
0.15), the same memberships merged with the earlier "contrast" cost (the
default before issue 15, cut at 0.15), the same memberships' plain
cluster labels (as labelled, and as connected patches with specks under 1 %
merged); for reference scikit-image's Felzenszwalb-Huttenlocher graph
segmentation, the trivial one-region segmentation, and gPb-owt-ucm (Arbelaez
et al. 2011) cut from the ucm2 maps that ship with BSDS500 (val only, in
``bsds-val/gpb-ucm2``): cut as the benchmark cuts them (8-connected
components of ``ucm2 <= t``), at its best threshold for each measure
separately (ODS) over :data:`GPB_THRESHOLDS`, which favours it over any row
with one threshold for all three measures.
"""

from __future__ import annotations

import argparse
import time
from multiprocessing import Pool
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = ROOT.parent / "shared" / "data"
SWEEP = (0.05, 0.075, 0.1, 0.125, 0.15, 0.175, 0.2, 0.25, 0.3, 0.4)
#: gPb-owt-ucm's cuts: those of bsds-val/gpb-ucm2/README.md (0.04, 0.08, then 0.10 to 0.50 by 0.01)
GPB_THRESHOLDS = (0.04, 0.08, *np.round(np.arange(0.10, 0.505, 0.01), 2).tolist())
REGIONS = "segsoft k=12 (merged regions)"
GPB = "gPb-owt-ucm (ucm2; ODS per measure)"
TEXTURE = "segsoft k=12 (merged regions; contrast cost, texture=1 t=0.175)"  # the earlier cost's texture cue
#: the earlier default, from the same memberships as REGIONS (its row comes with REGIONS)
CONTRAST = "segsoft k=12 (merged regions; earlier contrast cost, t=0.15)"

# name -> (segment() keyword arguments or a reference method, how to turn the result into a label map)
METHODS: dict[str, tuple[dict | str, str]] = {
    REGIONS: ({"k": 12}, "merged"),
    "segsoft k=12 (labels)": ({"k": 12}, "labels"),
    "segsoft k=12 (connected labels)": ({"k": 12}, "connected"),
    "segsoft k=4 (labels)": ({"k": 4}, "labels"),
    "skimage felzenszwalb scale=500": ("felzenszwalb", ""),
    "one region": ("one", ""),
    GPB: ("gpb", ""),
    # not run by default (--methods): the earlier bsds-dev rows
    "segsoft k=4 smooth=1 (labels)": ({"k": 4, "smoothing": 1.0}, "labels"),
    "segsoft k=4 (merged regions)": ({"k": 4}, "merged"),
    TEXTURE: ({"k": 12}, "texture"),
    "segsoft k=auto ICL 2..12 (merged regions)": ({"k": "auto", "k_range": (2, 12)}, "merged"),
    "skimage slic + rag cut_threshold=29": ("slic-rag", ""),
}
DEFAULT_METHODS = (REGIONS, "segsoft k=12 (labels)", "skimage felzenszwalb scale=500", "one region", GPB)


def score_image(args: tuple[str, Path, str, bool, float]) -> tuple[str, dict[str, np.ndarray], float]:
    """One method on one image: {row name: [pri, voi, covering, covered pixels, scored pixels, regions]}, seconds.

    With ``scale`` != 1 the image is resized first (bilinear) and each label
    map is sampled back to the ground truth's grid (nearest).
    """
    method, data, image_id, sweep, scale = args
    from PIL import Image as PILImage

    import segsoft
    from segsoft.evaluate import _per_human, cut_ucm, load_ground_truth
    from segsoft.regions import MERGE_THRESHOLD, connected_regions

    gts = load_ground_truth(data / "gt" / f"{image_id}.npz")
    setting, mode = METHODS[method]
    maps: dict[str, np.ndarray] = {}
    start = time.perf_counter()
    if setting == "gpb":
        ucm2 = np.load(data / "gpb-ucm2" / f"{image_id}.npz")["ucm2"]
        maps = {f"{GPB} t={t:g}": cut_ucm(ucm2, t) for t in GPB_THRESHOLDS}
    else:
        rgb = np.asarray(PILImage.open(data / "images" / f"{image_id}.jpg").convert("RGB"))
        height, width = rgb.shape[:2]
        if scale != 1:
            rgb = np.asarray(
                PILImage.fromarray(rgb).resize(
                    (round(width * scale), round(height * scale)), PILImage.Resampling.BILINEAR
                )
            )
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
            elif mode == "texture":
                from segsoft.regions import region_hierarchy
                from segsoft.segment import _region_colors

                hierarchy = region_hierarchy(
                    _region_colors(seg.image), seg.probabilities, mask=seg.mask, cost="contrast", texture=1.0
                )
                maps[method] = hierarchy.labels(0.175)
            else:
                maps[method] = seg.regions(MERGE_THRESHOLD)
                seconds = time.perf_counter() - start  # the row's own time: segmentation and regions
                for t in SWEEP if sweep else ():  # the same hierarchy, cut again: one segmentation per image
                    maps[f"{REGIONS} t={t:g}"] = seg.hierarchy.labels(t)
                from segsoft.regions import region_hierarchy
                from segsoft.segment import _region_colors

                earlier = region_hierarchy(_region_colors(seg.image), seg.probabilities, mask=seg.mask, cost="contrast")
                maps[CONTRAST] = earlier.labels(MERGE_THRESHOLD)
        if scale != 1:  # each map sampled back onto the ground truth's grid (nearest)
            rows = np.minimum((np.arange(height) * scale).astype(int), rgb.shape[0] - 1)
            cols = np.minimum((np.arange(width) * scale).astype(int), rgb.shape[1] - 1)
            maps = {name: np.asarray(m)[rows][:, cols] for name, m in maps.items()}
    if setting == "gpb" or mode != "merged":
        seconds = time.perf_counter() - start
    scores = {}
    for name, labels in maps.items():
        per_human = _per_human(labels, gts)
        n = labels.size  # every BSDS human labels every pixel
        scores[name] = np.array(
            [
                *per_human[:, :2].mean(axis=0),
                per_human[:, 2].mean(),
                per_human[:, 2].sum() * n,
                n * len(gts),
                len(np.unique(labels)),
            ]
        )
    return method, scores, seconds


def totals(rows: list[np.ndarray]) -> dict[str, float]:
    """Mean PRI and VoI over images, pooled Covering, mean regions."""
    table = np.array(rows)
    return {
        "pri": float(table[:, 0].mean()),
        "voi": float(table[:, 1].mean()),
        "covering": float(table[:, 3].sum() / table[:, 4].sum()),
        "regions": float(table[:, 5].mean()),
        "per_image": table,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="folder with bsds-train/ and bsds-val/")
    parser.add_argument("--splits", default="train,val", help="comma-separated: train, val (or dev)")
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument(
        "--methods", default=",".join(DEFAULT_METHODS), help="comma-separated method names (default: the main rows)"
    )
    parser.add_argument("--scale", type=float, default=1.0, help="resize the images by this factor first")
    parser.add_argument("--sweep", action="store_true", help="also the k=12 regions at other thresholds, ODS, OIS")
    args = parser.parse_args()
    splits = [s.strip() for s in args.splits.split(",") if s.strip()]
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise SystemExit(f"unknown method {unknown[0]!r}; the methods are:\n  " + "\n  ".join(METHODS))
    ids = {}
    for split in splits:
        folder = args.data / f"bsds-{split}"
        ids[split] = sorted(p.stem for p in (folder / "images").glob("*.jpg"))
        if not ids[split]:
            raise SystemExit(f"no images in {folder / 'images'}")
    scaled = f", enlarged {args.scale:g}x" if args.scale != 1 else ""
    print("# " + ", ".join(f"{s}: {len(i)} images" for s, i in ids.items()) + f"{scaled}; one fixed setting per row")
    results: dict[str, dict[str, dict]] = {}  # row -> split -> totals
    seconds: dict[str, float] = {}
    with Pool(args.jobs) as pool:
        for method in methods:
            for split in splits:
                data = args.data / f"bsds-{split}"
                if METHODS[method][0] == "gpb" and not (data / "gpb-ucm2").is_dir():
                    continue
                work = [(method, data, i, args.sweep and method == REGIONS, args.scale) for i in ids[split]]
                out = pool.map(score_image, work, chunksize=2)
                if METHODS[method][0] != "gpb":
                    seconds[method] = float(np.mean([o[2] for o in out]))
                for name in out[0][1]:
                    results.setdefault(name, {})[split] = totals([o[1][name] for o in out])
    # gPb: its best threshold for each measure on its own (ODS), from the cuts above
    for split in splits:
        cuts = {n: r[split] for n, r in results.items() if n.startswith(GPB) and split in r}
        if cuts:
            best = {
                "pri": max(cuts.values(), key=lambda r: r["pri"])["pri"],
                "voi": min(cuts.values(), key=lambda r: r["voi"])["voi"],
                "covering": max(cuts.values(), key=lambda r: r["covering"])["covering"],
                "regions": float("nan"),
            }
            picks = {
                m: min(cuts, key=lambda n: -cuts[n][m] if m != "voi" else cuts[n][m]).split("t=")[1]
                for m in ("pri", "voi", "covering")
            }
            print(
                f"# gPb-owt-ucm {split} ODS thresholds: PRI t={picks['pri']}, VoI t={picks['voi']}, "
                f"Covering t={picks['covering']}"
            )
            results.setdefault(GPB, {})[split] = best
    if args.sweep:  # segsoft's ODS and OIS over the sweep, from the same hierarchies
        for split in splits:
            cuts = [r[split] for n, r in results.items() if n.startswith(REGIONS + " t=") and split in r]
            if cuts:
                stack = np.stack([c["per_image"] for c in cuts], axis=1)  # images, thresholds, 6
                results.setdefault(f"{REGIONS} ODS per measure", {})[split] = {
                    "pri": max(c["pri"] for c in cuts),
                    "voi": min(c["voi"] for c in cuts),
                    "covering": max(c["covering"] for c in cuts),
                    "regions": float("nan"),
                }
                best = np.argmax(stack[..., 2], axis=1)
                rows = np.arange(len(stack))
                results.setdefault(f"{REGIONS} OIS (oracle cut per image)", {})[split] = {
                    "pri": float(stack[..., 0].max(axis=1).mean()),
                    "voi": float(stack[..., 1].min(axis=1).mean()),
                    "covering": float(stack[rows, best, 3].sum() / stack[rows, best, 4].sum()),
                    "regions": float(stack[rows, best, 5].mean()),
                }
    # val first: the images no setting was chosen on
    order = sorted(splits, key=lambda s: s != "val")
    head = "| method | " + " | ".join(f"{s} PRI | {s} VoI | {s} Covering | {s} regions" for s in order)
    print(head + " | s/image |")
    print("| --- |" + " ---: |" * (4 * len(order) + 1))
    for name, by_split in results.items():
        if name.startswith(GPB + " t="):
            continue
        cells = []
        for s in order:
            r = by_split.get(s)
            cells += (
                ["", "", "", ""]
                if r is None
                else [
                    f"{r['pri']:.3f}",
                    f"{r['voi']:.3f}",
                    f"{r['covering']:.3f}",
                    "" if np.isnan(r["regions"]) else f"{r['regions']:.1f}",
                ]
            )
        secs = f"{seconds[name]:.2f}" if name in seconds else ""
        print(f"| {name} | " + " | ".join(cells) + f" | {secs} |", flush=True)


if __name__ == "__main__":
    main()
