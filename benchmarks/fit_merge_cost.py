"""Refit the learned merge cost of :mod:`segsoft.regions` on BSDS500 train (issue 15): prints its constants.

"Learning to agglomerate": every neighbouring pair of regions met while the
superpixels of the 200 train images are merged is described by the cost's
features (:func:`segsoft.regions._pair_features`) and labelled by the chance
that a pixel of one side and a pixel of the other fall in the same human
segment (averaged over the image's humans). A logistic regression of
"different" on the features (soft labels, scikit-learn, default L2 C=1 on
standardised features) gives the weights. Two rounds: the pairs met under the
earlier "contrast" cost, then those met under a first fit of the learned
cost; the final weights are fitted on both. The weights are fitted on every
other train image (the 100 of even index in name order); each gives at most
``--pairs`` pairs a round, drawn at random with a seed from its id. Then the
hierarchies of the final weights on the other 100 train images are cut at
every threshold of :data:`THRESHOLDS` (the model's probability of
"different") and the cut with their best mean PRI is moved to
:data:`segsoft.regions.MERGE_THRESHOLD` (``LEARNED_SHIFT``). Nothing here
reads bsds-val.

    python benchmarks/fit_merge_cost.py --jobs 2                       # ../shared/data/bsds-train
    python benchmarks/fit_merge_cost.py --cache /tmp/memberships       # keep the k=12 memberships between runs

Paste the printed lines over those in ``segsoft/regions.py``.
"""

from __future__ import annotations

import argparse
import math
import time
import zlib
from multiprocessing import Pool
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = ROOT.parent / "shared" / "data" / "bsds-train"
THRESHOLDS = tuple(np.round(np.arange(0.45, 0.6501, 0.025), 3).tolist())


def memberships(data: Path, image_id: str, cache: Path | None) -> tuple[np.ndarray, np.ndarray]:
    """(region colours, k=12 memberships) of one image: ``segsoft.segment(rgb, k=12, seed=0)``, cached if asked."""
    path = cache / f"{image_id}.npz" if cache else None
    if path is not None and path.exists():
        z = np.load(path)
        return z["rgb"], z["p"]
    from PIL import Image as PILImage

    import segsoft
    from segsoft.segment import _region_colors

    rgb = np.asarray(PILImage.open(data / "images" / f"{image_id}.jpg").convert("RGB"))
    seg = segsoft.segment(rgb, k=12, seed=0)
    colours, p = _region_colors(seg.image).astype(np.float32), seg.probabilities.astype(np.float32)
    if path is not None:
        np.savez(path, rgb=colours, p=p)
    return colours, p


def _set_model(weights: np.ndarray | None) -> str:
    """Put (bias, 7 weights) into segsoft.regions (shift 0) in this process; the cost to use."""
    from segsoft import regions

    if weights is None:
        return "contrast"
    regions.LEARNED_BIAS, regions.LEARNED_WEIGHTS, regions.LEARNED_SHIFT = float(weights[0]), tuple(weights[1:]), 0.0
    return "learned"


def collect(args: tuple) -> np.ndarray:
    """The pairs one image's agglomeration meets: rows of 7 features and the label (chance of the same segment)."""
    data, image_id, cache, weights, cap = args
    from segsoft.evaluate import load_ground_truth
    from segsoft.regions import region_hierarchy

    cost = _set_model(weights)
    rgb, p = memberships(data, image_id, cache)
    gts = load_ground_truth(data / "gt" / f"{image_id}.npz")
    state: dict = {}
    rows: list[tuple] = []

    def observe(event: str, a, b=None, x=None) -> None:
        if event == "superpixels":  # each superpixel's histogram of each human's segments
            sp = a.ravel()
            n = int(sp.max()) + 1
            assert a.shape == gts[0].shape, "BSDS images are merged at full resolution"
            state["hist"] = [
                np.bincount(sp * (int(g.max()) + 1) + g.ravel(), minlength=n * (int(g.max()) + 1))
                .reshape(n, -1)
                .astype(np.float64)
                for g in gts
            ]
            state["size"] = np.bincount(sp, minlength=n).astype(np.float64)
        elif event == "merge":
            for h in state["hist"]:
                h[a] += h[b]
            state["size"][a] += state["size"][b]
        else:
            size = state["size"][a] * state["size"][b]
            same = np.mean([float(h[a] @ h[b]) / size for h in state["hist"]])
            rows.append((*x, same))

    region_hierarchy(rgb, p, cost=cost, _observe=observe)
    out = np.array(rows)
    if len(out) > cap:
        out = out[np.random.default_rng(zlib.crc32(image_id.encode())).choice(len(out), cap, replace=False)]
    return out


def fit(rows: np.ndarray) -> np.ndarray:
    """(bias, 7 weights) of the logistic regression of "different" on the features, soft labels as weights."""
    from sklearn.linear_model import LogisticRegression

    x, same = rows[:, :7], rows[:, 7]
    mu, sd = x.mean(axis=0), x.std(axis=0) + 1e-12
    z = (x - mu) / sd
    model = LogisticRegression(C=1.0, max_iter=2000).fit(
        np.concatenate([z, z]), np.r_[np.ones(len(z)), np.zeros(len(z))], sample_weight=np.r_[1 - same, same]
    )
    coef = model.coef_[0] / sd
    return np.r_[model.intercept_[0] - float(coef @ mu), coef]


def score(args: tuple) -> np.ndarray:
    """(thresholds, 5): PRI, VoI, covered pixels, scored pixels, regions of one image at each cut."""
    data, image_id, cache, weights, thresholds = args
    from segsoft.evaluate import _per_human, load_ground_truth
    from segsoft.regions import region_hierarchy

    cost = _set_model(weights)
    rgb, p = memberships(data, image_id, cache)
    gts = load_ground_truth(data / "gt" / f"{image_id}.npz")
    hierarchy = region_hierarchy(rgb, p, cost=cost)
    out = []
    for t in thresholds:
        labels = hierarchy.labels(t)
        per = _per_human(labels, gts)
        out.append([*per[:, :2].mean(axis=0), per[:, 2].sum() * labels.size, labels.size * len(gts), labels.max() + 1])
    return np.array(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="bsds-train folder (images/, gt/)")
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--pairs", type=int, default=2000, help="most pairs an image gives each round")
    parser.add_argument("--images", type=int, default=0, help="only every n-th image of each half (a quick check)")
    parser.add_argument("--cache", type=Path, help="folder for the k=12 memberships (made if missing)")
    args = parser.parse_args()
    if "val" in args.data.name:
        raise SystemExit("fit on bsds-train only: val is for the final report")
    ids = sorted(p.stem for p in (args.data / "images").glob("*.jpg"))
    fit_ids, cut_ids = ids[0::2], ids[1::2]  # weights fitted on one half, the cut chosen on the other
    if args.images:
        fit_ids, cut_ids = fit_ids[:: args.images], cut_ids[:: args.images]
    if args.cache:
        args.cache.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    with Pool(args.jobs) as pool:
        rounds, weights = [], None
        for r in range(2):
            work = [(args.data, i, args.cache, weights, args.pairs) for i in fit_ids]
            rounds.append(np.concatenate(pool.map(collect, work, chunksize=2)))
            weights = fit(np.concatenate(rounds))
            print(
                f"# round {r}: {len(rounds[-1])} pairs from {len(fit_ids)} images; weights {np.round(weights, 4).tolist()}"
            )
        work = [(args.data, i, args.cache, weights, THRESHOLDS) for i in cut_ids]
        table = np.stack(pool.map(score, work, chunksize=2))  # images, thresholds, 5
    pri, voi = table[..., 0].mean(axis=0), table[..., 1].mean(axis=0)
    covering, regions = table[..., 2].sum(axis=0) / table[..., 3].sum(axis=0), table[..., 4].mean(axis=0)
    for j, t in enumerate(THRESHOLDS):
        print(f"# P(different) {t:.3f}: PRI {pri[j]:.4f}  VoI {voi[j]:.4f}  Covering {covering[j]:.4f}  "
              f"regions {regions[j]:.1f}")  # fmt: skip
    best = THRESHOLDS[int(np.argmax(pri))]
    from segsoft.regions import MERGE_THRESHOLD

    def logit(q: float) -> float:
        return math.log(q / (1 - q))

    print(
        f"# best PRI on the {len(cut_ids)} other train images at P(different) = {best}; {time.perf_counter() - start:.0f} s"
    )
    print(f"LEARNED_WEIGHTS = ({', '.join(f'{w:.4f}' for w in weights[1:])})")
    print(f"LEARNED_BIAS = {weights[0]:.4f}")
    print(f"LEARNED_SHIFT = {logit(MERGE_THRESHOLD) - logit(best):.4f}")


if __name__ == "__main__":
    main()
