"""STAC API item search (``--stac-api URL --collections C``): pystac-client runs the search,
following ``next`` pages, and the result is kept in the output as ``search.json`` (an
ItemCollection) so that a rerun segments the same scenes even if the catalog has changed.
Never imports torch.
"""

from __future__ import annotations

import json
import warnings
from typing import Any

from tilesegd.errors import ConfigError, InputError

#: the output file that holds a search's result and its parameters
SEARCH_JSON = "search.json"
#: seconds each request of a search may wait
TIMEOUT_S = 30


def search_parameters(
    api: str,
    collections: list[str],
    *,
    bbox: list[float] | None = None,
    datetime: str | None = None,
    query: str | dict[str, Any] | None = None,
    max_items: int | None = None,
) -> dict[str, Any]:
    """The search's parameters, checked, as recorded in ``search.json``.

    Args:
        api: the STAC API's root URL.
        collections: collection ids (at least one).
        bbox: ``[west, south, east, north]`` in degrees (EPSG:4326).
        datetime: an RFC 3339 instant or range (``2024-01-01/2024-06-30``, open ends ``..``).
        query: the STAC API ``query`` extension's JSON object (text or parsed).
        max_items: the most Items to take (``None``: every match).

    Raises:
        ConfigError: no collection, a bbox that is not 4 numbers with west <= east... (a
            crossing of the antimeridian is allowed: west > east), south <= north, or a
            ``query`` that is not a JSON object.
    """
    if not collections:
        raise ConfigError("--stac-api needs --collections C1[,C2] (the collections to search)")
    if bbox is not None:
        if len(bbox) != 4 or not (-90 <= bbox[1] <= bbox[3] <= 90):
            raise ConfigError(f"--bbox {bbox}: give W,S,E,N in degrees (EPSG:4326), S <= N")
    if isinstance(query, str):
        try:
            query = json.loads(query)
        except ValueError as exc:
            raise ConfigError(f"--query: not JSON ({exc}); e.g. '{{\"eo:cloud_cover\": "
                              "{\"lt\": 20}}'") from None  # fmt: skip
    if query is not None and not isinstance(query, dict):
        raise ConfigError('--query: give a JSON object, e.g. \'{"eo:cloud_cover": {"lt": 20}}\'')
    if max_items is not None and max_items < 1:
        raise ConfigError(f"--max-items {max_items}: give a positive number")
    return {"api": api, "collections": list(collections), "bbox": bbox, "datetime": datetime,
            "query": query, "max_items": max_items}  # fmt: skip


def run_search(params: dict[str, Any]) -> dict[str, Any]:
    """Run the item search ``params`` (:func:`search_parameters`) and return the result as an
    ItemCollection dict, with ``params`` under ``"tilesegd:search"``.

    Raises:
        InputError: the API cannot be reached or read, does not conform to STAC API item
            search, rejects the parameters, or returns no Items.
    """
    from pystac_client import Client
    from pystac_client.warnings import DoesNotConformTo, NoConformsTo

    from tilesegd.storage.redact import redact

    api, said = params["api"], redact(params["api"])
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", DoesNotConformTo)
            warnings.simplefilter("error", NoConformsTo)
            client = Client.open(api, timeout=TIMEOUT_S)
            search = client.search(
                collections=params["collections"],
                bbox=params["bbox"],
                datetime=params["datetime"],
                query=params["query"],
                max_items=params["max_items"],
            )
            found = search.item_collection_as_dict()
    except (DoesNotConformTo, NoConformsTo, NotImplementedError) as exc:
        raise InputError(
            f"{said}: not a STAC API with item search ({exc}); give the API's root URL (its "
            "landing page lists the 'item-search' conformance class), or give the Items as "
            "--input JSON"
        ) from None
    except Exception as exc:
        raise InputError(f"{said}: the item search failed ({type(exc).__name__}: {redact(str(exc))}); check "
                         "--stac-api, --collections and the search options") from None  # fmt: skip
    if not found.get("features"):
        raise InputError(
            f"{said}: the search of {', '.join(params['collections'])} matched no Items; widen "
            "--bbox / --datetime / --query or check the collection ids"
        )
    found["tilesegd:search"] = recorded(params)
    return found


def recorded(params: dict[str, Any]) -> dict[str, Any]:
    """``params`` as ``search.json`` keeps them: the API's URL with its secrets masked."""
    from tilesegd.storage.redact import redact

    return {**params, "api": redact(params["api"])}


def saved_search(doc: Any, params: dict[str, Any]) -> dict[str, Any] | None:
    """The ``search.json`` a previous run left, when it was made with ``params`` (else
    ``None``: the search runs again)."""
    if (
        isinstance(doc, dict)
        and doc.get("tilesegd:search") == recorded(params)
        and doc.get("features")
    ):
        return doc
    return None
