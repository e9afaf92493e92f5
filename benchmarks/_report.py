"""Rendering a run: the rich table, ``audit.json`` and the PNG pictures (matplotlib, Agg)."""

from __future__ import annotations

import json
import os
import platform
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import psycopg
import pymerkle
import sqlalchemy
from matplotlib.figure import Figure
from rich.table import Table

from benchmarks._common import Metric, percentile
from benchmarks._tree import Latencies


def machine() -> dict[str, Any]:
    """What the numbers were measured on."""
    info: dict[str, Any] = {
        "cpu_count": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "cpu_model": _proc_field("/proc/cpuinfo", "model name"),
        "memory": _proc_field("/proc/meminfo", "MemTotal"),
        "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "platform": platform.platform(),
        "python": sys.version.split()[0],
        "python_implementation": platform.python_implementation(),
        "sqlite": sqlite3.sqlite_version,
        "sqlalchemy": sqlalchemy.__version__,
        "psycopg": psycopg.__version__,
        "pymerkle": pymerkle.__version__,
    }
    return info


def code() -> dict[str, Any]:
    """The commit measured, and whether the working tree differed from it (read-only git)."""
    root = Path(__file__).resolve().parent.parent

    def git(*args: str) -> str | None:
        try:
            done = subprocess.run(
                ["git", *args], cwd=root, capture_output=True, text=True, timeout=10, check=True
            )
        except (OSError, subprocess.SubprocessError):
            return None
        return done.stdout.strip()

    status = git("status", "--porcelain", "--untracked-files=no", "--", "src")
    return {
        "commit": git("rev-parse", "HEAD"),
        "src_modified_since_commit": None if status is None else bool(status),
        "src_changes": None if not status else status.splitlines(),
    }


def _proc_field(path: str, name: str) -> str | None:
    try:
        with open(path, encoding="utf-8") as lines:
            for line in lines:
                key, _, value = line.partition(":")
                if key.strip() == name:
                    return value.strip()
    except OSError:
        return None
    return None


def _number(value: float, unit: str) -> str:
    if unit in ("appends/s", "entries/s"):
        return f"{value:,.0f}"
    if unit == "ms":
        return f"{value:.3f}"
    return f"{value:.2f}"


def _target(metric: Metric) -> str:
    if metric.target is None:
        return ""
    sign = ">=" if metric.better == "higher" else "<"
    return f"{sign} {_number(metric.target, metric.unit)}"


def table(metrics: list[Metric], title: str) -> Table:
    """Value, target, pass/fail and ratio to the baseline (> 1: corral is faster), by group."""
    out = Table(title=title, title_justify="left")
    out.add_column("figure", no_wrap=True)
    out.add_column("value", justify="right", no_wrap=True)
    out.add_column("unit", no_wrap=True)
    out.add_column("target", justify="right", no_wrap=True)
    out.add_column("pass", no_wrap=True)
    out.add_column("baseline", justify="right", no_wrap=True)
    out.add_column("x base", justify="right", no_wrap=True)
    out.add_column("runs", justify="right", no_wrap=True)
    previous = None
    for m in metrics:
        if m.group != previous:
            if previous is not None:
                out.add_section()
            out.add_row(f"[bold]{m.group}[/]")
            previous = m.group
        passed = {True: "[green]PASS[/]", False: "[red]FAIL[/]", None: ""}[m.passed]
        ratio = m.ratio
        out.add_row(
            f"  {m.label}",
            _number(m.value, m.unit),
            m.unit,
            _target(m),
            passed,
            "" if m.baseline_value is None else _number(m.baseline_value, m.unit),
            "" if ratio is None else f"{ratio:.2f}x",
            str(_runs(m)),
        )
    return out


def _runs(metric: Metric) -> int | str:
    if "runs" in metric.details:
        return int(metric.details["runs"])
    for value in metric.details.values():
        if isinstance(value, dict) and "runs" in value:
            return int(value["runs"])
    if "samples" in metric.details:
        return f"{metric.details['samples']} proofs"
    return ""


def baselines(metrics: list[Metric]) -> list[str]:
    """One line per distinct baseline, for the footnote under the table."""
    seen: dict[str, None] = {}
    for m in metrics:
        if m.baseline_label:
            seen[m.baseline_label] = None
    return list(seen)


def write_json(path: Path, payload: dict[str, Any]) -> None:
    path.write_text(json.dumps(payload, indent=2, sort_keys=False) + "\n", encoding="utf-8")


def append_picture(path: Path, data: dict[str, dict[int, float]], target: float) -> None:
    """Grouped bars of appends/s per batch size, log scale, with the target line."""
    order = ("Sequencer", "writer", "floor")

    def rank(name: str) -> tuple[bool, int]:
        return name.split()[0] != "SQLite", next(i for i, o in enumerate(order) if o in name)

    series = sorted(data, key=rank)
    palette = {False: ("#1f77b4", "#6baed6", "#c6dbef"), True: ("#e6550d", "#fd8d3c", "#fdd0a2")}
    batches = sorted({b for values in data.values() for b in values})
    figure = Figure(figsize=(9, 5), layout="constrained")
    ax = figure.subplots()
    width = 0.8 / max(len(series), 1)
    for k, name in enumerate(series):
        xs = [i + (k - (len(series) - 1) / 2) * width for i in range(len(batches))]
        ys = [data[name].get(b, 0.0) for b in batches]
        bars = ax.bar(xs, ys, width, label=name, color=palette[rank(name)[0]][rank(name)[1]])
        ax.bar_label(bars, labels=[f"{y:,.0f}" if y else "" for y in ys], fontsize=7, rotation=90)
    ax.axhline(target, color="red", linestyle="--", linewidth=1, label=f"target {target:,.0f}/s")
    ax.set_yscale("log")
    ax.set_xticks(range(len(batches)), [f"batch {b}" for b in batches])
    ax.set_ylabel("durable appends/s (median)")
    ax.set_title("Durable appends per second")
    ax.legend(fontsize=8)
    figure.savefig(path, dpi=120)


def latency_picture(path: Path, latencies: Latencies, target: float, size: int) -> None:
    """A histogram per proof kind (log x): the store, the raw sqlite3 floor, pymerkle."""
    figure = Figure(figsize=(11, 4.8), layout="constrained")
    kinds = sorted(latencies.corral, key=lambda kind: (kind != "inclusion", kind))
    axes = figure.subplots(1, len(kinds), squeeze=False)[0]
    for ax, kind in zip(axes, kinds, strict=True):
        ours = latencies.corral[kind]
        series = [
            ("corral LogStore (SQLite)", ours),
            ("same nodes via sqlite3 alone (floor)", latencies.floor.get(kind, [])),
            ("pymerkle InmemoryTree (memory)", latencies.pymerkle.get(kind, [])),
        ]
        everything = [v for _, values in series for v in values if v > 0]
        low, high = min(everything), max(*everything, target)
        bins = [low * (high / low) ** (i / 80) for i in range(81)]
        for label, values in series:
            if values:
                ax.hist(values, bins=bins, alpha=0.6, label=label)
        ax.set_xscale("log")
        for q, style in ((50, ":"), (99, "-")):
            value = percentile(ours, q)
            ax.axvline(value, color="black", linestyle=style, label=f"corral p{q} {value:.3f} ms")
        ax.axvline(target, color="red", linestyle="--", label=f"target p99 < {target:g} ms")
        ax.set_title(f"{kind} proofs at {size:,} entries")
        ax.set_xlabel("latency per proof (ms, log scale)")
        ax.set_ylabel("proofs")
        ax.legend(fontsize=7)
    figure.savefig(path, dpi=120)
