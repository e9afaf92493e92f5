"""What every demo agent does the same way: its plan, its delegations, its calls, its record.

- **Time.** A step runs when the demo's clock reads its ``at`` (:func:`~corral.demo.clinic
  .real_time` of the same origin and factor control's clock has); a step found late runs at
  once, after the one before it. The origin comes in ``/work/go.json`` once every agent is
  up (so the demo needs a backend whose ``/work`` is the host's directory: bwrap, gVisor).
- **Delegations.** The SDK's (:meth:`corral.guest.tools.Delegations.auto`): one per tool with
  the job's constraints for it, asked for before the day begins, presented on every call,
  renewed before its 300 seconds run out (and once more if the broker finds it expired).
- **Record.** Each call as one JSON line in ``/work/calls.jsonl`` (step, tool, call id, verdict,
  rules, outcome, milliseconds from the guest's call to its answer), and ``/work/result.json``
  once the day is done; the demo reads both. Then the agent waits to be stopped: the host
  removes a sandbox's work directory when it ends, and the demo looks at it first.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable, Mapping
from datetime import datetime
from pathlib import Path
from typing import Any

from corral.demo.clinic import HELD, plan_day, real_time
from corral.guest import tools
from corral.guest.tools import ChannelError, ToolForbidden, ToolRefused

__all__ = ["Agent", "Answer", "Handler", "run"]

Handler = Callable[["Agent", dict[str, Any]], None]
"""What one task of the plan does: ``handler(agent, step)``."""


class Answer:
    """One call's answer as the agent sees it."""

    def __init__(
        self,
        verdict: str,
        outcome: str,
        result: Any = None,
        rules: list[str] | None = None,
        call_id: str | None = None,
        explanation: str = "",
    ) -> None:
        self.verdict = verdict
        self.outcome = outcome
        self.result = result if isinstance(result, dict) else {}
        self.rules = rules or []
        self.call_id = call_id
        self.explanation = explanation

    @property
    def done(self) -> bool:
        return self.verdict == "allow" and self.outcome == "succeeded"


class Agent:
    """One agent's day: the steps of its role from the plan, and the calls it makes."""

    def __init__(self, role: str, job: dict[str, Any], work: Path) -> None:
        self.role = role
        self.world: dict[str, Any] = job["world"]
        self.seed = int(job["seed"])
        self.steps: list[dict[str, Any]] = plan_day(self.seed, self.world)[role]
        self.constraints: dict[str, dict[str, Any]] = job.get("constraints", {})
        self.tools: list[str] = list(job.get("tools", []))
        self.work = work
        self.calls = 0
        self.step: dict[str, Any] = {}
        self.index = -1
        self._log = (work / "calls.jsonl").open("a", encoding="utf-8")

    def say(self, message: str) -> None:
        """A line for the host's log of this sandbox."""
        tools.log(f"{self.role}: {message}")

    def call(self, tool: str, **args: Any) -> Answer:
        """Call ``tool`` (the SDK presents this agent's delegation for it); record and return
        the answer (a refusal is an answer, not an exception)."""
        self.calls += 1
        key = f"{self.role}-{self.seed}-{self.index}-{self.calls}"
        tools.delegations.get(tool)  # asked for again, when due, before the call is timed
        started = time.perf_counter()
        try:
            sent = tools.call(tool, args, idempotency_key=key)
            answer = Answer(
                sent.verdict, "succeeded", sent.result, [], sent.call_id, sent.explanation
            )
        except ToolRefused as exc:
            data = exc.data if isinstance(exc.data, dict) else {}
            verdict = str(data.get("verdict") or "deny")
            outcome = "failed" if verdict == "allow" else "not run"
            answer = Answer(verdict, outcome, None, exc.rules, exc.call_id, exc.explanation)
        except ToolForbidden as exc:
            answer = Answer("forbidden", "not run", None, [], None, exc.message)
        except ChannelError as exc:
            answer = Answer("error", "unknown", None, [], None, exc.message)
        elapsed_ms = (time.perf_counter() - started) * 1000
        record = {
            "agent": self.role,
            "step": self.index,
            "task": self.step.get("task"),
            "at": self.step.get("at"),
            "conflict": self.step.get("conflict"),
            "held": self.step.get("conflict") in HELD,
            "tool": tool,
            "call_id": answer.call_id,
            "verdict": answer.verdict,
            "rules": answer.rules,
            "outcome": answer.outcome,
            "ms": round(elapsed_ms, 3),
            "explanation": answer.explanation,
        }
        self._log.write(json.dumps(record) + "\n")
        self._log.flush()
        return answer

    def begin(self) -> None:
        """Ask for every delegation, then wait for the day to begin: the demo picks the
        moment once every agent is up and writes it to ``/work/go.json``."""
        tools.delegations.auto(self.constraints, ttl_s=300)
        for tool in sorted(self.tools):
            tools.delegations.get(tool)
        go = self.work / "go.json"
        while self.world["clock"].get("origin") is None:
            if go.exists():
                self.world["clock"]["origin"] = float(json.loads(go.read_text("utf-8"))["origin"])
            else:
                time.sleep(0.01)

    def run(self, handlers: Mapping[str, Handler]) -> int:
        self.begin()
        late = 0
        for index, step in enumerate(self.steps):
            self.index, self.step = index, step
            due = real_time(self.world, datetime.fromisoformat(self.step["at"]))
            wait = due - time.time()
            if wait > 0:
                time.sleep(wait)
            elif wait < -0.25:
                late += 1
            handlers[self.step["task"]](self, self.step)
        self._log.close()
        result = {
            "agent": self.role,
            "steps": len(self.steps),
            "calls": self.calls,
            "late_steps": late,
        }
        done = self.work / "result.json"
        tmp = done.with_suffix(".tmp")
        tmp.write_text(json.dumps(result), "utf-8")
        tmp.replace(done)
        self.say(f"day done: {self.calls} calls")
        while True:  # until the host stops the sandbox (sandbox.stop ends this thread)
            time.sleep(3600)


def run(role: str, argv: list[str], handlers: Mapping[str, Handler]) -> int:
    """The entry of one role: ``argv[0]`` is the job as JSON."""
    if not argv:
        print(f"usage: corral.demo.agents.{role}:main JOB_JSON", file=sys.stderr)
        return 2
    job = json.loads(argv[0])
    return Agent(role, job, Path(os.environ.get("HOME") or "/work")).run(handlers)
