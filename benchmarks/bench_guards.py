"""The cost of segsoft's input guards on the inputs that used to blow up, side by side.

Each guard against the code it replaced, in one run, on the same data; every
measurement in its own subprocess so its peak memory (resident set) is its own:

* counting distinct colours of a constant image (the ``k is more than the N
  distinct colours`` check): segsoft's early-stopping chunked count against
  ``np.unique(X, axis=0)``, the old code;
* a whole ``segsoft run -k 2`` on a 1-pixel-wide strip (the montage used to
  scale every tile to 256 px wide: 24 GB for a 5000x1 PNG).

    python benchmarks/bench_guards.py                 # 4 and 16 MP constant images, a 1x200000 strip
    python benchmarks/bench_guards.py --sizes 4,16,81 --repeat 3

Prints medians over ``--repeat`` runs (np.unique once: it is the slow side).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

_COUNT = """
import json, sys, time, tracemalloc
import numpy as np
from segsoft.features import FeatureSpec, extract
from segsoft.io import Image
from segsoft.segment import _count_distinct
side = int((float(sys.argv[1]) * 1e6) ** 0.5)
img = Image.from_array(np.full((side, side, 3), 90, np.uint8))
X = extract(img, FeatureSpec(color="lab"))
tracemalloc.start()  # numpy reports its allocations to it: the count's own peak, not the features'
t0 = time.perf_counter()
n = len(np.unique(X, axis=0)) if sys.argv[2] == "unique" else _count_distinct(X, 4)
seconds = time.perf_counter() - t0
extra = tracemalloc.get_traced_memory()[1] / 2**20
print(json.dumps({"distinct": int(n), "seconds": seconds, "extra_mb": extra, "pixels": side * side}))
"""

_STRIP = """
import json, resource, subprocess, sys, time
import numpy as np
from PIL import Image
path, out = sys.argv[1], sys.argv[2]
rgb = np.zeros((int(sys.argv[3]), 1, 3), np.uint8)
rgb[::2] = (200, 40, 30)
Image.fromarray(rgb).save(path)
t0 = time.perf_counter()
code = subprocess.run([sys.executable, "-m", "segsoft", "run", path, "-k", "2", "-o", out, "-q"]).returncode
seconds = time.perf_counter() - t0
peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
print(json.dumps({"code": code, "seconds": seconds, "peak_mb": peak}))
"""


def _child(code: str, *args: str) -> dict:
    out = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, cwd=ROOT, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="4,16", help="constant-image sizes in megapixels")
    parser.add_argument("--strip", type=int, default=200_000, help="rows of the 1-pixel-wide strip")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()

    print("| distinct-colour count, constant image | pixels | segsoft s | np.unique s | ratio | segsoft extra MB | np.unique extra MB |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for size in args.sizes.split(","):
        ours = [_child(_COUNT, size, "segsoft") for _ in range(args.repeat)]
        theirs = _child(_COUNT, size, "unique")
        assert all(r["distinct"] == theirs["distinct"] == 1 for r in ours)
        s = statistics.median(r["seconds"] for r in ours)
        mb = statistics.median(r["extra_mb"] for r in ours)
        print(
            f"| {size} MP | {ours[0]['pixels']:,} | {s:.3f} | {theirs['seconds']:.2f} | "
            f"{theirs['seconds'] / s:.0f}x | {mb:.0f} | {theirs['extra_mb']:.0f} |"
        )

    with tempfile.TemporaryDirectory() as tmp:
        runs = [_child(_STRIP, f"{tmp}/strip.png", f"{tmp}/out", str(args.strip)) for _ in range(args.repeat)]
    assert all(r["code"] == 0 for r in runs), runs
    print()
    print("| whole `segsoft run -k 2` | seconds (median) | peak RSS MB (median) |")
    print("| --- | ---: | ---: |")
    print(
        f"| 1x{args.strip} PNG (W x H) | {statistics.median(r['seconds'] for r in runs):.2f} | "
        f"{statistics.median(r['peak_mb'] for r in runs):.0f} |"
    )


if __name__ == "__main__":
    main()
