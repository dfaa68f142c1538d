"""Tables, targets and the seconds-against-agreement figure of the trained-model suite.

:func:`save` writes ``benchmarks/results/trained_cpu.json`` after every configuration and, at
the end, the table between ``<!-- trained:start -->`` and ``<!-- trained:end -->`` in
``RESULTS.md`` (the text around it is kept) and ``trained_seconds_vs_agreement.png``.
"""

from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
START, END = "<!-- trained:start -->", "<!-- trained:end -->"
FIGURE = HERE / "trained_seconds_vs_agreement.png"
PEERS = ("MONAI", "pytorch-toolbelt", "rasterio loop")
TARGET_AGREE = 99.9


def best(results: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per label: the run with the fewest seconds (every round), with ``rounds`` and the load
    averages of all its runs."""
    out: dict[str, dict[str, Any]] = {}
    for r in results:
        if "error" in r or "seconds" not in r:
            continue
        b = out.get(r["label"])
        loads = (b or {}).get("loads", []) + [r.get("load_avg")]
        if b is None or r["seconds"] < b["seconds"]:
            b = dict(r)
        b["loads"], b["rounds"] = loads, len(loads)
        out[r["label"]] = b
    return out


def targets(by: dict[str, dict[str, Any]], label: str) -> list[tuple[str, str, bool | None]]:
    """``(target, measured, met)`` for the default setting ``label``."""
    d = by.get(label)
    if d is None:
        return []
    rows: list[tuple[str, str, bool | None]] = []
    agree = d["agree_interior_pct"]
    rows.append((f"interior agreement >= {TARGET_AGREE} %", f"{agree:.3f} %", agree >= 99.9))
    peers = {k: v for k, v in by.items() if k.startswith(PEERS)}
    seamless = {k: v for k, v in peers.items() if v["agree_interior_pct"] >= TARGET_AGREE}
    if seamless:
        k, v = min(seamless.items(), key=lambda kv: kv[1]["seconds"])
        ratio = v["seconds"] / d["seconds"]
        rows.append(
            (
                f">= 1.5x faster than the fastest peer at >= {TARGET_AGREE} %",
                f"{ratio:.2f}x vs {k} ({v['agree_interior_pct']:.3f} %)",
                ratio >= 1.5,
            )
        )
    elif "MONAI gaussian 0.25" in by:
        v = by["MONAI gaussian 0.25"]
        ratio = v["seconds"] / d["seconds"]
        rows.append(
            (
                "no peer reaches it: >= 1.2x faster than MONAI gaussian 0.25",
                f"{ratio:.2f}x",
                ratio >= 1.2,
            )
        )
    rows.append(
        ("network pixels <= 1.8x the scene's", f"{d['pixel_ratio']:.2f}x", d["pixel_ratio"] <= 1.8)
    )
    only = by.get(f"model only ({label})")
    if only:
        eff = only["seconds"] / d["seconds"]
        rows.append(
            (
                "end-to-end efficiency (network alone / tilesegd, same tiles) >= 0.9",
                f"{eff:.2f}",
                eff >= 0.9,
            )
        )
    return rows


def table(doc: dict[str, Any]) -> str:
    """The Markdown of one results document (settings, head-to-head rounds, targets)."""
    by = best(doc["results"])
    ctx = doc["context"]
    v, crop = doc["machine"]["versions"], ctx["crop"]
    lines = [
        f"Run {doc['started']} -> {doc.get('finished') or 'unfinished'}; model "
        f"`{ctx['model']}` (halo {doc['halo']} px; torch's profiler sees "
        f"{ctx['activation_bytes']:.0f} B/px of tensors), scene `{ctx['scene']}`, reference "
        f"crop {crop[2]}^2 at ({crop[0]}, {crop[1]}), {ctx['border']}-px border excluded. "
        f"Reference: {doc['reference'].get('seconds')} s, "
        f"{doc['reference'].get('peak_rss_mb')} MiB.  ",
        f"Machine: {doc['machine'].get('cpu')}, {doc['machine'].get('cores')} cores; torch "
        f"{v.get('torch')}, MONAI {v.get('monai')}, pytorch-toolbelt {v.get('pytorch_toolbelt')}.  ",
        f"Command: `{doc['command']}`",
        "",
        "| setting | tile / overlap (px) | seconds | network px / scene px | interior agreement % "
        "| peak RSS MiB | runs | load avg (before, after) |",
        "|---|---|---:|---:|---:|---:|---:|---|",
    ]
    for label, r in by.items():
        if label.startswith("model only"):
            geo = "same tiles"
        elif r.get("tool") == "tilesegd":
            geo = f"{r['tile']} / {r['overlap']}"
            if "default" in label:
                geo += f" (fitted; max {r['max_tile']}, batch {r['batch']})"
        elif label.startswith("MONAI"):
            geo = f"512 / {int(512 * r.get('overlap', 0.25))}"
        elif label.startswith("pytorch-toolbelt"):
            geo = "512 / 64"
        else:
            geo = "512 / 0"
        secs = f"{r['seconds']:.1f}" + (" (est.)" if r.get("on_crop") else "")
        agree = r.get("agree_interior_pct")
        ratio = r.get("pixel_ratio", r.get("network_pixels", 0) / ctx["size"] ** 2)
        loads = "; ".join(f"{a}, {b}" for a, b in r["loads"] if a is not None)
        lines.append(
            f"| {label} | {geo} | {secs} | {ratio:.2f} | "
            f"{'-' if agree is None else f'{agree:.3f}'} | {r['peak_rss_mb']:.0f} | "
            f"{r['rounds']} | {loads} |"
        )
    rounds = sorted({r["round"] for r in doc["results"] if "error" not in r})
    lines += ["", "Head to head, per round (seconds ratio, same round):", ""]
    for rnd in rounds:
        got = {r["label"]: r for r in doc["results"] if r.get("round") == rnd and "seconds" in r}
        d = got.get("tilesegd default")
        if d:
            parts = [
                f"{k} / default {v['seconds'] / d['seconds']:.2f}"
                for k, v in got.items()
                if k.startswith(PEERS)
            ]
            lines.append(f"* round {rnd}: " + ", ".join(parts))
    for label in ("tilesegd default",):
        rows = targets(by, label)
        if rows:
            lines += ["", f"Targets for `{label}`:", "", "| target | measured | |", "|---|---|---|"]
            lines += [f"| {t} | {m} | {'met' if ok else '**not met**'} |" for t, m, ok in rows]
    return "\n".join(lines) + "\n"


def figure(doc: dict[str, Any], path: Path = FIGURE) -> None:
    """Seconds against interior agreement, every tool and setting in one figure."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    by = best(doc["results"])
    fig, ax = plt.subplots(figsize=(8, 5.5), dpi=110)
    style = {
        "tilesegd": ("o", "tab:blue"),
        "MONAI": ("s", "tab:orange"),
        "pytorch-toolbelt": ("^", "tab:green"),
        "rasterio loop": ("D", "tab:red"),
    }
    for label, r in by.items():
        if r.get("agree_interior_pct") is None:
            continue
        fam = next((k for k in style if label.startswith(k)), "tilesegd")
        marker, colour = style[fam]
        y = -math.log10(max(1e-6, 1 - r["agree_interior_pct"] / 100))
        ax.scatter(
            r["seconds"],
            y,
            marker=marker,
            color=colour,
            s=50,
            facecolors="none" if r.get("on_crop") else colour,
        )
        ax.annotate(
            label.replace("tilesegd ", "ts "),
            (r["seconds"], y),
            fontsize=7,
            xytext=(4, 3),
            textcoords="offset points",
        )
    ticks = [90, 99, 99.9, 99.99, 99.999, 99.9999]
    ax.set_yticks([-math.log10(1 - t / 100) for t in ticks], [f"{t}" for t in ticks])
    ax.axhline(3, color="grey", lw=0.6, ls="--")
    ax.set_xscale("log")
    ax.set_xlabel("seconds for the 4096^2 scene, 2 CPU threads (log; hollow: scaled from the crop)")
    ax.set_ylabel("interior agreement with whole-image inference, %")
    ax.set_title("Trained LoveDA U-Net: speed against seamlessness")
    for fam, (marker, colour) in style.items():
        ax.scatter([], [], marker=marker, color=colour, label=fam)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def write_section(path: Path, body: str) -> None:
    """Replace the ``trained`` region of ``path`` (appended when missing)."""
    region = f"{START}\n{body}\n{END}"
    text = path.read_text() if path.exists() else "# Benchmark results\n"
    if START in text and END in text:
        head, rest = text.split(START, 1)
        text = head + region + rest.split(END, 1)[1]
    else:
        text = text.rstrip() + "\n\n" + region + "\n"
    path.write_text(text)


def save(
    args: Any,
    ctx: dict[str, Any],
    halo: int,
    ref: dict[str, Any],
    results: list[dict[str, Any]],
    final: bool = False,
) -> None:
    """Write the JSON (after every configuration); at the end the table and the figure."""
    from bench import machine

    doc = {
        "suite": "trained",
        "command": " ".join(["python", "benchmarks/trained.py", *sys.argv[1:]]),
        "started": getattr(args, "started", None) or time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z") if final else None,
        "machine": machine(),
        "context": {k: (str(v) if isinstance(v, Path) else v) for k, v in ctx.items()},
        "halo": halo,
        "reference": ref,
        "results": results,
    }
    args.started = doc["started"]
    args.results.parent.mkdir(parents=True, exist_ok=True)
    args.results.write_text(json.dumps(doc, indent=1, default=str))
    if final:
        write_section(args.report / "RESULTS.md", table(doc))
        figure(doc, args.report / FIGURE.name)
        print(f"wrote {args.results}, {args.report / 'RESULTS.md'} and {args.report / FIGURE.name}")
