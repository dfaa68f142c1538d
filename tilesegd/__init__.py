"""tilesegd: bounded-memory, seamless semantic segmentation of very large aerial imagery."""

__version__ = "0.1.0"

__all__ = ["__version__"]
