"""segsoft: soft image segmentation with mixture models.

Every pixel gets a degree of membership in each of k clusters.

Examples
--------
>>> import segsoft
>>> seg = segsoft.segment("images/coffee.jpg", k=4, seed=0)  # doctest: +SKIP
>>> seg.probabilities.shape  # doctest: +SKIP
(200, 300, 4)
>>> seg.save("outputs/coffee")  # doctest: +SKIP
"""

__version__ = "0.1.0"

from .batch import BatchReport, BatchResult, SegmentOptions, apply_batch, run_batch
from .errors import SegsoftError
from .features import FeatureSpec
from .io import Image, read_image
from .mixture import FuzzyCMeans, GaussianMixture, SoftKMeans
from .outputs import load_model
from .segment import SoftSegmentation, apply_model, segment

__all__ = [
    "BatchReport",
    "BatchResult",
    "FeatureSpec",
    "FuzzyCMeans",
    "GaussianMixture",
    "Image",
    "SegmentOptions",
    "SegsoftError",
    "SoftKMeans",
    "SoftSegmentation",
    "__version__",
    "apply_batch",
    "apply_model",
    "load_model",
    "read_image",
    "run_batch",
    "segment",
]

# Modules not imported above load on first use, so ``segsoft.report.write_report(...)`` works after a plain
# ``import segsoft`` without making that import slower.
_LAZY_MODULES = frozenset({"boundaries", "cluster", "contours", "evaluate", "regions", "render", "report", "spatial"})


def __getattr__(name: str) -> object:
    if name in _LAZY_MODULES:
        import importlib

        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
