"""STAC documents as ``--input``: an Item, an ItemCollection, or a static Catalog / Collection
walked to its Items (pystac), from a local file or any location ``--input`` takes (HTTP(S),
``s3://``, ``gs://``, ``az://``). Each Item is one scene, named by its id; the asset segmented
is chosen by :func:`choose_asset`. Relative hrefs are resolved against the document that holds
them. Never imports torch.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tilesegd.errors import InputError
from tilesegd.storage.urls import STORES, RemotePath, parse_location

#: suffixes of ``--input`` values read as STAC documents
STAC_SUFFIXES = (".json", ".geojson")
#: media types of GeoTIFF assets (COGs included), as STAC catalogs write them
GEOTIFF_TYPES = ("image/tiff", "image/vnd.stac.geotiff")
#: documents a catalog walk may read before it stops (a cycle guard, not a limit on Items)
MAX_DOCUMENTS = 100_000


@dataclass(frozen=True)
class StacScene:
    """One scene from a STAC Item.

    Attributes:
        item_id: the Item's id (the scene's name, de-duplicated later).
        asset: the key of the asset segmented.
        location: that asset's raster: a local path or a :class:`RemotePath`.
        item_href: the Item's own location (its ``self`` link, or where it was read), or
            ``None`` (an Item inside an ItemCollection or a search result without one).
        datetime: the Item's ``datetime`` (ISO 8601), or its ``start_datetime``, or ``None``.
    """

    item_id: str
    asset: str
    location: Path | RemotePath
    item_href: str | None
    datetime: str | None

    def source(self) -> dict[str, Any]:
        """What the scene's output Item records of its source: ``{"id", "asset", "href",
        "datetime"}``."""
        return {"id": self.item_id, "asset": self.asset, "href": self.item_href,
                "datetime": self.datetime}  # fmt: skip


def is_stac_input(value: Any) -> bool:
    """Whether an ``--input`` value names a STAC document (a ``.json`` / ``.geojson`` file or
    URL; the query of a signed URL is ignored)."""
    where = parse_location(value)
    name = where.name if where is not None else os.fspath(value)
    return name.lower().endswith(STAC_SUFFIXES)


def read_text(location: str) -> str:
    """The text of a STAC document at ``location`` (a path or URL), with the timeouts and
    retries of :mod:`tilesegd.storage`.

    Raises:
        InputError: it cannot be read (missing, denied, unreachable), naming it and the fix.
    """
    where = parse_location(location)
    if where is None:
        try:
            return Path(location).read_text(encoding="utf-8")
        except FileNotFoundError:
            raise InputError(f"{location}: no such STAC document; check the --input path") from None
        except (OSError, UnicodeDecodeError) as exc:
            raise InputError(f"{location}: cannot read this STAC document ({exc})") from None
    if where.scheme not in (*STORES, "http", "https"):
        raise InputError(f"{where}: STAC documents are read from files, http(s):// URLs and "
                         "s3:// gs:// az:// objects, not GDAL /vsi paths")  # fmt: skip
    try:
        if where.scheme in STORES:
            from tilesegd.storage.objects import shared_filesystem

            return shared_filesystem(where.scheme).cat_file(where.store_path).decode("utf-8")
        from tilesegd.storage.http import open_url

        with open_url(where.url) as resp:
            return resp.read().decode("utf-8")
    except Exception as exc:
        from tilesegd.storage.faults import location_error

        raise location_error(where, exc, InputError) from None


def stac_io() -> Any:
    """A pystac ``StacIO`` that reads through :func:`read_text` (object storage, retries) and
    never writes."""
    import pystac

    class Reader(pystac.stac_io.DefaultStacIO):
        def read_text(self, source: Any, *args: Any, **kwargs: Any) -> str:
            return read_text(str(source))

    return Reader()


def parse(text: str, location: str) -> dict[str, Any]:
    """The JSON object of a STAC document.

    Raises:
        InputError: it is not JSON, or not an object with a STAC ``type``.
    """
    try:
        doc = json.loads(text)
    except ValueError as exc:
        raise InputError(f"{location}: not a JSON document ({exc}); give a STAC Item, "
                         "ItemCollection, Catalog or Collection") from None  # fmt: skip
    kind = doc.get("type") if isinstance(doc, dict) else None
    if kind not in ("Feature", "FeatureCollection", "Catalog", "Collection"):
        raise InputError(
            f'{location}: not a STAC document (its "type" is {kind!r}; a STAC Item is '
            '"Feature", an ItemCollection "FeatureCollection", a catalog "Catalog" or '
            '"Collection")'
        )
    return doc


def read_items(location: str) -> list[Any]:
    """The ``pystac.Item`` objects of the STAC document at ``location``: the Item itself, an
    ItemCollection's features, or every Item a Catalog / Collection links to, recursively.

    Raises:
        InputError: unreadable, not STAC, invalid, or (a catalog) no Items found.
    """
    import pystac

    absolute = location if parse_location(location) else str(Path(location).resolve())
    doc = parse(read_text(absolute), location)
    io = stac_io()
    try:
        if doc["type"] == "Feature":
            return [pystac.Item.from_dict(doc, href=absolute, migrate=True)]
        if doc["type"] == "FeatureCollection":
            return collection_items(doc, absolute)
        cat = pystac.read_dict(doc, href=absolute, stac_io=io)
        items = list(cat.get_items(recursive=True))
    except InputError:
        raise
    except Exception as exc:
        raise InputError(
            f"{location}: an invalid STAC document ({type(exc).__name__}: {exc})"
        ) from None
    if not items:
        raise InputError(f"{location}: this STAC {doc['type']} links to no Items")
    return items


def collection_items(doc: dict[str, Any], base: str | None) -> list[Any]:
    """The ``pystac.Item`` objects of an ItemCollection dict (a file's, or a search result);
    relative asset hrefs are resolved against ``base``, the collection's location.

    Raises:
        Whatever pystac raises on an invalid Item (:func:`read_items` words it).
    """
    import pystac

    items = list(pystac.ItemCollection.from_dict(doc, preserve_dict=False).items)
    for item in items:
        if base is not None and item.get_self_href() is None:
            resolve_assets(item, base)
    return items


def resolve_assets(item: Any, base: str) -> None:
    """Make the item's relative asset hrefs absolute against ``base`` (a path or URL)."""
    from pystac.utils import make_absolute_href

    for asset in item.assets.values():
        asset.href = make_absolute_href(asset.href, base)


def is_geotiff(media_type: str | None) -> bool:
    """Whether a media type is a GeoTIFF's (``image/tiff; application=geotiff...``)."""
    return bool(media_type) and media_type.split(";")[0].strip().lower() in GEOTIFF_TYPES


def choose_asset(item: Any, key: str | None) -> str:
    """The key of the asset to segment: ``key`` when given; else ``visual`` when the Item has
    it; else its only asset with role ``data`` and a GeoTIFF media type.

    Raises:
        InputError: ``key`` is not one of the Item's assets, or no single asset qualifies; the
            message lists the Item's asset keys.
    """
    keys = sorted(item.assets)
    listed = ", ".join(f"{k} ({item.assets[k].media_type or 'no type'})" for k in keys) or "none"
    if key is not None:
        if key in item.assets:
            return key
        raise InputError(f"STAC Item {item.id!r} has no asset {key!r}; its assets: {listed}")
    if "visual" in item.assets:
        return "visual"
    data = [k for k in keys if "data" in (item.assets[k].roles or [])
            and is_geotiff(item.assets[k].media_type)]  # fmt: skip
    if len(data) == 1:
        return data[0]
    why = "several data GeoTIFF assets" if data else "no 'visual' asset and no data GeoTIFF asset"
    raise InputError(
        f"STAC Item {item.id!r}: {why}; choose one with --asset KEY (its assets: {listed})"
    )


def scene_of(item: Any, key: str | None) -> StacScene:
    """The :class:`StacScene` of one Item.

    Raises:
        InputError: no usable asset (:func:`choose_asset`).
    """
    chosen = choose_asset(item, key)
    href = item.assets[chosen].get_absolute_href() or item.assets[chosen].href
    where = parse_location(href)
    if where is None and href.startswith("file://"):
        where, href = None, href[len("file://") :]
    location: Path | RemotePath = where if where is not None else Path(href)
    when = item.datetime or item.common_metadata.start_datetime
    return StacScene(item.id, chosen, location, item.get_self_href(),
                     when.isoformat().replace("+00:00", "Z") if when else None)  # fmt: skip


def stac_scenes(locations: Iterable[str], asset: str | None = None) -> list[StacScene]:
    """The scenes of the STAC documents ``locations``, in document order.

    Raises:
        InputError: a document is unusable, or an Item has no usable asset.
    """
    return [scene_of(item, asset) for loc in locations for item in read_items(str(loc))]
