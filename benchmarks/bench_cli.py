"""Whole `segsoft run` commands, timed from the shell's point of view, with each process's peak memory.

Synthesises a JPEG of each size from the photos in ``images/`` (a 2 x 2 mosaic of
four of them, resized to 4:3), writes it and every output to a temporary folder,
and times these commands (each in its own process, ``-q``):

    k4          segsoft run photo.jpg -k 4
    sample0     segsoft run photo.jpg -k 4 --sample 0
    sample200k  segsoft run photo.jpg -k 4 --sample 200000   (a pixel sample, given on purpose)
    smooth1     segsoft run photo.jpg -k 4 --smooth 1
    k12regions  segsoft run photo.jpg -k 12 --regions

``--baseline DIR`` also runs every command with another checkout of segsoft
(``git worktree add /tmp/base HEAD`` gives the last commit's code), alternating
the two run by run so both see the same load, and reports the ratio of the
medians and whether the two wrote byte-identical outputs (``model.json`` is
compared without its timings and creation time). The CPU seconds (user + system of the whole
process) vary less than the wall time on a busy machine. On a shared, noisy machine, compare only what
ran side by side in one run. Each side's segsoft is compiled to bytecode before it is timed, as
``pip install`` does (see :func:`side_env`).

    python benchmarks/bench_cli.py                               # 1, 12, 48 MP, 3 repeats
    python benchmarks/bench_cli.py --sizes 12 --commands k4,smooth1 --baseline /tmp/base --repeat 5
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

COMMANDS = {
    "k4": ["-k", "4"],
    "sample0": ["-k", "4", "--sample", "0"],
    "sample200k": ["-k", "4", "--sample", "200000"],
    "smooth1": ["-k", "4", "--smooth", "1"],
    "k12regions": ["-k", "12", "--regions"],
}


def synthesise(megapixels: float, path: Path) -> tuple[int, int]:
    """Write a 4:3 JPEG of about ``megapixels`` (a 2 x 2 mosaic of the sample photos) to ``path``."""
    from PIL import Image as PILImage

    photos = sorted((ROOT / "images").glob("*.jpg"))[:4]
    if not photos:
        raise SystemExit(f"no sample photos in {ROOT / 'images'}")
    w = round((megapixels * 1e6 * 4 / 3) ** 0.5 / 2) * 2
    h = w * 3 // 4 // 2 * 2
    sheet = PILImage.new("RGB", (w, h))
    for i in range(4):
        tile = PILImage.open(photos[i % len(photos)]).convert("RGB")
        tile = tile.resize((w // 2, h // 2), PILImage.Resampling.BICUBIC)
        sheet.paste(tile, ((i % 2) * (w // 2), (i // 2) * (h // 2)))
    sheet.save(path, quality=90)
    return w, h


def side_env(code: Path | None, cwd: Path) -> dict[str, str]:
    """The environment of one side's commands, with its segsoft package compiled to bytecode first.

    ``pip install`` compiles a package's bytecode once, at install time; a checkout run from
    source (``pip install -e``, ``--code``, ``--baseline``) where ``PYTHONDONTWRITEBYTECODE``
    is set compiles every module again in every process: about 0.2 s a command here, which
    no user who installed segsoft pays. So each side's package is compiled once before it is
    timed, into the ``__pycache__`` folders Python itself would write (ignored by git).
    """
    env = dict(os.environ)
    if code is not None:  # another checkout first on the path: its segsoft, this environment's packages
        env["PYTHONPATH"] = str(code) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    where = subprocess.run(
        [sys.executable, "-c", "import os, segsoft; print(os.path.dirname(segsoft.__file__))"],
        env=env, capture_output=True, text=True, check=True, cwd=cwd,
    ).stdout.strip()  # fmt: skip
    subprocess.run([sys.executable, "-m", "compileall", "-q", where], env=env, check=True, stdout=subprocess.DEVNULL)
    return env


def run_once(env: dict[str, str], photo: Path, out: Path, args: list[str]) -> tuple[float, float, float]:
    """One `segsoft run` in a fresh process: (seconds, its peak resident memory in MiB, its CPU seconds).

    The CPU seconds (user + system, all its threads) hold better than the wall time on a
    machine other work is using: they count what the command did, not what it waited for.
    """
    cmd = [sys.executable, "-m", "segsoft", "run", str(photo), "-o", str(out), "-q", *args]
    start = time.perf_counter()
    # cwd outside the checkout, so `-m segsoft` finds the package through PYTHONPATH or the install
    proc = subprocess.Popen(cmd, env=env, cwd=out.parent, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)  # this child's own rusage, not the maximum over all children
    seconds = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({proc.returncode}): {err.strip()}")
    return seconds, usage.ru_maxrss / 1024.0, usage.ru_utime + usage.ru_stime


def digest(folder: Path) -> dict[str, str]:
    """SHA-256 of every output file; model.json without its timings, creation time and version.

    Files are hashed a megabyte at a time: read whole, a 576 MB ``probabilities.npy`` raised
    this process's resident memory, and a command started after it (a fork of this process)
    reported that as its own peak (631 MiB for a 12 MP ``-k 4`` run after ``-k 12 --regions``).
    """
    hashes = {}
    for f in sorted(p for p in folder.rglob("*") if p.is_file()):
        if f.name == "model.json":
            record = json.loads(f.read_bytes())
            for varies in ("timings", "created", "version"):  # differ run to run, or checkout to checkout
                record.pop(varies, None)
            hashes[str(f.relative_to(folder))] = hashlib.sha256(json.dumps(record, sort_keys=True).encode()).hexdigest()
            continue
        h = hashlib.sha256()
        with open(f, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                h.update(block)
        hashes[str(f.relative_to(folder))] = h.hexdigest()
    return hashes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="1,12,48", help="megapixels, comma-separated")
    parser.add_argument("--commands", default=",".join(COMMANDS), help=f"some of {', '.join(COMMANDS)}")
    parser.add_argument("--repeat", type=int, default=3, help="runs of each command (medians are reported)")
    parser.add_argument("--baseline", type=Path, help="another segsoft checkout to time side by side")
    parser.add_argument(
        "--code",
        type=Path,
        help="time this checkout (or a copy of its segsoft package's parent) instead of the installed one",
    )
    args = parser.parse_args()
    names = args.commands.split(",")
    for name in names:
        if name not in COMMANDS:
            raise SystemExit(f"--commands: unknown command {name!r} (choose from {', '.join(COMMANDS)})")
    if args.baseline is not None and not (args.baseline / "segsoft" / "__init__.py").is_file():
        raise SystemExit(f"--baseline: {args.baseline} has no segsoft package")
    if args.repeat < 1:
        raise SystemExit("--repeat must be >= 1")
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    print(f"# segsoft run end to end: {cores} cores, load average {os.getloadavg()[0]:.1f} at the start")
    print(f"# medians of {args.repeat}" + (f", alternating with the baseline {args.baseline}" if args.baseline else ""))
    print()
    head = "| MP | command | seconds | CPU s | peak MiB | bytes/pixel |"
    rule = "| ---: | --- | ---: | ---: | ---: | ---: |"
    if args.baseline:
        head += " baseline s | baseline CPU s | baseline MiB | speed-up | CPU ratio | same outputs |"
        rule += " ---: | ---: | ---: | ---: | ---: | --- |"
    print(head)
    print(rule)
    with tempfile.TemporaryDirectory(prefix="bench_cli_") as tmp:
        tmp_path = Path(tmp)
        envs = {"new": side_env(args.code, tmp_path)}
        if args.baseline:
            envs["base"] = side_env(args.baseline, tmp_path)
        for mp in (float(s) for s in args.sizes.split(",")):
            photo = tmp_path / f"photo{mp:g}mp.jpg"
            w, h = synthesise(mp, photo)
            for name in names:
                runs: dict[str, list[tuple[float, float, float]]] = {"new": [], "base": []}
                sides = list(envs)
                outs = {}
                for i in range(args.repeat):
                    # alternate which side goes first, so neither always runs warm or cold
                    for side in sides if i % 2 == 0 else sides[::-1]:
                        out = tmp_path / f"out_{side}"
                        runs[side].append(run_once(envs[side], photo, out, COMMANDS[name]))
                        outs[side] = out / photo.stem
                secs = statistics.median(r[0] for r in runs["new"])
                cpu = statistics.median(r[2] for r in runs["new"])
                peak = max(r[1] for r in runs["new"])
                row = (
                    f"| {mp:g} | `{' '.join(COMMANDS[name])}` | {secs:.2f} | {cpu:.2f} | {peak:.0f} | "
                    f"{peak * 2**20 / (w * h):.0f} |"
                )
                if args.baseline:
                    bsecs = statistics.median(r[0] for r in runs["base"])
                    bcpu = statistics.median(r[2] for r in runs["base"])
                    bpeak = max(r[1] for r in runs["base"])
                    a, b = digest(outs["new"]), digest(outs["base"])
                    differ = sorted(f for f in a.keys() | b.keys() if a.get(f) != b.get(f))
                    same = "yes" if not differ else "no: " + ", ".join(differ)
                    row += (
                        f" {bsecs:.2f} | {bcpu:.2f} | {bpeak:.0f} | {bsecs / secs:.2f}x | {bcpu / cpu:.2f}x | {same} |"
                    )
                print(row, flush=True)


if __name__ == "__main__":
    main()
