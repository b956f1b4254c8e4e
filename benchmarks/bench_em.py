"""EM speed and accuracy: segsoft against scikit-learn, OpenCV and scikit-fuzzy, side by side.

Builds standardised Lab + x,y features (D = 5) from a sample image resized to
each size, then fits K = 4 clusters with every tool from the same initial
means and the same number of iterations, followed by the full posterior
memberships. Each measurement runs in its own subprocess so its peak memory
(resident set, features included) is its own. Every tool runs on one thread
(threadpoolctl for BLAS, ``cv2.setNumThreads(1)``): scikit-learn's two
threads fall apart when the machine is busy (20x quiet, 64-81x under load), so
its one-thread time is the steadier reference. ``segsoft-2t`` is segsoft's
passes on two workers (``n_jobs=2``: a forked child process takes half of each
fitting pass, see ``segsoft.mixture.forked``; still one BLAS thread each); its "vs 1t"
column is segsoft's one-thread seconds over its own. Below each size, "an EM iteration alone" is
segsoft's fit less a fit of half as many iterations from the same start, over the difference in
iterations: the start, the centring pass and the final memberships pass drop out. "cpu/iter" is the process's CPU seconds an
iteration, its forked children's included (for one thread, what a shared machine's wall clock inflates least).

The same run measures this machine's floor: dgemm GFLOP/s on one thread (numpy
matmul of two 2048 x 2048 float64 matrices) and memory bandwidth (a 512 MiB
array copy, read + write). One EM iteration must do at least two products of
2 P K flops a row (logits and statistics, P = 1 + D + D(D+1)/2 quadratic
features) and read the float32 rows once; the larger of the two is the floor
printed beside segsoft's time per iteration.

    python benchmarks/bench_em.py                       # 0.25, 1, 4 MP
    python benchmarks/bench_em.py --sizes 0.25,1,4,12   # add 12 MP (scikit-learn takes minutes there)
    python benchmarks/bench_em.py --end-to-end          # also `segsoft run` on a 12 MP photo
    python benchmarks/bench_em.py --methods segsoft,segsoft-2t --sizes 12   # the engine alone
    python benchmarks/bench_em.py --methods segsoft,segsoft-2t --sizes 1,4,12 --baseline ../base  # against a checkout

Needs the ``bench`` extra: ``pip install '.[bench]'``.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
K, ITERS, SEED = 4, 20, 0
METHODS = ("segsoft", "segsoft-2t", "sklearn", "opencv", "segsoft-fcm", "skfuzzy")
BASELINE = ("base", "base-2t")  # segsoft from --baseline DIR, one and two threads


def features(megapixels: float) -> np.ndarray:
    from PIL import Image as PILImage

    import segsoft
    from segsoft.features import FeatureSpec, extract

    src = PILImage.open(ROOT / "images" / "astronaut.jpg").convert("RGB")
    scale = (megapixels * 1e6 / (src.width * src.height)) ** 0.5
    img = src.resize((round(src.width * scale), round(src.height * scale)), PILImage.Resampling.BICUBIC)
    return extract(segsoft.Image.from_array(np.asarray(img)), FeatureSpec(spatial_weight=1.0))


def initial_means(X: np.ndarray) -> np.ndarray:
    """k-means++ / k-means on a 20,000-row sample: the start every tool gets."""
    from segsoft.mixture import kmeans

    rng = np.random.default_rng(SEED)
    sample = X[rng.choice(len(X), 20000, replace=False)].astype(np.float64)
    return kmeans(sample, K, rng)


def peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def hard_start(X64: np.ndarray, means0: np.ndarray, reg: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(weights, means, covariances) of one M-step from each row on its nearest mean: segsoft's start."""
    from sklearn.mixture._gaussian_mixture import _estimate_gaussian_parameters

    labels = np.argmin(((X64[:, None, :] - means0[None]) ** 2).sum(-1), axis=1)
    resp = np.zeros((len(X64), K))
    resp[np.arange(len(X64)), labels] = 1.0
    w, m, c = _estimate_gaussian_parameters(X64, resp, reg, "full")
    return w / len(X64), m, c


def sklearn_score(X64: np.ndarray, weights: np.ndarray, means: np.ndarray, covs: np.ndarray) -> float:
    """Mean log-likelihood of fitted parameters, by scikit-learn's own code (the same yardstick for all)."""
    from sklearn.mixture import GaussianMixture as SkGM
    from sklearn.mixture._gaussian_mixture import _compute_precision_cholesky

    sk = SkGM(len(weights), covariance_type="full")
    sk.weights_, sk.means_, sk.covariances_ = weights, means, covs
    sk.precisions_cholesky_ = _compute_precision_cholesky(covs, "full")
    return float(sk.score(X64))


def run_floor() -> dict:
    """This machine's single-thread dgemm GFLOP/s and copy bandwidth (GB/s), best of a few tries."""
    from threadpoolctl import threadpool_limits

    rng = np.random.default_rng(0)
    a, b = rng.random((2048, 2048)), rng.random((2048, 2048))
    src = np.ones(64 << 20)  # 512 MiB of float64
    dst = np.empty_like(src)
    with threadpool_limits(1):
        a @ b  # warm up: page faults, the BLAS kernel choice
        gemm = min(_timed(lambda: a @ b) for _ in range(5))
        np.copyto(dst, src)
        copy = min(_timed(lambda: np.copyto(dst, src)) for _ in range(5))
    return {"gflops": 2 * 2048**3 / gemm / 1e9, "gbps": 2 * src.nbytes / copy / 1e9}


def _timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def run_one(method: str, megapixels: float) -> dict:
    from threadpoolctl import threadpool_limits

    X = features(megapixels)
    means0 = initial_means(X)
    with threadpool_limits(1):  # every tool on one BLAS thread (segsoft sets this itself)
        return _run_one(method, megapixels, X, means0)


def _cpu_seconds() -> float:
    """CPU seconds of this process and of its children that have ended (the forked passes of ``segsoft-2t``)."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def _run_one(method: str, megapixels: float, X: np.ndarray, means0: np.ndarray) -> dict:
    cpu_start = _cpu_seconds()
    start = time.perf_counter()
    if method in ("segsoft", "segsoft-2t", *BASELINE):
        from segsoft.mixture import GaussianMixture  # the baseline's, in its children (PYTHONPATH)

        jobs = 2 if method.endswith("-2t") else 1
        gm = GaussianMixture(K, max_iter=ITERS, tol=0.0, n_jobs=jobs).fit(X, means_init=means0)
        fit_seconds = time.perf_counter() - start
        _, ll = gm.predict_proba_and_score(X)
        iters = gm.n_iter_
    elif method == "opencv":
        import cv2

        cv2.setNumThreads(1)
        # OpenCV from the same start: trainM begins with an M-step from given memberships,
        # here each row on its nearest mean (timed, as for scikit-learn). trainE cannot take
        # initial covariances from Python (opencv/opencv#4813)
        X64 = X.astype(np.float64)
        labels = np.argmin(((X64[:, None, :] - means0[None]) ** 2).sum(-1), axis=1)
        resp = np.zeros((len(X64), K))
        resp[np.arange(len(X64)), labels] = 1.0
        em = cv2.ml.EM_create()
        em.setClustersNumber(K)
        em.setCovarianceMatrixType(cv2.ml.EM_COV_MAT_GENERIC)
        em.setTermCriteria((cv2.TERM_CRITERIA_COUNT, ITERS, 0.0))
        em.trainM(X64, resp)  # returns the final memberships too
        elapsed = time.perf_counter() - start
        covs = np.stack(em.getCovs())
        ll = sklearn_score(X64, em.getWeights().ravel(), em.getMeans(), covs)  # not timed
        iters = ITERS
    elif method == "sklearn":
        from sklearn.mixture import GaussianMixture as SkGM

        from segsoft.mixture.base import _column_moments

        reg = 1e-6 * _column_moments(X)[1]  # segsoft's reg_covar is relative to the data's variance
        from sklearn.mixture._gaussian_mixture import _compute_precision_cholesky

        # scikit-learn from the same start segsoft uses: each row on its nearest
        # mean, one M-step (timed: segsoft's start costs it one pass too)
        X64 = X.astype(np.float64)
        w, m, c = hard_start(X64, means0, reg)
        pc = _compute_precision_cholesky(c, "full")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # tol=0 runs all iterations on purpose
            sk = SkGM(
                K,
                covariance_type="full",
                max_iter=ITERS,
                tol=0.0,
                init_params="random",
                reg_covar=reg,
                weights_init=w,
                means_init=m,
                precisions_init=pc @ np.swapaxes(pc, 1, 2),
                random_state=SEED,
            ).fit(X64)
        sk.predict_proba(X64)
        elapsed = time.perf_counter() - start
        ll = sk.score(X64)  # not timed: segsoft gets its score from the memberships pass
        iters = sk.n_iter_
    elif method == "skfuzzy":
        import skfuzzy

        X64 = X.astype(np.float64)
        d2 = ((X64[:, None, :] - means0[None]) ** 2).sum(-1)
        u0 = np.zeros((K, len(X)))
        u0[np.argmin(d2, axis=1), np.arange(len(X))] = 1.0
        _centres, _u, *_ = skfuzzy.cluster.cmeans(X64.T, K, 2.0, error=0.0, maxiter=ITERS, init=u0, seed=SEED)
        ll = float("nan")
        iters = ITERS
    elif method == "segsoft-fcm":
        from segsoft.mixture import FuzzyCMeans

        fcm = FuzzyCMeans(K, m=2.0, max_iter=ITERS - 1, tol=0.0).fit(X, means_init=means0)
        fcm.predict_proba(X)
        ll = float("nan")
        iters = fcm.n_iter_ + 1
    else:
        raise SystemExit(f"unknown method {method}")
    if method not in ("sklearn", "opencv"):
        elapsed = time.perf_counter() - start
    cpu = _cpu_seconds() - cpu_start  # the untimed scoring of sklearn/opencv included: a bound
    em_iter = None
    if method in ("segsoft", "segsoft-2t", *BASELINE):
        # the iterations alone: this fit less one of half as many iterations, from the same start (what the
        # start, the centring pass and the final memberships pass cost drops out)
        t = time.perf_counter()
        GaussianMixture(K, max_iter=ITERS // 2, tol=0.0, n_jobs=jobs).fit(X, means_init=means0)
        em_iter = (fit_seconds - (time.perf_counter() - t)) / (ITERS - ITERS // 2)
    return {
        "method": method,
        "mp": megapixels,
        "seconds": elapsed,
        "em_iter": em_iter,
        "cpu": cpu,
        "rows": int(X.shape[0]),
        "iters": iters,
        "ll": float(ll),
        "peak_mib": peak_mib(),
    }


def run_end_to_end(sample: bool) -> dict:
    """`segsoft run` on a 12 MP JPEG, timed from the shell's point of view."""
    from PIL import Image as PILImage

    with tempfile.TemporaryDirectory() as tmp:
        src = PILImage.open(ROOT / "images" / "astronaut.jpg").convert("RGB")
        photo = Path(tmp) / "photo12mp.jpg"
        src.resize((4000, 3000), PILImage.Resampling.BICUBIC).save(photo, quality=90)
        cmd = [sys.executable, "-m", "segsoft", "run", str(photo), "-k", "4", "-o", str(Path(tmp) / "out"), "-q"]
        if not sample:
            cmd += ["--sample", "0"]
        start = time.perf_counter()
        subprocess.run(cmd, check=True)
        seconds = time.perf_counter() - start
        peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024.0
        record = json.loads((Path(tmp) / "out" / "photo12mp" / "model.json").read_text())
    return {
        "sample": sample,
        "seconds": seconds,
        "peak_mib": peak,
        "timings": record["timings"],
        "n_iter": record["result"]["n_iter"],
    }


def run_features(method: str) -> dict:
    """Lab features of a 12 MP image: segsoft's converter against skimage.color.rgb2lab."""
    from PIL import Image as PILImage

    import segsoft
    from segsoft.features import FeatureSpec, extract

    src = PILImage.open(ROOT / "images" / "astronaut.jpg").convert("RGB")
    rgb = np.asarray(src.resize((4000, 3000), PILImage.Resampling.BICUBIC))
    img = segsoft.Image.from_array(rgb)
    start = time.perf_counter()
    if method == "segsoft":
        X = extract(img, FeatureSpec(standardize=False))
    else:
        from skimage.color import rgb2lab

        X = rgb2lab(img.pixels).reshape(-1, 3)
    return {
        "method": method,
        "seconds": time.perf_counter() - start,
        "peak_mib": peak_mib(),
        "checksum": float(np.asarray(X[::9973], dtype=np.float64).sum()),
    }


def child(args: list[str], baseline: str | None = None) -> dict:
    env = None
    if baseline is not None:  # that checkout's segsoft package first on the path
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [baseline, os.environ.get("PYTHONPATH")]))}
    out = subprocess.run([sys.executable, __file__, *args], check=True, capture_output=True, text=True, env=env)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="0.25,1,4", help="megapixels, comma-separated")
    parser.add_argument("--methods", default=",".join(METHODS), help="comma-separated")
    parser.add_argument(
        "--opencv-max", type=float, default=0.25, help="largest size (MP) OpenCV EM runs at (default 0.25: it is slow)"
    )
    parser.add_argument(
        "--baseline",
        metavar="DIR",
        help="also time the segsoft package in DIR (e.g. a `git worktree` of an earlier commit) as `base` and"
        " `base-2t`, each run alternating with this checkout's, for side-by-side ratios (`vs base`)",
    )
    parser.add_argument("--floor", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--end-to-end", action="store_true", help="also time `segsoft run` on a 12 MP photo")
    parser.add_argument("--one", nargs=2, metavar=("METHOD", "MP"), help=argparse.SUPPRESS)
    parser.add_argument("--e2e", choices=["sample", "full"], help=argparse.SUPPRESS)
    parser.add_argument("--feat", choices=["segsoft", "skimage"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.floor:
        print(json.dumps(run_floor()))
        return
    if args.one:
        print(json.dumps(run_one(args.one[0], float(args.one[1]))))
        return
    if args.e2e:
        print(json.dumps(run_end_to_end(args.e2e == "sample")))
        return
    if args.feat:
        print(json.dumps(run_features(args.feat)))
        return

    methods = args.methods.split(",")
    if args.baseline:
        # each baseline run straight after the run it is compared with
        for ours, theirs in (("segsoft", "base"), ("segsoft-2t", "base-2t")):
            if ours in methods:
                methods.insert(methods.index(ours) + 1, theirs)
    unknown = [m for m in methods if m not in METHODS + BASELINE]
    if unknown:
        raise SystemExit(f"--methods: unknown {', '.join(unknown)} (choose from {', '.join(METHODS)})")
    floor = child(["--floor"])
    d = 5
    p = 1 + d + d * (d + 1) // 2
    print(f"# EM benchmark: K={K}, D={d} (Lab + x,y), {ITERS} iterations + full memberships, same initial means")
    print(f"# machine: {os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f}; numpy {np.__version__}")
    print(
        f"# floor measured in this run, one thread: dgemm {floor['gflops']:.1f} GFLOP/s, copy {floor['gbps']:.1f} GB/s;"
        f" an iteration needs 2 x {2 * p * K} flops and {4 * d} bytes a row"
    )
    header = (
        f"{'MP':>5} {'method':<12} {'seconds':>8} {'s/iter':>8} {'cpu/iter':>8} {'floor':>7} {'x floor':>7} "
        f"{'vs 1t':>6} {'peak MiB':>9} {'mean log-lik':>16} {'rel. diff':>10} {'speed-up':>9}"
    )
    print(header)
    print("-" * len(header))
    for mp in [float(s) for s in args.sizes.split(",")]:
        rows = {}
        for m in methods:
            if m == "opencv" and mp > args.opencv_max:
                continue  # about 200x segsoft a iteration: minutes per size beyond a megapixel
            rows[m] = child(["--one", m, str(mp)], args.baseline if m in BASELINE else None)
        for group, ref_name in (
            (("sklearn", "opencv", "base", "segsoft", "base-2t", "segsoft-2t"), "sklearn"),
            (("skfuzzy", "segsoft-fcm"), "skfuzzy"),
        ):
            ref = rows.get(ref_name)
            for name in group:
                r = rows.get(name)
                if r is None:
                    continue
                per_iter = r["seconds"] / r["iters"]
                speed = f"{ref['seconds'] / r['seconds']:.1f}x" if ref else ""
                diff = (
                    f"{abs(r['ll'] - ref['ll']) / abs(ref['ll']):.1e}"
                    if ref and r is not ref and np.isfinite(r["ll"])
                    else ""
                )
                ll = f"{r['ll']:.10f}" if np.isfinite(r["ll"]) else "n/a"
                low = max(
                    2 * 2 * p * K * r["rows"] / (floor["gflops"] * 1e9), 4 * d * r["rows"] / (floor["gbps"] * 1e9)
                )
                ours = name.startswith("segsoft") or name in BASELINE
                floor_s, times = (f"{low:.3f}", f"{per_iter / low:.1f}") if ours else ("", "")
                one = rows.get("base" if name == "base-2t" else "segsoft")
                gain = f"{one['seconds'] / r['seconds']:.2f}x" if name.endswith("-2t") and one else ""
                print(
                    f"{mp:>5} {r['method']:<12} {r['seconds']:>8.2f} {per_iter:>8.3f} {r['cpu'] / r['iters']:>8.3f} "
                    f"{floor_s:>7} {times:>7} {gain:>6} {r['peak_mib']:>9.0f} {ll:>16} {diff:>10} {speed:>9}"
                )
        ours = [m for m in ("segsoft", "segsoft-2t", "base", "base-2t") if m in rows]
        if ours:
            alone = ", ".join(f"{m} {rows[m]['em_iter']:.3f} s" for m in ours)
            two = ""
            if "segsoft" in rows and "segsoft-2t" in rows:
                two = f"; two workers {rows['segsoft']['em_iter'] / rows['segsoft-2t']['em_iter']:.2f}x"
            print(f"# {mp:g} MP, an EM iteration alone ({ITERS} less {ITERS // 2} iterations): {alone}{two}")
        sys.stdout.flush()
        if args.baseline:
            for ours, theirs in (("segsoft", "base"), ("segsoft-2t", "base-2t")):
                if ours in rows and theirs in rows:
                    a, b = rows[ours], rows[theirs]
                    print(
                        f"# {mp} MP {ours} vs base: {b['seconds'] / a['seconds']:.2f}x wall, "
                        f"{b['cpu'] / a['cpu']:.2f}x cpu; log-lik rel. diff {abs(a['ll'] - b['ll']) / abs(b['ll']):.1e}"
                    )
    print(f"# load average at the end {os.getloadavg()[0]:.1f}")
    if args.end_to_end:
        print("\n# Lab features of a 12 MP image (float32 RGB in memory)")
        feats = {m: child(["--feat", m]) for m in ("skimage", "segsoft")}
        for m, r in feats.items():
            print(
                f"{m:<26} {r['seconds']:6.2f} s  peak {r['peak_mib']:5.0f} MiB  "
                f"speed-up {feats['skimage']['seconds'] / r['seconds']:.1f}x"
            )
        print("\n# segsoft run photo.jpg -k 4 on a 12 MP (4000x3000) JPEG, end to end")
        for mode in ("sample", "full"):
            r = child(["--e2e", mode])
            t = r["timings"]
            print(
                f"{'--sample 200000 (default)' if mode == 'sample' else '--sample 0 (all pixels)':<26} "
                f"{r['seconds']:6.2f} s  peak {r['peak_mib']:5.0f} MiB  iterations {r['n_iter']:3d}  "
                + "  ".join(f"{k} {v:.2f}" for k, v in t.items() if k != "total")
            )


if __name__ == "__main__":
    main()
