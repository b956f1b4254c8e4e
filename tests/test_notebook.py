"""Notebook display and figures (issue 13, item 3): repr, _repr_png_, _repr_html_ and plot()."""

from __future__ import annotations

import base64
import io
import re
import sys
from html.parser import HTMLParser
from typing import ClassVar

import numpy as np
import pytest
from PIL import Image as PILImage

import segsoft
from segsoft import render
from segsoft.errors import SegsoftError

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def seg():
    rgb = np.random.default_rng(0).integers(0, 256, (30, 40, 3), dtype=np.uint8)
    rgb[:, 20:] //= 3
    return segsoft.segment(rgb, k=3, max_iter=10, seed=0)


@pytest.fixture(scope="module")
def big():
    """A larger image: what a notebook shows must not grow with it."""
    rgb = np.random.default_rng(1).integers(0, 256, (600, 900, 3), dtype=np.uint8)
    return segsoft.segment(rgb, k=2, max_iter=2, seed=0)


def _png_size(data: bytes) -> tuple[int, int]:
    assert data.startswith(PNG_SIGNATURE)
    img = PILImage.open(io.BytesIO(data))
    img.load()  # decodes the whole file: a truncated PNG fails here
    return img.size


def test_repr_is_one_short_line_never_an_array(seg):
    text = repr(seg)
    assert "\n" not in text and len(text) < 160
    assert text.startswith("SoftSegmentation(image=array, 40x30, k=3, model=gmm, log_likelihood=")
    assert "array(" not in text and "[[" not in text
    assert str(seg) == text


def test_repr_png_is_a_bounded_montage(seg, big):
    for s in (seg, big):
        data = s._repr_png_()
        width, height = _png_size(data)
        assert width == 8 + 4 * (160 + 8)  # four 160-pixel tiles a row
        assert height < 1400 and len(data) < 1_000_000
    # the big image's preview is drawn from a sample: no bigger than the small one's tiles allow
    assert _png_size(big._repr_png_())[1] < 1000


def test_repr_png_for_many_clusters_uses_smaller_tiles():
    rgb = np.random.default_rng(2).integers(0, 256, (16, 24, 3), dtype=np.uint8)
    s = segsoft.segment(rgb, k=20, max_iter=2, seed=0)
    width, height = _png_size(s._repr_png_())
    assert width == 8 + 6 * (120 + 8)
    assert height < 1800  # 24 tiles in 4 rows, a header and a legend


class _Tags(HTMLParser):
    """Collects tags, checking that every opened tag (but void ones) is closed in order."""

    VOID: ClassVar[set[str]] = {"img", "br", "meta"}

    def __init__(self) -> None:
        super().__init__()
        self.stack: list[str] = []
        self.seen: list[tuple[str, dict]] = []
        self.text: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.seen.append((tag, dict(attrs)))
        if tag not in self.VOID:
            self.stack.append(tag)

    def handle_endtag(self, tag):
        assert self.stack and self.stack.pop() == tag, (tag, self.stack)

    def handle_data(self, data):
        self.text.append(data)


def test_repr_html_has_a_thumbnail_and_a_summary_table(seg):
    page = seg._repr_html_()
    parser = _Tags()
    parser.feed(page)
    parser.close()
    assert parser.stack == []  # well formed
    tags = [t for t, _ in parser.seen]
    assert tags.count("img") == 1 and "table" in tags
    (src,) = [a["src"] for t, a in parser.seen if t == "img"]
    assert src.startswith("data:image/png;base64,")  # inline: no file, no network
    width, height = _png_size(base64.b64decode(src.split(",", 1)[1]))
    assert width == 8 + 4 * (160 + 8) and height < 500  # original, overlay, labels, uncertainty, legend
    text = " ".join(parser.text)
    for needle in (
        "image",
        "40 x 30 px",
        "gmm, full covariance",
        "features",
        "lab",
        "iterations",
        "converged",
        "mean log-likelihood",
        f"{seg.log_likelihood:.4f}",
        "cluster shares",
    ):
        assert needle in text, needle
    for j, share in enumerate(seg.shares):
        assert f"{j}: {100 * share:.1f}" in text
    for r, g, b in seg.colors.tolist():
        assert f"#{r:02x}{g:02x}{b:02x}" in page
    assert len(page) < 400_000
    assert "array(" not in page and "[[" not in page


def test_repr_html_escapes_the_file_name(tmp_path):
    path = tmp_path / "a<b>&c.png"
    PILImage.fromarray(np.random.default_rng(3).integers(0, 256, (12, 12, 3), dtype=np.uint8)).save(path)
    page = segsoft.segment(path, k=2, max_iter=3)._repr_html_()
    assert "a&lt;b&gt;&amp;c.png" in page and "a<b>" not in page


def test_repr_html_of_a_large_image_stays_small(big):
    page = big._repr_html_()
    assert len(page) < 600_000
    assert "900 x 600 px" in page


def test_plot_returns_a_figure_with_panels_legend_and_colour_bars(seg):
    from matplotlib.figure import Figure

    pyplot_before = "matplotlib.pyplot" in sys.modules
    figures_before = sys.modules["matplotlib.pyplot"].get_fignums() if pyplot_before else None
    fig = seg.plot()
    assert isinstance(fig, Figure)
    image_axes = [a for a in fig.axes if a.images]
    titles = [a.get_title() for a in image_axes]
    assert titles == ["original", "soft overlay", "labels", "uncertainty", "cluster 0", "cluster 1", "cluster 2"]
    # the legend: one entry per cluster, its number and share, in its colour
    (legend,) = fig.legends
    expected = [label for label, _ in render.legend_entries(seg.colors, seg.shares)]
    assert [t.get_text() for t in legend.get_texts()] == expected
    handles = legend.legend_handles
    np.testing.assert_allclose([h.get_facecolor()[:3] for h in handles], seg.colors / 255.0, atol=1e-6)
    # colour bars: the uncertainty's and one shared by the heatmaps, both over [0, 1]
    every = fig.axes + [c for a in fig.axes for c in a.child_axes]  # the uncertainty's bar is an inset
    labels = {a.get_xlabel() or a.get_ylabel(): a for a in every if not a.images and (a.get_xlabel() or a.get_ylabel())}
    assert set(labels) == {"normalised entropy (0 = certain)", "membership"}
    for a in fig.axes:
        if a.images and a.get_title().startswith("cluster"):
            assert a.images[0].get_clim() == (0.0, 1.0)
            assert a.images[0].get_cmap().name.startswith("viridis")
    # the pictures drawn are the segmentation's own
    labels_drawn = image_axes[2].images[0].get_array()
    np.testing.assert_array_equal(np.asarray(labels_drawn)[..., :3], seg.label_image())
    # pyplot's global state is left alone
    assert ("matplotlib.pyplot" in sys.modules) == pyplot_before
    if pyplot_before:  # another test imported it: no figure was added to its list
        assert sys.modules["matplotlib.pyplot"].get_fignums() == figures_before


def test_plot_renders_to_png(seg):
    fig = seg.plot(heatmaps=[0], columns=5)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=40)
    width, height = _png_size(buf.getvalue())
    assert width > 100 and height > 50


def test_plot_into_an_axes_or_a_subfigure(seg):
    from matplotlib.figure import Figure

    host = Figure()
    ax = host.add_subplot()
    assert seg.plot(ax=ax) is host
    assert ax.get_title() == "labels" and ax.get_legend() is not None
    assert len(ax.get_legend().get_texts()) == seg.k
    left, right = Figure(layout="constrained").subfigures(1, 2)
    assert seg.plot(fig=right, heatmaps=False) is right
    assert [a.get_title() for a in right.axes if a.images] == ["original", "soft overlay", "labels", "uncertainty"]
    assert left.axes == []


def test_plot_choice_of_heatmaps(seg):
    fig = seg.plot(heatmaps=[2])
    assert [a.get_title() for a in fig.axes if a.images][-1] == "cluster 2"
    assert not any(a.get_ylabel() == "membership" for a in seg.plot(heatmaps=False).axes)
    with pytest.raises(SegsoftError, match="cluster 3 out of range"):
        seg.plot(heatmaps=[3])
    with pytest.raises(SegsoftError, match="columns"):
        seg.plot(columns=0)


def test_plot_leaves_transparent_pixels_transparent():
    rgba = np.dstack(
        [np.random.default_rng(5).integers(0, 256, (20, 20, 3), dtype=np.uint8), np.full((20, 20), 255, np.uint8)]
    )
    rgba[:5, :5, 3] = 0
    s = segsoft.segment(rgba, k=2, max_iter=3)
    fig = s.plot()
    for a in fig.axes:
        if not a.images:
            continue
        data = a.images[0].get_array()
        if np.ma.isMaskedArray(data) and data.ndim == 2:
            assert data.mask[:5, :5].all() and not data.mask[5:, 5:].any(), a.get_title()
        else:
            assert (np.asarray(data)[:5, :5, 3] == 0).all() and (np.asarray(data)[5:, 5:, 3] == 255).all()


def test_repr_png_is_drawn_from_the_full_segmentation(seg):
    # the preview's header describes the whole image, not the sample it is drawn from
    rgb = np.random.default_rng(6).integers(0, 256, (900, 300, 3), dtype=np.uint8)
    s = segsoft.segment(rgb, k=2, max_iter=2)
    preview = s._preview(320)
    assert preview.image.height <= 320 and preview is not s
    assert preview._header() == s._header()
    np.testing.assert_array_equal(preview.colors, s.colors)
    np.testing.assert_array_equal(preview.shares, s.shares)
    assert re.search(r"300 x 900 px", " ".join(s._header()[1]))
