"""Tiles through a network: geometry, engine, runtimes, pipeline, stitching."""
