"""Rasters: scenes, windowed reads, GSD, resampling, labels, tile geometry."""
