"""The STAC JSON schemas kept in ``tests/stac/schemas/<host>/<path>`` (each file's
official URL is ``https://<host>/<path>``) and validation against them: nothing is fetched."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from jsonschema import Draft7Validator
from referencing import Registry, Resource
from referencing.exceptions import NoSuchResource
from referencing.jsonschema import DRAFT7

SCHEMAS = Path(__file__).resolve().parent / "stac" / "schemas"
ITEM_SCHEMA = "https://schemas.stacspec.org/v1.1.0/item-spec/json-schema/item.json"
CATALOG_SCHEMA = "https://schemas.stacspec.org/v1.1.0/catalog-spec/json-schema/catalog.json"
# the official v1.1.0 common.json carries this typo in its $id (refs use ".../common.json")
KNOWN_ID_TYPOS = {
    "https://schemas.stacspec.org/v1.1.0/item-spec/json-schema/common.json": (
        "https://schemas.stacspec.org/v1.1.0/item-spec/json-schema/commonjson"
    )
}

# ----------------------------------------------------------------------------- schemas


def schema_files() -> dict[str, Path]:
    """``{official URL: file}`` of every schema kept with the tests."""
    return {
        "https://" + p.relative_to(SCHEMAS).as_posix(): p for p in sorted(SCHEMAS.rglob("*.json"))
    }


def no_fetch(uri: str) -> Resource:
    raise NoSuchResource(ref=f"{uri} (not in tests/stac/schemas; nothing is fetched)")


def make_registry() -> Registry:
    """A ``referencing.Registry`` of every kept schema, by its official URL; any other
    reference fails (nothing is fetched)."""
    docs = {url: json.loads(p.read_text()) for url, p in schema_files().items()}
    resources = [
        (u, Resource.from_contents(d, default_specification=DRAFT7)) for u, d in docs.items()
    ]
    return Registry(retrieve=no_fetch).with_resources(resources)


def validate(doc: dict[str, Any], url: str, registry: Registry) -> None:
    schema = registry.contents(url)
    validator = Draft7Validator(
        schema, registry=registry, format_checker=Draft7Validator.FORMAT_CHECKER
    )
    errors = sorted(validator.iter_errors(doc), key=lambda e: list(e.absolute_path))
    assert not errors, f"{url}: " + "; ".join(
        f"{list(e.absolute_path)}: {e.message[:300]}" for e in errors[:5]
    )


def validate_item(item: dict[str, Any], registry: Registry) -> None:
    """``item`` against STAC 1.1.0's item.json and every schema in its ``stac_extensions``."""
    validate(item, ITEM_SCHEMA, registry)
    for url in item.get("stac_extensions", []):
        assert url in schema_files(), f"{url} is not kept in tests/stac/schemas"
        validate(item, url, registry)
