"""The CLI's one console and application object (hatch's ``Application`` / ``Terminal``).

Output for people goes to stdout through rich; errors go to stderr as one line, and the command
exits non-zero through :meth:`App.abort`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn

import typer
from rich.console import Console
from rich.progress import Progress

from corral.core.errors import CorralError
from corral.core.settings import Settings, load_settings


@dataclass
class App:
    config: Path | None = None
    data_dir: Path | None = None
    out: Console = field(
        default_factory=lambda: Console(highlight=False, emoji=False, soft_wrap=True)
    )
    err: Console = field(
        default_factory=lambda: Console(stderr=True, highlight=False, emoji=False, soft_wrap=True)
    )

    def settings(self, **overrides: Any) -> Settings:
        if self.data_dir is not None:
            overrides.setdefault("data_dir", self.data_dir)
        try:
            return load_settings(self.config, **overrides)
        except CorralError as exc:
            self.abort(exc.diagnostics())

    @contextlib.contextmanager
    def progress(self, what: str) -> Iterator[Callable[[int, int], None]]:
        """A progress bar on stderr while work runs; nothing when stderr is not a terminal."""
        if not self.err.is_terminal:
            yield lambda done, total: None
            return
        with Progress(console=self.err, transient=True) as bar:
            task = bar.add_task(what, total=None)
            yield lambda done, total: bar.update(task, completed=done, total=total)

    def abort(self, message: str, code: int = 1) -> NoReturn:
        self.err.print(f"error: {message}", markup=False)
        raise typer.Exit(code)


def app_of(ctx: typer.Context) -> App:
    obj = ctx.find_root().obj
    return obj if isinstance(obj, App) else App()
