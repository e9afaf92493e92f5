"""``corral supervisor``: evaluate the conflict classifier on scenario files."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from corral.cli._console import app_of
from corral.core.errors import CorralError
from corral.supervisor.evaluation import Report, evaluate, load_scenarios

app = typer.Typer(help="The coordination supervisor: its rules, evaluated.", no_args_is_help=True)


@app.command("eval")
def eval_(
    ctx: typer.Context,
    files: Annotated[
        list[Path], typer.Argument(help="scenario files (JSON Lines)", exists=True, dir_okay=False)
    ],
    as_json: Annotated[bool, typer.Option("--json", help="print one JSON object")] = False,
) -> None:
    """Run scenarios through the real classifier; print accuracy, conflicts and latency.

    Exits 1 when any call's verdict, rules or conflicts_with is wrong.
    """
    cli = app_of(ctx)
    report = Report()
    try:
        for path in files:
            evaluate(load_scenarios(path), report)
    except CorralError as exc:
        cli.abort(exc.diagnostics())
    result = report.to_json()
    if as_json:
        cli.out.print_json(json.dumps(result))
    else:
        out = cli.out
        out.print(f"calls: {result['calls']}", markup=False)
        for key in ("verdict_accuracy", "conflict_precision", "conflict_recall", "rule_accuracy",
                    "conflicts_with_accuracy"):  # fmt: skip
            out.print(f"{key.replace('_', ' ')}: {result[key]:.2%}", markup=False)
        latency = result["latency_us"]
        out.print(f"decision latency: p50 {latency['p50']:.1f} µs, p99 {latency['p99']:.1f} µs",
                  markup=False)  # fmt: skip
        for failure in report.failures:
            out.print(f"WRONG {failure.scenario} / {failure.call}: {'; '.join(failure.problems)}",
                      markup=False)  # fmt: skip
    if report.failures:
        raise typer.Exit(1)
