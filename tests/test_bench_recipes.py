"""The class-weighting recipe benchmark (benchmarks/bench_recipes.py): its synthetic many-class
set is long-tailed as the issue asks, and its summary pairs seeds. Plumbing only (the runs
themselves are the benchmark)."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import bench_recipes as br  # noqa: E402


def test_synthetic_set_is_long_tailed_and_seeded(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setitem(br.SYNTH, "train", 2)
    monkeypatch.setitem(br.SYNTH, "test", 1)
    train_dir, test_dir, info = br.prepare_set("synthetic", tmp_path)
    assert len(info["classes"]) == br.SYNTH["classes"] >= 15
    shares = np.array(info["target_shares"])
    assert shares.max() / shares.min() == pytest.approx(1000.0, rel=1e-2)  # 6 decimals
    got = np.array(info["train_shares"])
    assert np.all(got > 0) and got.max() / got.min() >= 300  # 2 frames only: the tail is noisy
    assert info["train_frames"] == 2 and info["test_frames"] == 1
    again = br.make_synthetic(tmp_path / "again")
    for sub in ("images", "masks"):
        a = (train_dir / sub / "f1.png").read_bytes()
        assert a == (again[0] / sub / "f1.png").read_bytes()  # same seed, same frames


def test_summary_pairs_seeds_against_no_weighting() -> None:
    sets = {"s": {"classes": ["a", "b"], "train_shares": [0.9, 0.1]}}

    def run(recipe: str, seed: int, miou: float) -> dict:
        iou = {"a": miou + 0.1, "b": miou - 0.1}
        return dict(set="s", recipe=recipe, seed=seed, miou=miou, pixel_accuracy=0.5, iou=iou)

    runs = [run("none", 0, 0.5), run("none", 1, 0.3), run("balanced", 0, 0.4),
            run("balanced", 1, 0.35)]  # fmt: skip
    by = {r["recipe"]: r for r in br.summarise(runs, sets)}
    assert by["none"]["miou"]["mean"] == pytest.approx(0.4)
    assert by["none"]["miou"]["sd"] == pytest.approx(np.std([0.5, 0.3], ddof=1))
    assert by["balanced"]["miou_minus_none"]["mean"] == pytest.approx((-0.1 + 0.05) / 2)
    assert by["balanced"]["seeds_better_than_none"] == 1
    assert by["balanced"]["frequent_half_iou"]["mean"] == pytest.approx(0.475)
    assert by["balanced"]["rare_half_iou"]["mean"] == pytest.approx(0.275)
    assert "| s | balanced | 2 |" in br.table(br.summarise(runs, sets))


def test_quick_is_small() -> None:
    a = br.parse_args(["--quick"])
    assert a.seeds == [0] and a.epochs == 2 and a.budget_scale == pytest.approx(0.04)
    assert a.out.name == "results_recipes_cpu_quick.json"
    assert br.parse_args([]).out.name == "results_recipes_cpu.json"
