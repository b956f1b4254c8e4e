"""The default pictures are made without importing matplotlib, from tables equal to matplotlib's."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import matplotlib
import numpy as np
import pytest

from segsoft import render


@pytest.mark.parametrize("name", sorted(render._BUILTIN_LUTS))
def test_builtin_luts_equal_matplotlib(name: str) -> None:
    rgba = matplotlib.colormaps[name](np.linspace(0.0, 1.0, 256))
    expect = np.rint(np.asarray(rgba)[:, :3] * 255.0).astype(np.uint8)
    lut = render.colormap_lut(name)
    assert lut.dtype == np.uint8 and lut.shape == (256, 3) and not lut.flags.writeable
    np.testing.assert_array_equal(lut, expect)


def test_other_colormaps_still_come_from_matplotlib() -> None:
    rgba = matplotlib.colormaps["plasma"](np.linspace(0.0, 1.0, 256))
    np.testing.assert_array_equal(render.colormap_lut("plasma"), np.rint(rgba[:, :3] * 255.0).astype(np.uint8))
    with pytest.raises(render.SegsoftError):
        render.colormap_lut("no-such-map")


def test_font_folder_is_matplotlibs() -> None:
    assert render._matplotlib_data() == Path(matplotlib.get_data_path())
    assert (render._matplotlib_data() / "fonts" / "ttf" / "DejaVuSans.ttf").is_file()


def test_segment_and_save_do_not_import_matplotlib(tmp_path: Path) -> None:
    code = (
        "import sys, numpy as np, segsoft\n"
        "rgb = np.zeros((40, 60, 3), np.uint8); rgb[:, 30:] = (200, 40, 30); rgb[::7] = 90\n"
        f"segsoft.segment(rgb, k=2).save({str(tmp_path / 'out')!r})\n"
        "print(any(m == 'matplotlib' or m.startswith('matplotlib.') for m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
    assert (tmp_path / "out" / "montage.png").is_file()
