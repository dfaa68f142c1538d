"""The same scenes segmented from and to local disk, and from and to a loopback S3 server.

A loopback S3 server runs on 127.0.0.1 (``--server moto``: moto's threaded server in this
process; ``--server s3rver``: the Node.js s3rver, which streams ranges from files). The figures:
wall seconds of ``tilesegd run`` with the scenes, the model and the output local vs. on S3 (a
fresh process per run, interleaved over ``--repeat`` rounds, medians), the ratio S3 / local,
the CPU seconds the server spent (on the same 2 cores as the run: a real object store costs
latency instead), the peak RSS of each run (flat in the scene size as a local run's), and the
bytes fetched of each scene per byte of the scene file, counted by a small proxy in front of
the server in one more, untimed run. Models: the trivial 1x1 convolution and the random-weight
Unet-mobilenet_v2 of ``benchmarks/models.py``; scenes: tiled 512-px deflate GeoTIFFs of
``make_scenes.py``.

    .venv/bin/python benchmarks/bench_storage.py [--sizes 2048 4096] [--repeat 2] [--server moto]

moto reads and copies a whole object for every range request (``FakeKey.value``), so with a
large scene its CPU, not tilesegd, dominates the S3 figure; s3rver's does not.
Results: ``benchmarks/results/results_storage_cpu.json`` (``--out`` to change).
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
KEY_ID, SECRET = "AKIABENCHMARK0000000", "bench-secret"


def read_body(handler: Any) -> bytes | None:
    """A proxied request's body, whether framed by ``Content-Length`` or chunked (botocore's
    streaming uploads), to be forwarded with a ``Content-Length``."""
    if "chunked" in (handler.headers.get("Transfer-Encoding") or "").lower():
        parts = []
        while True:
            size = int(handler.rfile.readline().split(b";")[0].strip() or b"0", 16)
            if size == 0:
                while handler.rfile.readline() not in (b"\r\n", b"\n", b""):
                    pass
                return b"".join(parts)
            parts.append(handler.rfile.read(size))
            handler.rfile.readline()
    n = int(handler.headers.get("Content-Length") or 0)
    return handler.rfile.read(n) if n else None


class CountingProxy:
    """A loopback reverse proxy to ``upstream`` that counts the bytes of each answer by path."""

    def __init__(self, upstream: tuple[str, int]) -> None:
        self.upstream, self.sent = upstream, {}
        self.lock = threading.Lock()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def relay(self) -> None:
                body = read_body(self)
                conn = http.client.HTTPConnection(*proxy.upstream, timeout=120)
                hop = ("connection", "transfer-encoding", "content-length")
                headers = {k: v for k, v in self.headers.items() if k.lower() not in hop}
                conn.request(self.command, self.path, body=body, headers=headers)
                resp = conn.getresponse()
                data = resp.read()
                self.send_response(resp.status)
                for k, v in resp.getheaders():
                    if k.lower() not in ("transfer-encoding", "connection", "content-length"):
                        self.send_header(k, v)
                length = resp.getheader("Content-Length") if self.command == "HEAD" else None
                self.send_header("Content-Length", length or str(len(data)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)
                    with proxy.lock:
                        path = self.path.split("?")[0]
                        proxy.sent[path] = proxy.sent.get(path, 0) + len(data)
                conn.close()

            do_GET = do_PUT = do_POST = do_HEAD = do_DELETE = relay

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}"


class S3Server:
    """A loopback S3 server: moto's threaded server in this process, or s3rver (Node.js) in a
    child process with its data in ``work``; ``cpu_seconds()`` is the CPU it has used."""

    def __init__(self, kind: str, work: Path) -> None:
        self.kind, self.proc = kind, None
        if kind == "moto":
            import logging

            from moto.server import ThreadedMotoServer

            logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one line per request
            self.moto = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
            self.moto.start()
            self.address = self.moto.get_host_and_port()
            self.key_id, self.secret = KEY_ID, SECRET
        else:
            import shutil
            import socket

            exe = shutil.which("s3rver") or os.environ.get("S3RVER", "")
            if not exe or not Path(exe).exists():
                raise SystemExit("s3rver not found: `npm install s3rver` and put "
                                 "node_modules/.bin on PATH (or set S3RVER=/path/to/s3rver)")  # fmt: skip
            with socket.socket() as s:
                s.bind(("127.0.0.1", 0))
                port = s.getsockname()[1]
            (work / "s3rver").mkdir()
            self.proc = subprocess.Popen([exe, "-d", str(work / "s3rver"), "-a", "127.0.0.1",
                                          "-p", str(port), "-s", "--no-vhost-buckets"])  # fmt: skip
            self.address = ("127.0.0.1", port)
            self.key_id = self.secret = "S3RVER"  # s3rver's fixed credentials
            for _ in range(100):
                with socket.socket() as s:
                    if s.connect_ex(self.address) == 0:
                        break
                time.sleep(0.1)

    @property
    def url(self) -> str:
        return f"http://{self.address[0]}:{self.address[1]}"

    def cpu_seconds(self) -> float:
        if self.proc is None:
            return time.process_time()  # this process: moto's threads (and the proxy's)
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def stop(self) -> None:
        if self.proc is None:
            self.moto.stop()
        else:
            self.proc.terminate()
            self.proc.wait(timeout=10)


def one_run(args: list[str], env: dict[str, str]) -> dict[str, Any]:
    """``tilesegd run`` in a fresh process; its wall seconds and peak RSS (MiB)."""
    code = (
        "import json, resource, sys, time; from tilesegd.cli.main import cli; t = time.perf_counter()\n"
        "rc = cli(sys.argv[1:], standalone_mode=False)\n"
        "print(json.dumps({'seconds': time.perf_counter() - t, 'peak_rss_mb': "
        "resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))\n"
        "sys.exit(rc or 0)"
    )
    p = subprocess.run([sys.executable, "-c", code, "-q", "run", *args], env=env,
                       capture_output=True, text=True, cwd=ROOT)  # fmt: skip
    lines = [ln for ln in p.stdout.splitlines() if ln.startswith("{")]
    if p.returncode != 0 or not lines:
        raise RuntimeError(f"tilesegd run failed ({p.returncode}): {(p.stderr + p.stdout)[-800:]}")
    return json.loads(lines[-1])


def main(argv: list[str] | None = None) -> None:
    """Command line: see the module docstring."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[2048, 4096])
    ap.add_argument("--models", nargs="+", default=["trivial", "unet"])
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--server", choices=["moto", "s3rver"], default="moto",
                    help="the loopback S3 server: moto (pure Python, reads a whole object for "
                    "each range request) or s3rver (Node.js, `npm install s3rver`, found on "
                    "PATH or under --s3rver-dir)")  # fmt: skip
    ap.add_argument("--out", type=Path, default=HERE / "results" / "results_storage_cpu.json")
    args = ap.parse_args(argv)
    sys.path.insert(0, str(HERE))
    import boto3
    from make_scenes import make_scenes
    from models import build

    work = Path(tempfile.mkdtemp(prefix="tilesegd-bench-storage-"))
    scenes = make_scenes(args.sizes, ["deflate"])
    server = S3Server(args.server, work)
    proxy = CountingProxy(server.address)
    env = {**os.environ, "AWS_ENDPOINT_URL": server.url, "AWS_ACCESS_KEY_ID": server.key_id,
           "AWS_SECRET_ACCESS_KEY": server.secret, "AWS_DEFAULT_REGION": "us-east-1",
           "AWS_EC2_METADATA_DISABLED": "true", "TILESEGD_MODEL_CACHE": str(work / "cache")}  # fmt: skip
    counted = {**env, "AWS_ENDPOINT_URL": proxy.url}
    s3 = boto3.client("s3", endpoint_url=server.url, region_name="us-east-1",
                      aws_access_key_id=server.key_id, aws_secret_access_key=server.secret)  # fmt: skip
    s3.create_bucket(Bucket="bench")
    for d in scenes.values():
        s3.upload_file(d["path"], "bench", f"scenes/{Path(d['path']).name}")
    results: list[dict[str, Any]] = []
    for kind in args.models:
        model = build(kind, 6, work)
        s3.upload_file(str(model), "bench", f"models/{model.name}")
        for d in scenes.values():
            name = Path(d["path"]).name
            runs: dict[str, list[dict[str, Any]]] = {"local": [], "s3": []}
            fetched, server_cpu = [], []
            for i in range(args.repeat):
                out = work / f"out-{kind}-{name}-{i}"
                runs["local"].append(one_run(["-i", d["path"], "-m", str(model), "-o", str(out),
                                              "--preview-size", "0"], env))  # fmt: skip
                s3_args = ["-i", f"s3://bench/scenes/{name}", "-m", f"s3://bench/models/{model.name}",
                           "--preview-size", "0"]  # fmt: skip
                cpu0 = server.cpu_seconds()
                runs["s3"].append(one_run([*s3_args, "-o", f"s3://bench/out-{kind}-{i}/"], env))
                server_cpu.append(server.cpu_seconds() - cpu0)
            # bytes fetched: one more run through the counting proxy (not timed: the proxy is
            # Python on the same cores and would be counted as tilesegd's cost)
            proxy.sent.clear()
            one_run([*s3_args, "-o", f"s3://bench/out-{kind}-counted/"], counted)
            fetched.append(proxy.sent.get(f"/bench/scenes/{name}", 0) / d["bytes"])
            row = {
                "model": kind,
                "scene": name,
                "size": d["size"],
                "scene_bytes": d["bytes"],
                **{
                    f"{w}_s": round(statistics.median(r["seconds"] for r in runs[w]), 2)
                    for w in runs
                },  # fmt: skip
                **{
                    f"{w}_peak_rss_mb": round(max(r["peak_rss_mb"] for r in runs[w])) for w in runs
                },  # fmt: skip
                "bytes_fetched_per_scene_byte": round(statistics.median(fetched), 3),
                # CPU seconds the loopback S3 server took on the same cores
                "server_cpu_s": round(statistics.median(server_cpu), 2),
            }
            row["s3_over_local"] = round(row["s3_s"] / row["local_s"], 3)
            results.append(row)
            print(json.dumps(row))
    server.stop()
    doc = {
        "command": "benchmarks/bench_storage.py " + " ".join(argv or sys.argv[1:]),
        "server": args.server,
        "machine": {
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
        },  # fmt: skip
        "versions": versions(),
        "gdal_settings": gdal_settings(),
        "results": results,
        "time": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(doc, indent=2))
    print(args.out)


def versions() -> dict[str, str]:
    import importlib.metadata as md

    return {p: md.version(p) for p in ("tilesegd", "torch", "rasterio", "s3fs", "zarr", "moto")}


def gdal_settings() -> dict[str, str]:
    from tilesegd.storage.env import COG_SETTINGS, OPEN_SETTINGS

    return {**COG_SETTINGS, **OPEN_SETTINGS}


if __name__ == "__main__":
    main()
