"""The ``tilesegd`` command line (thin click wrappers over :mod:`tilesegd.api`)."""
