"""``report.html``: the results of a run or a batch as one static page for the browser.

:func:`write_report` builds the page from what an output folder holds: the
batch's rows (:class:`segsoft.batch.BatchResult`, or ``summary.csv`` when
none are given), each image folder's ``model.json`` and pictures. So it
works during a batch (``segsoft batch`` and ``segsoft apply`` call it after
``summary.csv``), for one image (``segsoft run --report``) and on any
existing output folder::

    >>> from segsoft.report import write_report
    >>> write_report("outputs")  # doctest: +SKIP
    PosixPath('outputs/report.html')

The page
--------
* One self-contained file: the CSS and the script are inline, nothing is
  fetched from the network (a Content-Security-Policy says so to the
  browser: scripts only with this page's script hash, no connections).
* A summary (counts of ok, skipped and failed images, time, settings), the
  shared model's legend once (with ``--shared-model`` or ``apply``), the
  failures with their error line, and a table of every image: thumbnail
  (linking to the montage), status, size, k, iterations, log-likelihood,
  seconds and links to the image's pictures and ``model.json``. The table
  sorts by any column (click its heading) and filters by status and text.
* It stays responsive at 10,000 images and more: the rows are a JSON blob
  embedded in the page (escaped so that no file name can end the script
  element), and only one page of rows (100 by default) is in the document
  at a time; thumbnails load lazily.
* Links are relative, so the output folder can be moved or served as it
  is; every file name is HTML-escaped where it is text and URL-quoted where
  it is a link.
* Thumbnails: an overlay of at most :data:`THUMB_DIRECT` pixels on its
  long side is shown as it is; a larger one gets a small PNG in
  ``OUTPUT/report_thumbs/`` (made once, remade when its overlay is newer),
  so a page of 12-megapixel photos does not make the browser decode
  hundreds of megapixels.

Every file is written atomically (a temporary name, then a rename) and only
inside the output folder.
"""

from __future__ import annotations

import base64
import csv
import datetime as _dt
import hashlib
import html
import json
import math
import os
import re
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import suppress
from dataclasses import asdict, is_dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

from PIL import Image as PILImage

from . import __version__
from .errors import SegsoftError
from .io import atomic_path, atomic_write_bytes, inside

__all__ = ["REPORT_NAME", "THUMBS_FOLDER", "THUMB_BOX", "THUMB_DIRECT", "report_html", "report_rows", "write_report"]

REPORT_NAME = "report.html"
THUMBS_FOLDER = "report_thumbs"
#: The thumbnail box in the table, CSS pixels (width, height).
THUMB_BOX = (96, 72)
#: Overlays up to this many pixels on the long side are their own thumbnail; larger ones get one
#: made (2x the box, for high-DPI screens). A 320 px PNG decodes in well under a millisecond.
THUMB_DIRECT = 320
_THUMB_MADE = 2 * THUMB_BOX[0]
#: Rows per page in the table (the reader can choose others).
PAGE_SIZE = 100
#: Failures listed in the page's own HTML (all of them are in the table, filtered by status).
_FAILURES_LISTED = 200
#: Folders looked at when there is no summary.csv to go by (a bound on a planted deep tree).
_MAX_FOLDERS = 1_000_000

_STATUSES = ("ok", "skipped", "failed")
_PICTURES = ("montage.png", "overlay.png", "labels.png", "uncertainty.png", "regions.png", "k_selection.png")
_DATA_FILES = ("model.json", "probabilities.npy", "probabilities.tif", "labels.tif", "regions.npy")
_HEATMAP = re.compile(r"^prob_(\d+)\.png$")
_FRAME = re.compile(r"^(.*) \[frame (\d+)\]$")
# segsoft.io.atomic_path's temporary names for the thumbnails (".<key>.<8 hex>.tmp.png")
_THUMB_TEMP = re.compile(r"^\.[0-9a-f]{16}\.[0-9a-f]{8}\.tmp\.png$")


# ----------------------------------------------------------------------------- public


def write_report(
    output_dir: str | os.PathLike,
    rows: Sequence[Any] | None = None,
    *,
    settings: Mapping[str, Any] | None = None,
    title: str | None = None,
    seconds: float | None = None,
    total: int | None = None,
    interrupted: bool = False,
    thumbnails: bool = True,
) -> Path:
    """Write ``output_dir/report.html`` for the images of a batch, or of one ``run``.

    Parameters
    ----------
    output_dir : str or os.PathLike
        The output folder: of a batch (image folders below it, ``summary.csv``)
        or of one image (its ``model.json`` and pictures in it).
    rows : sequence of BatchResult or dict, optional
        One row per image, with the :data:`segsoft.batch.SUMMARY_COLUMNS`
        fields and ``output`` (the image's folder). None: read
        ``summary.csv``, or with none the folder's ``model.json`` files.
    settings : mapping, optional
        The batch's settings, shown in the summary (default: those recorded
        in the first complete image folder's ``model.json``).
    title : str, optional
        The page title (default: "segsoft report: <folder name>").
    seconds : float, optional
        The batch's wall-clock time (default: the sum of the images' times).
    total : int, optional
        Images the batch was given; more than ``len(rows)`` when it was
        interrupted.
    interrupted : bool
        Say on the page that the batch was stopped before the end.
    thumbnails : bool
        Make small thumbnails of large overlays (see :data:`THUMB_DIRECT`);
        False links the overlays themselves.

    Returns
    -------
    Path
        The report file.

    Raises
    ------
    SegsoftError
        The output folder does not exist, or a file cannot be written there
        (the message names it).

    Examples
    --------
    >>> import tempfile
    >>> from segsoft.batch import BatchResult
    >>> with tempfile.TemporaryDirectory() as out:
    ...     rows = [BatchResult("a.png", "failed", error="not an image"), BatchResult("b.png", "skipped")]
    ...     page = write_report(out, rows).read_text()
    >>> "not an image" in page, page.count('<li class="failure">')
    (True, 1)
    """
    out = Path(os.fsdecode(output_dir))
    if not out.is_dir():
        raise SegsoftError(f"{out}: no such output folder")
    entries, single = report_rows(out, rows)
    thumbs = _Thumbnails(out, enabled=thumbnails and not single)
    for entry in entries:
        thumbs.plan(entry)
    thumbs.make()
    record = _first_record(out, entries)
    legend = None
    if record is not None and (single or _is_shared(record)):
        # one image's shares of the pixels would mislead as the shared model's: its weights only
        legend = _legend(record, shares=single)
    if settings is None and record is not None:
        settings = record.get("settings") if isinstance(record.get("settings"), dict) else None
    if title is None:
        title = (
            f"segsoft: {entries[0]['path']}" if single and entries else f"segsoft report: {_text(out.resolve().name)}"
        )
    page = report_html(
        entries,
        title=title,
        settings=settings,
        seconds=seconds,
        total=total,
        interrupted=interrupted,
        legend=legend,
        single=single,
    )
    target = inside(out, out / REPORT_NAME)
    atomic_write_bytes(target, page.encode("utf-8"))
    return target


def report_rows(output_dir: str | os.PathLike, rows: Sequence[Any] | None = None) -> tuple[list[dict[str, Any]], bool]:
    """The table's rows for an output folder, and whether it is one image's folder.

    Each row is a dict of the summary columns plus ``folder`` (the image
    folder relative to ``output_dir``, POSIX, or None when it has none inside
    it) and ``files`` (the pictures and data files found there).

    Examples
    --------
    >>> import tempfile
    >>> with tempfile.TemporaryDirectory() as out:
    ...     os.makedirs(f"{out}/a"); open(f"{out}/a/overlay.png", "wb").close()
    ...     rows, single = report_rows(out, [{"path": "in/a.png", "status": "ok", "output": f"{out}/a"}])
    >>> rows[0]["folder"], rows[0]["files"], single
    ('a', ['overlay.png'], False)
    """
    out = Path(os.fsdecode(output_dir))
    single = False
    if rows is None:
        summary = out / "summary.csv"
        if summary.is_file():
            rows = _read_summary(summary, out)
        elif (out / "model.json").is_file():
            single = True
            rows = [_record_row(out, out)]
        else:
            rows = [_record_row(folder, out) for folder in _model_folders(out)]
    real_out = os.path.realpath(out)
    entries = [_normalise(row, out, real_out) for row in rows]
    for entry in entries:
        entry["files"] = _files(out, entry["folder"])
        if not entry["files"]:
            entry["folder"] = None  # e.g. a failed image's folder: nothing there to link
    return entries, single


def report_html(
    rows: Sequence[Mapping[str, Any]],
    *,
    title: str = "segsoft report",
    settings: Mapping[str, Any] | None = None,
    seconds: float | None = None,
    total: int | None = None,
    interrupted: bool = False,
    legend: Sequence[Mapping[str, Any]] | None = None,
    single: bool = False,
) -> str:
    """The page itself, as text: the summary, legend and failures in HTML, the rows as embedded JSON.

    ``rows`` are :func:`report_rows` rows; each may also hold ``thumb``, the
    thumbnail's path relative to the page. ``legend`` is a list of
    ``{"index", "color", "weight", "share"}`` (share of the pixels, or None).

    Examples
    --------
    >>> page = report_html([{"path": "</script><b>.png", "status": "failed", "error": "bad", "folder": None}])
    >>> "</script><b>" in page, "&lt;/script&gt;&lt;b&gt;.png" in page
    (False, True)
    """
    counts = {status: sum(row.get("status") == status for row in rows) for status in _STATUSES}
    done = len(rows)
    total = done if total is None else int(total)
    if seconds is None:
        # no wall-clock time (a folder read back): the images' own times, summed
        times = [row["seconds"] for row in rows if isinstance(row.get("seconds"), (int, float))]
        time_text = f"{_num(sum(times), 1)} s of image time" if times else "–"
    else:
        time_text = f"{_num(seconds, 1)} s"
    data = {
        "rows": [_row_json(row) for row in rows],
        "pageSize": PAGE_SIZE,
        "thumb": list(THUMB_BOX),
        "single": single,
    }
    esc = _esc
    written = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    parts = [
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n',
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n',
        f'<meta http-equiv="Content-Security-Policy" content="{_CSP}">\n',
        '<meta name="generator" content="segsoft ' + esc(__version__) + '">\n',
        '<link rel="icon" href="data:,">\n',
        f"<title>{esc(title)}</title>\n<style>{_CSS}</style>\n</head>\n<body>\n",
        f"<header><h1>{esc(title)}</h1>\n",
        f'<p class="meta">segsoft {esc(__version__)} · written {esc(written)}</p></header>\n<main>\n',
    ]
    if interrupted or done < total:
        parts.append(
            f'<p class="banner" role="status">Interrupted: {done} of {total} image{_s(total)} done. '
            "Rerun the same command with --skip-existing to finish the rest.</p>\n"
        )
    parts.append('<section class="summary" aria-label="summary"><dl class="counts">')
    parts.append(f'<div><dt>images</dt><dd id="count-total">{total}</dd></div>')
    for status in _STATUSES:
        parts.append(
            f'<div class="c-{status}"><dt>{status}</dt><dd><button type="button" class="count" '
            f'data-status="{status}" id="count-{status}" title="show the {status} images">'
            f"{counts[status]}</button></dd></div>"
        )
    parts.append(f'<div><dt>time</dt><dd id="time">{esc(time_text)}</dd></div></dl>\n')
    if settings:
        parts.append('<details class="settings"><summary>settings</summary><table><tbody>')
        for key, value in settings.items():
            if value is None:
                continue
            parts.append(f'<tr><th scope="row">{esc(_text(key))}</th><td>{esc(_setting(value))}</td></tr>')
        parts.append("</tbody></table></details>\n")
    parts.append("</section>\n")
    if legend:
        heading = "clusters" if single else "clusters of the shared model"
        parts.append(f'<section class="legend" aria-label="legend"><h2>{heading}</h2><ul>')
        for c in legend:
            share = c.get("share")
            share_text = f" · {_num(100 * share, 1)} % of the pixels" if isinstance(share, (int, float)) else ""
            weight = c.get("weight")
            weight_text = f" · weight {_num(weight, 3)}" if isinstance(weight, (int, float)) else ""
            parts.append(
                f'<li><span class="swatch" data-color="{esc(c["color"])}"></span>'
                f"<b>{int(c['index'])}</b> <code>{esc(c['color'])}</code>{weight_text}{share_text}</li>"
            )
        parts.append("</ul></section>\n")
    failures = [row for row in rows if row.get("status") == "failed"]
    if failures:
        parts.append(f'<section class="failures" aria-label="failures"><h2>{len(failures)} failed</h2><ul>')
        for row in failures[:_FAILURES_LISTED]:
            parts.append(
                f'<li class="failure"><span class="path">{esc(_text(row["path"]))}</span>: '
                f'<span class="error">{esc(_text(row.get("error") or "failed"))}</span></li>'
            )
        parts.append("</ul>")
        if len(failures) > _FAILURES_LISTED:
            parts.append(f"<p>… and {len(failures) - _FAILURES_LISTED} more: filter the table by status failed.</p>")
        parts.append("</section>\n")
    if single and rows and "montage.png" in rows[0].get("files", ()):
        src = _href(rows[0]["folder"], "montage.png")
        parts.append(f'<section class="montage"><a href="{src}"><img src="{src}" alt="montage"></a></section>\n')
    parts.append(_TABLE)
    parts.append('<script type="application/json" id="segsoft-data">')
    parts.append(_script_json(data))
    parts.append("</script>\n")
    parts.append(f"<script>{_JS}</script>\n</body>\n</html>\n")
    return "".join(parts)


# ----------------------------------------------------------------------------- rows


def _normalise(row: Any, out: Path, real_out: str) -> dict[str, Any]:
    """A row as a plain dict with typed values and its folder relative to ``out``."""
    if is_dataclass(row) and not isinstance(row, type):
        row = dict(vars(row)) if hasattr(row, "__dict__") else asdict(row)  # vars: 10x faster, no deep copy
    elif not isinstance(row, Mapping):
        raise TypeError(f"a report row must be a BatchResult or a mapping, not {type(row).__name__}")
    entry: dict[str, Any] = {
        "path": _text(row.get("path", "")),
        "status": str(row.get("status") or "failed"),
        "width": _int(row.get("width")),
        "height": _int(row.get("height")),
        "k": _int(row.get("k")),
        "iterations": _int(row.get("iterations")),
        "converged": _bool(row.get("converged")),
        "log_likelihood": _float(row.get("log_likelihood")),
        "bic": _float(row.get("bic")),
        "seconds": _float(row.get("seconds")),
        "error": _text(row.get("error") or ""),
        "folder": None,
    }
    if row.get("folder") is not None:  # relative to out already (read back from the folder)
        entry["folder"] = _relative(out, out / os.fsdecode(row["folder"]), real_out)
    elif row.get("output"):
        entry["folder"] = _relative(out, row["output"], real_out)
    if "thumb" in row:
        entry["thumb"] = row["thumb"]
    return entry


def _relative(out: Path, folder: Any, real_out: str | None = None) -> str | None:
    """``folder`` relative to ``out`` as a POSIX path ("" for ``out`` itself), None when outside it
    (also through a link: a link that leads out of the folder is no link of the report's)."""
    real_out = real_out or os.path.realpath(out)
    try:
        folder = os.fsdecode(folder)
        rel = os.path.relpath(os.path.abspath(folder), os.path.abspath(out))
        real = os.path.realpath(os.path.join(out, rel))
        if os.path.commonpath([real_out, real]) != real_out:
            return None
    except (ValueError, OSError):
        return None
    rel = Path(rel).as_posix()
    if rel in (".", ""):
        return ""
    return None if rel.split("/")[0] == ".." else rel


def _files(out: Path, folder: str | None) -> list[str]:
    """The known output files in an image folder: pictures first, heatmaps in cluster order."""
    if folder is None:
        return []
    try:
        with os.scandir(out / folder if folder else out) as it:
            names = {e.name for e in it if e.is_file()}
    except OSError:
        return []
    heatmaps = sorted((int(m.group(1)), n) for n in names if (m := _HEATMAP.match(n)))
    return [n for n in _PICTURES if n in names] + [n for _, n in heatmaps] + [n for n in _DATA_FILES if n in names]


def _read_summary(path: Path, out: Path) -> list[dict[str, Any]]:
    """summary.csv's rows, each matched with its image folder through the folders' model.json."""
    try:
        with open(path, newline="", encoding="utf-8", errors="surrogateescape") as f:
            rows = list(csv.DictReader(f))
    except (OSError, csv.Error) as exc:
        raise SegsoftError(f"{path}: cannot read ({exc})") from None
    by_path: dict[tuple[str, int | None], str] = {}
    by_name: dict[tuple[str, int | None], list[str]] = {}
    seconds: dict[str, Any] = {}  # each image folder's own recorded time
    for folder in _model_folders(out):
        record = _read_record(folder / "model.json")
        image = (record or {}).get("image") or {}
        source = image.get("path")
        if not isinstance(source, str):
            continue
        m = re.match(r"^frame_(\d+)$", folder.name)
        key_page = int(m.group(1)) if m else None
        rel = _relative(out, folder)
        timings = record.get("timings")
        seconds[rel] = timings.get("total") if isinstance(timings, dict) else None
        by_path.setdefault((os.path.realpath(source), key_page), rel)
        by_name.setdefault((os.path.basename(source), key_page), []).append(rel)
    for row in rows:
        path = row.get("path") or ""
        m = _FRAME.match(path)
        base, page = (m.group(1), int(m.group(2))) if m else (path, None)
        folder = by_path.get((os.path.realpath(base), page))
        if folder is None:
            named = by_name.get((os.path.basename(base), page), [])
            folder = named[0] if len(named) == 1 else None  # two photos of one name: no guess
        row["folder"] = folder
        if row.get("status") == "skipped" and folder is not None:
            # complete outputs of an earlier run (--skip-existing): the page shows what the folder holds, so the
            # image counts as done, with the time its own run recorded
            row["status"], row["seconds"] = "ok", seconds[folder]
    return rows


def _model_folders(out: Path) -> list[Path]:
    """Folders under ``out`` holding a model.json, in path order (links are not followed)."""
    found = []
    for seen, (root, dirs, files) in enumerate(os.walk(out)):
        dirs[:] = sorted(d for d in dirs if not d.startswith(".") and d != THUMBS_FOLDER)
        if seen >= _MAX_FOLDERS:
            break
        if "model.json" in files and Path(root) != out:
            found.append(Path(root))
    return found


def _record_row(folder: Path, out: Path) -> dict[str, Any]:
    """A row for an image folder read back from its model.json (a run, or a batch without summary.csv)."""
    record = _read_record(folder / "model.json") or {}
    image, result = record.get("image") or {}, record.get("result") or {}
    timings = record.get("timings") or {}
    path = image.get("path") if isinstance(image.get("path"), str) else folder.name
    total = timings.get("total") if isinstance(timings, dict) else None
    return {
        "path": os.path.basename(path) if os.path.isabs(path) else path,  # no machine's absolute path on the page
        "status": "ok" if record else "failed",
        "width": image.get("width"),
        "height": image.get("height"),
        "k": result.get("k"),
        "iterations": result.get("n_iter"),
        "converged": result.get("converged"),
        "log_likelihood": result.get("log_likelihood"),
        "bic": result.get("bic"),
        "seconds": total,
        "error": "" if record else "model.json is missing or unreadable",
        "folder": _relative(out, folder),
    }


def _read_record(path: Path) -> dict[str, Any] | None:
    from .modelfile import read_json  # bounded: a planted huge or deep file is just "no record"

    try:
        record = read_json(path)
    except SegsoftError:
        return None
    return record if isinstance(record, dict) else None


def _first_record(out: Path, rows: Sequence[Mapping[str, Any]]) -> dict[str, Any] | None:
    """The model.json of the first complete image, for the settings and the shared model's legend."""
    for row in rows:
        if row.get("status") in ("ok", "skipped") and "model.json" in row.get("files", ()):
            record = _read_record(out / (row["folder"] or ".") / "model.json")
            if record is not None:
                return record
    return None


def _is_shared(record: Mapping[str, Any]) -> bool:
    settings = record.get("settings")
    return isinstance(settings, dict) and ("shared_model" in settings or "applied_model" in settings)


def _legend(record: Mapping[str, Any], shares: bool = True) -> list[dict[str, Any]] | None:
    """The clusters' colours as model.json records them (so ``--palette mean`` shows its own)."""
    clusters = record.get("clusters")
    if not isinstance(clusters, list):
        return None
    legend = []
    for j, c in enumerate(clusters):
        if not isinstance(c, dict):
            return None
        color = c.get("display_color")
        if not (isinstance(color, str) and re.fullmatch(r"#[0-9a-fA-F]{6}", color)):
            from .render import cluster_colors  # an older file without colours: the categorical palette

            color = "#{:02x}{:02x}{:02x}".format(*map(int, cluster_colors(len(clusters))[j]))
        legend.append(
            {
                "index": j,
                "color": color.lower(),
                "weight": _float(c.get("weight")),
                "share": _float(c.get("pixel_fraction")) if shares else None,
            }
        )
    return legend


# ----------------------------------------------------------------------------- thumbnails


class _Thumbnails:
    """Decide each row's thumbnail and make the ones that large overlays need."""

    def __init__(self, out: Path, enabled: bool):
        self.out, self.enabled = out, enabled
        self.todo: list[tuple[Path, Path]] = []

    def plan(self, entry: dict[str, Any]) -> None:
        if "thumb" in entry or entry["folder"] is None or "overlay.png" not in entry["files"]:
            entry.setdefault("thumb", None)
            return
        source = self.out / (entry["folder"] or ".") / "overlay.png"
        entry["thumb"] = _href(entry["folder"], "overlay.png")
        if not self.enabled:
            return
        try:
            with PILImage.open(source) as im:  # the header only: no decoding
                size = im.size
        except (OSError, SyntaxError, ValueError, PILImage.DecompressionBombError):
            entry["thumb"] = None  # not a picture the browser could show either
            return
        if max(size) <= THUMB_DIRECT:
            return
        # one name per image folder, stable across runs, whatever characters the folder's name holds
        key = hashlib.blake2b(os.fsencode(entry["folder"]), digest_size=8).hexdigest()
        target = self.out / THUMBS_FOLDER / f"{key}.png"
        entry["thumb"] = f"{THUMBS_FOLDER}/{key}.png"
        with suppress(OSError):
            if os.stat(target).st_mtime_ns >= os.stat(source).st_mtime_ns:
                return  # made from this overlay already (a rerun, a resumed batch)
        self.todo.append((source, target))

    def make(self) -> None:
        if not self.todo:
            return
        folder = inside(self.out, self.out / THUMBS_FOLDER)
        with suppress(OSError), os.scandir(folder) as it:  # what a killed earlier report left half-written
            for e in it:
                if _THUMB_TEMP.match(e.name):
                    with suppress(OSError):
                        os.unlink(e.path)
        # Pillow releases the GIL while it decodes: a few threads make 1000 thumbnails a few times faster
        with ThreadPoolExecutor(max_workers=min(4, os.cpu_count() or 1)) as pool:
            list(pool.map(_thumbnail, *zip(*self.todo)))


def _thumbnail(source: Path, target: Path) -> None:
    try:
        with PILImage.open(source) as im:
            im.draft("RGB", (_THUMB_MADE, _THUMB_MADE))
            im = im.convert("RGBA" if "A" in im.getbands() or "transparency" in im.info else "RGB")
            im.thumbnail((_THUMB_MADE, _THUMB_MADE), PILImage.Resampling.LANCZOS, reducing_gap=3.0)
            with atomic_path(target) as tmp:
                im.save(tmp, format="PNG", optimize=False)
    except (OSError, SyntaxError, ValueError, PILImage.DecompressionBombError):
        pass  # the table links the overlay itself: a bad picture fails there, not the report


# ----------------------------------------------------------------------------- values and escaping


def _text(value: Any) -> str:
    """Display text: a file name that is not UTF-8 (surrogate-escaped bytes) shows U+FFFD, not an error."""
    text = os.fsdecode(value) if isinstance(value, (bytes, os.PathLike)) else str(value)
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


def _esc(text: str) -> str:
    return html.escape(text, quote=True)


def _href(folder: str | None, name: str) -> str:
    """A relative URL to ``folder/name``, each byte of the file name quoted as needed."""
    rel = f"{folder}/{name}" if folder else name
    return quote(os.fsencode(rel), safe="/")


def _script_json(value: Any) -> str:
    """JSON that is safe inside ``<script type="application/json">``: no ``<``, ``>`` or ``&``
    (so no ``</script>`` or ``<!--``), no line separators; ASCII only."""
    text = json.dumps(value, ensure_ascii=True, separators=(",", ":"), allow_nan=False)
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def _row_json(row: Mapping[str, Any]) -> dict[str, Any]:
    """What the page's script needs of a row, short keys (10,000 rows are about 2 MB)."""
    folder = row.get("folder")
    files = list(row.get("files") or ())
    out: dict[str, Any] = {
        "p": _text(row.get("path", "")),
        "s": row.get("status"),
        "w": row.get("width"),
        "h": row.get("height"),
        "k": row.get("k"),
        "i": row.get("iterations"),
        "c": row.get("converged"),
        "l": _float(row.get("log_likelihood")),
        "b": _float(row.get("bic")),
        "t": _float(row.get("seconds")),
    }
    if row.get("error"):
        out["e"] = _text(row["error"])
    if folder is not None:
        out["d"] = _href(folder, "") if folder else ""
        out["f"] = files
    if row.get("thumb"):
        out["th"] = row["thumb"]
    return {k: v for k, v in out.items() if v is not None}


def _int(value: Any) -> int | None:
    if value is None or value == "" or isinstance(value, bool):
        return None
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def _float(value: Any) -> float | None:
    if value is None or value == "" or isinstance(value, bool):
        return None
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


def _bool(value: Any) -> bool | None:
    if isinstance(value, bool):
        return value
    if value in ("True", "true", "1"):
        return True
    if value in ("False", "false", "0"):
        return False
    return None


def _num(value: float, digits: int) -> str:
    return f"{value:,.{digits}f}"


def _s(n: int) -> str:
    return "" if n == 1 else "s"


def _setting(value: Any) -> str:
    if isinstance(value, (list, tuple)):
        return ", ".join(_setting(v) for v in value)
    if isinstance(value, (dict,)):
        return json.dumps(value, sort_keys=True)
    if isinstance(value, bool):
        return "yes" if value else "no"
    return _text(value)


# ----------------------------------------------------------------------------- the page's CSS and script

_CSS = """
:root{--fg:#1d2430;--muted:#5b6474;--line:#d9dde4;--bg:#fff;--alt:#f6f7f9;--ok:#1a7f37;--skip:#6e7781;--bad:#c9252d}
*{box-sizing:border-box}
body{margin:0;font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,"Helvetica Neue",Arial,sans-serif;color:var(--fg);background:var(--bg)}
header{padding:16px 24px 8px;border-bottom:1px solid var(--line)}
h1{font-size:20px;margin:0 0 2px;overflow-wrap:anywhere}h2{font-size:15px;margin:0 0 8px}
.meta{color:var(--muted);margin:0}
main{padding:12px 24px 32px}
.banner{background:#fff4d6;border:1px solid #e6c35c;padding:8px 12px;border-radius:6px}
.counts{display:flex;flex-wrap:wrap;gap:12px;margin:0 0 12px;padding:0}
.counts div{border:1px solid var(--line);border-radius:8px;padding:6px 14px;min-width:90px}
.counts dt{color:var(--muted);font-size:12px;text-transform:uppercase;letter-spacing:.04em}
.counts dd{margin:0;font-size:22px;font-weight:600}
.counts button.count{font:inherit;color:inherit;background:none;border:0;padding:0;cursor:pointer;text-decoration:underline dotted}
.c-ok dd{color:var(--ok)}.c-skipped dd{color:var(--skip)}.c-failed dd{color:var(--bad)}
.settings{margin:0 0 12px}.settings table{border-collapse:collapse;margin-top:6px}
.settings th,.settings td{text-align:left;padding:2px 12px 2px 0;font-weight:normal}.settings th{color:var(--muted)}
.legend ul{list-style:none;display:flex;flex-wrap:wrap;gap:6px 16px;padding:0;margin:0 0 12px}
.swatch{display:inline-block;width:14px;height:14px;border-radius:3px;border:1px solid rgba(0,0,0,.25);vertical-align:-2px;margin-right:4px}
.failures{border-left:3px solid var(--bad);padding:4px 12px;margin:0 0 16px;background:#fdf3f3}
.failures ul{margin:0;padding-left:18px}.failures .path{font-family:ui-monospace,Menlo,Consolas,monospace;overflow-wrap:anywhere}
.montage img{max-width:100%;height:auto;border:1px solid var(--line)}
.controls{display:flex;flex-wrap:wrap;gap:8px 16px;align-items:center;margin:8px 0}
.controls input[type=search]{min-width:260px;padding:4px 8px}
.pager button{min-width:32px}
table.images{border-collapse:collapse;width:100%}
table.images th,table.images td{border-bottom:1px solid var(--line);padding:4px 8px;text-align:left;vertical-align:middle}
table.images td.n{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
table.images thead th{position:sticky;top:0;background:var(--bg);z-index:1}
table.images thead button{font:inherit;font-weight:600;background:none;border:0;padding:0;cursor:pointer;color:inherit}
th[aria-sort=ascending] button::after{content:" \\25B2"}th[aria-sort=descending] button::after{content:" \\25BC"}
table.images tbody tr:nth-child(even){background:var(--alt)}
td.thumb{width:104px;height:80px}td.thumb img{display:block;object-fit:contain;background:#eee}
td.path{font-family:ui-monospace,Menlo,Consolas,monospace;overflow-wrap:break-word;max-width:40vw}
td.error{color:var(--bad)}
.st{font-weight:600}.st-ok{color:var(--ok)}.st-skipped{color:var(--skip)}.st-failed{color:var(--bad)}
.links a{margin-right:6px;white-space:nowrap}
.empty{color:var(--muted);padding:16px}
"""

_TABLE = """<section class="table" aria-label="images">
<h2>images</h2>
<noscript><p>The table of images needs JavaScript; summary.csv holds the same rows.</p></noscript>
<div class="controls">
<label>filter <input type="search" id="filter" placeholder="file name or error" autocomplete="off"></label>
<label>status <select id="status"><option value="">all</option><option>ok</option><option>skipped</option><option>failed</option></select></label>
<label>rows per page <select id="page-size"><option>50</option><option selected>100</option><option>250</option><option>1000</option></select></label>
<span class="pager"><button type="button" id="prev" aria-label="previous page">&#8249;</button>
<span id="range" aria-live="polite"></span>
<button type="button" id="next" aria-label="next page">&#8250;</button></span>
</div>
<table class="images" id="images">
<thead><tr><th scope="col">picture</th>
<th scope="col" data-key="p"><button type="button">image</button></th>
<th scope="col" data-key="s"><button type="button">status</button></th>
<th scope="col" data-key="size"><button type="button">size</button></th>
<th scope="col" data-key="k"><button type="button">k</button></th>
<th scope="col" data-key="i"><button type="button">iterations</button></th>
<th scope="col" data-key="l"><button type="button">log-likelihood</button></th>
<th scope="col" data-key="t"><button type="button">seconds</button></th>
<th scope="col">pictures and error</th></tr></thead>
<tbody id="rows"></tbody>
</table>
</section>
"""

# The script builds the page of rows with DOM calls (textContent, properties), never from HTML
# strings, so no file name can become markup. Sorting is by the column's value, missing values
# last in either direction, ties in the batch's order.
_JS = r"""
(function () {
  "use strict";
  var data = JSON.parse(document.getElementById("segsoft-data").textContent);
  var rows = data.rows;
  rows.forEach(function (r, n) { r.n = n; r.size = (r.w != null && r.h != null) ? r.w * r.h : null; });
  var state = { key: null, dir: 1, status: "", q: "", page: 0, size: data.pageSize };
  var view = rows;
  var tbody = document.getElementById("rows");
  var $ = function (id) { return document.getElementById(id); };
  var coll = new Intl.Collator(undefined, { numeric: true, sensitivity: "base" });

  function el(tag, cls, text) {
    var e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text != null) e.textContent = text;
    return e;
  }
  function fmt(v, digits) { return v == null ? "" : v.toFixed(digits); }
  function link(href, text) { var a = el("a", null, text); a.href = href; return a; }

  function update() {
    var q = state.q.toLowerCase(), st = state.status;
    view = rows.filter(function (r) {
      if (st && r.s !== st) return false;
      return !q || r.p.toLowerCase().indexOf(q) >= 0 || (r.e || "").toLowerCase().indexOf(q) >= 0;
    });
    if (state.key) {
      var key = state.key, dir = state.dir;
      view.sort(function (a, b) {
        var x = a[key], y = b[key];
        if (x == null || y == null) return (x == null) - (y == null) || a.n - b.n;
        var c = typeof x === "string" ? coll.compare(x, y) : x - y;
        return c * dir || a.n - b.n;
      });
    }
    var pages = Math.max(1, Math.ceil(view.length / state.size));
    state.page = Math.min(state.page, pages - 1);
    render(pages);
  }

  function row(r) {
    var tr = el("tr", "st-row-" + r.s);
    var td = el("td", "thumb");
    if (r.th) {
      var img = el("img");
      var box = data.thumb, w = box[0], h = box[1];
      if (r.w && r.h) { var f = Math.min(box[0] / r.w, box[1] / r.h); w = Math.max(1, Math.round(r.w * f)); h = Math.max(1, Math.round(r.h * f)); }
      img.width = w; img.height = h; img.alt = ""; img.loading = "lazy"; img.decoding = "async";
      img.src = r.th;
      var f0 = r.f && r.f.indexOf("montage.png") >= 0 ? "montage.png" : "overlay.png";
      var a = link(r.d + f0, null); a.title = "open the " + f0.replace(".png", ""); a.appendChild(img);
      td.appendChild(a);
    }
    tr.appendChild(td);
    var p = el("td", "path");
    if (r.d != null) { p.appendChild(link(r.d === "" ? "." : r.d, r.p)); } else { p.textContent = r.p; }
    tr.appendChild(p);
    tr.appendChild(el("td", "st st-" + r.s, r.s));
    tr.appendChild(el("td", "n", r.w != null && r.h != null ? r.w + " \u00d7 " + r.h : ""));
    tr.appendChild(el("td", "n", r.k != null ? String(r.k) : ""));
    tr.appendChild(el("td", "n", r.i != null ? String(r.i) + (r.c === false ? " (not converged)" : "") : ""));
    tr.appendChild(el("td", "n", fmt(r.l, 4)));
    tr.appendChild(el("td", "n", fmt(r.t, 2)));
    var last = el("td", r.e ? "error" : "links");
    if (r.e) { last.textContent = r.e; }
    else if (r.f) {
      var heat = 0;
      r.f.forEach(function (name) {
        var m = /^prob_(\d+)\.png$/.exec(name);
        if (m) { if (heat++ === 0) last.appendChild(document.createTextNode("heatmaps ")); last.appendChild(link(r.d + name, m[1])); }
        else last.appendChild(link(r.d + name, name.replace(/\.(png|json|npy|tif)$/, function (s) { return s === ".json" ? ".json" : ""; })));
      });
    }
    tr.appendChild(last);
    return tr;
  }

  function render(pages) {
    var start = state.page * state.size, part = view.slice(start, start + state.size);
    var frag = document.createDocumentFragment();
    part.forEach(function (r) { frag.appendChild(row(r)); });
    if (!part.length) { var tr = el("tr"), td = el("td", "empty", "no image matches"); td.colSpan = 9; tr.appendChild(td); frag.appendChild(tr); }
    tbody.replaceChildren(frag);
    $("range").textContent = view.length
      ? (start + 1) + "\u2013" + (start + part.length) + " of " + view.length + (view.length < rows.length ? " (of " + rows.length + ")" : "")
      : "0 of " + rows.length;
    $("prev").disabled = state.page === 0;
    $("next").disabled = state.page >= pages - 1;
    document.querySelectorAll("#images th[data-key]").forEach(function (th) {
      th.setAttribute("aria-sort", th.dataset.key === state.key ? (state.dir > 0 ? "ascending" : "descending") : "none");
    });
  }

  document.querySelectorAll("#images th[data-key] button").forEach(function (b) {
    b.addEventListener("click", function () {
      var key = b.parentNode.dataset.key;
      if (state.key === key) state.dir = -state.dir; else { state.key = key; state.dir = 1; }
      state.page = 0; update();
    });
  });
  var timer = null;
  $("filter").addEventListener("input", function (e) {
    clearTimeout(timer);
    timer = setTimeout(function () { state.q = e.target.value; state.page = 0; update(); }, rows.length > 2000 ? 120 : 0);
  });
  $("status").addEventListener("change", function (e) { state.status = e.target.value; state.page = 0; update(); });
  $("page-size").addEventListener("change", function (e) { state.size = parseInt(e.target.value, 10); state.page = 0; update(); });
  $("prev").addEventListener("click", function () { state.page = Math.max(0, state.page - 1); update(); });
  $("next").addEventListener("click", function () { state.page += 1; update(); });
  document.querySelectorAll("button.count").forEach(function (b) {
    b.addEventListener("click", function () { $("status").value = b.dataset.status; state.status = b.dataset.status; state.page = 0; update(); });
  });
  document.querySelectorAll(".swatch[data-color]").forEach(function (s) { s.style.background = s.dataset.color; });
  update();
  document.documentElement.dataset.ready = "1";
})();
"""

# only this page's own script may run, nothing may be fetched but pictures from this folder
_CSP = (
    "default-src 'none'; img-src 'self' file: data:; style-src 'unsafe-inline'; "
    f"script-src 'sha256-{base64.b64encode(hashlib.sha256(_JS.encode()).digest()).decode()}'; "
    "base-uri 'none'; form-action 'none'"
)
