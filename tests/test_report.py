"""report.html: its content (no browser needed) and the page in a real headless Chromium.

The browser tests drive the system's Chromium through the DevTools protocol
over a pipe (``--remote-debugging-pipe``: commands on file descriptor 3,
replies on 4, each a JSON text ended by a NUL byte), so nothing listens on
any port and no client package is needed. Each browser is killed (its whole
process group) when the test ends, and after :data:`BROWSER_SECONDS` at the
latest. They skip, saying why, only where no Chromium can be found:
``.ci/run`` installs the ``chromium`` system package when it is missing, and
``SEGSOFT_CHROMIUM`` may name another Chromium or Chrome binary.

``python tests/test_report.py --screenshot docs/report.png`` remakes the
README's screenshot from a batch of the sample images.
"""

from __future__ import annotations

import base64
import csv
import json
import os
import queue
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image as PILImage

from segsoft.batch import BatchInterrupted, BatchResult, SegmentOptions, apply_batch, run_batch
from segsoft.errors import SegsoftError
from segsoft.report import REPORT_NAME, THUMB_DIRECT, THUMBS_FOLDER, report_html, report_rows, write_report

ROOT = Path(__file__).resolve().parents[1]
BROWSER_SECONDS = 90  # the most one browser may live, whatever happens
HOSTILE = "x</script><script>alert(1)</script><!--&\"'.png"


# ----------------------------------------------------------------------------- helpers


def picture(seed: int, h: int = 24, w: int = 32) -> np.ndarray:
    """A small photo-like RGB image with three colour regions and some noise."""
    rng = np.random.default_rng(seed)
    a = np.zeros((h, w, 3), np.uint8)
    a[:, w // 2 :] = (200, 40 + 20 * seed, 30)
    a[: h // 2, :, 1] = 150
    return np.clip(a + rng.integers(0, 25, a.shape), 0, 255).astype(np.uint8)


def page_data(page: str) -> dict:
    """The JSON embedded in a report."""
    m = re.search(r'<script type="application/json" id="segsoft-data">(.*?)</script>', page, re.DOTALL)
    assert m, "no data block"
    return json.loads(m.group(1))


def run_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "segsoft", *args], check=False, cwd=cwd, capture_output=True, text=True, timeout=120
    )


# ----------------------------------------------------------------------------- the page's content


def test_hostile_file_name_is_text_everywhere():
    rows = [
        {"path": HOSTILE, "status": "failed", "error": "<img src=x onerror=alert(2)> & more", "folder": None},
        {"path": "ok.png", "status": "ok", "width": 4, "height": 3, "k": 2, "folder": None},
    ]
    page = report_html(rows, title=HOSTILE)
    # exactly the page's own script elements end: the data block and the script
    assert page.count("</script>") == 2
    assert "<script>alert" not in page and "<img src=x" not in page and "<!--&" not in page
    assert "x&lt;/script&gt;&lt;script&gt;alert(1)&lt;/script&gt;&lt;!--&amp;&quot;&#x27;.png" in page
    assert "&lt;img src=x onerror=alert(2)&gt; &amp; more" in page
    data = page_data(page)  # and the data block gives back the exact name
    assert data["rows"][0]["p"] == HOSTILE and data["rows"][0]["e"].startswith("<img")
    assert page.isascii() or page.encode("utf-8")  # always encodable


def test_names_that_are_not_utf8_do_not_break_the_page(tmp_path):
    bad = os.fsdecode(b"caf\xe9.png")  # a Latin-1 file name on a UTF-8 system
    page = write_report(tmp_path, [BatchResult(bad, "failed", error="not an image")]).read_text("utf-8")
    assert "caf\ufffd.png" in page
    assert page_data(page)["rows"][0]["p"] == "caf\ufffd.png"


def test_links_are_relative_and_quoted(tmp_path):
    out = tmp_path / "out"
    folder = out / "sub dir" / "a#1?"
    folder.mkdir(parents=True)
    for name in ("montage.png", "overlay.png", "labels.png", "prob_1.png", "prob_0.png", "prob_10.png", "model.json"):
        (folder / name).write_bytes(b"")
    PILImage.fromarray(picture(1)).save(folder / "overlay.png")
    rows = [
        BatchResult("in/sub dir/a#1?.png", "ok", 32, 24, 3, 5, True, 1.5, -10.0, 0.25, output=str(folder)),
        BatchResult("elsewhere.png", "ok", 32, 24, 3, output=str(tmp_path / "outside")),  # not under out: no links
    ]
    page = write_report(out, rows).read_text()
    assert str(tmp_path) not in page  # nothing of this machine's absolute paths
    first, second = page_data(page)["rows"]
    assert first["d"] == "sub%20dir/a%231%3F/"
    assert first["f"] == [
        "montage.png",
        "overlay.png",
        "labels.png",
        "prob_0.png",
        "prob_1.png",
        "prob_10.png",
        "model.json",
    ]
    assert first["th"] == "sub%20dir/a%231%3F/overlay.png"  # small: its own thumbnail
    assert "d" not in second and "th" not in second
    assert not (out / THUMBS_FOLDER).exists()


def test_counts_failures_and_interrupted_banner(tmp_path):
    rows = [BatchResult(f"ok{i}.png", "ok", 8, 8, 2, 3, True, 1.0, 2.0, 0.5) for i in range(3)]
    rows += [BatchResult("s.png", "skipped", 8, 8, 2)]
    rows += [BatchResult(f"bad{i}.png", "failed", error=f"broken number {i}") for i in range(2)]
    page = write_report(tmp_path, rows, seconds=12.34, total=9, interrupted=True).read_text()
    for status, n in (("ok", 3), ("skipped", 1), ("failed", 2)):
        assert re.search(rf'id="count-{status}"[^>]*>{n}</button>', page), status
    assert 'id="count-total">9<' in page and ">12.3 s<" in page
    assert "Interrupted: 6 of 9 images done" in page
    failures = re.findall(
        r'<li class="failure"><span class="path">(.*?)</span>: <span class="error">(.*?)</span>', page
    )
    assert failures == [("bad0.png", "broken number 0"), ("bad1.png", "broken number 1")]
    # no wall-clock time given: the images' own times, summed
    assert ">1.5 s of image time<" in write_report(tmp_path, rows).read_text()


def test_large_overlays_get_a_thumbnail_once(tmp_path):
    out = tmp_path / "out"
    big, small = out / "big", out / "small"
    big.mkdir(parents=True)
    small.mkdir()
    PILImage.fromarray(np.tile(picture(2), (40, 40, 1))).save(big / "overlay.png")  # 1280 x 960
    PILImage.fromarray(picture(3)).save(small / "overlay.png")
    rows = [BatchResult("big.png", "ok", 1280, 960, 3, output=str(big)), BatchResult("s.png", "ok", output=str(small))]
    (out / THUMBS_FOLDER).mkdir()
    (out / THUMBS_FOLDER / ".0123456789abcdef.0badf00d.tmp.png").write_bytes(b"half")  # a killed report's
    data = page_data(write_report(out, rows).read_text())
    thumb = out / data["rows"][0]["th"]
    assert thumb.parent == out / THUMBS_FOLDER and data["rows"][1]["th"] == "small/overlay.png"
    with PILImage.open(thumb) as im:
        assert max(im.size) <= THUMB_DIRECT and im.size == (192, 144)
    made = thumb.stat().st_mtime_ns
    write_report(out, rows)
    assert thumb.stat().st_mtime_ns == made  # the overlay has not changed: the thumbnail is kept
    assert [p.name for p in (out / THUMBS_FOLDER).iterdir()] == [thumb.name]  # and no temporary file


def test_never_writes_outside_the_output_folder(tmp_path):
    out, elsewhere = tmp_path / "out", tmp_path / "elsewhere"
    (out / "big").mkdir(parents=True)
    elsewhere.mkdir()
    PILImage.fromarray(np.tile(picture(2), (20, 20, 1))).save(out / "big" / "overlay.png")
    (out / THUMBS_FOLDER).symlink_to(elsewhere)  # planted: thumbnails would land elsewhere
    rows = [BatchResult("big.png", "ok", 640, 480, 3, output=str(out / "big"))]
    with pytest.raises(SegsoftError, match="outside the output folder"):
        write_report(out, rows)
    (out / THUMBS_FOLDER).unlink()
    (out / REPORT_NAME).symlink_to(elsewhere / "page.html")
    with pytest.raises(SegsoftError, match="outside the output folder"):
        write_report(out, rows)
    assert not list(elsewhere.iterdir())
    with pytest.raises(SegsoftError, match="no such output folder"):
        write_report(tmp_path / "missing", rows)


def test_an_existing_folder_is_read_back_from_summary_and_model_json(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "in").mkdir()
    for i, name in enumerate(("a.png", "b.png")):
        PILImage.fromarray(picture(i)).save(tmp_path / "in" / name)
    (tmp_path / "in" / "c.png").write_text("not a picture")
    report = run_batch(["in"], "out", SegmentOptions(k=2), jobs=1)
    assert report.html == Path("out") / REPORT_NAME and report.html_error == ""
    written = page_data(report.html.read_text())["rows"]
    (tmp_path / "out" / REPORT_NAME).unlink()
    rows, single = report_rows("out")  # no rows given: summary.csv and each folder's model.json
    assert not single and [r["folder"] for r in rows] == ["a", "b", None]
    again = page_data(write_report("out").read_text())["rows"]
    assert [{k: v for k, v in r.items() if k != "t"} for r in again] == [
        {k: v for k, v in r.items() if k != "t"} for r in written
    ]
    # settings come from the first image's model.json
    assert '<th scope="row">color</th><td>lab</td>' in (tmp_path / "out" / REPORT_NAME).read_text()


def test_batch_keeps_its_results_when_the_report_cannot_be_written(tmp_path):
    PILImage.fromarray(picture(0)).save(tmp_path / "a.png")
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / REPORT_NAME).mkdir()  # a folder where the page should go
    report = run_batch([tmp_path / "a.png"], tmp_path / "out", SegmentOptions(k=2), jobs=1)
    assert report.count("ok") == 1 and report.html is None
    assert "report.html" in report.html_error and "cannot write" in report.html_error
    assert (tmp_path / "out" / "summary.csv").read_text().count("\n") == 2
    assert (tmp_path / "out" / "a" / "model.json").is_file()


def test_an_interrupted_batch_still_writes_its_report(tmp_path):
    for i in range(3):
        PILImage.fromarray(picture(i)).save(tmp_path / f"{i}.png")

    def stop_after_first(done, total, row):
        raise KeyboardInterrupt

    with pytest.raises(BatchInterrupted):
        run_batch(
            [tmp_path / f"{i}.png" for i in range(3)],
            tmp_path / "out",
            SegmentOptions(k=2),
            jobs=1,
            progress=stop_after_first,
        )
    page = (tmp_path / "out" / REPORT_NAME).read_text()
    assert "Interrupted: 1 of 3 images done" in page and len(page_data(page)["rows"]) == 1


def test_shared_and_applied_models_show_their_legend_once(tmp_path):
    for i in range(2):
        PILImage.fromarray(picture(i)).save(tmp_path / f"{i}.png")
    images = [tmp_path / f"{i}.png" for i in range(2)]
    shared = run_batch(images, tmp_path / "shared", SegmentOptions(k=3), jobs=1, shared_model=True)
    applied = apply_batch(shared.shared_model, images, tmp_path / "applied", jobs=1)
    record = json.loads(shared.shared_model.read_text())
    for report in (shared, applied):
        page = report.html.read_text()
        assert page.count("<h2>clusters of the shared model</h2>") == 1
        assert re.findall(r'data-color="(#[0-9a-f]{6})"', page) == [c["display_color"] for c in record["clusters"]]
        assert "% of the pixels" not in page  # one image's shares are not the model's
    # a batch of separate models has no one legend
    assert (
        '<span class="swatch"' not in run_batch(images, tmp_path / "own", SegmentOptions(k=3), jobs=1).html.read_text()
    )


def test_run_report_cli(tmp_path):
    PILImage.fromarray(picture(4)).save(tmp_path / "photo.png")
    result = run_cli("run", "photo.png", "-k", "3", "-o", "out", "--report", "-q", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    page = (tmp_path / "out" / "photo" / REPORT_NAME).read_text()
    assert "<title>segsoft: photo.png</title>" in page
    assert '<img src="montage.png" alt="montage">' in page
    assert page.count('<span class="swatch"') == 3  # the legend: one swatch per cluster
    record = json.loads((tmp_path / "out" / "photo" / "model.json").read_text())
    for cluster in record["clusters"]:
        assert f'data-color="{cluster["display_color"]}"' in page
    data = page_data(page)
    assert data["single"] and data["rows"][0]["d"] == "" and data["rows"][0]["k"] == 3


# ----------------------------------------------------------------------------- the browser


def chromium_binary() -> str | None:
    named = os.environ.get("SEGSOFT_CHROMIUM")
    if named:
        return named
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable", "chrome", "headless_shell"):
        found = shutil.which(name)
        if found:
            return found
    return None


class Browser:
    """A headless Chromium driven through the DevTools protocol over a pipe; one page (tab)."""

    def __init__(self, binary: str, profile: Path, width: int = 1280, height: int = 900):
        import fcntl  # POSIX only, like the pipe hand-over itself

        # descriptors of 10 and up, so that putting them at 3 and 4 in the child cannot clobber one another
        ours_r, theirs_w = os.pipe()  # replies: Chromium writes fd 4
        theirs_r, ours_w = os.pipe()  # commands: Chromium reads fd 3
        cmd_r = fcntl.fcntl(theirs_r, fcntl.F_DUPFD_CLOEXEC, 10)
        out_w = fcntl.fcntl(theirs_w, fcntl.F_DUPFD_CLOEXEC, 10)
        os.close(theirs_r)
        os.close(theirs_w)

        def child() -> None:
            os.dup2(cmd_r, 3)  # dup2 leaves the copies inheritable
            os.dup2(out_w, 4)

        self.log = open(profile / "chromium.log", "wb")  # noqa: SIM115 - closed in close()
        self.proc = subprocess.Popen(
            [
                binary,
                "--headless",
                "--remote-debugging-pipe",
                f"--user-data-dir={profile}",
                "--no-sandbox",  # the sandbox needs user namespaces, which containers and root often lack
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--no-first-run",
                "--no-default-browser-check",
                "--disable-extensions",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--mute-audio",
                f"--window-size={width},{height}",
                "about:blank",
            ],
            stdin=subprocess.DEVNULL,
            stdout=self.log,
            stderr=self.log,
            pass_fds=(3, 4),
            preexec_fn=child,  # noqa: PLW1509 - only dup2 calls, and no thread of ours runs yet
            start_new_session=True,  # its own process group: the renderer and GPU processes die with it
        )
        os.close(cmd_r)
        os.close(out_w)
        self.write = os.fdopen(ours_w, "wb", buffering=0)
        self.replies: queue.Queue = queue.Queue()
        self.events: list[dict] = []
        self.next_id = 0
        self.watchdog = threading.Timer(BROWSER_SECONDS, self.kill)
        self.watchdog.daemon = True
        self.watchdog.start()
        threading.Thread(target=self._read, args=(ours_r,), daemon=True).start()
        try:
            target = self.call("Target.createTarget", url="about:blank")["targetId"]
            self.session = self.call("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]
            for domain in ("Page", "Runtime", "Log"):
                self.call(f"{domain}.enable", session=True)
            self.call(
                "Emulation.setDeviceMetricsOverride",
                session=True,
                width=width,
                height=height,
                deviceScaleFactor=1,
                mobile=False,
            )
        except BaseException:
            self.close()  # a browser that did not come up is not left running
            raise

    def _read(self, fd: int) -> None:
        buf = b""
        with os.fdopen(fd, "rb", buffering=0) as f:
            while chunk := f.read(1 << 16):
                buf += chunk
                *messages, buf = buf.split(b"\0")
                for text in messages:
                    message = json.loads(text)
                    (self.replies.put if "id" in message else self.events.append)(message)
        self.replies.put(None)  # the browser is gone

    def call(self, method: str, session: bool = False, timeout: float = 30, **params) -> dict:
        self.next_id += 1
        message = {"id": self.next_id, "method": method, "params": params}
        if session:
            message["sessionId"] = self.session
        self.write.write(json.dumps(message).encode() + b"\0")
        end = time.monotonic() + timeout
        while True:
            try:
                reply = self.replies.get(timeout=max(0.01, end - time.monotonic()))
            except queue.Empty:
                raise AssertionError(f"{method}: no reply from Chromium in {timeout} s") from None
            if reply is None:
                raise AssertionError(f"Chromium exited: {self.log_text()}")
            if reply["id"] == self.next_id:
                if "error" in reply:
                    raise AssertionError(f"{method}: {reply['error']}")
                return reply["result"]

    def wait_event(self, method: str, since: int, timeout: float = 30) -> dict:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            for event in self.events[since:]:
                if event.get("method") == method:
                    return event
            time.sleep(0.01)
        raise AssertionError(f"no {method} in {timeout} s")

    def open(self, path: Path, timeout: float = 30) -> float:
        """Load a file; the seconds until its load event and its script marked it ready."""
        start, since = time.monotonic(), len(self.events)
        self.call("Page.navigate", session=True, url=path.resolve().as_uri())
        self.wait_event("Page.loadEventFired", since, timeout)
        self.js("document.documentElement.dataset.ready === '1' || new Promise(r => setTimeout(r, 50))")
        assert self.js("document.documentElement.dataset.ready") == "1", self.errors()
        return time.monotonic() - start

    def js(self, expression: str):
        result = self.call(
            "Runtime.evaluate", session=True, expression=expression, awaitPromise=True, returnByValue=True
        )
        if "exceptionDetails" in result:
            raise AssertionError(f"{expression}: {result['exceptionDetails']}")
        return result["result"].get("value")

    def errors(self) -> list[str]:
        """Console errors, uncaught exceptions and failed loads (CSP violations among them) so far."""
        found = []
        for event in self.events:
            method, params = event.get("method"), event.get("params", {})
            if method == "Runtime.exceptionThrown":
                found.append(json.dumps(params["exceptionDetails"])[:500])
            elif method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert", "warning"):
                found.append(" ".join(str(a.get("value", a.get("description"))) for a in params.get("args", [])))
            elif method == "Log.entryAdded" and params["entry"].get("level") in ("error", "warning"):
                found.append(f"{params['entry'].get('source')}: {params['entry'].get('text')}")
        return found

    def screenshot(self, path: Path) -> None:
        data = self.call("Page.captureScreenshot", session=True, format="png")["data"]
        path.write_bytes(base64.b64decode(data))

    def log_text(self) -> str:
        self.log.flush()
        return (Path(self.log.name).read_bytes()[-2000:]).decode(errors="replace")

    def kill(self) -> None:
        with _suppress():
            os.killpg(self.proc.pid, signal.SIGKILL)  # the group this test started, nothing else

    def close(self) -> None:
        self.watchdog.cancel()
        self.kill()
        with _suppress():
            self.proc.wait(10)
        with _suppress():
            self.write.close()
        self.log.close()


class _suppress:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return exc[0] is not None and issubclass(exc[0], (OSError, subprocess.TimeoutExpired, ProcessLookupError))


@pytest.fixture
def browser(tmp_path):
    binary = chromium_binary()
    if binary is None:
        pytest.skip("no Chromium found: install the 'chromium' system package (.ci/run does) or set SEGSOFT_CHROMIUM")
    profile = tmp_path / "chromium-profile"
    profile.mkdir()
    b = Browser(binary, profile)
    try:
        yield b
    finally:
        b.close()


# table cells, in order: picture, image, status, size, k, iterations, log-likelihood, seconds, pictures/error
CELLS = "[...document.querySelectorAll('#rows tr')].map(tr => [...tr.cells].map(td => td.textContent))"


def click_heading(browser: Browser, label: str) -> None:
    browser.js(
        f"[...document.querySelectorAll('#images th button')].find(b => b.textContent === {json.dumps(label)}).click()"
    )


def test_batch_report_in_the_browser(tmp_path, browser):
    inputs = tmp_path / "photos"
    inputs.mkdir()
    for i, name in enumerate(("b.png", "a.png", "c.png")):
        PILImage.fromarray(picture(i, 24 + 8 * i, 32 + 8 * i)).save(inputs / name)
    (inputs / "broken.png").write_text("this is not a picture\n")
    result = run_cli("batch", "photos", "-o", "out", "-k", "3", "-j", "1", cwd=tmp_path)
    assert result.returncode == 1 and "broken.png" in result.stderr  # one file failed: exit 1, as always
    assert "report out/report.html" in result.stdout
    with open(tmp_path / "out" / "summary.csv", newline="") as f:
        summary = {Path(r["path"]).name: r for r in csv.DictReader(f)}

    browser.open(tmp_path / "out" / REPORT_NAME)
    # every thumbnail decodes
    sizes = browser.js(
        """(async () => {
            const imgs = [...document.querySelectorAll('#rows img')];
            for (const i of imgs) i.scrollIntoView();
            const end = Date.now() + 10000;
            while (imgs.some(i => !i.complete) && Date.now() < end) await new Promise(r => setTimeout(r, 20));
            return imgs.map(i => [i.getAttribute('loading'), i.naturalWidth, i.naturalHeight]);
        })()"""
    )
    assert len(sizes) == 3 and all(lazy == "lazy" and w > 0 and h > 0 for lazy, w, h in sizes), sizes
    # the links lead to files that exist
    hrefs = browser.js("[...document.querySelectorAll('#rows a')].map(a => a.href)")
    assert hrefs and all(Path(h.removeprefix("file://")).exists() for h in hrefs), hrefs
    assert any(h.endswith("/a/montage.png") for h in hrefs)
    # in the batch's order at first
    rows = browser.js(CELLS)
    assert [Path(r[1]).name for r in rows] == ["a.png", "b.png", "broken.png", "c.png"]
    # the failed row shows its error line, as summary.csv does
    failed = next(r for r in rows if r[1].endswith("broken.png"))
    assert failed[2] == "failed" and failed[8] == summary["broken.png"]["error"] != ""
    # sorting by size: ascending, then descending; the failed row (no size) last both times
    click_heading(browser, "size")
    assert [Path(r[1]).name for r in browser.js(CELLS)] == ["b.png", "a.png", "c.png", "broken.png"]
    assert browser.js("document.querySelector('th[data-key=size]').getAttribute('aria-sort')") == "ascending"
    click_heading(browser, "size")
    assert [Path(r[1]).name for r in browser.js(CELLS)] == ["c.png", "a.png", "b.png", "broken.png"]
    # by log-likelihood: the order summary.csv's numbers give
    click_heading(browser, "log-likelihood")
    expected = sorted(
        (n for n in summary if summary[n]["log_likelihood"]), key=lambda n: float(summary[n]["log_likelihood"])
    )
    shown = browser.js(CELLS)
    assert [Path(r[1]).name for r in shown[:3]] == expected
    assert [float(r[6]) for r in shown[:3]] == sorted(float(r[6]) for r in shown[:3])
    # filtering: by text, by status, and back
    browser.js("const f = document.getElementById('filter'); f.value = 'BROKEN'; f.dispatchEvent(new Event('input'))")
    assert [r[1] for r in browser.js(CELLS)] == [str(Path("photos") / "broken.png")]
    browser.js("const g = document.getElementById('filter'); g.value = ''; g.dispatchEvent(new Event('input'))")
    browser.js("document.getElementById('count-ok').click()")
    assert sorted(Path(r[1]).name for r in browser.js(CELLS)) == ["a.png", "b.png", "c.png"]
    assert browser.js("document.getElementById('range').textContent") == "1\u20133 of 3 (of 4)"
    browser.js("const s = document.getElementById('status'); s.value = 'failed'; s.dispatchEvent(new Event('change'))")
    assert [r[2] for r in browser.js(CELLS)] == ["failed"]
    assert browser.errors() == []


def test_ten_thousand_images_load_fast_and_render_one_page(tmp_path, browser):
    out = tmp_path / "out"
    (out / "pic").mkdir(parents=True)
    PILImage.fromarray(picture(5)).save(out / "pic" / "overlay.png")
    PILImage.fromarray(picture(5)).save(out / "pic" / "montage.png")
    n = 10_000
    rng = np.random.default_rng(0)
    seconds = rng.uniform(0.5, 20, n).round(3)
    rows = [
        BatchResult(
            f"photos/img_{i:05d}.jpg",
            "ok",
            4000,
            3000,
            4,
            int(rng.integers(5, 90)),
            True,
            float(rng.normal(-3, 1)),
            None,
            float(seconds[i]),
            output=str(out / "pic"),
        )
        if i % 97
        else BatchResult(f"photos/img_{i:05d}.jpg", "failed", error=f"broken file {i}", seconds=0.01)
        for i in range(n)
    ]
    start = time.monotonic()
    page = write_report(out, rows, seconds=3600.0)
    assert time.monotonic() - start < 10  # writing the page is quick too (10,000 folders are looked at)
    assert page.stat().st_size < 8_000_000
    loaded = browser.open(page)
    assert loaded < 10, f"took {loaded:.1f} s to load"
    assert browser.js("document.querySelectorAll('#rows tr').length") == 100
    # a thumbnail for each ok row of the page (rows 0 and 97 failed), each loaded lazily
    assert browser.js("document.querySelectorAll('#rows img').length") == 98
    assert browser.js("document.querySelectorAll('#rows img[loading=lazy]').length") == 98
    assert browser.js("document.getElementById('range').textContent") == "1\u2013100 of 10000"
    # sorting all 10,000 rows by seconds, slowest first
    t = browser.js(
        "(() => { const t = performance.now(); "
        "[...document.querySelectorAll('#images th button')].find(b => b.textContent === 'seconds').click();"
        "return performance.now() - t; })()"
    )
    assert t < 2000, f"sorting took {t:.0f} ms"
    click_heading(browser, "seconds")  # a second click: descending
    top = [float(r[7]) for r in browser.js(CELLS)[:5]]
    slowest = sorted(seconds[[i for i in range(n) if i % 97]], reverse=True)[:5]
    assert np.allclose(top, slowest, atol=0.0051), (top, slowest)  # shown with 2 decimals
    browser.js("document.getElementById('next').click()")
    assert browser.js("document.getElementById('range').textContent") == "101\u2013200 of 10000"
    assert browser.js("document.querySelectorAll('#rows tr').length") == 100
    browser.js("document.getElementById('count-failed').click()")
    assert (
        browser.js("document.getElementById('range').textContent") == f"1\u2013100 of {len(range(0, n, 97))} (of 10000)"
    )
    assert browser.errors() == []


# ----------------------------------------------------------------------------- the README's screenshot


def make_screenshot(target: Path) -> None:
    """A shared-model batch of the sample images and one broken file, its report captured."""
    import tempfile

    binary = chromium_binary()
    if binary is None:
        raise SystemExit("no Chromium found")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        photos = tmp / "photos"
        photos.mkdir()
        for name in ("coffee.jpg", "chelsea.jpg", "astronaut.jpg", "rocket.jpg"):
            shutil.copy(ROOT / "images" / name, photos / name)
        (photos / "notes.png").write_text("a text file with an image's name\n")
        result = run_cli("batch", "photos", "-o", "results", "-k", "4", "--shared-model", "-q", cwd=tmp)
        print(result.stdout, result.stderr)
        profile = tmp / "profile"
        profile.mkdir()
        b = Browser(binary, profile, width=1200, height=820)
        try:
            b.open(tmp / "results" / REPORT_NAME)
            b.js("""(async () => { const imgs = [...document.querySelectorAll('#rows img')];
                     while (imgs.some(i => !i.complete)) await new Promise(r => setTimeout(r, 20)); })()""")
            b.screenshot(target)
            assert b.errors() == [], b.errors()
        finally:
            b.close()


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--screenshot":
        make_screenshot(Path(sys.argv[2]))
    else:
        raise SystemExit("usage: python tests/test_report.py --screenshot docs/report.png")
