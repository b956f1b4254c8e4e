"""Make ``fields.tif``: a small synthetic 6-band multispectral scene, georeferenced.

No multispectral sample with a clear licence ships with an installed package,
so the README's multiband example is made here, reproducibly (fixed seed).
It mimics a 10 m satellite tile: blue, green, red, red edge, near infrared
(NIR) and short-wave infrared (SWIR) reflectance x 10000 as uint16, 200 x 150
pixels, with five land covers whose spectra follow the usual textbook shapes:

* water (dark everywhere, darkest in the infrared),
* bare soil (brightening steadily towards the SWIR),
* forest (dark visible, strong NIR),
* a wheat field (green, very strong NIR),
* artificial turf: the same green as the wheat in blue, green and red,
  but plastic has no chlorophyll, so its NIR stays low.

Turf and wheat look alike in a colour photo; only the infrared bands tell them
apart, which is what ``--color bands`` (the default for a 6-band image) uses.
GeoTIFF tags put the tile in UTM zone 33N (EPSG:32633), so ``probabilities.tif``
and ``labels.tif`` land on the map where the tile does.

    python images/make_fields.py            # writes images/fields.tif
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import tifffile

BANDS = ("blue", "green", "red", "red_edge", "nir", "swir")
# reflectance of each cover in each band (0..1)
SPECTRA = {
    "water": (0.06, 0.05, 0.03, 0.02, 0.01, 0.005),
    "soil": (0.10, 0.14, 0.19, 0.23, 0.27, 0.33),
    "forest": (0.03, 0.06, 0.04, 0.18, 0.32, 0.15),
    "wheat": (0.05, 0.11, 0.06, 0.30, 0.48, 0.22),
    "turf": (0.05, 0.11, 0.06, 0.09, 0.10, 0.12),
}


def scene(height: int = 150, width: int = 200, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(H, W, 6) uint16 reflectance x 10000 and the (H, W) cover index (order of ``SPECTRA``)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    cover = np.full((height, width), 1, np.uint8)  # soil everywhere first
    cover[(y < height * 0.55) & (x > width * 0.55)] = 2  # forest, north-east
    cover[(y > height * 0.55) & (x < width * 0.45)] = 3  # wheat, south-west
    cover[(y > height * 0.6) & (x > width * 0.58) & (x < width * 0.85)] = 4  # a sports ground
    river = np.abs(y - (height * 0.35 + 12 * np.sin(x / 17.0))) < 6
    cover[river] = 0
    spectra = np.array(list(SPECTRA.values()), np.float64)
    reflectance = spectra[cover] * (1 + 0.06 * rng.standard_normal((height, width, 1)))  # brightness texture
    reflectance += 0.004 * rng.standard_normal(reflectance.shape)  # sensor noise
    return np.clip(np.rint(reflectance * 10000), 0, 65535).astype(np.uint16), cover


def geotags(width: int) -> list[tuple]:
    """GeoTIFF tags: 10 m pixels, upper-left corner at (500000 E, 5600000 N) in EPSG:32633."""
    keys = (1, 1, 0, 3, 1024, 0, 1, 1, 1025, 0, 1, 1, 3072, 0, 1, 32633)
    return [
        (33550, "d", 3, (10.0, 10.0, 0.0), True),  # ModelPixelScale
        (33922, "d", 6, (0.0, 0.0, 0.0, 500000.0, 5600000.0, 0.0), True),  # ModelTiepoint
        (34735, "H", len(keys), keys, True),  # GeoKeyDirectory: projected, pixel is area, EPSG:32633
    ]


def main() -> None:
    data, _ = scene()
    out = Path(__file__).with_name("fields.tif")
    tifffile.imwrite(
        out,
        data,
        photometric="minisblack",
        planarconfig="contig",
        compression="zlib",
        extratags=geotags(data.shape[1]),
        description=None,
        metadata=None,
    )
    print(f"wrote {out} {data.shape} {data.dtype}")


if __name__ == "__main__":
    main()
