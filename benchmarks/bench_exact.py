"""Time segment(k=4): the default, a sample given on purpose and sample=0, per pixel or exact on distinct colours.

The default is the exact fit on distinct colours where it applies (an 8-bit photo);
"exact off" forces the per-pixel paths (a pixel sample with its polish, or every pixel).

A 12 MP photo made by upscaling images/astronaut.jpg with Pillow (bicubic). Medians of 3.
Run: python benchmarks/bench_exact.py [--mp 12] [--repeat 3]
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
from PIL import Image as PILImage

import importlib
seg_mod = importlib.import_module("segsoft.segment")
segment = seg_mod.segment


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--mp", type=float, default=12.0)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--image", default="images/astronaut.jpg")
    a = ap.parse_args()
    src = PILImage.open(a.image).convert("RGB")
    scale = (a.mp * 1e6 / (src.width * src.height)) ** 0.5
    big = np.asarray(src.resize((round(src.width * scale), round(src.height * scale)), PILImage.BICUBIC))
    n = big.shape[0] * big.shape[1]
    found = seg_mod._distinct_colors(seg_mod.as_image(big))
    n_d = found[0].shape[0]
    print(f"{big.shape[1]}x{big.shape[0]} = {n / 1e6:.1f} MP, {n_d} distinct colours ({n_d / n:.1%})")

    def run(sample, exact: bool):
        saved = seg_mod.EXACT_DISTINCT_SHARE
        seg_mod.EXACT_DISTINCT_SHARE = saved if exact else -1.0
        try:
            times, last = [], None
            for _ in range(a.repeat):
                t = time.perf_counter()
                last = segment(big, k=4, sample=sample)
                times.append(time.perf_counter() - t)
            return statistics.median(times), last
        finally:
            seg_mod.EXACT_DISTINCT_SHARE = saved

    rows = [
        ("default, exact off (sampled)", seg_mod.DEFAULT_SAMPLE, False),
        ("default (exact on distinct colours)", seg_mod.DEFAULT_SAMPLE, True),
        ("sample=200000 given (sampled)", 200_000, True),
        ("sample=0, exact off (per pixel)", 0, False),
        ("sample=0 (exact on distinct colours)", 0, True),
    ]
    print(f"{'case':38s} {'median s':>9s} {'iters':>6s} {'mean loglik':>14s} exact")
    for name, sample, exact in rows:
        t, s = run(sample, exact)
        print(f"{name:38s} {t:9.2f} {s.model.n_iter_:6d} {s.log_likelihood:14.8f} {'exact_fit' in s.settings}")


if __name__ == "__main__":
    main()
