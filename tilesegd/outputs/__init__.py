"""Writers (COG, Zarr, polygons, preview, styles), areas and zones; no torch."""
