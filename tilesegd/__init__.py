"""tilesegd: bounded-memory, seamless semantic segmentation of very large aerial imagery.

The Python API is the package root (:mod:`tilesegd.api`, imported on first use so that
``import tilesegd`` and ``tilesegd --help`` stay instant)::

    import tilesegd
    report = tilesegd.run(input=["scenes/"], model="model.pt2", output="out/")
"""

from typing import TYPE_CHECKING, Any

from tilesegd.version import __version__

if TYPE_CHECKING:
    from tilesegd.api import evaluate, export, run, train

__all__ = ["__version__", "evaluate", "export", "run", "train"]
API = ("evaluate", "export", "run", "train")


def __getattr__(name: str) -> Any:
    if name in API:
        from tilesegd import api

        return getattr(api, name)
    raise AttributeError(f"module 'tilesegd' has no attribute {name!r}")
