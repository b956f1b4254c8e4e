"""Past one machine's memory: a gigapixel image out of core, and a batch of many images on a LocalCluster.

    python benchmarks/bench_scale.py                 # 1 gigapixel, 1000 small images (several minutes)
    python benchmarks/bench_scale.py --gigapixels 0.2 --images 200   # a quick look
    python benchmarks/bench_scale.py --gigapixels 0 --repeat 3       # the batch only, 3 rounds

Everything runs as whole ``segsoft`` processes, side by side in one run:

1. A tiled TIFF of at least ``--gigapixels`` gigapixels, made once in a
   temporary folder by mirror-tiling a real photo (``images/astronaut.jpg``),
   segmented out of core with ``segsoft run big.tif -k 4 --scheduler local``
   (a LocalCluster of 2 worker processes), memberships written as uint8
   OME-Zarr. Peak memory is sampled for the whole process tree (the command,
   the scheduler, the workers) from /proc every 0.1 s. Against it, in the same
   run, the in-memory ``segsoft run`` on a 48 MP image of the same photo
   (``--probabilities-dtype uint8`` for both), as throughput in MP/s.
2. ``--images`` small images (96 x 96 crops of the sample photos):
   ``segsoft batch`` on the process pool against ``--scheduler local``,
   in images per second. ``--repeat N`` runs them N times, alternating, and
   gives the medians and the median of each round's ratio (on a shared
   machine one run of each says little).

``--gigapixels 0`` or ``--images 0`` leaves that part out.

Goals (issue 12): peak at most 4 GiB for the gigapixel; out-of-core
throughput at least 70 % of the in-memory run's; the cluster batch at least
90 % of the pool's images per second.
"""

from __future__ import annotations

import argparse
import math
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
TILE = 512


def tree_rss(pid: int) -> int:
    """Resident bytes of ``pid`` and all its descendants."""
    children: dict[int, list[int]] = {}
    rss: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            ppid = int(fields[1])
            with open(f"/proc/{entry}/statm") as f:
                pages = int(f.read().split()[1])
        except (OSError, ValueError, IndexError):
            continue
        children.setdefault(ppid, []).append(int(entry))
        rss[int(entry)] = pages * os.sysconf("SC_PAGE_SIZE")
    total, todo = 0, [pid]
    while todo:
        p = todo.pop()
        total += rss.get(p, 0)
        todo.extend(children.get(p, []))
    return total


def timed(cmd: list[str]) -> tuple[float, int, subprocess.CompletedProcess]:
    """(seconds, peak bytes of the process tree, result) of one command."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    peak = 0
    stop = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not stop.is_set():
            peak = max(peak, tree_rss(proc.pid))
            stop.wait(0.1)

    t = threading.Thread(target=sample, daemon=True)
    t.start()
    out, err = proc.communicate()
    seconds = time.perf_counter() - start
    stop.set()
    t.join()
    result = subprocess.CompletedProcess(cmd, proc.returncode, out, err)
    if proc.returncode:
        sys.exit(f"failed: {' '.join(cmd)}\n{err}")
    return seconds, peak, result


def mirror_tile(photo: np.ndarray, y0: int, x0: int, h: int, w: int) -> np.ndarray:
    """Rows y0..y0+h, columns x0..x0+w of the plane tiled by the photo and its mirror images."""
    ph, pw = photo.shape[:2]
    ys = np.arange(y0, y0 + h) % (2 * ph)
    xs = np.arange(x0, x0 + w) % (2 * pw)
    ys = np.where(ys < ph, ys, 2 * ph - 1 - ys)
    xs = np.where(xs < pw, xs, 2 * pw - 1 - xs)
    return photo[ys[:, None], xs[None, :]]


def make_big(path: Path, photo: np.ndarray, side: int) -> None:
    import tifffile

    def tiles():
        for y in range(0, side, TILE):
            for x in range(0, side, TILE):
                yield mirror_tile(photo, y, x, TILE, TILE)

    tifffile.imwrite(
        path,
        tiles(),
        shape=(side, side, 3),
        dtype=np.uint8,
        tile=(TILE, TILE),
        photometric="rgb",
        compression="zlib",
        compressionargs={"level": 1},
        bigtiff=True,
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--gigapixels", type=float, default=1.0)
    ap.add_argument("--images", type=int, default=1000)
    ap.add_argument("--repeat", type=int, default=1, help="rounds of the batch part, pool and cluster alternating")
    ap.add_argument("--workdir", type=Path, default=None, help="where the test data go (default: a temporary folder)")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="segsoft-scale-", dir=args.workdir))
    exe = [sys.executable, "-m", "segsoft"]
    try:
        photo = np.asarray(Image.open(ROOT / "images" / "astronaut.jpg").convert("RGB"))
        if args.gigapixels > 0:
            side = math.ceil(math.sqrt(args.gigapixels * 1e9) / TILE) * TILE
            big = work / "big.tif"
            t = time.perf_counter()
            make_big(big, photo, side)
            print(
                f"made {side}x{side} = {side * side / 1e9:.2f} GP tiled TIFF ({big.stat().st_size / 2**30:.2f} GiB) "
                f"in {time.perf_counter() - t:.0f} s"
            )
            mid = work / "mid.tif"
            import tifffile

            tifffile.imwrite(mid, mirror_tile(photo, 0, 0, 6000, 8000), photometric="rgb")  # 48 MP
            common = ["-k", "4", "--probabilities-dtype", "uint8", "-q"]
            s_mem, p_mem, _ = timed([*exe, "run", str(mid), *common, "-o", str(work / "out_mem")])
            s_big, p_big, _ = timed(
                [
                    *exe,
                    "run",
                    str(big),
                    *common,
                    "--scheduler",
                    "local",
                    "--max-pixels",
                    str(100_000_000),
                    "-o",
                    str(work / "out_big"),
                ]
            )
            mp_mem = 48.0 / s_mem
            mp_big = side * side / 1e6 / s_big
            print()
            print("| one image, k=4 | pixels | seconds | MP/s | peak memory (process tree) |")
            print("|---|---|---|---|---|")
            print(f"| in memory (`segsoft run`) | 48 MP | {s_mem:.1f} | {mp_mem:.2f} | {p_mem / 2**30:.2f} GiB |")
            print(
                f"| out of core (`--scheduler local`, 2 workers) | {side * side / 1e9:.2f} GP | {s_big:.1f} | "
                f"{mp_big:.2f} | {p_big / 2**30:.2f} GiB |"
            )
            print(
                f"\nout-of-core throughput = {mp_big / mp_mem:.0%} of in-memory (goal >= 70 %); "
                f"peak {p_big / 2**30:.2f} GiB (goal <= 4 GiB)"
            )
            shutil.rmtree(work / "out_big", ignore_errors=True)
            big.unlink()

        # many small images
        if args.images > 0:
            batch_part(exe, work, args.images, max(1, args.repeat))
    finally:
        shutil.rmtree(work, ignore_errors=True)


def batch_part(exe: list[str], work: Path, n: int, repeat: int) -> None:
    """``n`` 96 x 96 crops of the sample photos: the process pool against a LocalCluster, alternating."""
    import statistics

    src = work / "small"
    src.mkdir()
    photos = [np.asarray(Image.open(p).convert("RGB")) for p in sorted((ROOT / "images").glob("*.jpg"))]
    rng = np.random.default_rng(0)
    for i in range(n):
        ph = photos[i % len(photos)]
        y, x = rng.integers(0, ph.shape[0] - 96), rng.integers(0, ph.shape[1] - 96)
        Image.fromarray(ph[y : y + 96, x : x + 96]).save(src / f"img_{i:05d}.png")
    runs: dict[str, list[float]] = {"pool": [], "cluster": []}
    for r in range(repeat):
        for kind, extra in (("pool", []), ("cluster", ["--scheduler", "local"])):
            out = work / f"out_{kind}"
            shutil.rmtree(out, ignore_errors=True)
            seconds, _, _ = timed([*exe, "batch", str(src), "-k", "3", "-q", *extra, "-o", str(out)])
            runs[kind].append(seconds)
            if repeat > 1:
                print(f"round {r + 1}: {kind} {n / seconds:.1f} images/s", flush=True)
    s_pool, s_clu = statistics.median(runs["pool"]), statistics.median(runs["cluster"])
    ratio = statistics.median(p / c for p, c in zip(runs["pool"], runs["cluster"]))
    what = "" if repeat == 1 else f" (medians of {repeat} rounds)"
    print()
    print(f"| batch of {n} images, 96x96, k=3{what} | seconds | images/s |")
    print("|---|---|---|")
    print(f"| process pool (default) | {s_pool:.1f} | {n / s_pool:.1f} |")
    print(f"| LocalCluster (`--scheduler local`) | {s_clu:.1f} | {n / s_clu:.1f} |")
    print(f"\ncluster = {ratio:.0%} of the pool's images per second (goal >= 90 %)")


if __name__ == "__main__":
    main()
