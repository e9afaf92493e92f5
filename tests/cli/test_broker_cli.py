"""The ``corral broker`` commands through typer's CliRunner: output, exit codes, audit entries."""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from typer.testing import CliRunner

from corral.audit.entries import parse_entry
from corral.audit.store import LogStore
from corral.broker.delegation import MAX_TTL_S
from corral.cli import app

runner = CliRunner()
STRIPE = json.dumps({"api_key": "sk_test_CLIcanary0123456789"})


def _invoke(data_dir: Path, *args: str, stdin: str | None = None) -> tuple[int, str, str]:
    result = runner.invoke(app, ["--data-dir", str(data_dir), "broker", *args], input=stdin)
    return result.exit_code, result.stdout, result.stderr


def _kinds(data_dir: Path, tenant: str) -> list[str]:
    store = LogStore.from_url(f"sqlite:///{data_dir / 'audit.db'}")
    try:
        leaves = store.entries(tenant, 0, store.log_size(tenant))
        return [parse_entry(e.leaf).kind for e in leaves]
    finally:
        store.close()


def test_connect_reads_secrets_from_stdin_and_never_prints_them(tmp_path: Path) -> None:
    code, out, _ = _invoke(tmp_path, "connect", "stripe", "--tenant", "t1", "--stdin",
                           "--api-url", "http://stripe.fake", stdin=STRIPE)  # fmt: skip
    assert code == 0 and out == "connected stripe as stripe-1 for tenant t1\n"
    code, out, _ = _invoke(tmp_path, "connections", "--tenant", "t1", "--json")
    listed = json.loads(out)
    assert code == 0 and [c["connection_id"] for c in listed] == ["stripe-1"]
    assert listed[0]["status"] == "active" and listed[0]["api_url"] == "http://stripe.fake"
    assert "CLIcanary" not in out
    assert _kinds(tmp_path, "t1") == ["credential.connected"]


def test_connect_prompts_with_hidden_input(tmp_path: Path) -> None:
    code, out, err = _invoke(tmp_path, "connect", "stripe", "--tenant", "t1",
                             stdin="sk_test_prompted0123456789\n")  # fmt: skip
    assert code == 0, err
    assert "sk_test_prompted" not in out + err


def test_connect_refuses_bad_input_and_changes_nothing(tmp_path: Path) -> None:
    code, _, err = _invoke(tmp_path, "connect", "paypal", "--tenant", "t1", "--stdin", stdin="{}")
    assert code == 1 and "unknown provider 'paypal'" in err
    code, _, err = _invoke(tmp_path, "connect", "stripe", "--tenant", "t1", "--stdin",
                           stdin='{"api_key": "x", "extra": "y"}')  # fmt: skip
    assert code == 1 and "unknown extra" in err
    code, _, err = _invoke(tmp_path, "connect", "stripe", "--tenant", "t1", "--stdin", stdin="[")
    assert code == 1 and "JSON object" in err
    code, out, _ = _invoke(tmp_path, "connections", "--tenant", "t1", "--json")
    assert json.loads(out) == []


def test_delegate_caps_the_ttl_and_records_the_mint(tmp_path: Path) -> None:
    code, out, err = _invoke(tmp_path, "delegate", "--tenant", "t1", "--agent", "billing-1",
                             "--tool", "stripe.*", "--ttl", "86400", "--max-uses", "2",
                             "--max-amount", "5000:usd", "--json")  # fmt: skip
    assert code == 0, err
    answer = json.loads(out)
    assert answer["delegation"].startswith("cdl1.")
    expires = datetime.fromisoformat(answer["expires_at"].replace("Z", "+00:00"))
    issued = datetime.fromisoformat(answer["scope"]["issued_at"].replace("Z", "+00:00"))
    assert expires - issued == timedelta(seconds=MAX_TTL_S)
    assert answer["scope"]["max_uses"] == 2
    assert _kinds(tmp_path, "t1") == ["delegation.minted"]


@pytest.mark.parametrize("bad", [["--ttl", "0"], ["--tool", "no spaces allowed"],
                                 ["--max-amount", "lots"]])  # fmt: skip
def test_delegate_refuses_a_bad_request(tmp_path: Path, bad: list[str]) -> None:
    args = ["delegate", "--tenant", "t1", "--agent", "a", "--tool", "stripe.*", *bad]
    code, out, err = _invoke(tmp_path, *args)
    assert code != 0 and out == "" and err


def test_revoke_a_connection_and_rotate_keys(tmp_path: Path) -> None:
    _invoke(tmp_path, "connect", "stripe", "--tenant", "t1", "--stdin", stdin=STRIPE)
    code, out, err = _invoke(tmp_path, "rotate-key")
    assert code == 0, err
    assert out.startswith("rewrapped 1 data keys under master key ")
    code, out, _ = _invoke(tmp_path, "revoke", "--tenant", "t1", "--connection", "stripe-1")
    assert code == 0 and out == "revoked connection stripe-1\n"
    _, listed, _ = _invoke(tmp_path, "connections", "--tenant", "t1", "--json")
    assert json.loads(listed)[0]["status"] == "revoked"
    assert _kinds(tmp_path, "t1") == ["credential.connected", "credential.revoked"]
    code, _, err = _invoke(tmp_path, "revoke", "--tenant", "t1")
    assert code == 1 and "exactly one" in err


def test_the_broker_demo_runs_every_tool_and_finds_no_secret(tmp_path: Path) -> None:
    result = runner.invoke(app, ["broker", "demo", "--data-dir", str(tmp_path / "demo")])
    assert result.exit_code == 0, result.output
    out = result.stdout
    assert out.count("HTTP 200, succeeded") == 14 and out.count("succeeded (replayed)") == 1
    assert out.count("HTTP 403, refused") == 4
    assert "credentials and tokens; none found" in out
    again = runner.invoke(app, ["broker", "demo", "--data-dir", str(tmp_path / "demo")])
    assert again.exit_code == 0  # a second run starts afresh
