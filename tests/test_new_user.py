"""What a new user following the README met: each case runs the real command or the public API."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
COFFEE = ROOT / "images" / "coffee.jpg"
FIELDS = ROOT / "images" / "fields.tif"


def cli(*args: object) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    return subprocess.run(
        [sys.executable, "-m", "segsoft", *map(str, args)], capture_output=True, text=True, timeout=120, env=env
    )


def one_line(r: subprocess.CompletedProcess) -> str:
    assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    return lines[0]


@pytest.mark.parametrize("name", ["report", "evaluate", "contours", "regions", "boundaries"])
def test_a_plain_import_reaches_every_documented_module(name):
    code = f"import segsoft, sys; m = segsoft.{name}; print(m.__name__, 'segsoft.{name}' in sys.modules)"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert r.stdout.split() == [f"segsoft.{name}", "True"], r.stderr


def test_a_plain_import_does_not_load_them_up_front_and_a_typo_still_fails():
    code = (
        "import segsoft, sys\n"
        "print('segsoft.report' in sys.modules, 'segsoft.evaluate' in sys.modules)\n"
        "try:\n    segsoft.reprot\nexcept AttributeError as e:\n    print(e)\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert r.stdout.splitlines() == ["False False", "module 'segsoft' has no attribute 'reprot'"], r.stderr


def test_a_memberships_dtype_with_no_memberships_file_is_an_error(tmp_path):
    line = one_line(cli("run", COFFEE, "-k", "2", "--probabilities", "none", "--probabilities-dtype", "uint8",
                        "-o", tmp_path))  # fmt: skip
    assert line == (
        "segsoft: error: --probabilities-dtype only applies with --probabilities npy or tiff (none writes no memberships)"
    )
    assert not (tmp_path / "coffee").exists()
    r = cli("run", COFFEE, "-k", "2", "--probabilities", "tiff", "--probabilities-dtype", "uint8", "-q", "-o", tmp_path)
    assert r.returncode == 0, r.stderr


def test_apply_of_a_colour_model_to_a_multiband_image_suggests_no_flag_it_lacks(tmp_path):
    model = tmp_path / "m.json"
    assert cli("run", COFFEE, "-k", "2", "-q", "--save-model", model, "-o", tmp_path / "o").returncode == 0
    r = cli("apply", model, FIELDS, "-o", tmp_path / "a")
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert (
        f"{FIELDS}: the model's lab features need an RGB image; this one has 6 "
        "bands (fit a model on it with --color bands)"
    ) in r.stderr
    assert "--color bands)" in one_line(cli("run", FIELDS, "--color", "lab", "-o", tmp_path / "r"))


def test_fuzzy_c_means_prints_its_score_and_no_bic(tmp_path):
    r = cli("run", COFFEE, "-k", "2", "--model", "fcm", "-o", tmp_path)
    assert r.returncode == 0, r.stderr
    heads = [line.split()[0] for line in r.stdout.splitlines() if line.strip()]
    assert "score" in heads and "BIC" not in heads
    r = cli("run", COFFEE, "-k", "2", "-o", tmp_path)
    assert "BIC" in [line.split()[0] for line in r.stdout.splitlines() if line.strip()]


def test_a_jpeg_cut_short_gets_a_reason_in_words(tmp_path):
    cut = tmp_path / "cut.jpg"
    cut.write_bytes(COFFEE.read_bytes()[:4])
    line = one_line(cli("run", cut, "-o", tmp_path / "o"))
    assert line == (
        f"segsoft: error: {cut}: truncated or corrupt JPEG data (the file ends early or its header is damaged)"
    )


def test_a_report_remade_after_a_skip_existing_rerun_counts_what_the_folder_holds(tmp_path):
    from segsoft.report import report_rows

    images = tmp_path / "in"
    images.mkdir()
    for name in ("coffee.jpg", "chelsea.jpg"):
        (images / name).write_bytes((ROOT / "images" / name).read_bytes())
    out = tmp_path / "out"
    assert cli("batch", images, "-k", "2", "-q", "-o", out).returncode == 0
    r = cli("batch", images, "-k", "2", "--skip-existing", "-o", out)
    assert r.returncode == 0 and "0 ok, 2 skipped" in r.stdout  # the rerun itself did nothing
    assert cli("report", out).returncode == 0
    rows, _ = report_rows(out)
    assert [row["status"] for row in rows] == ["ok", "ok"]
    assert all(isinstance(row["seconds"], float) and row["seconds"] > 0 for row in rows)
