"""segsoft batch and apply: many images, bad files, resume after a kill, a shared model, exit codes."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image as PILImage

import segsoft
from segsoft.batch import SUMMARY_COLUMNS, SegmentOptions, _execute, apply_batch, run_batch

OPTS = SegmentOptions(k=2)


def photo(seed: int, size: int = 32) -> np.ndarray:
    """A small noisy two-region picture; ``seed`` varies the colours a little."""
    rng = np.random.default_rng(seed)
    a = np.empty((size, size, 3), dtype=np.int32)
    a[:, : size // 2] = (190 + seed % 40, 40, 30)
    a[:, size // 2 :] = (30, 60, 170 + seed % 50)
    a += rng.integers(-25, 25, a.shape)
    return np.clip(a, 0, 255).astype(np.uint8)


def save(path: Path, rgb: np.ndarray, fmt: str | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    PILImage.fromarray(rgb).save(path, format=fmt)
    return path


def make_tree(root: Path) -> Path:
    """Good images at the top and in two sub-folders that both hold img.jpg, plus bad files."""
    photos = root / "photos"
    save(photos / "a" / "img.jpg", photo(1))
    save(photos / "b" / "img.jpg", photo(2))
    save(photos / "top.png", photo(3))
    save(photos / "noext", photo(4), fmt="PNG")  # recognised by content
    jpg = (photos / "a" / "img.jpg").read_bytes()
    (photos / "cut.jpg").write_bytes(jpg[: len(jpg) // 2])  # truncated
    (photos / "notes.png").write_text("not a picture\n")  # an image name, text inside
    (photos / "readme.txt").write_text("neither\n")  # not an image by name or content: ignored
    return photos


def segsoft_cli(*args, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "segsoft", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        **kwargs,
    )


# `python -m segsoft`, with Ctrl-C raising KeyboardInterrupt even where the tests
# run with SIGINT ignored (a shell starts background jobs so, and Python keeps it)
_MAIN = (
    "import runpy, signal, sys; signal.signal(signal.SIGINT, signal.default_int_handler); "
    "sys.argv[0] = 'segsoft'; runpy.run_module('segsoft', run_name='__main__')"
)


def segsoft_popen(*args) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-c", _MAIN, *map(str, args)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def read_summary(out: Path) -> dict[str, dict[str, str]]:
    with open(out / "summary.csv", newline="") as f:
        reader = csv.DictReader(f)
        assert tuple(reader.fieldnames) == SUMMARY_COLUMNS
        return {Path(row["path"]).name if row["path"] else "": row for row in reader}


def temp_files(out: Path) -> list[Path]:
    return [p for p in out.rglob(".*") if p.is_file()]


def assert_readable(folder: Path) -> None:
    """Every output file a folder holds loads (temporary files, hidden, may be cut
    short by a kill); a folder with model.json holds all of them and no temporary file."""
    outputs = [p for p in folder.iterdir() if not p.name.startswith(".")]
    for npy in (p for p in outputs if p.suffix == ".npy"):
        assert np.isfinite(np.load(npy)).all()
    for png in (p for p in outputs if p.suffix == ".png"):
        PILImage.open(png).load()
    if (folder / "model.json").exists():
        record = json.loads((folder / "model.json").read_text())
        assert all((folder / name).is_file() for name in segsoft.outputs.output_files(record["result"]["k"]))
        assert len(outputs) == len(list(folder.iterdir()))


def wait_for_outputs(out: Path, n: int, proc: subprocess.Popen, timeout: float = 60) -> None:
    end = time.monotonic() + timeout
    while len(list(out.rglob("model.json"))) < n:
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < end, "the batch made no progress"
        time.sleep(0.005)


# ----------------------------------------------------------------------------- bad files, layout, exit codes


def test_batch_tree_with_bad_files(tmp_path):
    photos = make_tree(tmp_path)
    out = tmp_path / "out"
    result = segsoft_cli("batch", photos, "--recursive", "-k", "2", "-o", out, "--jobs", "2")
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    errors = result.stderr.strip().splitlines()
    assert len(errors) == 2 and all(line.startswith("segsoft: error: ") for line in errors)
    assert "cut.jpg" in errors[0] and "truncated" in errors[0]
    assert "notes.png" in errors[1] and "not an image" in errors[1]
    assert "6 images: 4 ok, 0 skipped, 2 failed" in result.stdout

    # the input tree is mirrored: two img.jpg in different folders do not collide
    for stem in ("a/img", "b/img", "top", "noext"):
        assert_readable(out / stem)
        assert (out / stem / "model.json").exists(), stem
    a, b = (json.loads((out / s / "model.json").read_text())["image"]["path"] for s in ("a/img", "b/img"))
    assert Path(a).parent.name == "a" and Path(b).parent.name == "b"
    assert not (out / "cut").exists() and not (out / "notes").exists()

    rows = read_summary(out)
    assert sorted(rows) == ["cut.jpg", "img.jpg", "noext", "notes.png", "top.png"]  # two img.jpg share a key
    with open(out / "summary.csv", newline="") as f:
        statuses = sorted(r["status"] for r in csv.DictReader(f))
    assert statuses == ["failed", "failed", "ok", "ok", "ok", "ok"]
    for name in ("cut.jpg", "notes.png"):
        assert rows[name]["status"] == "failed" and rows[name]["error"] and rows[name]["k"] == ""
    top = rows["top.png"]
    assert (top["width"], top["height"], top["k"], top["error"]) == ("32", "32", "2", "")
    assert top["converged"] in ("True", "False") and float(top["seconds"]) >= 0
    assert np.isfinite([float(top["log_likelihood"]), float(top["bic"]), float(top["iterations"])]).all()
    assert not temp_files(out)


def test_recursive_on_and_off(tmp_path):
    photos = make_tree(tmp_path)
    flat = run_batch([photos], tmp_path / "flat", OPTS, jobs=1)
    assert sorted(Path(r.path).name for r in flat.rows) == ["cut.jpg", "noext", "notes.png", "top.png"]
    deep = run_batch([photos], tmp_path / "deep", OPTS, jobs=1, recursive=True)
    assert sorted(Path(r.output).relative_to(tmp_path / "deep").as_posix() for r in deep.rows) == [
        "a/img",
        "b/img",
        "cut",
        "noext",
        "notes",
        "top",
    ]
    assert (deep.count("ok"), deep.count("failed")) == (4, 2)
    # an output folder inside the inputs is not read back as input
    inner = run_batch([photos], photos / "seg", OPTS, jobs=1, recursive=True)
    again = run_batch([photos], photos / "seg", OPTS, jobs=1, recursive=True, skip_existing=True)
    assert len(inner.rows) == len(again.rows) == 6 and again.count("skipped") == 4


def test_cli_exit_codes(tmp_path):
    good = save(tmp_path / "in" / "one.png", photo(5))
    ok = segsoft_cli("batch", good.parent, "-k", "2", "-o", tmp_path / "out", "-q")
    assert ok.returncode == 0 and ok.stdout == "" and ok.stderr == ""
    (tmp_path / "empty").mkdir()
    for args, needle in [
        (("batch", tmp_path / "empty"), "no images found"),
        (("batch", tmp_path / "missing"), "no such file"),
        (("batch", good, "--jobs", "0"), "--jobs"),
        (("batch", good, "--model", "kmeans"), "--model must be one of"),
        (("batch", good, "--shared-model", "--smooth", "1"), "--smooth"),
    ]:
        result = segsoft_cli(*args, "-o", tmp_path / "out2")
        assert result.returncode == 1, (args, result.stderr)
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and needle in lines[0] and "Traceback" not in result.stderr, result.stderr


# ----------------------------------------------------------------------------- resume


def test_skip_existing_redoes_only_incomplete_folders(tmp_path):
    for i in range(3):
        save(tmp_path / "in" / f"p{i}.png", photo(i))
    out = tmp_path / "out"
    first = run_batch([tmp_path / "in"], out, OPTS, jobs=1)
    assert first.count("ok") == 3
    reference = np.load(out / "p1" / "probabilities.npy")
    (out / "p1" / "model.json").unlink()  # as if killed while writing p1
    (out / "p1" / "probabilities.npy").unlink()
    (out / "p1" / ".overlay.0123abcd.tmp.png").write_bytes(b"half a png")  # left by a SIGKILL

    seen = []
    again = run_batch(
        [tmp_path / "in"],
        out,
        OPTS,
        jobs=1,
        skip_existing=True,
        progress=lambda done, total, row: seen.append((done, total, row.status)),
    )
    assert [r.status for r in again.rows] == ["skipped", "ok", "skipped"]
    assert seen == [(1, 3, "skipped"), (2, 3, "skipped"), (3, 3, "ok")]  # skipped ones are reported first
    np.testing.assert_array_equal(np.load(out / "p1" / "probabilities.npy"), reference)
    assert not temp_files(out)
    skipped = again.rows[0]
    assert (skipped.width, skipped.k, skipped.seconds) == (32, 2, None) and skipped.log_likelihood is not None

    # other settings: nothing is skipped, and no picture of the old run is left behind
    fewer = run_batch([tmp_path / "in"], out, SegmentOptions(k=3, smoothing=0.5), jobs=1, skip_existing=True)
    assert fewer.count("ok") == 3 and (out / "p0" / "prob_2.png").exists()
    assert json.loads((out / "p0" / "model.json").read_text())["settings"]["smoothing"] == 0.5
    back = run_batch([tmp_path / "in"], out, OPTS, jobs=1, skip_existing=True)
    assert back.count("ok") == 3 and not (out / "p0" / "prob_2.png").exists()


def test_killed_batch_resumes_to_the_same_outputs(tmp_path):
    for i in range(30):
        save(tmp_path / "in" / f"f{i:02d}.png", photo(i, 64))
    out = tmp_path / "killed"
    proc = segsoft_popen("batch", tmp_path / "in", "-k", "2", "-o", out, "--jobs", "1", "-q")
    wait_for_outputs(out, 3, proc)
    end = time.monotonic() + 30
    while all((f / "model.json").exists() for f in out.iterdir() if f.is_dir()):  # aim at a write in progress
        assert proc.poll() is None and time.monotonic() < end
        time.sleep(0.001)
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=30)
    folders = [f for f in out.iterdir() if f.is_dir()]
    complete = [f for f in folders if (f / "model.json").exists()]
    assert 3 <= len(complete) < 30
    for folder in folders:  # nothing half-written: every output file there is whole
        assert_readable(folder)

    resumed = segsoft_cli("batch", tmp_path / "in", "-k", "2", "-o", out, "--jobs", "1", "--skip-existing")
    assert resumed.returncode == 0, resumed.stderr
    assert f"30 images: {30 - len(complete)} ok, {len(complete)} skipped, 0 failed" in resumed.stdout
    assert not temp_files(out)

    clean = tmp_path / "clean"
    run_batch([tmp_path / "in"], clean, OPTS, jobs=1)
    for i in range(30):
        a, b = out / f"f{i:02d}", clean / f"f{i:02d}"
        np.testing.assert_array_equal(np.load(a / "probabilities.npy"), np.load(b / "probabilities.npy"))
        assert np.array_equal(np.asarray(PILImage.open(a / "labels.png")), np.asarray(PILImage.open(b / "labels.png")))
        assert (
            json.loads((a / "model.json").read_text())["model"] == json.loads((b / "model.json").read_text())["model"]
        )


@pytest.mark.parametrize("jobs", [1, 2])
def test_ctrl_c_stops_cleanly(tmp_path, jobs):
    # far more images than can be done between the second folder and the signal, even on a
    # loaded machine where this process waits its turn: the batch must still be running
    n = 150
    for i in range(n):
        save(tmp_path / "in" / f"f{i:03d}.png", photo(i, 64))
    out = tmp_path / "out"
    proc = segsoft_popen("batch", tmp_path / "in", "-k", "2", "-o", out, "--jobs", jobs)
    wait_for_outputs(out, 2, proc)
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=30)
    assert proc.returncode == 130
    assert "Traceback" not in stdout + stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("segsoft: error: interrupted:") and "--skip-existing" in lines[0]
    # folders can be complete on disk before the driver has received their rows: the summary lists
    # what it received, and a resume skips every complete folder either way
    rows = read_summary(out)
    assert len(rows) < n and all(r["status"] == "ok" for r in rows.values())
    assert not temp_files(out)
    for folder in (f for f in out.iterdir() if f.is_dir()):
        assert_readable(folder)


# ----------------------------------------------------------------------------- shared model and apply


def test_shared_model_gives_every_image_the_same_clusters(tmp_path):
    paths = [save(tmp_path / "in" / f"s{i}.png", photo(10 * i, 24 + 8 * i)) for i in range(3)]
    out = tmp_path / "out"
    report = run_batch([tmp_path / "in"], out, SegmentOptions(k=3, sample=3000), jobs=2, shared_model=True)
    assert report.count("ok") == 3 and report.shared_model == out / "shared_model.json"
    records = [json.loads((out / p.stem / "model.json").read_text()) for p in paths]
    shared = json.loads(report.shared_model.read_text())
    for record in records:
        assert record["model"]["fitted"]["means_"] == shared["model"]["fitted"]["means_"]
        assert record["features"] == shared["features"]
        assert [c["mean_features"] for c in record["clusters"]] == shared["model"]["fitted"]["means_"]
    # per-image results still differ: each image has its own memberships
    assert len({r["result"]["log_likelihood"] for r in records}) == 3
    assert shared["shared"]["pixels_per_image"] == 1000

    # the shared model file works with segsoft apply and reproduces the batch
    applied = apply_batch(report.shared_model, [paths[1]], tmp_path / "applied", jobs=1)
    assert applied.count("ok") == 1
    np.testing.assert_array_equal(
        np.load(tmp_path / "applied" / "s1" / "probabilities.npy"), np.load(out / "s1" / "probabilities.npy")
    )

    # resuming reuses the shared model, so the redone image agrees with the others
    before = report.shared_model.read_bytes()
    reference = np.load(out / "s2" / "probabilities.npy")
    (out / "s2" / "model.json").unlink()
    again = run_batch(
        [tmp_path / "in"], out, SegmentOptions(k=3, sample=3000), jobs=1, shared_model=True, skip_existing=True
    )
    assert [r.status for r in again.rows] == ["skipped", "skipped", "ok"]
    assert report.shared_model.read_bytes() == before
    np.testing.assert_array_equal(np.load(out / "s2" / "probabilities.npy"), reference)


def test_shared_model_cli_reports_unreadable_images(tmp_path):
    photos = make_tree(tmp_path)
    out = tmp_path / "out"
    result = segsoft_cli("batch", photos, "-k", "2", "-o", out, "--shared-model", "-j", "1")
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "shared model" in result.stdout and (out / "shared_model.json").exists()
    rows = read_summary(out)
    assert [rows[n]["status"] for n in ("cut.jpg", "notes.png", "noext", "top.png")] == ["failed", "failed", "ok", "ok"]


def test_run_save_model_then_apply_reproduces_run(tmp_path):
    image = save(tmp_path / "pic.png", photo(7, 40))
    run = segsoft_cli("run", image, "-k", "3", "-o", tmp_path / "run", "--save-model", tmp_path / "m.json", "-q")
    assert run.returncode == 0, run.stderr
    applied = segsoft_cli("apply", tmp_path / "m.json", image, "-o", tmp_path / "applied", "-q")
    assert applied.returncode == 0, applied.stderr
    np.testing.assert_array_equal(
        np.load(tmp_path / "applied" / "pic" / "probabilities.npy"),
        np.load(tmp_path / "run" / "pic" / "probabilities.npy"),
    )
    record = json.loads((tmp_path / "applied" / "pic" / "model.json").read_text())
    assert record["model"] == json.loads((tmp_path / "m.json").read_text())["model"]
    assert read_summary(tmp_path / "applied")["pic.png"]["status"] == "ok"


@pytest.mark.parametrize("content", [None, "{ not json", '{"model": {}}'])
def test_apply_with_a_bad_model_file(tmp_path, content):
    model = tmp_path / "model.json"
    if content is not None:
        model.write_text(content)
    image = save(tmp_path / "pic.png", photo(1))
    result = segsoft_cli("apply", model, image, "-o", tmp_path / "out")
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("segsoft: error: ") and str(model) in lines[0], result.stderr
    assert "Traceback" not in result.stderr and not (tmp_path / "out").exists()


# ----------------------------------------------------------------------------- worker processes


def die_on_two(x: int) -> int:
    """A task that kills its worker process (as the kernel's OOM killer would) for x == 2."""
    if x == 2:
        os._exit(9)
    return x * 10


def test_a_dying_worker_fails_only_its_own_task():
    in_flight: set[int] = set()
    results = dict(_execute(die_on_two, [(x,) for x in range(6)], 2, in_flight))
    assert sorted(results) == list(range(6)) and not in_flight
    assert isinstance(results.pop(2), Exception)
    assert results == {x: x * 10 for x in (0, 1, 3, 4, 5)}
