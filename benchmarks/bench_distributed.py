"""Distributed throughput (issue 6): one local process against a Dask LocalCluster of 1 and 2
worker processes, on the same scenes and model, each configuration in a fresh interpreter.

    .venv/bin/python benchmarks/bench_distributed.py                  # unet + trivial, ~5 min
    .venv/bin/python benchmarks/bench_distributed.py --suite smoke    # seconds

For every configuration it reports the end-to-end wall time of ``tilesegd.api.run`` (cluster
start, model load on each worker, all scenes segmented and finished) and the throughput
(megapixels / wall second), plus the cluster start-up alone; and it checks that every
configuration's masks are byte-identical to the local run's (the Zarr mask chunks).

Suites:

* ``unet``: smp Unet-mobilenet_v2 (random weights, 23 classes) on two 2048^2 scenes (DEFLATE
  and ZSTD): network-bound, as on a real CPU cluster node.
* ``trivial``: a 1x1 convolution on one 8192^2 scene: the pipeline itself (read, decode,
  stitch, write, COG) is the work.
* ``smoke``: trivial model, one 1024^2 generated scene (for CI-sized checks).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
CONFIGS = {  # name -> RunConfig overrides
    "local (1 process, 2 threads)": {"workers": 2},
    "LocalCluster, 1 worker process": {"cluster": "local", "workers": 1},
    "LocalCluster, 2 worker processes": {"cluster": "local", "workers": 2},
}


def masks_digest(out: Path) -> str:
    """SHA-256 over every scene's Zarr mask chunks (key + bytes), in key order."""
    h = hashlib.sha256()
    for f in sorted(out.glob("*/pred.zarr/mask/c/**/*")):
        if f.is_file():
            h.update(str(f.relative_to(out)).encode())
            h.update(f.read_bytes())
    return h.hexdigest()[:16]


def one(spec: dict[str, Any]) -> dict[str, Any]:
    """Run one configuration (in this fresh process) and return its figures."""
    import torch

    from tilesegd.api import run

    out = Path(spec["out"])
    shutil.rmtree(out, ignore_errors=True)
    t0 = time.perf_counter()
    doc = run(
        input=spec["scenes"],
        model=spec["model"],
        output=str(out),
        device="cpu",
        preview_size=0,
        progress=False,
        **spec["options"],
    )
    wall = time.perf_counter() - t0
    scenes = doc["scenes"].values()
    assert all(e["status"] == "done" for e in scenes), doc["scenes"]
    mp = sum(e["megapixels"] for e in scenes)
    res = {
        "megapixels": round(mp, 2),
        "wall_s": round(wall, 2),
        "mp_per_s": round(mp / wall, 3),
        "masks_sha": masks_digest(out),
        "scene_mp_per_s": [e.get("megapixels_per_s") for e in scenes],
        "workers": sorted({w for e in scenes for w in e.get("workers", [])}),
        "client_torch_threads": torch.get_num_threads(),
    }
    if spec["options"].get("cluster"):
        from tilesegd.batch.cluster import open_client
        from tilesegd.config import RunConfig

        t0 = time.perf_counter()
        client, cluster = open_client(RunConfig(**spec["options"]))
        res["cluster_start_s"] = round(time.perf_counter() - t0, 2)
        client.close()
        cluster.close()
    shutil.rmtree(out, ignore_errors=True)
    return res


def scenes_and_model(suite: str, data: Path) -> tuple[list[str], str]:
    import make_scenes
    import models

    (data / "models").mkdir(parents=True, exist_ok=True)
    if suite == "smoke":
        p = data / "scene_1024_smoke.tif"
        if not p.exists():
            make_scenes.write_scene(p, 1024, "deflate", make_scenes.generated_base(512))
        return [str(p)], str(models.build("trivial", 23, data / "models"))
    if suite == "unet":
        found = make_scenes.make_scenes([2048], ["deflate", "zstd"], data)
        return [v["path"] for v in found.values()], str(models.build("unet", 23, data / "models"))
    found = make_scenes.make_scenes([8192], ["deflate"], data)
    return [v["path"] for v in found.values()], str(models.build("trivial", 23, data / "models"))


def table(suite: str, rows: dict[str, dict[str, Any]]) -> str:
    base = next(iter(rows.values()))
    lines = [
        f"**{suite}** ({base['megapixels']} MP in total)",
        "",
        "| configuration | wall s | MP/s | vs local | cluster start s | masks identical "
        "| load avg (before, after) |",
        "|---|---:|---:|---:|---:|---|---|",
    ]
    for name, r in rows.items():
        same = "yes" if r["masks_sha"] == base["masks_sha"] else "NO"
        speed = r["mp_per_s"] / base["mp_per_s"]
        lines.append(
            f"| {name} | {r['wall_s']} | {r['mp_per_s']} | {speed:.2f}x | "
            f"{r.get('cluster_start_s', '-')} | {same} | {r.get('load_avg_1min', '-')} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--suite", nargs="+", default=["unet", "trivial"])
    ap.add_argument("--data", type=Path, default=HERE / "data")
    ap.add_argument("--out", type=Path, default=HERE / "out" / "distributed")
    ap.add_argument("--one", help=argparse.SUPPRESS)  # internal: run one spec (JSON)
    args = ap.parse_args(argv)
    if args.one:
        print(json.dumps(one(json.loads(args.one))))
        return
    args.out.mkdir(parents=True, exist_ok=True)
    doc: dict[str, Any] = {
        "machine": f"{platform.node()}: {os.cpu_count()} CPUs, {platform.platform()}",
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "suites": {},
    }
    for suite in args.suite:
        scenes, model = scenes_and_model(suite, args.data)
        rows = {}
        for name, options in CONFIGS.items():
            spec = {"scenes": scenes, "model": model, "options": options}
            spec["out"] = str(args.out / "run")
            load_before = os.getloadavg()[0]
            r = subprocess.run(
                [sys.executable, __file__, "--one", json.dumps(spec)],
                capture_output=True,
                text=True,
            )
            if r.returncode:
                raise SystemExit(f"{suite} / {name} failed:\n{r.stderr[-3000:]}")
            rows[name] = json.loads(r.stdout.strip().splitlines()[-1])
            rows[name]["load_avg_1min"] = [round(load_before, 1), round(os.getloadavg()[0], 1)]
            print(f"{suite:8s} {name:34s} {rows[name]}", flush=True)
        doc["suites"][suite] = rows
        print(table(suite, rows), flush=True)
    (args.out / "results.json").write_text(json.dumps(doc, indent=1))
    print(f"-> {args.out / 'results.json'}")


if __name__ == "__main__":
    main()
