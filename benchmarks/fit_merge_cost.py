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

Variants of the fit (the defaults are the procedure above):

``--weight``
    what a pair counts in the fit: ``none`` (every pair alike), ``pixels``
    (the pixel pairs it decides, size_a * size_b, the unit of PRI),
    ``sqrt`` (its square root) or ``smaller`` (the smaller side's pixels,
    the unit of Covering); weights other than ``none`` are normalised per
    image and round (each sums to 1), so every image counts about equally.
``--late``
    pairs whose smaller side has at least this many pixels are all kept,
    and only the others are drawn to fill ``--pairs``; the drawn ones
    count (number there) / (number drawn) times, so the sample stands for
    all the pairs met (0: every pair is drawn alike).
``--rounds``
    rounds of pairs: each after the first is met under the fit of all the
    earlier ones (2 by default).
``--cut``
    ``pri``: the cut of best mean PRI; ``voi``: the cut of best mean PRI
    among those whose mean VoI is no worse than that of the current
    constants at their own cut (MERGE_THRESHOLD).
``--fine``
    cut at :data:`FINE_THRESHOLDS` (a logit grid from 0.05 to 0.95) rather
    than :data:`THRESHOLDS`, leaving out those at which an image has more
    than :data:`FINE_MOST` regions.
``--baseline``
    also score the current constants of segsoft.regions on the same images
    and grid; with it (or ``--cut voi``) each fit is also given at equal
    region counts (:data:`EQUAL_REGIONS` a picture, interpolated along the
    sweep), so that a gain from keeping more regions shows.
``--swap``
    fit on the odd-index half and cut on the even one (a cross-check).
``--seeds``
    the memberships the merge sees averaged over this many k=12 fits
    (seeds 0, 1, ...; the extra ones cached as ``<id>.seed<s>.npz``), so
    the membership distance is the mean of the fits' (1: one fit, as
    ``segsoft`` has it today).
``--cross``
    cross-fitting: the weights are fitted on each half in turn and the
    other half is scored under them, so the cut is chosen on all 200
    images, each scored by a fit that never saw it; the final weights are
    then fitted on all 200 (twice the pairs). With ``--baseline`` the
    current constants are scored on all 200 too, half of them the images
    they were fitted on (so the comparison favours them).
``--table``
    an .npz to write the per-image score tables into (``ids``, ``grid``,
    ``fit`` and, with ``--baseline``, ``base_grid``, ``base``: images x
    cuts x (PRI, VoI, covered pixels, scored pixels, regions)), for
    paired comparisons of runs.
``--memo``
    a folder keeping what the workers compute (the pairs met, the score
    tables), keyed by image, model and grid, so that runs of several
    variants share the first round (the "contrast" cost) and the scores of
    the current constants.

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
FINE_THRESHOLDS = tuple(np.round(1 / (1 + np.exp(-np.arange(-3.0, 3.0001, 0.05))), 4).tolist())
FINE_MOST = 100  # regions of one image above which a cut of FINE_THRESHOLDS is not scored (for speed)
EQUAL_REGIONS = (8.7, 10.0)  # regions a picture at which fits are compared
WEIGHTS = ("none", "pixels", "sqrt", "smaller")


def memberships(data: Path, image_id: str, cache: Path | None, seeds: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """(region colours, k=12 memberships) of one image: ``segsoft.segment(rgb, k=12, seed=0)``, cached if asked.

    With ``seeds`` > 1 the memberships of the fits with seeds 0 .. seeds - 1 side by side, each divided by
    ``seeds`` (k=12 x seeds columns): the Bhattacharyya coefficient of two regions is then the mean of the fits'.
    """
    colours, p = _fit(data, image_id, cache, 0)
    if seeds > 1:
        extra = [_fit(data, image_id, cache, s)[1] for s in range(1, seeds)]
        p = np.concatenate([p, *extra], axis=2) / np.float32(seeds)
    return colours, p


def _fit(data: Path, image_id: str, cache: Path | None, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(region colours, memberships) of ``segsoft.segment(rgb, k=12, seed=seed)``, cached as ``<id>.npz`` for
    seed 0 and ``<id>.seed<seed>.npz`` for the others."""
    path = cache / (f"{image_id}.npz" if seed == 0 else f"{image_id}.seed{seed}.npz") if cache else None
    if path is not None and path.exists():
        z = np.load(path)
        return z["rgb"], z["p"]
    from PIL import Image as PILImage

    import segsoft
    from segsoft.segment import _region_colors

    rgb = np.asarray(PILImage.open(data / "images" / f"{image_id}.jpg").convert("RGB"))
    seg = segsoft.segment(rgb, k=12, seed=seed)
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


def kept(args: tuple) -> np.ndarray:
    """``collect`` or ``score`` (named by ``args[0]``) of ``args[2:]``, the answer kept in the folder ``args[1]``
    (None: not kept) under the image, the model and the rest of the inputs."""
    name, folder, inner = args[0], args[1], args[2:]
    function = {"collect": collect, "score": score}[name]
    if folder is None:
        return function(inner)
    image_id, weights = inner[1], inner[3]
    model = "contrast" if weights is None else np.asarray(weights, dtype=np.float64).tobytes().hex()
    path = folder / f"{image_id}.{name}.{zlib.crc32(repr((model, *inner[4:])).encode()):08x}.npy"
    if path.exists():
        return np.load(path)
    out = function(inner)
    np.save(path, out)
    return out


def collect(args: tuple) -> np.ndarray:
    """The pairs one image's agglomeration meets: rows of 7 features, the label (chance of the same segment) and
    the two sides' pixels (smaller, larger)."""
    data, image_id, cache, weights, seeds = args
    from segsoft.evaluate import load_ground_truth
    from segsoft.regions import region_hierarchy

    cost = _set_model(weights)
    rgb, p = memberships(data, image_id, cache, seeds)
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
            na, nb = state["size"][a], state["size"][b]
            rows.append((*x, same, min(na, nb), max(na, nb)))

    region_hierarchy(rgb, p, cost=cost, _observe=observe)
    return np.array(rows)


def sample(rows: np.ndarray, image_id: str, cap: int, weight: str, late: float) -> np.ndarray:
    """At most ``cap`` of one image's pairs (see ``--late``) and their weights (see ``--weight``): rows of
    7 features, label, weight."""
    rng = np.random.default_rng(zlib.crc32(image_id.encode()))
    w = np.ones(len(rows))
    if late <= 0:
        if len(rows) > cap:
            keep = rng.choice(len(rows), cap, replace=False)
            rows, w = rows[keep], w[keep]
    else:
        big = np.flatnonzero(rows[:, 8] >= late)
        small = np.flatnonzero(rows[:, 8] < late)
        room = max(cap - len(big), 0)
        if len(small) > room:
            w[small] = len(small) / max(room, 1)
            small = rng.choice(small, room, replace=False)
        keep = np.sort(np.r_[big, small])
        rows, w = rows[keep], w[keep]
    if weight != "none":
        na, nb = rows[:, 8], rows[:, 9]
        w = w * {"pixels": na * nb, "sqrt": np.sqrt(na * nb), "smaller": na}[weight]
        w = w / w.sum()
    return np.c_[rows[:, :8], w]


def fit(rows: np.ndarray) -> np.ndarray:
    """(bias, 7 weights) of the logistic regression of "different" on the features, soft labels times the pairs'
    weights (a 9th column, rescaled to a mean of 1; none: all 1) as sample weights."""
    from sklearn.linear_model import LogisticRegression

    x, same = rows[:, :7], rows[:, 7]
    w = rows[:, 8] if rows.shape[1] > 8 else np.ones(len(rows))
    if not np.all(w == 1):
        w = w / w.mean()
    mu, sd = x.mean(axis=0), x.std(axis=0) + 1e-12
    z = (x - mu) / sd
    model = LogisticRegression(C=1.0, max_iter=2000).fit(
        np.concatenate([z, z]),
        np.r_[np.ones(len(z)), np.zeros(len(z))],
        sample_weight=np.r_[w * (1 - same), w * same],
    )
    coef = model.coef_[0] / sd
    return np.r_[model.intercept_[0] - float(coef @ mu), coef]


def score(args: tuple) -> np.ndarray:
    """(thresholds, 5): PRI, VoI, covered pixels, scored pixels, regions of one image at each cut (nan where it
    has more than ``most`` regions)."""
    data, image_id, cache, weights, thresholds, most, seeds = args
    from segsoft.evaluate import _per_human, load_ground_truth
    from segsoft.regions import region_hierarchy

    cost = _set_model(weights)
    rgb, p = memberships(data, image_id, cache, seeds)
    gts = load_ground_truth(data / "gt" / f"{image_id}.npz")
    hierarchy = region_hierarchy(rgb, p, cost=cost)
    out = []
    for t in thresholds:
        if hierarchy.n_regions(t) > most:
            out.append([np.nan] * 5)
            continue
        labels = hierarchy.labels(t)
        per = _per_human(labels, gts)
        out.append([*per[:, :2].mean(axis=0), per[:, 2].sum() * labels.size, labels.size * len(gts), labels.max() + 1])
    return np.array(out)


def summary(table: np.ndarray) -> np.ndarray:
    """(4, thresholds): mean PRI, mean VoI, Covering (pixel-weighted) and mean regions of a score table."""
    return np.stack(
        [table[..., 0].mean(axis=0), table[..., 1].mean(axis=0),
         table[..., 2].sum(axis=0) / table[..., 3].sum(axis=0), table[..., 4].mean(axis=0)]
    )  # fmt: skip


def at_regions(curve: np.ndarray, n: float) -> np.ndarray:
    """PRI, VoI, Covering of a :func:`summary` interpolated at ``n`` regions a picture (nan outside the sweep)."""
    order = np.argsort(curve[3])
    r = curve[3][order]
    if not r[0] <= n <= r[-1]:
        return np.full(3, np.nan)
    return np.array([np.interp(n, r, curve[k][order]) for k in range(3)])


def line(name: str, v: np.ndarray, regions: float | None = None) -> str:
    """One printed result line."""
    tail = f"  regions {regions:.1f}" if regions is not None else ""
    return f"# {name}: PRI {v[0]:.4f}  VoI {v[1]:.4f}  Covering {v[2]:.4f}{tail}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="bsds-train folder (images/, gt/)")
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--pairs", type=int, default=2000, help="most pairs an image gives each round")
    parser.add_argument("--images", type=int, default=0, help="only every n-th image of each half (a quick check)")
    parser.add_argument("--cache", type=Path, help="folder for the k=12 memberships (made if missing)")
    parser.add_argument("--weight", choices=WEIGHTS, default="none", help="what a pair counts in the fit")
    parser.add_argument("--late", type=float, default=0, help="pixels of the smaller side from which all are kept")
    parser.add_argument("--rounds", type=int, default=2, help="rounds of pairs")
    parser.add_argument("--cut", choices=("pri", "voi"), default="pri", help="how the cut is chosen")
    parser.add_argument("--fine", action="store_true", help="cut at FINE_THRESHOLDS")
    parser.add_argument("--baseline", action="store_true", help="also score the current constants")
    parser.add_argument("--table", type=Path, help=".npz for the per-image score tables")
    parser.add_argument("--memo", type=Path, help="folder keeping the workers' answers between runs")
    parser.add_argument("--swap", action="store_true", help="fit on the odd half, cut on the even one")
    parser.add_argument("--seeds", type=int, default=1, help="memberships averaged over this many EM seeds")
    parser.add_argument(
        "--cross", action="store_true", help="cut on both halves, each under the other's fit; final fit on both"
    )
    args = parser.parse_args()
    if "val" in args.data.name:
        raise SystemExit("fit on bsds-train only: val is for the final report")
    ids = sorted(p.stem for p in (args.data / "images").glob("*.jpg"))
    fit_ids, cut_ids = ids[0::2], ids[1::2]  # weights fitted on one half, the cut chosen on the other
    if args.swap:
        fit_ids, cut_ids = cut_ids, fit_ids
    if args.images:
        fit_ids, cut_ids = fit_ids[:: args.images], cut_ids[:: args.images]
    if args.cache:
        args.cache.mkdir(parents=True, exist_ok=True)
    if args.memo:
        args.memo.mkdir(parents=True, exist_ok=True)
    thresholds, most = (FINE_THRESHOLDS, FINE_MOST) if args.fine else (THRESHOLDS, math.inf)
    from segsoft import regions as current
    from segsoft.regions import MERGE_THRESHOLD

    def logit(q: float) -> float:
        return math.log(q / (1 - q))

    compare = args.baseline or args.cut == "voi"
    start = time.perf_counter()
    with Pool(args.jobs) as pool:

        def fit_on(fit_ids: list[str]) -> np.ndarray:
            rounds, weights = [], None
            for r in range(args.rounds):
                work = [("collect", args.memo, args.data, i, args.cache, weights, args.seeds) for i in fit_ids]
                met = pool.map(kept, work, chunksize=2)
                rounds.append(np.concatenate(
                    [sample(m, i, args.pairs, args.weight, args.late) for m, i in zip(met, fit_ids)]
                ))  # fmt: skip
                weights = fit(np.concatenate(rounds))
                print(f"# round {r}: {len(rounds[-1])} pairs from {len(fit_ids)} images; "
                      f"weights {np.round(weights, 4).tolist()}")  # fmt: skip
            return weights

        def scores(cut_ids: list[str], weights: np.ndarray) -> np.ndarray:
            work = [
                ("score", args.memo, args.data, i, args.cache, weights, thresholds, most, args.seeds) for i in cut_ids
            ]
            return np.stack(pool.map(kept, work, chunksize=2))  # images, thresholds, 5

        if args.cross:  # each half scored under the fit of the other; the final weights fitted on both
            parts = [(fit_ids, cut_ids), (cut_ids, fit_ids)]
            scored_parts = [scores(c, fit_on(f)) for f, c in parts]
            cut_ids = cut_ids + fit_ids
            fit_ids = sorted(cut_ids)
            print(f"# the final fit, on all {len(fit_ids)} images")
            weights = fit_on(fit_ids)
            tables = {"ids": np.array(cut_ids), "grid": np.array(thresholds), "fit": np.concatenate(scored_parts)}
        else:
            weights = fit_on(fit_ids)
            tables = {"ids": np.array(cut_ids), "grid": np.array(thresholds), "fit": scores(cut_ids, weights)}
        curve = summary(tables["fit"])  # 4, thresholds
        scored = ~np.isnan(curve).any(axis=0)
        thresholds, curve = tuple(np.asarray(thresholds)[scored].tolist()), curve[:, scored]
        if compare:  # the current constants, their own cut added to the grid
            own = 1 / (1 + math.exp(-(logit(MERGE_THRESHOLD) - current.LEARNED_SHIFT)))
            grid = tuple(sorted({*(FINE_THRESHOLDS if args.fine else THRESHOLDS), own}))
            now = np.r_[current.LEARNED_BIAS, current.LEARNED_WEIGHTS]
            work = [("score", args.memo, args.data, i, args.cache, now, grid, most, args.seeds) for i in cut_ids]
            tables["base_grid"], tables["base"] = np.array(grid), np.stack(pool.map(kept, work, chunksize=2))
            base = summary(tables["base"])
            base_cut = base[:, grid.index(own)]
            base = base[:, ~np.isnan(base).any(axis=0)]
    if args.table:
        np.savez(args.table, **tables)
    for j, t in enumerate(thresholds):
        print(f"# P(different) {t:.4f}: PRI {curve[0, j]:.4f}  VoI {curve[1, j]:.4f}  Covering {curve[2, j]:.4f}  "
              f"regions {curve[3, j]:.1f}")  # fmt: skip
    every = np.ones(len(thresholds), bool)
    allowed = curve[1] <= base_cut[1] + 1e-12 if args.cut == "voi" else every
    if not allowed.any():
        raise SystemExit("no cut has a VoI as good as the current constants'")
    j = int(np.argmax(np.where(allowed, curve[0], -np.inf)))
    best = thresholds[j]
    rule = "best PRI" if args.cut == "pri" else f"best PRI with VoI <= {base_cut[1]:.4f}"
    where = "train images, each under the other half's fit" if args.cross else "other train images"
    print(f"# {rule} on the {len(cut_ids)} {where} at P(different) = {best}; "
          f"{time.perf_counter() - start:.0f} s")  # fmt: skip
    print(line("fit, chosen cut", curve[:3, j], curve[3, j]))
    if compare:
        for name, ok in (("best PRI", every), ("best PRI, VoI no worse", curve[1] <= base_cut[1] + 1e-12)):
            if ok.any():
                k = int(np.argmax(np.where(ok, curve[0], -np.inf)))
                print(line(f"fit, cut of {name} (P(different) = {thresholds[k]})", curve[:3, k], curve[3, k]))
        print(line(f"current constants, their cut (P(different) = {own:.4f})", base_cut[:3], base_cut[3]))
        for n in EQUAL_REGIONS:
            print(line(f"fit at {n} regions", at_regions(curve, n)))
            print(line(f"current constants at {n} regions", at_regions(base, n)))
    print(f"LEARNED_WEIGHTS = ({', '.join(f'{w:.4f}' for w in weights[1:])})")
    print(f"LEARNED_BIAS = {weights[0]:.4f}")
    print(f"LEARNED_SHIFT = {logit(MERGE_THRESHOLD) - logit(best):.4f}")


if __name__ == "__main__":
    main()
