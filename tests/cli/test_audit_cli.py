"""The ``corral audit`` commands, end to end through typer's CliRunner: output and exit codes."""

from __future__ import annotations

import base64
import json
import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

from corral import __version__
from corral.cli import app

runner = CliRunner()


@pytest.fixture(name="demo", scope="module")
def demo_fixture(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    data_dir = tmp_path_factory.mktemp("cli") / "demo"
    result = runner.invoke(app, ["audit", "demo", "--data-dir", str(data_dir)])
    assert result.exit_code == 0, result.output
    return data_dir, result.stdout


def test_version() -> None:
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0 and result.stdout == f"corral {__version__}\n"


def test_demo_prints_the_day_and_verifies(demo: tuple[Path, str]) -> None:
    data_dir, out = demo
    assert "Bright Smile Dental" in out
    assert (
        "Tue, Mar 3, 8:14\u202fAM — The receptionist agent (receptionist-1) texted (310) 555-0123:"
        " “Hi Ana, your cleaning is confirmed for Wednesday at 10:00 AM.” Allowed; no conflicts."
    ) in out
    assert "[details erased on request]" in out
    assert f"Exported to {data_dir / 'bundle'} and verified offline: OK" in out
    assert (data_dir / "prose" / "brightsmile.en.txt").is_file()


def test_demo_refuses_a_directory_it_did_not_make(tmp_path: Path) -> None:
    (tmp_path / "precious.txt").write_text("keep me")
    result = runner.invoke(app, ["audit", "demo", "--data-dir", str(tmp_path)])
    assert result.exit_code == 1
    assert result.stderr == f"error: {tmp_path} is not empty and not a corral demo directory\n"
    assert (tmp_path / "precious.txt").read_text() == "keep me"


def test_verify_ok(demo: tuple[Path, str]) -> None:
    data_dir, _ = demo
    result = runner.invoke(app, ["audit", "verify", str(data_dir / "bundle")])
    assert result.exit_code == 0, result.output
    first, second = result.stdout.splitlines()
    assert first == (
        "verified corral.local/tenants/brightsmile: 38 entries, 15 checkpoints, 2 anchors"
        " (the last covers 38 entries); 6 personal payloads, 1 erased"
    )
    assert re.fullmatch(r"root [A-Za-z0-9+/]{43}=", second)


def test_verify_json(demo: tuple[Path, str]) -> None:
    data_dir, _ = demo
    result = runner.invoke(app, ["audit", "verify", "--json", str(data_dir / "bundle")])
    assert result.exit_code == 0
    report = json.loads(result.stdout)
    assert report["ok"] is True and report["entries"] == 38 and report["erased"] == 1


def test_verify_names_the_first_bad_item(demo: tuple[Path, str], tmp_path: Path) -> None:
    data_dir, _ = demo
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    for item in (data_dir / "bundle").iterdir():
        (bundle / item.name).write_bytes(item.read_bytes())
    lines = (bundle / "entries.jsonl").read_bytes().splitlines(keepends=True)
    del lines[7]
    (bundle / "entries.jsonl").write_bytes(b"".join(lines))
    result = runner.invoke(app, ["audit", "verify", str(bundle)])
    assert result.exit_code == 1
    assert result.stdout == ""
    assert result.stderr == (
        "error: verification failed: entry 7: missing or out of order: line 8 holds seq 8\n"
    )


def test_verify_with_a_wrong_pinned_key(demo: tuple[Path, str]) -> None:
    data_dir, _ = demo
    other = "corral.local/tenants/brightsmile+00000000+AAAA"
    result = runner.invoke(app, ["audit", "verify", "--log-key", other, str(data_dir / "bundle")])
    assert result.exit_code == 1
    assert "not one of the trusted keys" in result.stderr


def test_replay_matches(demo: tuple[Path, str]) -> None:
    data_dir, _ = demo
    args = ["--data-dir", str(data_dir), "audit", "replay", "--tenant", "brightsmile"]
    result = runner.invoke(app, [*args, "--timezone", "America/Los_Angeles"])
    assert result.exit_code == 0, result.output
    assert result.stdout.endswith(
        "replayed brightsmile: 38 entries, 15 checkpoints and 23 prose lines match\n"
    )


def test_replay_of_an_unknown_tenant(demo: tuple[Path, str]) -> None:
    data_dir, _ = demo
    result = runner.invoke(app, ["--data-dir", str(data_dir), "audit", "replay", "--tenant", "x"])
    assert result.exit_code == 1
    assert result.stderr == "error: no audit log for tenant 'x'\n"


def test_prose_in_spanish(demo: tuple[Path, str]) -> None:
    data_dir, _ = demo
    result = runner.invoke(
        app,
        ["--data-dir", str(data_dir), "audit", "prose", "--tenant", "brightsmile", "--locale",
         "es", "--timezone", "America/Los_Angeles"],
    )  # fmt: skip
    assert result.exit_code == 0
    assert "El agente receptionist (receptionist-1)" in result.stdout
    assert "[datos borrados a petición]" in result.stdout


def test_bad_locale_is_one_line(demo: tuple[Path, str]) -> None:
    data_dir, _ = demo
    args = ["--data-dir", str(data_dir), "audit", "prose", "--tenant", "brightsmile"]
    result = runner.invoke(app, [*args, "--locale", "xx"])
    assert result.exit_code == 1
    assert result.stderr == "error: unknown locale: 'xx'\n"


def test_export_and_erase(demo: tuple[Path, str], tmp_path: Path) -> None:
    data_dir, _ = demo
    base = ["--data-dir", str(data_dir), "audit"]
    erase = runner.invoke(app, [*base, "erase", "--tenant", "brightsmile", "--seq", "12"])
    assert erase.exit_code == 0, erase.output
    again = runner.invoke(app, [*base, "erase", "--tenant", "brightsmile", "--seq", "12"])
    assert again.exit_code == 1
    assert "has no personal payload to erase" in again.stderr
    out = tmp_path / "export"
    result = runner.invoke(app, [*base, "export", "--tenant", "brightsmile", "--out", str(out)])
    assert result.exit_code == 0, result.output
    verified = runner.invoke(app, ["audit", "verify", "--json", str(out)])
    assert json.loads(verified.stdout)["erased"] == 2


def test_export_of_an_unknown_tenant(demo: tuple[Path, str], tmp_path: Path) -> None:
    data_dir, _ = demo
    args = ["--data-dir", str(data_dir), "audit", "export", "--tenant", "nobody"]
    result = runner.invoke(app, [*args, "--out", str(tmp_path / "x")])
    assert result.exit_code == 1
    assert result.stderr == "error: no audit log for tenant 'nobody'\n"
    assert not (tmp_path / "x").exists()


def test_bad_config_file(tmp_path: Path) -> None:
    result = runner.invoke(
        app, ["--config", str(tmp_path / "missing.toml"), "audit", "anchor", "run"]
    )
    assert result.exit_code == 1
    assert result.stderr == f"error: config file not found: {tmp_path / 'missing.toml'}\n"


@pytest.mark.dynalite
def test_anchor_init_and_run_on_dynamodb(demo: tuple[Path, str], dynalite_endpoint: str) -> None:
    data_dir, _ = demo
    env = {
        "CORRAL_AUDIT__ANCHOR__BACKEND": "dynamodb",
        "CORRAL_AUDIT__ANCHOR__ENDPOINT_URL": dynalite_endpoint,
        "CORRAL_AUDIT__ANCHOR__DYNAMODB_TABLE": "corral-cli-test",
        "AWS_ACCESS_KEY_ID": "test",
        "AWS_SECRET_ACCESS_KEY": "test",
    }
    init = runner.invoke(app, ["--data-dir", str(data_dir), "audit", "anchor", "init"], env=env)
    assert init.exit_code == 0, init.output
    assert init.stdout.startswith("anchor store ready: ")
    again = runner.invoke(app, ["--data-dir", str(data_dir), "audit", "anchor", "init"], env=env)
    assert again.exit_code == 0, "creating the table twice is fine"
    run = runner.invoke(app, ["--data-dir", str(data_dir), "audit", "anchor", "run"], env=env)
    assert run.exit_code == 0, run.output
    # The demo's anchors are already in its local store: the round copies them to DynamoDB.
    said = r"nothing new to anchor; the latest anchor is size 2 root [A-Za-z0-9+/]{43}=\n"
    assert re.fullmatch(said, run.stdout), run.stdout


def test_anchor_run_with_an_unreachable_dynamodb(demo: tuple[Path, str]) -> None:
    data_dir, _ = demo
    env = {
        "CORRAL_AUDIT__ANCHOR__BACKEND": "dynamodb",
        "CORRAL_AUDIT__ANCHOR__ENDPOINT_URL": "http://127.0.0.1:9",
        "AWS_ACCESS_KEY_ID": "test",
        "AWS_SECRET_ACCESS_KEY": "test",
    }
    result = runner.invoke(app, ["--data-dir", str(data_dir), "audit", "anchor", "init"], env=env)
    assert result.exit_code == 1
    assert result.stderr.startswith("error: ") and "127.0.0.1:9" in result.stderr
    assert len(result.stderr.splitlines()) == 1


def test_anchor_proof_verifies_against_its_anchor(demo: tuple[Path, str]) -> None:
    from corral.audit import merkle, note

    data_dir, _ = demo
    args = ["--data-dir", str(data_dir), "audit", "anchor", "proof", "--tenant", "brightsmile"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    proof = json.loads(result.stdout)
    anchor = note.Checkpoint.parse(proof["anchor"].split("\n\n")[0] + "\n")
    tenant = note.Checkpoint.parse(proof["checkpoint"])
    assert tenant.origin == "corral.local/tenants/brightsmile" and tenant.size == 38
    path = [base64.b64decode(h) for h in proof["inclusion"]]
    leaf_hash = merkle.leaf_hash(proof["checkpoint"].encode())
    assert merkle.verify_inclusion(leaf_hash, proof["index"], anchor.size, path, anchor.root)
    nobody = runner.invoke(app, [*args[:-1], "nobody"])
    assert nobody.exit_code == 1 and nobody.stderr == "error: no audit log for tenant 'nobody'\n"
