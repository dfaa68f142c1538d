"""Render benchmark JSON results as Markdown tables inside ``RESULTS.md``.

Only the text between ``<!-- tables:start -->`` and ``<!-- tables:end -->`` is replaced; the
analysis written around it is kept.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

START, END = "<!-- tables:start -->", "<!-- tables:end -->"


def _fmt(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.3g}" if abs(v) < 100 else f"{v:.0f}"
    return str(v)


def _stages(r: dict[str, Any]) -> str:
    st = r.get("stages") or {}
    keep = {k: v for k, v in st.items() if isinstance(v, (int, float)) and v >= 0.005}
    return ", ".join(f"{k} {v:.2f}" for k, v in keep.items())


def tables(doc: dict[str, Any]) -> str:
    """One Markdown section for one results document."""
    m = doc["machine"]
    v = m["versions"]
    lines = [
        f"### Suite `{doc['suite']}` ({doc['started']})",
        "",
        f"Machine: {m.get('cpu')}, {m.get('cores')} cores, {m.get('ram_gb')} GiB RAM, "
        f"GPU: {m.get('gpu') or 'none'}; {m['platform']}, Python {m['python']}.  ",
        "Versions: " + ", ".join(f"{k} {val}" for k, val in v.items()) + ".  ",
        f"Command: `{doc['command']}`",
        "",
        "| group | tool | MP/s | seconds | peak RSS MiB | agree % (interior) | stages (s) |",
        "|---|---|---:|---:|---:|---:|---|",
    ]
    for r in doc["results"]:
        tool = r.get("label") or r.get("tool") or r.get("kind")
        if "skipped" in r:
            lines.append(f"| {r['group']} | {tool} | - | - | - | - | {r['skipped']} |")
            continue
        if "error" in r:
            lines.append(f"| {r['group']} | {tool} | - | - | - | - | failed: {r['error'][:120]} |")
            continue
        agree = f"{r['agree_pct']:.3f} ({r['agree_interior_pct']:.3f})" if "agree_pct" in r else "-"
        lines.append(
            f"| {r['group']} | {tool} | {_fmt(r['mp_per_s'])} | {_fmt(r['seconds'])} | "
            f"{_fmt(r['peak_rss_mb'])} | {agree} | {_stages(r)} |"
        )
    lines += ["", "Headline ratios:", "", "| group | metric | value |", "|---|---|---:|"]
    for g, s in doc["summary"].items():
        for k, val in s.items():
            if isinstance(val, dict):
                val = ", ".join(f"{a}: {b}" for a, b in val.items())
            lines.append(f"| {g} | {k} | {_fmt(val)} |")
    return "\n".join(lines) + "\n"


def write_report(path: Path, results: list[Path]) -> None:
    """Replace the tables region of ``path`` (created if missing) with tables for ``results``."""
    body = "\n".join(tables(json.loads(p.read_text())) for p in results)
    region = f"{START}\n{body}\n{END}"
    text = path.read_text() if path.exists() else f"# Benchmark results\n\n{START}\n{END}\n"
    if START in text and END in text:
        head, rest = text.split(START, 1)
        tail = rest.split(END, 1)[1]
        text = head + region + tail
    else:
        text = text.rstrip() + "\n\n" + region + "\n"
    path.write_text(text)
