"""Smoke test of the benchmark harness (benchmarks/) on a tiny generated scene, so CI keeps it
working. It checks plumbing and invariants, never speed."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCH))

import bench  # noqa: E402
import models  # noqa: E402
import workers  # noqa: E402
from make_scenes import generated_base, mirrored_window, write_scene  # noqa: E402
from peers import memory_needed  # noqa: E402
from report import END, START, write_report  # noqa: E402


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    d = tmp_path_factory.mktemp("bench")
    scene = write_scene(d / "scene.tif", 300, "deflate", generated_base(128))
    model = models.build("trivial", 4, d)
    return {"dir": str(d), "scene": str(scene), "model": str(model)}


def test_scene_is_a_seamless_mirror_tiling(setup: dict[str, str]) -> None:
    import rasterio

    base = generated_base(128)
    with rasterio.open(setup["scene"]) as ds:
        img = ds.read()
        assert (ds.width, ds.height, ds.count) == (300, 300, 3)
        assert ds.crs.to_epsg() == 32633 and ds.profile["compress"] == "deflate"
    np.testing.assert_array_equal(img[:, :128, :128], base)
    np.testing.assert_array_equal(img[:, :128, 128:256], base[:, :, ::-1])  # mirrored
    np.testing.assert_array_equal(img, mirrored_window(base, 0, 0, 300, 300))


def test_tilesegd_and_reference_agree(setup: dict[str, str]) -> None:
    d = Path(setup["dir"])
    ref = workers.run_reference(setup["scene"], setup["model"], str(d / "ref.tif"))
    ts = workers.run_tilesegd(
        setup["scene"], setup["model"], str(d / "out"), keep_mask=str(d / "ts.tif")
    )
    mo = workers.run_model_only(setup["scene"], setup["model"])
    for r in (ref, ts, mo):
        assert r["megapixels"] == pytest.approx(0.09) and r["mp_per_s"] > 0
        assert r["peak_rss_mb"] > 50
    assert ts["tiles_run"] == mo["tiles"] == 1  # 300 px fits one tile
    assert ts["stages"]["compute.infer"] > 0 and "compute.read" in ts["stages"]
    assert not (d / "out").exists()  # outputs cleaned up, the mask kept
    # a 1x1 convolution has no spatial context: tiling must reproduce the whole image exactly
    agree = bench.agreement(str(d / "ts.tif"), str(d / "ref.tif"), border=16)
    assert agree == {"agree_pct": 100.0, "agree_interior_pct": 100.0}


@pytest.mark.skipif(
    importlib.util.find_spec("monai") is None
    or importlib.util.find_spec("pytorch_toolbelt") is None,
    reason="peers not installed (pip install 'tilesegd[bench]')",
)
def test_peers_run_and_match_the_reference(setup: dict[str, str]) -> None:
    import peers

    d = Path(setup["dir"])
    ref = d / "ref2.tif"
    workers.run_reference(setup["scene"], setup["model"], str(ref))
    for name, fn in (
        ("monai", peers.run_monai),
        ("tb", peers.run_toolbelt),
        ("loop", peers.run_loop),
    ):
        mask = d / f"{name}.tif"
        r = fn(setup["scene"], setup["model"], str(mask), batch=2)
        assert r["megapixels"] == pytest.approx(0.09) and r["seconds"] > 0
        assert bench.agreement(str(mask), str(ref), border=16)["agree_pct"] > 99.9


def test_subprocess_config_and_codec(setup: dict[str, str]) -> None:
    res = bench.run_config(
        {"kind": "codec", "scene": setup["scene"], "out": str(Path(setup["dir"]) / "c.tif")}
    )
    assert "error" not in res, res.get("error")
    assert res["mp_per_s"] > 0 and res["peak_rss_mb"] > 0
    assert set(res["stages"]) == {"read+decode", "mask encode"}
    bad = bench.run_config({"kind": "codec", "scene": "/nonexistent.tif", "out": "/tmp/x.tif"})
    assert bad["error"].startswith("exit 1")


def test_summary_ratios_and_report(tmp_path: Path) -> None:
    def r(tool: str, mps: float, mb: float, **kw) -> dict:
        return {"group": "g", "tool": tool, "mp_per_s": mps, "peak_rss_mb": mb, **kw}

    results = [
        r("model only", 2.0, 500),
        r("tilesegd", 1.8, 700, compute_mp_per_s=1.9),
        r("codec limit", 3.6, 400),
        r("monai", 0.9, 2800),
        {"group": "g", "tool": "toolbelt", "skipped": "does not fit"},
    ]
    s = bench.summarise(results)["g"]
    assert s["pipeline_efficiency"] == pytest.approx(0.9)
    assert s["codec_ratio"] == pytest.approx(2.0)
    assert s["speedup_vs_monai"] == pytest.approx(2.0)
    assert s["memory_ratio_monai_over_tilesegd"] == pytest.approx(4.0)
    assert "speedup_vs_toolbelt" not in s

    doc = {
        "suite": "smoke",
        "started": "now",
        "command": "bench.py",
        "machine": {"platform": "p", "python": "3", "versions": {"torch": "x"}},
        "results": [{**x, "seconds": 1.0} for x in results if "skipped" not in x] + results[-1:],
        "summary": {"g": s},
    }
    (tmp_path / "results_smoke_cpu.json").write_text(json.dumps(doc))
    md = tmp_path / "RESULTS.md"
    md.write_text(f"# Title\n\nanalysis before\n\n{START}\nold\n{END}\n\nanalysis after\n")
    write_report(md, [tmp_path / "results_smoke_cpu.json"])
    text = md.read_text()
    assert "analysis before" in text and "analysis after" in text and "old" not in text
    assert "| g | monai | 0.9 |" in text and "does not fit" in text


def test_memory_needed_for_whole_image_peers() -> None:
    gib = 2**30
    assert memory_needed("monai", 32768, 32768, 23) > 100 * gib  # 23 float32 maps alone: 92 GiB
    assert memory_needed("toolbelt", 32768, 32768, 23) > memory_needed("monai", 32768, 32768, 23)
    assert memory_needed("loop", 32768, 32768, 23) == 0
