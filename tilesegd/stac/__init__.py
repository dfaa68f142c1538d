"""STAC inputs: Items, ItemCollections, static Catalogs / Collections and STAC API item
searches, turned into scenes (one per Item, the asset chosen by :func:`inputs.choose_asset`).
The STAC outputs (``catalog.json``, ``<scene>/item.json``) are in :mod:`tilesegd.outputs.stac`.
"""
