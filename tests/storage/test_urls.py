"""Locations and their GDAL paths, the environment -> settings mapping, and redaction (no
server needed)."""

from __future__ import annotations

import io
import logging
import os

import pytest
from conftest import examples
from hypothesis import example, given, settings
from hypothesis import strategies as st

from tilesegd.config import RunConfig
from tilesegd.storage.env import endpoint_settings, gdal_settings, storage_options
from tilesegd.storage.redact import MASK, RedactingFilter, redact, redact_url
from tilesegd.storage.urls import RemotePath, is_remote, parse_location

PRESIGNED = (
    "https://bucket.s3.amazonaws.com/scenes/a.tif?X-Amz-Algorithm=AWS4-HMAC-SHA256"
    "&X-Amz-Credential=AKIAEXAMPLE%2F20260101%2Fus-east-1%2Fs3%2Faws4_request"
    "&X-Amz-Signature=5f1d0c0ffee5ecret&X-Amz-Expires=3600"
)
SAS = "https://acct.blob.core.windows.net/c/a.tif?sv=2022-11-02&sig=AzSASsecret%3D&se=2030"


@pytest.mark.parametrize(
    ("text", "scheme", "bucket", "key", "vsi", "stem"),
    [
        ("s3://bkt/a/b.tif", "s3", "bkt", "a/b.tif", "/vsis3/bkt/a/b.tif", "b"),
        ("s3://bkt/scenes/", "s3", "bkt", "scenes/", "/vsis3/bkt/scenes/", "scenes"),
        ("s3://bkt", "s3", "bkt", "", "/vsis3/bkt/", ""),
        ("gs://g/x.TIF", "gs", "g", "x.TIF", "/vsigs/g/x.TIF", "x"),
        ("az://cont/d/e.png", "az", "cont", "d/e.png", "/vsiaz/cont/d/e.png", "e"),
        ("/vsis3/bkt/k.tif", "s3", "bkt", "k.tif", "/vsis3/bkt/k.tif", "k"),
        ("/vsigs/g/k.jpg", "gs", "g", "k.jpg", "/vsigs/g/k.jpg", "k"),
        ("/vsiaz/c/k.tif", "az", "c", "k.tif", "/vsiaz/c/k.tif", "k"),
        (
            "https://h:8/p/s.tif?x=1",
            "https",
            "h:8",
            "p/s.tif",
            "/vsicurl/https://h:8/p/s.tif?x=1",
            "s",
        ),
        # a path normalised by os.path (one slash after the scheme) is still the URL
        ("/vsicurl/http:/h/s.tif", "http", "h", "s.tif", "/vsicurl/http://h/s.tif", "s"),
        (
            "/vsizip//data/a.zip/x.tif",
            "vsi",
            "",
            "/vsizip//data/a.zip/x.tif",
            "/vsizip//data/a.zip/x.tif",
            "x",
        ),
    ],
)
def test_locations_map_to_gdal_paths(text, scheme, bucket, key, vsi, stem) -> None:
    loc = parse_location(text)
    assert loc is not None and is_remote(text)
    assert (loc.scheme, loc.bucket, loc.key, loc.vsi, loc.stem) == (scheme, bucket, key, vsi, stem)
    assert os.fspath(loc) == vsi  # what rasterio.open passes to GDAL


@pytest.mark.parametrize(
    "text", ["scenes/a.tif", "/data/a.tif", "C:/x.tif", "file:///x.tif", "ftp://h/x"]
)
def test_local_paths_and_other_schemes_are_not_locations(text: str) -> None:
    assert parse_location(text) is None and not is_remote(text)


def test_a_location_prints_without_its_secrets_but_gdal_gets_them() -> None:
    loc = parse_location("https://user:pa55word@host/a.tif?sig=SECRETSIG&sv=1")
    assert str(loc) == f"https://{MASK}@host/a.tif?sig={MASK}&sv={MASK}"
    assert "SECRETSIG" in os.fspath(loc) and "pa55word" in os.fspath(loc)
    assert loc.stem == "a" and loc.suffix == ".tif"  # the scene name ignores the query


def test_prefix_or_object() -> None:
    assert RemotePath("s3://b/x/").is_prefix and RemotePath("s3://b").is_prefix
    assert not RemotePath("s3://b/x.tif").is_prefix
    assert RemotePath("s3://b/x").as_prefix().url == "s3://b/x/"
    assert not RemotePath("https://h/x/").is_prefix  # a URL is never listed


@pytest.mark.parametrize(
    ("text", "secrets"),
    [
        (PRESIGNED, ["5f1d0c0ffee5ecret", "AKIAEXAMPLE"]),
        (SAS, ["AzSASsecret"]),
        (f"GDAL: HTTP 403 on /vsicurl/{PRESIGNED}: denied", ["5f1d0c0ffee5ecret"]),
        (
            "Authorization: AWS4-HMAC-SHA256 Credential=AKIAXYZ/2026, Signature=abcdef0123",
            ["AKIAXYZ", "abcdef0123"],
        ),
        ("DefaultEndpointsProtocol=https;AccountName=a;AccountKey=K3yK3yK3y==;", ["K3yK3yK3y"]),
        ("x-amz-security-token: FQoGZXIvYXdzEJr", ["FQoGZXIvYXdzEJr"]),
        ("Bearer ya29.a0AfH6SMB", ["ya29.a0AfH6SMB"]),
        ("s3://user:hunter22@bucket/k.tif", ["hunter22"]),
    ],
)
def test_redact_masks_every_kind_of_secret(text: str, secrets: list[str]) -> None:
    out = redact(text)
    assert all(s not in out for s in secrets), out
    assert MASK in out


def test_redact_masks_credentials_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wJalrXUtnFEMIK7MDENG")
    monkeypatch.setenv("AZURE_STORAGE_SAS_TOKEN", "sv=2022&sig=abc123XYZ")
    out = redact("botocore said wJalrXUtnFEMIK7MDENG and sv=2022&sig=abc123XYZ")
    assert "wJalrXUtnFEMIK7MDENG" not in out and "abc123XYZ" not in out


@pytest.mark.parametrize(
    "text",
    [
        "/data/scenes/a.tif: not a readable raster",
        "s3://bucket/scenes/a.tif: done in 2.1 s (0.42 MP/s)",
        "the bucket 'b' does not exist at the endpoint http://127.0.0.1:9000",
    ],
)
def test_redact_leaves_plain_text_alone(text: str) -> None:
    assert redact(text) == text


@settings(max_examples=examples(60), deadline=None)
@given(
    name=st.from_regex(r"[A-Za-z][A-Za-z0-9_-]{0,15}", fullmatch=True),
    value=st.from_regex(r"[A-Za-z0-9%+/=._~-]{6,40}", fullmatch=True),
    host=st.sampled_from(["h.example", "127.0.0.1:8080", "bucket.s3.amazonaws.com"]),
    before=st.sampled_from(["", "Error: ", "open failed on /vsicurl/", "'"]),
    after=st.sampled_from(["", " (403)", "' failed", ": HTTP error"]),
)
@example(name="sig", value="abc%3D%3D", host="h.example", before="", after="")
def test_no_query_value_of_a_url_survives(name, value, host, before, after) -> None:
    """Whatever the parameter is called, its value never shows (a token under any name)."""
    text = f"{before}https://{host}/k/a.tif?v=1&{name}={value}{after}"
    out = redact(text)
    assert f"{name}={value}" not in out and f"{name}={MASK}" in out


def test_redact_url_keeps_the_parameter_names() -> None:
    assert redact_url("https://h/a.tif?X-Amz-Signature=s&a=") == (
        f"https://h/a.tif?X-Amz-Signature={MASK}&a={MASK}"
    )


def test_log_records_are_redacted() -> None:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.addFilter(RedactingFilter())
    logger = logging.getLogger("tilesegd.test.redact")
    logger.addHandler(handler)
    try:
        logger.warning("reading %s failed", PRESIGNED)
        try:
            raise OSError(f"cannot open {SAS}")
        except OSError:
            logger.exception("boom")
    finally:
        logger.removeHandler(handler)
    text = stream.getvalue()
    assert "5f1d0c0ffee5ecret" not in text and "AzSASsecret" not in text
    assert "reading https://bucket.s3.amazonaws.com/scenes/a.tif?" in text
    assert "Traceback" in text  # the traceback is kept, masked


def test_run_config_records_locations_without_secrets() -> None:
    cfg = RunConfig(input=[PRESIGNED, "scenes/"], model=SAS, output="out")
    doc = cfg.to_dict()
    assert "5f1d0c0ffee5ecret" not in str(doc) and "AzSASsecret" not in str(doc)
    assert doc["input"][1] == "scenes/" and cfg.input[0] == PRESIGNED  # the config keeps them


@pytest.mark.parametrize(
    ("endpoint", "expected"),
    [
        ("http://127.0.0.1:9000", {"AWS_S3_ENDPOINT": "127.0.0.1:9000", "AWS_HTTPS": "NO"}),
        ("https://minio.lan", {"AWS_S3_ENDPOINT": "minio.lan"}),
        ("https://ceph.lan:8443/s3/", {"AWS_S3_ENDPOINT": "ceph.lan:8443/s3"}),
        ("minio.lan:9000", {"AWS_S3_ENDPOINT": "minio.lan:9000"}),
    ],
)
def test_an_endpoint_becomes_gdal_settings(endpoint: str, expected: dict) -> None:
    out = endpoint_settings(endpoint)
    assert out == {**expected, "AWS_VIRTUAL_HOSTING": "FALSE"}


def test_gdal_settings_follow_the_environment(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    for name in list(os.environ):
        if name.startswith(("AWS_", "GDAL_", "CPL_")):
            monkeypatch.delenv(name)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    assert "AWS_S3_ENDPOINT" not in gdal_settings()  # AWS itself
    assert gdal_settings()["GDAL_HTTP_MULTIPLEX"] == "YES"
    assert gdal_settings()["GDAL_HTTP_MULTIRANGE"] == "SERIAL"
    assert "GDAL_DISABLE_READDIR_ON_OPEN" not in gdal_settings()  # set only while opening
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9000")
    assert gdal_settings()["AWS_S3_ENDPOINT"] == "127.0.0.1:9000"
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", "http://10.0.0.1:1")  # boto3's precedence
    assert gdal_settings()["AWS_S3_ENDPOINT"] == "10.0.0.1:1"
    monkeypatch.setenv("GDAL_HTTP_TIMEOUT", "5")  # the user's own setting wins
    assert "GDAL_HTTP_TIMEOUT" not in gdal_settings()


def test_listing_options_follow_the_environment(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    for name in list(os.environ):
        if name.startswith("AWS_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    opts = storage_options("s3")
    assert "anon" not in opts and "endpoint_url" not in opts
    assert opts["config_kwargs"]["retries"]["max_attempts"] >= 2
    assert opts["config_kwargs"]["connect_timeout"] > 0
    monkeypatch.setenv("AWS_NO_SIGN_REQUEST", "YES")
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9000")
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "7")  # botocore reads it; tilesegd does not override
    opts = storage_options("s3")
    assert opts["anon"] is True and opts["endpoint_url"] == "http://127.0.0.1:9000"
    assert "retries" not in opts["config_kwargs"]


def test_a_profile_endpoint_is_read_as_boto3_reads_it(
    monkeypatch: pytest.MonkeyPatch, tmp_path
) -> None:
    for name in list(os.environ):
        if name.startswith("AWS_"):
            monkeypatch.delenv(name)
    config = tmp_path / "config"
    config.write_text("[profile minio]\nendpoint_url = http://127.0.0.1:9100\n")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(config))
    monkeypatch.setenv("AWS_PROFILE", "minio")
    assert gdal_settings()["AWS_S3_ENDPOINT"] == "127.0.0.1:9100"
