"""What every benchmark shares: the measured log's names, a figure with its target and baseline,
percentiles, repeats under a time budget, and optional cProfile output."""

from __future__ import annotations

import asyncio
import cProfile
import hashlib
import io
import pstats
import statistics
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar

from rich.progress import Progress, TaskID

from corral.audit.keys import AuditKeys, log_origin

DEPLOYMENT = "bench.local"
TENANT = "bench"
ORIGIN = log_origin(DEPLOYMENT, TENANT)
POSTGRES_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"

T = TypeVar("T")


def bench_keys() -> AuditKeys:
    """The audit keys of every benchmark run: a fixed seed, so that bundles are reproducible."""
    return AuditKeys(hashlib.sha256(b"corral benchmarks: not a secret").digest())


@dataclass
class Metric:
    """One reported figure, with its target (if the issue sets one) and its baseline.

    ``ratio`` is always "how many times better than the baseline" (> 1: corral is faster):
    value / baseline for a rate, baseline / value for a time.
    """

    key: str
    group: str
    label: str
    value: float
    unit: str
    better: Literal["higher", "lower"]
    target: float | None = None
    target_note: str = ""
    baseline_label: str | None = None
    baseline_value: float | None = None
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def passed(self) -> bool | None:
        if self.target is None:
            return None
        if self.better == "higher":
            return self.value >= self.target
        return self.value < self.target

    @property
    def ratio(self) -> float | None:
        if self.baseline_value is None or self.baseline_value <= 0 or self.value <= 0:
            return None
        if self.better == "higher":
            return self.value / self.baseline_value
        return self.baseline_value / self.value

    def to_json(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "group": self.group,
            "label": self.label,
            "value": self.value,
            "unit": self.unit,
            "better": self.better,
            "target": self.target,
            "target_note": self.target_note or None,
            "passed": self.passed,
            "baseline": self.baseline_label,
            "baseline_value": self.baseline_value,
            "ratio_to_baseline": self.ratio,
            "details": self.details,
        }


def percentile(samples: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0-100) with linear interpolation between closest ranks."""
    if not samples:
        raise ValueError("percentile of no samples")
    ordered = sorted(samples)
    pos = (len(ordered) - 1) * q / 100
    low = int(pos)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (pos - low)


def spread(values: Sequence[float]) -> dict[str, Any]:
    """Median, min, max and every run, for a figure's details."""
    return {
        "runs": len(values),
        "median": statistics.median(values),
        "min": min(values),
        "max": max(values),
        "all": list(values),
    }


def repeat(run: Callable[[], T], times: int, budget_s: float) -> tuple[list[T], list[float]]:
    """Call ``run`` up to ``times`` times, stopping early once ``budget_s`` seconds are spent
    (always at least once); return the results and the wall time of each run."""
    results: list[T] = []
    seconds: list[float] = []
    started = time.perf_counter()
    for _ in range(times):
        t0 = time.perf_counter()
        results.append(run())
        seconds.append(time.perf_counter() - t0)
        if time.perf_counter() - started > budget_s:
            break
    return results, seconds


class Phase:
    """The rich progress bar of the phase running now; each phase keeps its own line."""

    def __init__(self, progress: Progress) -> None:
        self._progress = progress
        self._task: TaskID | None = None

    def start(self, description: str, total: float) -> None:
        """Close the current phase's bar and open a new one."""
        self.done()
        self._task = self._progress.add_task(description, total=total)

    def advance(self, amount: float = 1) -> None:
        if self._task is not None:
            self._progress.advance(self._task, amount)

    def done(self) -> None:
        if self._task is not None:
            task = self._progress.tasks[self._task]
            if task.total is not None:
                self._progress.update(self._task, completed=task.total)
            self._progress.stop_task(self._task)


class Profiler:
    """With a directory, cProfile named blocks (a name's blocks add up) into
    ``profile_<name>.txt`` files there, written by :meth:`write`."""

    def __init__(self, out: Path | None) -> None:
        self._out = out
        self._profiles: dict[str, cProfile.Profile] = {}

    @contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        if self._out is None:
            yield
            return
        profile = self._profiles.setdefault(name, cProfile.Profile())
        profile.enable()
        try:
            yield
        finally:
            profile.disable()

    def write(self) -> list[Path]:
        written: list[Path] = []
        if self._out is None:
            return written
        for name, profile in self._profiles.items():
            text = io.StringIO()
            stats = pstats.Stats(profile, stream=text)
            stats.sort_stats("tottime").print_stats(30)
            stats.sort_stats("cumulative").print_stats(30)
            path = self._out / f"profile_{name}.txt"
            path.write_text(text.getvalue(), encoding="utf-8")
            written.append(path)
        return written


class RawConnection:
    """One keep-alive HTTP/1.1 connection over a Unix socket, spoken by hand: the load
    generators' client.

    httpx costs about a millisecond of CPU per request, and with a pool of hundreds of
    connections far more (httpcore checks every pooled connection on each request); the load
    generator shares the 2 cores with the servers it measures, so a heavier client measures
    itself. Only what the benchmarks need is here (JSON bodies with Content-Length, keep-alive,
    the answer's headers); it is not a general client.
    """

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def open(cls, socket: Path) -> RawConnection:
        return cls(*await asyncio.open_unix_connection(str(socket)))

    async def post(self, path: str, body: bytes) -> tuple[int, dict[str, str], bytes]:
        """``POST path`` with a JSON ``body``: the status, the headers (lower-cased names) and
        the body of the answer."""
        head = (f"POST {path} HTTP/1.1\r\nHost: corral\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(body)}\r\n\r\n").encode()  # fmt: skip
        self.writer.write(head + body)
        await self.writer.drain()
        status_line = await self.reader.readline()
        headers: dict[str, str] = {}
        while (line := await self.reader.readline()) not in (b"\r\n", b""):
            name, _, value = line.decode("latin-1").partition(":")
            headers[name.strip().lower()] = value.strip()
        length = int(headers.get("content-length", "0"))
        return int(status_line.split()[1]), headers, await self.reader.readexactly(length)

    def close(self) -> None:
        self.writer.close()
