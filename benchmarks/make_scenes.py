"""Build large benchmark scenes from the real samples (or a generated image) in bounded memory.

A *base* mosaic (default 2048 x 2048 RGB uint8) is assembled from the RGB samples in
``../shared/data/scenes`` (each sample mirror-padded to a square cell); the scene is then the
base mirrored (``np.flip`` on odd repeats, so every seam is continuous) out to ``size x size``
and written window by window as a tiled (512 x 512) BigTIFF with DEFLATE or ZSTD, so memory stays
at one base plus one window whatever the size. Without the samples a smooth generated image
(sums of sinusoids plus noise, like aerial texture) is the base.

    python benchmarks/make_scenes.py --sizes 8192 16384 32768 --codecs deflate zstd
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SAMPLES = ROOT.parent / "shared" / "data" / "scenes"
DATA = ROOT / "benchmarks" / "data"
WINDOW = 2048  # rows/cols per windowed write (a multiple of the 512-px TIFF block)


def generated_base(side: int, seed: int = 0) -> np.ndarray:
    """(3, side, side) uint8 smooth texture: sinusoids at aerial-like scales plus noise."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:side, 0:side].astype(np.float32)
    out = np.zeros((3, side, side), np.float32)
    for b in range(3):
        for _ in range(6):
            fy, fx, ph = rng.uniform(0.002, 0.08, 2).tolist() + [rng.uniform(0, 6.28)]
            out[b] += np.sin(yy * fy + ph) * np.cos(xx * fx - ph)
    out += rng.normal(0, 0.3, out.shape).astype(np.float32)
    out = (out - out.min()) / (np.ptp(out) + 1e-6) * 255
    return out.astype(np.uint8)


def _rgb_samples(folder: Path) -> list[np.ndarray]:
    """Every uint8 sample with >= 3 bands, as (3, h, w) arrays (first three bands)."""
    import rasterio

    out = []
    for p in sorted(folder.glob("*.tif")):
        with rasterio.open(p) as ds:
            if ds.count >= 3 and ds.dtypes[0] == "uint8" and min(ds.width, ds.height) >= 256:
                out.append(ds.read([1, 2, 3]))
    return out


def sample_base(side: int = 2048, folder: Path = SAMPLES) -> tuple[np.ndarray, str]:
    """(3, side, side) uint8 mosaic of the real RGB samples (2 x 2 cells, each a sample
    mirror-padded to ``side / 2``), or :func:`generated_base` when there are none.

    Returns:
        ``(base, description)``.
    """
    samples = _rgb_samples(folder) if folder.is_dir() else []
    if not samples:
        return generated_base(side), "generated (sinusoids + noise; samples absent)"
    cell = side // 2
    base = np.zeros((3, side, side), np.uint8)
    for k in range(4):
        img = samples[k % len(samples)][:, :cell, :cell]
        ph, pw = cell - img.shape[1], cell - img.shape[2]
        img = np.pad(img, ((0, 0), (0, ph), (0, pw)), mode="symmetric")
        r, c = divmod(k, 2)
        base[:, r * cell : (r + 1) * cell, c * cell : (c + 1) * cell] = img
    names = ", ".join(p.name for p in sorted(folder.glob("*.tif")))
    return base, f"mosaic of real samples in {folder} ({len(samples)} RGB used; {names})"


def mirrored_window(base: np.ndarray, r0: int, c0: int, h: int, w: int) -> np.ndarray:
    """(3, h, w) window of the infinite mirror tiling of ``base`` starting at (r0, c0).

    >>> b = np.arange(4, dtype=np.uint8).reshape(1, 2, 2)
    >>> mirrored_window(b, 0, 0, 2, 4)[0].tolist()
    [[0, 1, 1, 0], [2, 3, 3, 2]]
    """
    bh, bw = base.shape[1:]
    rows = np.arange(r0, r0 + h)
    cols = np.arange(c0, c0 + w)
    ri = np.where((rows // bh) % 2 == 0, rows % bh, bh - 1 - rows % bh)
    ci = np.where((cols // bw) % 2 == 0, cols % bw, bw - 1 - cols % bw)
    return base[:, ri][:, :, ci]


def write_scene(
    path: Path, size: int, compress: str, base: np.ndarray, *, threads: int = 2
) -> Path:
    """Write a ``size x size`` RGB uint8 tiled GeoTIFF (EPSG:32633, 0.5 m pixels) window by
    window; written to a temporary name and renamed, so a half-written scene never exists."""
    import rasterio
    from rasterio.transform import from_origin
    from rasterio.windows import Window

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    profile = dict(
        driver="GTiff",
        width=size,
        height=size,
        count=3,
        dtype="uint8",
        crs="EPSG:32633",
        transform=from_origin(500000.0, 4650000.0, 0.5, 0.5),
        tiled=True,
        blockxsize=512,
        blockysize=512,
        compress=compress,
        BIGTIFF="YES",
        NUM_THREADS=str(threads),
        photometric="RGB",
    )
    if compress.lower() == "deflate":
        profile["predictor"] = 2
    with rasterio.open(tmp, "w", **profile) as dst:
        for r0 in range(0, size, WINDOW):
            for c0 in range(0, size, WINDOW):
                h, w = min(WINDOW, size - r0), min(WINDOW, size - c0)
                dst.write(mirrored_window(base, r0, c0, h, w), window=Window(c0, r0, w, h))
    tmp.replace(path)
    return path


def scene_path(size: int, compress: str, folder: Path = DATA) -> Path:
    """``benchmarks/data/scene_<size>_<codec>.tif``."""
    return folder / f"scene_{size}_{compress.lower()}.tif"


def make_scenes(
    sizes: list[int], codecs: list[str], folder: Path = DATA, *, force: bool = False
) -> dict[str, dict]:
    """Build every (size, codec) scene that does not exist yet; return their descriptions."""
    base, desc = sample_base()
    out = {}
    for size in sizes:
        for codec in codecs:
            p = scene_path(size, codec, folder)
            t0 = time.perf_counter()
            if force or not p.exists():
                write_scene(p, size, codec, base)
            out[p.name] = {
                "path": str(p),
                "size": size,
                "codec": codec,
                "bytes": p.stat().st_size,
                "source": desc,
                "seconds_to_build": round(time.perf_counter() - t0, 1),
            }
            print(
                f"{p}: {p.stat().st_size / 2**20:.0f} MiB ({math.ceil(out[p.name]['seconds_to_build'])} s)"
            )
    return out


def main(argv: list[str] | None = None) -> None:
    """Command line: see the module docstring."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[8192, 16384, 32768])
    ap.add_argument("--codecs", nargs="+", default=["deflate", "zstd"])
    ap.add_argument("--out", type=Path, default=DATA)
    ap.add_argument("--force", action="store_true", help="rebuild scenes that exist")
    args = ap.parse_args(argv)
    make_scenes(args.sizes, args.codecs, args.out, force=args.force)


if __name__ == "__main__":
    main()
