"""Outputs stay in the output folder, never replace an input, never mix two writers;
resumes notice replaced inputs; options and usage errors are one line naming the flag."""

from __future__ import annotations

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

from segsoft.outputs import LOCK_NAME, FolderBusy, folder_lock, image_folder

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}


def cli(*args, cwd: Path | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "segsoft", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=cwd,
        env=ENV,
    )


def one_line_error(result: subprocess.CompletedProcess, *needles: str, code: int | None = None) -> str:
    assert result.returncode != 0 if code is None else result.returncode == code, result
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


def photo(seed: int, size: tuple[int, int] = (24, 32)) -> np.ndarray:
    rng = np.random.default_rng(seed)
    rgb = np.zeros((*size, 3), np.uint8)
    rgb[:, size[1] // 2 :] = (200, 60, 40)
    rgb[: size[0] // 2] += np.uint8(40)
    return np.clip(rgb.astype(int) + rng.integers(0, 12, rgb.shape), 0, 255).astype(np.uint8)


def save(path: Path, rgb: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    PILImage.fromarray(rgb).save(path, format="PNG")
    return path


def snapshot(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


# ----------------------------------------------------------------------------- 1. inside the output folder


def test_image_folder_is_always_a_child_of_the_output_folder():
    for stem in ["..", ".", "...", "", "a/../..", "/etc", "x\nY", "a\\b", " . "]:
        folder = image_folder("results", stem)
        real = os.path.realpath(folder)
        assert os.path.commonpath([os.path.realpath("results"), real]) == os.path.realpath("results")
        assert real != os.path.realpath("results"), stem


@pytest.mark.parametrize("command", ["run", "batch"])
def test_a_dot_dot_stem_writes_nothing_outside_the_output_folder(tmp_path, command):
    inputs = tmp_path / "in"
    image = save(inputs / "...png", photo(1))  # its stem is ".."
    mine = tmp_path  # results/.. is the user's own folder
    for name in ("model.json", "labels.png", "prob_5.png", "regions.npy", "k_selection.png"):
        (mine / name).write_bytes(b"the user's own file")
    before = snapshot(mine)
    result = cli(command, image, "-k", "2", "-o", tmp_path / "results", "-q")
    assert result.returncode == 0, result.stderr
    assert snapshot(mine) == before
    written = [p for p in (tmp_path / "results").rglob("model.json")]
    assert len(written) == 1 and written[0].parent.parent == tmp_path / "results"


# ----------------------------------------------------------------------------- 2. never over an input


def test_run_refuses_to_overwrite_its_own_input(tmp_path):
    image = save(tmp_path / "overlay" / "overlay.png", photo(2))
    before = image.read_bytes()
    one_line_error(cli("run", "overlay/overlay.png", "-k", "2", "-o", ".", cwd=tmp_path), "overlay.png", "-o")
    assert image.read_bytes() == before
    assert sorted(p.name for p in image.parent.iterdir()) == ["overlay.png"]


def test_run_refuses_an_input_reached_through_a_link(tmp_path):
    image = save(tmp_path / "out" / "x" / "labels.png", photo(3))
    (tmp_path / "x.png").symlink_to(image)
    before = image.read_bytes()
    one_line_error(cli("run", tmp_path / "x.png", "-k", "2", "-o", tmp_path / "out"), "x.png")
    assert image.read_bytes() == before


def test_save_model_never_replaces_an_input_an_output_or_a_users_file(tmp_path):
    image = save(tmp_path / "photo.png", photo(4))
    notes = tmp_path / "notes.txt"
    notes.write_text("my notes")
    before = image.read_bytes()
    out = tmp_path / "out"
    for target, needle in [
        (image, "is the input image"),
        (out / "photo" / "probabilities.npy", "is one of this run's outputs"),
        (out / "photo" / "model.json", "is one of this run's outputs"),
        (notes, "is not a segsoft model.json"),
        (tmp_path, "is a folder"),
    ]:
        one_line_error(cli("run", image, "-k", "2", "-o", out, "--save-model", target), "--save-model", needle)
    assert image.read_bytes() == before and notes.read_text() == "my notes"
    assert not out.exists()  # refused before the slow work
    # a new file, and then replacing that segsoft model, are fine
    model = tmp_path / "palette.json"
    assert cli("run", image, "-k", "2", "-o", out, "--save-model", model, "-q").returncode == 0
    assert cli("run", image, "-k", "3", "-o", out, "--save-model", model, "-q").returncode == 0
    assert json.loads(model.read_text())["result"]["k"] == 3


def test_apply_never_replaces_the_model_it_applies(tmp_path):
    image = save(tmp_path / "x.png", photo(5))
    out = tmp_path / "out"
    assert cli("run", image, "-k", "2", "-o", out, "-q").returncode == 0
    model = out / "x" / "model.json"
    before = model.read_bytes()
    result = cli("apply", model, image, "-o", out, "-q")
    one_line_error(result, "x.png", "model.json")
    assert model.read_bytes() == before


# ----------------------------------------------------------------------------- 3. one writer per folder


def test_folder_lock_is_exclusive_and_taken_over_from_the_dead(tmp_path):
    # a lock file left by a process that no longer exists is simply reused
    (tmp_path / LOCK_NAME).write_text("999999999 elsewhere\n")
    with folder_lock(tmp_path):
        holder = subprocess.run(
            [sys.executable, "-c", "import sys; from segsoft.outputs import folder_lock\n"
             "try:\n    with folder_lock(sys.argv[1]): pass\nexcept Exception as e: print(e)", str(tmp_path)],
            capture_output=True, text=True, timeout=60, env=ENV,
        )
        assert "being written by another segsoft process" in holder.stdout
        assert f"pid {os.getpid()}" in holder.stdout
    assert not (tmp_path / LOCK_NAME).exists()
    with folder_lock(tmp_path):  # free again
        pass


def test_a_folder_held_by_a_live_process_is_left_alone(tmp_path):
    image = save(tmp_path / "p.png", photo(6))
    folder = tmp_path / "out" / "p"
    folder.mkdir(parents=True)
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time\nfrom segsoft.outputs import folder_lock\n"
         "with folder_lock(sys.argv[1]):\n    print('held', flush=True); time.sleep(60)", str(folder)],
        stdout=subprocess.PIPE, text=True, env=ENV,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        one_line_error(cli("run", image, "-k", "2", "-o", tmp_path / "out"), "another segsoft process", f"pid {holder.pid}")
        assert sorted(p.name for p in folder.iterdir()) == [LOCK_NAME]
        batch = cli("batch", image, "-k", "2", "-o", tmp_path / "out", "-q")
        one_line_error(batch, "p.png", "another segsoft process", code=1)
    finally:
        holder.kill()
        holder.wait()
    # the holder died holding it: the next run takes the folder over
    assert cli("run", image, "-k", "2", "-o", tmp_path / "out", "-q").returncode == 0
    assert (folder / "model.json").is_file() and not (folder / LOCK_NAME).exists()


def _consistent(folder: Path) -> bool:
    record = json.loads((folder / "model.json").read_text())
    k = record["result"]["k"]
    probs = np.load(folder / "probabilities.npy")
    heatmaps = sorted(folder.glob("prob_*.png"))
    labels = np.asarray(PILImage.open(folder / "labels.png"))
    return probs.shape[-1] == k and len(heatmaps) == k and len(np.unique(labels)) <= k


def test_racing_batches_never_leave_a_mixed_folder(tmp_path):
    inputs = tmp_path / "in"
    for i in range(4):
        save(inputs / f"img{i}.png", photo(10 + i, (40, 48)))
    for trial in range(4):
        out = tmp_path / f"out{trial}"
        racers = [
            subprocess.Popen(
                [sys.executable, "-m", "segsoft", "batch", str(inputs), "-k", str(k), "-o", str(out), "-j", "1", "-q"],
                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV,
            )
            for k in (2, 3)
        ]
        for racer in racers:
            _, err = racer.communicate(timeout=120)
            assert racer.returncode in (0, 1), err
            assert "Traceback" not in err
            for line in err.strip().splitlines():
                assert "another segsoft process" in line, line
        for i in range(4):
            folder = out / f"img{i}"
            assert not [p.name for p in folder.iterdir() if p.name.startswith(".")]
            if (folder / "model.json").exists():
                assert _consistent(folder), (trial, i)


def test_racing_writers_in_many_trials(tmp_path):
    """Two processes write one folder with different k over and over; each folder is one writer's."""
    script = (
        "import sys, numpy as np, segsoft\n"
        "from segsoft.outputs import FolderBusy\n"
        "rng = np.random.default_rng(0)\n"
        "rgb = rng.integers(0, 255, (24, 24, 3)).astype(np.uint8)\n"
        "seg = segsoft.segment(rgb, k=int(sys.argv[2]), sample=0, max_iter=5)\n"
        "busy = 0\n"
        "for t in range(int(sys.argv[3])):\n"
        "    try: seg.save(f'{sys.argv[1]}/t{t}')\n"
        "    except FolderBusy: busy += 1\n"
        "print(busy)\n"
    )
    trials = 25
    procs = [
        subprocess.Popen([sys.executable, "-c", script, str(tmp_path), str(k), str(trials)],
                         stdout=subprocess.PIPE, text=True, env=ENV)
        for k in (2, 5)
    ]
    for p in procs:
        p.communicate(timeout=120)
        assert p.returncode == 0
    for t in range(trials):
        assert _consistent(tmp_path / f"t{t}")


# ----------------------------------------------------------------------------- 5. resume notices a replaced input


def test_skip_existing_redoes_an_image_whose_file_was_replaced(tmp_path):
    inputs = tmp_path / "in"
    p = save(inputs / "p.png", photo(20))
    q = save(inputs / "q.png", photo(21))
    out = tmp_path / "out"
    assert cli("batch", inputs, "-k", "2", "-o", out, "-q", "-j", "1").returncode == 0
    first = json.loads((out / "p" / "model.json").read_text())
    assert first["image"]["source"]["size"] == p.stat().st_size
    # another photo under the same name, with the old size and time: only the content tells
    stat = p.stat()
    other = photo(99)
    other[0, 0] = (1, 2, 3)
    save(p, other)
    os.utime(p, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    os.utime(q, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))  # touched only: still the same file
    again = cli("batch", inputs, "-k", "2", "-o", out, "--skip-existing", "-j", "1")
    assert again.returncode == 0, again.stderr
    assert "1 ok, 1 skipped" in again.stdout
    rows = (out / "summary.csv").read_text().splitlines()[1:]
    assert [r.split(",")[1] for r in rows] == ["ok", "skipped"]
    second = json.loads((out / "p" / "model.json").read_text())
    assert second["image"]["source"]["blake2b"] != first["image"]["source"]["blake2b"]


# ----------------------------------------------------------------------------- 13, 14: messages and signals


def test_batch_into_its_own_input_folder_says_why_nothing_is_found(tmp_path):
    save(tmp_path / "photos" / "a.png", photo(30))
    one_line_error(cli("batch", tmp_path / "photos", "-o", tmp_path / "photos"), "under the output folder", "-o")


def test_sigterm_on_run_exits_143_and_leaves_no_temporary_file(tmp_path):
    rng = np.random.default_rng(0)
    big = save(tmp_path / "big.png", rng.integers(0, 255, (1200, 1600, 3)).astype(np.uint8))
    folder = tmp_path / "out" / "big"
    proc = subprocess.Popen(
        [sys.executable, "-m", "segsoft", "run", str(big), "-k", "3", "-o", str(tmp_path / "out"), "--max-iter", "3"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV,
    )
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline and proc.poll() is None:
        # strike while the outputs are being written (the folder exists from then on): the hardest moment
        if folder.is_dir():
            break
        time.sleep(0.002)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    if proc.returncode == 0:
        pytest.skip("the run finished before the signal arrived")
    assert proc.returncode == 143, err
    assert err.strip().splitlines() == ["segsoft: error: terminated"]
    assert not [p.name for p in folder.iterdir() if p.name.startswith(".")]
    assert not (folder / "model.json").exists()  # the folder does not pass for complete


# ----------------------------------------------------------------------------- 9, 16: options


def test_usage_errors_are_one_line_with_a_suggestion(tmp_path):
    image = save(tmp_path / "p.png", photo(40))
    line = one_line_error(cli("run", image, "--colr", "lab"), "No such option: --colr", "--color", code=2)
    assert line.startswith("segsoft: error: ")
    one_line_error(cli("run"), "Missing argument", "IMAGE", code=2)
    one_line_error(cli("run", image, "--max-iter", "lots"), "--max-iter", code=2)
    one_line_error(cli("frobnicate"), "No such command", code=2)


def test_choices_are_case_insensitive_and_k_is_capped(tmp_path):
    image = save(tmp_path / "p.png", photo(41))
    ok = cli("run", image, "-k", "2", "--color", "LAB", "--model", "GMM", "--cmap", "VIRIDIS", "-o", tmp_path / "o")
    assert ok.returncode == 0, ok.stderr
    record = json.loads((tmp_path / "o" / "p" / "model.json").read_text())
    assert record["settings"]["color"] == "lab" and record["settings"]["model"] == "gmm"
    one_line_error(cli("run", image, "-k", "65", "-o", tmp_path / "o"), "-k 65", "64")
    one_line_error(cli("batch", image, "-k", "500", "-o", tmp_path / "o"), "64")


def test_many_clusters_print_compactly(tmp_path):
    rng = np.random.default_rng(3)
    image = save(tmp_path / "many.png", rng.integers(0, 255, (60, 60, 3)).astype(np.uint8))
    result = cli("run", image, "-k", "30", "-o", tmp_path / "o", "--max-iter", "5")
    assert result.returncode == 0, result.stderr
    sizes = next(line for line in result.stdout.splitlines() if line.startswith("cluster sizes"))
    assert "more" in sizes and len(sizes) < 160


def test_folder_busy_is_a_segsoft_error():
    from segsoft.errors import SegsoftError

    assert issubclass(FolderBusy, SegsoftError)


def test_evaluate_csv_never_replaces_a_prediction(tmp_path):
    gt, pred = tmp_path / "gt", tmp_path / "pred"
    gt.mkdir(), pred.mkdir()
    np.savez(gt / "7.npz", segs=np.zeros((1, 4, 4), np.uint16))
    np.save(pred / "7.npy", np.zeros((4, 4), np.int32))
    before = (pred / "7.npy").read_bytes()
    one_line_error(cli("evaluate", pred, "--gt", gt, "--csv", pred / "7.npy"), "--csv", "not overwritten")
    assert (pred / "7.npy").read_bytes() == before


def test_evaluate_allow_missing_scores_a_subset(tmp_path):
    gt, pred = tmp_path / "gt", tmp_path / "pred"
    gt.mkdir(), pred.mkdir()
    seg = np.zeros((4, 4), np.uint16)
    seg[:, 2:] = 1
    for i in range(5):
        np.savez(gt / f"{i}.npz", segs=seg[None])
    np.save(pred / "0.npy", seg.astype(np.int32))
    strict = cli("evaluate", pred, "--gt", gt, "--min-region", "0")
    assert strict.returncode == 1 and "--allow-missing" in strict.stdout + strict.stderr
    subset = cli("evaluate", pred, "--gt", gt, "--min-region", "0", "--allow-missing")
    assert subset.returncode == 0, subset.stderr
    assert "scored 1 of 5" in subset.stdout and "PRI       1.0000" in subset.stdout


# ----------------------------------------------------------------------------- found again by a second adversarial pass


@pytest.mark.parametrize("kind", ["symlink", "hardlink", "fifo"])
def test_a_planted_lock_file_never_becomes_a_way_to_write_elsewhere(tmp_path, kind):
    image = save(tmp_path / "photo.png", photo(50))
    precious = tmp_path / "precious.png"
    precious.write_bytes(image.read_bytes())
    before = precious.read_bytes(), image.read_bytes()
    folder = tmp_path / "out" / "photo"
    folder.mkdir(parents=True)
    lock = folder / LOCK_NAME
    if kind == "symlink":
        lock.symlink_to(precious)
    elif kind == "hardlink":
        os.link(image, lock)
    else:
        os.mkfifo(lock)
    result = cli("run", image, "-k", "2", "-o", tmp_path / "out", timeout=60)
    one_line_error(result, LOCK_NAME, "not segsoft's lock file")
    assert (precious.read_bytes(), image.read_bytes()) == before
    assert os.path.lexists(lock)  # left for the user to look at, not silently deleted


def test_save_model_on_a_fifo_or_the_runs_own_folder_is_refused_up_front(tmp_path):
    image = save(tmp_path / "photo.png", photo(51))
    os.mkfifo(tmp_path / "sm.json")
    one_line_error(cli("run", image, "-k", "2", "--save-model", tmp_path / "sm.json", timeout=30), "not a regular file")
    out = tmp_path / "out"
    one_line_error(cli("run", image, "-k", "2", "-o", out, "--save-model", out / "photo"), "--save-model", "folder")
    assert not out.exists()


def test_a_file_name_that_is_not_utf8_is_reported_not_a_crash(tmp_path):
    inputs = tmp_path / "in"
    save(inputs / "good.png", photo(52))
    os.link(inputs / "good.png", os.fsencode(inputs) + b"/bad\xffname.png")
    result = cli("batch", inputs, "-k", "2", "-o", tmp_path / "r", "-j", "1")
    assert result.returncode == 0, result.stderr
    assert "2 images: 2 ok" in result.stdout
    assert (tmp_path / "r" / "summary.csv").read_bytes().count(b"\n") == 3


def test_images_under_the_output_folder_are_counted_out_loud(tmp_path):
    photos = tmp_path / "photos"
    save(photos / "a.png", photo(53))
    save(photos / "raw" / "b.png", photo(54))
    result = cli("batch", photos, "-r", "-k", "2", "-o", photos / "raw")
    assert result.returncode == 0, result.stderr
    assert "1 image under the output folder" in result.stdout and "not taken as input" in result.stdout


@pytest.mark.parametrize("value", ["nan", "inf", "-1", "1.5"])
def test_evaluate_min_region_has_a_range(tmp_path, value):
    (tmp_path / "gt").mkdir(), (tmp_path / "pred").mkdir()
    one_line_error(cli("evaluate", tmp_path / "pred", "--gt", tmp_path / "gt", "--min-region", value), "--min-region")


# ----------------------------------------------------------------------------- from a code review


def test_a_shared_model_serves_colour_and_grey_photos_together(tmp_path):
    inputs = tmp_path / "in"
    save(inputs / "colour.png", photo(60))
    PILImage.fromarray(photo(61)[..., 0]).save(inputs / "grey.png")
    result = cli("batch", inputs, "-k", "2", "--shared-model", "-o", tmp_path / "o", "-j", "1")
    assert result.returncode == 0, result.stderr
    assert "2 images: 2 ok" in result.stdout


def test_skip_existing_redoes_a_folder_written_in_another_dtype_or_palette(tmp_path):
    inputs = tmp_path / "in"
    save(inputs / "a.png", photo(62))
    out = tmp_path / "o"
    assert cli("batch", inputs, "-k", "2", "-o", out, "--probabilities-dtype", "uint8", "-q").returncode == 0
    again = cli("batch", inputs, "-k", "2", "-o", out, "--skip-existing")
    assert "1 ok, 0 skipped" in again.stdout and np.load(out / "a" / "probabilities.npy").dtype == np.float32
    mean = cli("batch", inputs, "-k", "2", "-o", out, "--skip-existing", "--palette", "mean")
    assert "1 ok, 0 skipped" in mean.stdout
    assert "1 ok" not in cli("batch", inputs, "-k", "2", "-o", out, "--skip-existing", "--palette", "mean").stdout


def test_a_linked_image_folder_fails_its_image_only(tmp_path):
    inputs = tmp_path / "in"
    save(inputs / "a.png", photo(63))
    save(inputs / "b.png", photo(64))
    out = tmp_path / "o"
    out.mkdir()
    (tmp_path / "elsewhere").mkdir()
    (out / "a").symlink_to(tmp_path / "elsewhere")
    result = cli("batch", inputs, "-k", "2", "-o", out, "-j", "1")
    assert result.returncode == 1 and "1 ok" in result.stdout and "outside the output folder" in result.stderr
    assert (out / "b" / "model.json").is_file() and not any((tmp_path / "elsewhere").iterdir())


def test_apply_checks_its_options_up_front(tmp_path):
    image = save(tmp_path / "p.png", photo(65))
    assert cli("run", image, "-k", "2", "-o", tmp_path / "o", "-q").returncode == 0
    one_line_error(cli("apply", tmp_path / "o" / "p" / "model.json", image, "--max-pixels", "0"), "--max-pixels")


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_delivered_to_another_thread_still_waits_for_the_block(signum):
    # the kernel hands a process-wide kill to any thread; the handler then runs in
    # the main thread mid-block unless the block holds it at the Python level
    import threading

    from segsoft.io import signals_deferred

    class Stop(Exception):
        pass

    def handler(s, frame):
        raise Stop

    previous = signal.signal(signum, handler)
    reached = []
    try:
        with pytest.raises(Stop):
            with signals_deferred():
                worker = threading.Thread(target=lambda: signal.pthread_kill(threading.get_ident(), signum))
                worker.start()
                worker.join()
                for i in range(10_000):  # many bytecode boundaries where the handler would otherwise run
                    reached.append(i)
                reached.append("end")
        assert reached[-1] == "end"
        assert signal.getsignal(signum) is handler
    finally:
        signal.signal(signum, previous)


def test_the_lock_survives_a_kill_taken_by_a_writer_thread(tmp_path):
    # the failure CI saw: SIGTERM reached a thread while the lock was being released
    import threading

    from segsoft.io import signals_deferred

    class Stop(Exception):
        pass

    def handler(s, frame):
        raise Stop

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        with pytest.raises(Stop):
            with folder_lock(tmp_path):
                with signals_deferred():
                    t = threading.Thread(target=lambda: signal.pthread_kill(threading.get_ident(), signal.SIGTERM))
                    t.start()
                    t.join()
        assert not (tmp_path / LOCK_NAME).exists()
    finally:
        signal.signal(signal.SIGTERM, previous)
