"""Soft boundaries: the region hierarchy drawn as a greyscale map of its merge levels.

:meth:`segsoft.regions.RegionHierarchy.ucm` gives the hierarchy as an
ultrametric contour map (UCM): every boundary between two neighbouring pixels
holds the level at which their regions merge, so the regions at any threshold
``t`` are the parts that boundaries above ``t`` enclose (one comparison).
``segsoft run --regions`` writes it twice:

``ucm.npy``
    float32 ``(2H+1, 2W+1)``, BSDS500's ``ucm2`` layout, which the BSDS
    boundary and region benchmarks read (``segsoft evaluate --thresholds``
    cuts it too, with :func:`segsoft.evaluate.cut_ucm`).
``boundaries.png``
    8-bit greyscale ``(H, W)``: white where there is no boundary, darker the
    later a boundary merges, black from :data:`BOUNDARY_BLACK` up; a
    boundary is drawn when it is still there at the threshold you read off
    its grey (:func:`boundary_image`, :func:`level_of_grey`).
"""

from __future__ import annotations

import numpy as np

__all__ = ["BOUNDARY_BLACK", "boundary_image", "grey_of_levels", "level_of_grey"]

#: Merge level drawn black in boundaries.png (every later level is black too); a few times the default cut,
#: so the default threshold's boundaries are mid-grey and the coarsest ones stand out.
BOUNDARY_BLACK = 0.5


def boundary_image(ucm: np.ndarray, black: float = BOUNDARY_BLACK) -> np.ndarray:
    """Greyscale picture of an ultrametric contour map: 255 - 255 * min(level / black, 1), as uint8.

    Parameters
    ----------
    ucm : ndarray of float, (H, W) or BSDS-style (2H+1, 2W+1)
        Boundary levels; the BSDS layout is thinned to the pixel grid as
        the boundary benchmark does (``ucm2[2::2, 2::2]``).
    black : float
        The level drawn black (> 0).

    Returns
    -------
    ndarray of uint8 (H, W)
        White (255) off the boundaries; every boundary pixel is at most 254,
        so even the weakest one is visible to a threshold on the picture.

    Examples
    --------
    >>> u = np.zeros((5, 7), np.float32); u[:, 4] = 0.25
    >>> boundary_image(u, black=0.5).tolist()
    [[255, 128, 255], [255, 128, 255]]
    """
    if not black > 0:
        raise ValueError(f"black must be > 0, got {black!r}")
    u = np.asarray(ucm)
    if u.ndim != 2:
        raise ValueError(f"ucm must be 2-D, got shape {u.shape}")
    bsds = u.shape[0] % 2 == 1 and u.shape[1] % 2 == 1 and u[1::2, 1::2].max(initial=0) == 0
    return grey_of_levels(u[2::2, 2::2] if bsds else u, black)  # thinned first: a quarter of the pixels


def grey_of_levels(levels: np.ndarray, black: float = BOUNDARY_BLACK) -> np.ndarray:
    """:func:`boundary_image` of a thin map (or any rows of one), pixel by pixel: uint8, the same shape.

    Each pixel's grey depends on its own level only, so a map written a band of rows at a
    time (``segsoft run --regions``) is drawn band by band.

    Examples
    --------
    >>> grey_of_levels(np.array([[0.0, 0.25, 0.001, 2.0]]), black=0.5).tolist()
    [[255, 128, 254, 0]]
    """
    if not black > 0:
        raise ValueError(f"black must be > 0, got {black!r}")
    thin = np.asarray(levels).astype(np.float32)
    grey = np.round(255.0 * (1.0 - np.clip(thin / np.float32(black), 0.0, 1.0)))
    grey = np.where(thin > 0, np.minimum(grey, 254), 255)  # a boundary never reads as no boundary
    return grey.astype(np.uint8)


def level_of_grey(grey: int | np.ndarray, black: float = BOUNDARY_BLACK) -> float | np.ndarray:
    """The merge level a grey value of :func:`boundary_image` stands for (black: that level or more).

    Examples
    --------
    >>> level_of_grey(127)
    0.25098039215686274
    """
    level = (255.0 - np.asarray(grey, dtype=np.float64)) / 255.0 * black
    return level if np.ndim(level) else float(level)
