"""Training throughput: a tilesegd training step against a plain smp loop on the same tensors.

    .venv/bin/python benchmarks/train_speed.py                      # LoveDA, 8 x 256^2, full decoder
    .venv/bin/python benchmarks/train_speed.py --tile 512 --batch 8 --rounds 3

One process, variants interleaved round by round (the machine is shared: ratios within a round
are what count; the 1-minute load average is recorded with each round). Every variant starts from
the same initial weights and trains on the same batches of tiles, drawn once by tilesegd's
sampler (``TileSampler``, with augmentation):

* ``tilesegd``: :meth:`tilesegd.training.loop.TrainRun.step` as ``tilesegd train`` runs it (its
  defaults: channels-last, bf16 autocast where the CPU has native bf16), plus the sampling of
  the batch (crop, resample, augment, normalise), which the plain loops get for free;
* ``tilesegd fp32``: the same with autocast off;
* ``plain``: the tutorial loop, ``loss = CE(model(x), y); loss.backward(); opt.step();
  sched.step()`` with NCHW float32 tensors, AdamW + OneCycle;
* ``plain cl+bf16``: the plain loop with the same layout and autocast as tilesegd.

A stage breakdown of tilesegd's step (sampling, augmentation, forward, loss, backward,
optimiser) is timed separately. Results: ``benchmarks/results/train_speed.json`` and a
Markdown table on stdout.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import time
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
DATA = HERE.parents[1] / "shared" / "data" / "labeled" / "loveda"


def make_run(data: Path, out: Path, tile: int, batch: int, decoder: str, loss: str):
    """A :class:`TrainRun` on ``data`` (a folder with images/, masks/, classes.csv)."""
    from tilesegd.training.config import TrainConfig
    from tilesegd.training.loop import TrainRun
    from tilesegd.training.setup import prepare

    cfg = TrainConfig(
        images=str(data / "images"),
        masks=str(data / "masks"),
        classes=str(data / "classes.csv"),
        output=str(out),
        tile_size=tile,
        batch_size=batch,
        loss=loss,
        val_split="regions",
        val_fraction=0.3,
        epochs=1,
        steps_per_epoch=1000,
        device="cpu",
        decoder_channels=[64, 32, 16, 16, 8] if decoder == "slim" else None,
    ).validate()
    torch.manual_seed(0)
    return TrainRun(cfg, prepare(cfg), torch.device("cpu"))


def plain_loop(model: torch.nn.Module, steps: int, cl_bf16: bool):
    """The tutorial's loop: returns ``step(x, y) -> loss``."""
    model = copy.deepcopy(model).float()
    model = model.to(memory_format=torch.channels_last if cl_bf16 else torch.contiguous_format)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=1e-3, total_steps=steps + 10)
    ce = torch.nn.CrossEntropyLoss(ignore_index=255)

    def step(x: torch.Tensor, y: torch.Tensor) -> float:
        if cl_bf16:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=cl_bf16):
            out = model(x)
        loss = ce(out.float(), y)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        sched.step()
        return float(loss)

    return step


def stage_times(run, x: torch.Tensor, y: torch.Tensor, clock=time.perf_counter) -> dict[str, float]:
    """Seconds of each part of one tilesegd step (the same calls as ``TrainRun.step``)."""
    t = [clock()]
    xc = x.contiguous(memory_format=torch.channels_last)
    dt = run.amp_dtype
    with torch.autocast("cpu", dtype=dt or torch.float32, enabled=bool(dt)):
        out = run.model(xc)
        t.append(clock())
        loss = run.loss_fn(out, y)
    t.append(clock())
    loss.backward()
    t.append(clock())
    run.opt.step()
    run.opt.zero_grad(set_to_none=True)
    run.sched.step()
    t.append(clock())
    return dict(zip(("forward", "loss", "backward", "optimizer"), np.diff(t), strict=True))


def sampling_times(
    run, rng: np.random.Generator, batch: int, clock=time.perf_counter
) -> dict[str, float]:
    """Seconds to draw a batch with and without augmentation (crop, resample, normalise)."""
    from tilesegd.training.tiles import TileSampler

    s = run.sampler
    bare = TileSampler(s.store, s.regions, s.p * 0 + 1, s.tile, 0.0, False, s.scale, s.mean, s.std)
    t0 = clock()
    bare.sample(rng, batch)
    t1 = clock()
    s.sample(rng, batch)
    t2 = clock()
    return {"sampling": t1 - t0, "augmentation": (t2 - t1) - (t1 - t0)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=DATA)
    ap.add_argument("--tile", type=int, default=256)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--decoder", choices=["full", "slim"], default="full")
    ap.add_argument("--loss", default="ce", help="tilesegd's loss (ce, ce+dice...)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--steps", type=int, default=2, help="timed steps per variant and round")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, default=HERE / "results" / "train_speed.json")
    ap.add_argument(
        "--clock",
        choices=["wall", "cpu"],
        default="wall",
        help="cpu: this process's CPU seconds (with --threads 1, immune to other processes "
        "taking turns on the cores; with more threads it would count spin-waits)",
    )
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    clock = time.process_time if a.clock == "cpu" else time.perf_counter
    run = make_run(a.data, Path("/tmp/train_speed"), a.tile, a.batch, a.decoder, a.loss)
    init = copy.deepcopy(run.model.state_dict())
    rng = np.random.default_rng(0)
    batches = [tuple(map(torch.from_numpy, run.sampler.sample(rng, a.batch))) for _ in range(4)]
    fp32 = make_run(a.data, Path("/tmp/train_speed"), a.tile, a.batch, a.decoder, a.loss)
    fp32.model.load_state_dict(init)
    fp32.amp_dtype = None
    plain_model = copy.deepcopy(run.model)
    variants = {
        "tilesegd": lambda x, y: (run.sampler.sample(rng, a.batch), run.step(x, y)),
        "tilesegd fp32": lambda x, y: (fp32.sampler.sample(rng, a.batch), fp32.step(x, y)),
        "plain": plain_loop(plain_model, a.rounds * a.steps + 4, cl_bf16=False),
        "plain cl+bf16": plain_loop(plain_model, a.rounds * a.steps + 4, cl_bf16=True),
    }
    for f in variants.values():  # warm-up (oneDNN primitive caches, allocator)
        f(*batches[0])
    rounds = []
    for r in range(a.rounds):
        row: dict[str, float] = {}
        for name, f in variants.items():
            t0 = clock()
            for i in range(a.steps):
                f(*batches[(r * a.steps + i) % len(batches)])
            row[name] = (clock() - t0) / a.steps
        stages = stage_times(run, *batches[r % len(batches)], clock=clock)
        stages.update(sampling_times(run, rng, a.batch, clock=clock))
        rounds.append({"seconds": row, "stages": stages, "load1": os.getloadavg()[0]})
        print(f"round {r + 1}: " + ", ".join(f"{k} {v:.2f} s" for k, v in row.items()))
    report(a, rounds)


def report(a: argparse.Namespace, rounds: list[dict]) -> None:
    """Median seconds per step, Mpx/s and ratios; JSON + a Markdown table."""
    names = list(rounds[0]["seconds"])
    med = {n: float(np.median([r["seconds"][n] for r in rounds])) for n in names}
    ratio = {
        n: float(np.median([r["seconds"][n] / r["seconds"]["plain"] for r in rounds]))
        for n in names
    }
    stages = {k: float(np.median([r["stages"][k] for r in rounds])) for k in rounds[0]["stages"]}
    mpx = a.batch * a.tile**2 / 1e6
    doc = {
        "command": "python benchmarks/train_speed.py "
        + " ".join(f"--{k} {v}" for k, v in vars(a).items() if k not in ("out", "data")),
        "batch": a.batch,
        "tile": a.tile,
        "decoder": a.decoder,
        "loss": a.loss,
        "threads": a.threads,
        "clock": a.clock,
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
        "torch": torch.__version__,
        "seconds_per_step": med,
        "ratio_to_plain": ratio,
        "stages": stages,
        "rounds": rounds,
    }
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(doc, indent=2))
    loads = [r["load1"] for r in rounds]
    print(
        f"\n{a.batch} x {a.tile}^2 px per step ({mpx:.2f} Mpx), {a.decoder} decoder, loss "
        f"{a.loss}, {a.threads} thread(s), {a.clock} clock; load average "
        f"{min(loads):.1f}-{max(loads):.1f}"
    )
    print("\n| variant | s / step | Mpx/s | ratio to plain (per round, median) |")
    print("|---|---:|---:|---:|")
    for n in names:
        print(f"| {n} | {med[n]:.2f} | {mpx / med[n]:.3f} | {ratio[n]:.2f} |")
    print("\n| tilesegd stage | s |\n|---|---:|")
    for k, v in stages.items():
        print(f"| {k} | {v:.3f} |")


if __name__ == "__main__":
    main()
