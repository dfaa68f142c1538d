"""onnxruntime vs torch (TorchScript) on the CPU: the same network, the same batch.

smp ``Unet("mobilenet_v2", encoder_weights=None)`` with random weights (seed 0, 7 classes, as
``models.build("unet", 7)``), saved as TorchScript (``.ts``) and as ONNX (``torch.onnx.export``
opset 17, fixed 512 x 512 input, dynamic batch, as ``tilesegd export --format onnx``), both
with the same ``tilesegd.json``. Timed, interleaved (torch, onnxruntime, torch, ...) so that a
load change on a shared machine hits both alike:

* ``net``: one network call on a normalised float32 batch (B, 3, 512, 512); torch gets it in
  channels_last, as tilesegd's engine feeds it on the CPU; onnxruntime NCHW.
* ``engine``: ``Engine.predict`` on B raw uint8 tiles (normalisation, network, argmax), what
  ``tilesegd run`` does per batch.

Prints (and with ``--out`` writes) JSON: median and all ms per batch for each, the 1-minute
load average before and after, threads, versions, and the class-id agreement of the two.

    .venv/bin/python benchmarks/bench_onnx.py --threads 2 --batch 4 --rounds 5
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import models  # noqa: E402

K, TILE = 7, 512


def build(folder: Path) -> tuple[Path, Path]:
    """The TorchScript and ONNX files of the same random-weight Unet-mobilenet_v2."""
    import segmentation_models_pytorch as smp

    from tilesegd.model.onnx_model import write_metadata

    ts = models.build("unet", K, folder)
    torch.manual_seed(0)
    net = smp.Unet("mobilenet_v2", encoder_weights=None, classes=K).eval()
    path = folder / f"unet_{K}.onnx"
    axes = {0: "batch"}
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            net,
            (torch.zeros(1, 3, TILE, TILE),),
            str(path),
            input_names=["input"],
            output_names=["logits"],
            dynamic_axes={"input": axes, "logits": axes},
            opset_version=17,
            dynamo=False,
        )
    write_metadata(path, {"tilesegd.json": json.dumps(models.spec(K).to_dict())})
    return ts, path


def timed(fn, *args) -> float:
    t0 = time.perf_counter()
    fn(*args)
    return (time.perf_counter() - t0) * 1e3


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--out", type=Path, help="also write the JSON here")
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)  # onnxruntime's session takes the same thread count

    import onnxruntime

    from tilesegd.inference.build import open_engine
    from tilesegd.inference.geometry import TilingOptions
    from tilesegd.inference.options import EngineOptions
    from tilesegd.model.model_file import load_model

    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as d:
        ts, onnx_path = build(Path(d))
        nets = {"torch": load_model(ts, "cpu").module, "onnxruntime": load_model(onnx_path).module}
        cpu, tiling = EngineOptions(device="cpu"), TilingOptions(batch_size=a.batch)
        engines = {
            "torch": open_engine(ts, cpu, tiling),
            "onnxruntime": open_engine(onnx_path, cpu, tiling),
        }
        rng = np.random.default_rng(0)
        raw = rng.integers(0, 256, (a.batch, 3, TILE, TILE), dtype=np.uint8)
        valid = np.ones((a.batch, TILE, TILE), bool)
        x = torch.from_numpy(raw).float().div(255).sub(0.45).div(0.225)
        inputs = {"torch": x.contiguous(memory_format=torch.channels_last), "onnxruntime": x}
        ids = {k: e.predict(raw, valid)[0] for k, e in engines.items()}  # warm-up, untimed
        times: dict[str, list[float]] = {f"{s}_{k}": [] for s in ("net", "engine") for k in nets}
        with torch.inference_mode():
            for k, net in nets.items():
                net(inputs[k])
            for _ in range(a.rounds):
                for k in nets:
                    times[f"net_{k}"].append(timed(nets[k], inputs[k]))
                for k in engines:
                    times[f"engine_{k}"].append(timed(engines[k].predict, raw, valid))
    result = {
        "what": f"smp Unet-mobilenet_v2 (random init), {a.batch} x 3 x {TILE}^2, CPU",
        "threads": a.threads,
        "rounds": a.rounds,
        "ms_per_batch_median": {k: round(statistics.median(v), 1) for k, v in times.items()},
        "ms_per_batch_all": {k: [round(t, 1) for t in v] for k, v in times.items()},
        "class_id_agreement": float((ids["torch"] == ids["onnxruntime"]).mean()),
        "loadavg_1min_before_after": [round(load_before, 2), round(os.getloadavg()[0], 2)],
        "cpus": os.cpu_count(),
        "versions": {"torch": torch.__version__, "onnxruntime": onnxruntime.__version__},
    }
    text = json.dumps(result, indent=1)
    print(text)
    if a.out:
        a.out.write_text(text + "\n")
    return result


if __name__ == "__main__":
    main()
