"""Wrong locations end a run before any scene, in one line that names the URL and the fix,
within seconds, without a traceback and without a credential (moto on 127.0.0.1, a loopback
HTTP server, and a port where nothing listens)."""

from __future__ import annotations

import json
import socket
import time
import urllib.request
import uuid
from pathlib import Path

import pytest
from click.testing import CliRunner
from conftest import TEST_ACCESS_KEY_ID, TEST_SECRET_ACCESS_KEY, make_raster, smooth_image

from tilesegd.cli.main import cli
from tilesegd.errors import EXIT_MODEL, EXIT_SCENES_FAILED, EXIT_USAGE

SIGNATURE = "SiGnAtUrE0123456789abcdef"
MAX_SECONDS = 20  # botocore's 3 attempts with backoff take about 3 s to give up on a dead port


def run(*args: str) -> tuple[int, str, float]:
    t0 = time.perf_counter()
    r = CliRunner().invoke(cli, ["run", *args], catch_exceptions=False)
    return r.exit_code, r.output, time.perf_counter() - t0


def assert_clean(output: str) -> None:
    """No traceback, no credential, no signature."""
    assert "Traceback" not in output
    for secret in (TEST_SECRET_ACCESS_KEY, TEST_ACCESS_KEY_ID, SIGNATURE):
        assert secret not in output


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def scene(tmp_path: Path) -> Path:
    return make_raster(tmp_path / "a.tif", smooth_image(40, 50))


def moto_auth(endpoint: str, count: str) -> None:
    """moto's switch for checking credentials: ``"0"`` checks every request from now on,
    ``"inf"`` none."""
    req = urllib.request.Request(
        endpoint + "/moto-api/reset-auth",
        data=count.encode(),
        method="POST",
        headers={"Content-Type": "text/plain"},
    )
    urllib.request.urlopen(req, timeout=10).read()


@pytest.fixture
def denied(s3, monkeypatch: pytest.MonkeyPatch):
    """The bucket holds a scene and a model, and the credentials in the environment are those
    of an IAM user without any permission, on a server that now checks them."""
    import boto3

    iam = boto3.client(
        "iam",
        endpoint_url=s3.endpoint,
        region_name="us-east-1",
        aws_access_key_id=TEST_ACCESS_KEY_ID,
        aws_secret_access_key=TEST_SECRET_ACCESS_KEY,
    )
    user = f"noperm-{uuid.uuid4().hex[:8]}"
    iam.create_user(UserName=user)
    key = iam.create_access_key(UserName=user)["AccessKey"]
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", key["AccessKeyId"])
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", key["SecretAccessKey"])
    moto_auth(s3.endpoint, "0")
    try:
        yield s3, key
    finally:
        moto_auth(s3.endpoint, "inf")


@pytest.mark.parametrize(
    ("where", "says"),
    [
        ("s3://no-such-bucket-{u}/scenes/", ["does not exist", "AWS_ENDPOINT_URL"]),
        ("s3://{bucket}/missing/a.tif", ["no such object or prefix", "check the --input URL"]),
    ],
)
def test_a_missing_bucket_or_key_stops_the_run(s3, scene, tiny_model, tmp_path, where, says):
    s3.put("scenes/a.tif", scene)
    url = where.format(u=uuid.uuid4().hex[:8], bucket=s3.name)
    code, out, seconds = run("-i", url, "-m", str(tiny_model()), "-o", str(tmp_path / "out"))
    assert code == EXIT_USAGE, out
    assert f"Error: {url}" in out and all(s in out for s in says), out
    assert seconds < MAX_SECONDS
    assert not (tmp_path / "out" / "run.json").exists()  # no scene was attempted
    assert_clean(out)


def test_access_denied_stops_the_run(denied, scene, tiny_model, tmp_path) -> None:
    s3, key = denied
    model = tiny_model()  # saved before: the server now refuses the fixtures' uploads too
    moto_auth(s3.endpoint, "inf")
    s3.put("scenes/a.tif", scene)
    moto_auth(s3.endpoint, "0")
    code, out, seconds = run("-i", s3.url("scenes/"), "-m", str(model), "-o", str(tmp_path / "o"))
    assert code == EXIT_USAGE, out
    assert f"Error: {s3.url('scenes/')}: access denied" in out
    assert "AWS_ACCESS_KEY_ID" in out and "AWS_NO_SIGN_REQUEST=YES" in out  # the fix
    assert key["SecretAccessKey"] not in out
    assert seconds < MAX_SECONDS
    assert_clean(out)


def test_an_unknown_access_key_is_access_denied(denied, scene, tiny_model, tmp_path, monkeypatch):
    s3, _ = denied
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIANOSUCHKEY0000000")
    code, out, _ = run("-i", s3.url("x/"), "-m", str(tiny_model()), "-o", str(tmp_path / "o"))
    assert code == EXIT_USAGE and "access denied" in out, out
    assert "AKIANOSUCHKEY0000000" not in out
    assert_clean(out)


def test_an_unreachable_endpoint_stops_the_run_within_seconds(
    s3, tiny_model, tmp_path, monkeypatch
) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    monkeypatch.setenv("AWS_ENDPOINT_URL", dead)
    code, out, seconds = run("-i", s3.url("scenes/"), "-m", str(tiny_model()), "-o", str(tmp_path))
    assert code == EXIT_USAGE, out
    assert f"cannot reach the endpoint {dead}" in out and "AWS_ENDPOINT_URL" in out, out
    assert seconds < MAX_SECONDS
    assert_clean(out)


@pytest.mark.parametrize(("status", "says"), [(404, "no such object"), (403, "access denied")])
def test_a_bad_url_stops_the_run(range_server, tiny_model, tmp_path, status, says) -> None:
    name = f"{uuid.uuid4().hex}/s.tif"
    if status == 403:
        range_server.denied.add("/" + name)
    url = range_server.url(name) + f"?X-Amz-Signature={SIGNATURE}"
    code, out, seconds = run("-i", url, "-m", str(tiny_model()), "-o", str(tmp_path / "o"))
    assert code == EXIT_USAGE, out
    assert f"Error: {range_server.url(name)}?X-Amz-Signature=***: {says}" in out, out
    assert seconds < MAX_SECONDS
    assert_clean(out)


def test_a_scene_gone_after_listing_fails_alone(s3, scene, tiny_model, tmp_path) -> None:
    """The location was right, one object is not readable later: that scene fails (exit 4),
    named in run.json without a credential, and the other scene is done."""
    s3.put("s/a.tif", scene)
    s3.put("s/b.tif", b"II*\x00 this is not a TIFF")
    code, out, _ = run("-i", s3.url("s/"), "-m", str(tiny_model()), "-o", str(tmp_path / "o"))
    assert code == EXIT_SCENES_FAILED, out
    doc = json.loads((tmp_path / "o" / "run.json").read_text())
    assert doc["scenes"]["a"]["status"] == "done"
    assert doc["scenes"]["b"]["status"] == "failed"
    assert doc["scenes"]["b"]["error"].startswith(s3.url("s/b.tif") + ": not a readable raster")
    assert doc["scenes"]["a"]["input"] == s3.url("s/a.tif")
    assert_clean(out + json.dumps(doc))


@pytest.mark.parametrize(
    ("where", "says"),
    [
        ("s3://{bucket}/models/none.ts", "no such object or prefix"),
        ("s3://no-such-bucket-{u}/m.ts", "does not exist"),
        ("{http}", "no such object"),
    ],
)
def test_a_bad_model_url_stops_before_any_scene(
    s3, range_server, scene, tmp_path, where, says
) -> None:
    http = range_server.url(f"{uuid.uuid4().hex}/m.ts?sig={SIGNATURE}")
    url = where.format(bucket=s3.name, u=uuid.uuid4().hex[:8], http=http)
    code, out, seconds = run("-i", str(scene), "-m", url, "-o", str(tmp_path / "o"))
    assert code == EXIT_MODEL, out
    assert says in out and "--model" in out, out
    assert seconds < MAX_SECONDS
    assert_clean(out)
