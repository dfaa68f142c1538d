"""Check that a refactor changed no mask: run two revisions of tilesegd on the same scenes.

Each revision is checked out into a temporary git worktree and runs ``python -m tilesegd run``
(with this venv's Python) on the same inputs and model; every scene's ``mask.tif`` pixels and
``pred.zarr`` mask chunks must be byte-identical, and ``areas.csv`` equal.

    .venv/bin/python benchmarks/identical.py --base <commit> [--head WORKTREE_OR_COMMIT] \\
        [--input ../shared/data/scenes] [--input benchmarks/data/scene_4096_deflate.tif] \\
        [--model demo/model/model.pt2]

Without ``--model`` a random-weight smp Unet-mobilenet_v2 (benchmarks/models.py) is used.
Exit 0 when identical, 1 otherwise (the differences are printed).
"""

from __future__ import annotations

import argparse
import filecmp
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent


def checkout(rev: str, where: Path) -> Path:
    """A worktree of ``rev`` at ``where`` (or ``rev`` itself when it is a directory)."""
    if Path(rev).is_dir():
        return Path(rev).resolve()
    subprocess.run(
        ["git", "worktree", "add", "-q", "--detach", str(where), rev], cwd=ROOT, check=True
    )
    return where


def run(tree: Path, inputs: list[str], model: Path, out: Path) -> None:
    args = [sys.executable, "-m", "tilesegd", "-q", "run", "-m", str(model), "-o", str(out)]
    for i in inputs:
        args += ["-i", str(Path(i).resolve())]
    r = subprocess.run(args, cwd=tree, capture_output=True, text=True)
    if r.returncode not in (0, 4):
        raise SystemExit(f"{tree}: tilesegd run failed ({r.returncode}): {r.stderr[-2000:]}")


def compare(a: Path, b: Path) -> list[str]:
    """Differences between two runs' outputs (empty when identical)."""
    import rasterio

    diffs = []
    scenes = sorted(p.name for p in a.iterdir() if (p / "mask.tif").is_file())
    if scenes != sorted(p.name for p in b.iterdir() if (p / "mask.tif").is_file()):
        return [f"different scenes: {scenes}"]
    for s in scenes:
        with rasterio.open(a / s / "mask.tif") as x, rasterio.open(b / s / "mask.tif") as y:
            if not np.array_equal(x.read(), y.read()):
                diffs.append(f"{s}: mask.tif pixels differ")
        za, zb = a / s / "pred.zarr" / "mask", b / s / "pred.zarr" / "mask"
        chunks = sorted(p.relative_to(za) for p in za.rglob("*") if p.is_file() and "c" in p.parts)
        for c in chunks:
            if not filecmp.cmp(za / c, zb / c, shallow=False):
                diffs.append(f"{s}: pred.zarr chunk {c} differs")
        if (a / s / "areas.csv").read_text() != (b / s / "areas.csv").read_text():
            diffs.append(f"{s}: areas.csv differs")
        print(f"{s}: {len(chunks)} chunks compared")
    return diffs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--base", required=True, help="commit (or checkout folder) to compare with")
    ap.add_argument("--head", default=str(ROOT), help="commit or folder (default: this tree)")
    ap.add_argument("--input", action="append", help="scenes (default: ../shared/data/scenes)")
    ap.add_argument("--model", help="model file (default: random-weight Unet-mobilenet_v2)")
    args = ap.parse_args()
    inputs = args.input or [str(ROOT.parent / "shared" / "data" / "scenes")]
    with tempfile.TemporaryDirectory() as d:
        d = Path(d)
        sys.path.insert(0, str(HERE))
        from models import build

        model = Path(args.model).resolve() if args.model else build("unet", 7, d)
        trees = [checkout(args.base, d / "base"), checkout(args.head, d / "head")]
        try:
            for tree, out in zip(trees, ("out_base", "out_head"), strict=True):
                run(tree, inputs, model, d / out)
            diffs = compare(d / "out_base", d / "out_head")
        finally:
            for t in trees:
                if str(t).startswith(str(d)):
                    subprocess.run(["git", "worktree", "remove", "--force", str(t)], cwd=ROOT)
    print("\n".join(diffs) if diffs else f"identical: {args.base} vs {args.head}")
    raise SystemExit(1 if diffs else 0)


if __name__ == "__main__":
    main()
