"""``corral control add-owner`` through typer's CliRunner: the password comes from a hidden
prompt (twice) or standard input, never from argv, and is stored only as an argon2id hash."""

from __future__ import annotations

from pathlib import Path

import sqlalchemy as sa
from typer.testing import CliRunner

from corral.cli import app
from corral.core.clock import SystemClock
from corral.dashboard.auth import OwnerStore

runner = CliRunner()
TENANT, EMAIL = "brightsmile", "lee@brightsmile.example"
PASSWORD = "correct horse battery staple"


def _invoke(data_dir: Path, *args: str, stdin: str | None = None) -> tuple[int, str, str]:
    result = runner.invoke(app, ["--data-dir", str(data_dir), "control", *args], input=stdin)
    return result.exit_code, result.stdout, result.stderr


def _owners(data_dir: Path) -> OwnerStore:
    return OwnerStore.from_url(
        f"sqlite:///{data_dir / 'control' / 'dashboard.db'}", clock=SystemClock()
    )


def _rows(data_dir: Path) -> list[tuple[str, str, str]]:
    path = data_dir / "control" / "dashboard.db"
    if not path.exists():
        return []
    engine = sa.create_engine(f"sqlite:///{path}")
    try:
        with engine.connect() as conn:
            rows = conn.execute(
                sa.text("SELECT tenant, email, password_hash FROM dashboard_owners")
            ).all()
    finally:
        engine.dispose()
    return [(str(a), str(b), str(c)) for a, b, c in rows]


def test_add_owner_reads_the_password_from_stdin(tmp_path: Path) -> None:
    code, out, err = _invoke(
        tmp_path, "add-owner", "--tenant", TENANT, "--email", EMAIL, "--password-stdin",
        stdin=PASSWORD + "\n",
    )  # fmt: skip
    assert code == 0, err
    assert out.startswith(f"added {EMAIL} as an owner of {TENANT} (owner-")
    assert PASSWORD not in out + err
    ((tenant, email, hashed),) = _rows(tmp_path)
    assert (tenant, email) == (TENANT, EMAIL)
    assert hashed.startswith("$argon2id$") and PASSWORD not in hashed
    owners = _owners(tmp_path)
    try:
        assert owners.authenticate(TENANT, EMAIL, PASSWORD) is not None
        assert owners.authenticate(TENANT, EMAIL, PASSWORD + "\n") is None  # newline stripped
    finally:
        owners.close()


def test_add_owner_prompts_twice_with_hidden_input(tmp_path: Path) -> None:
    code, out, err = _invoke(
        tmp_path, "add-owner", "--tenant", TENANT, "--email", EMAIL,
        stdin=f"{PASSWORD}\n{PASSWORD}\n",
    )  # fmt: skip
    assert code == 0, err
    assert "Password" in out and "Repeat the password" in out
    assert PASSWORD not in out  # hidden: not echoed
    assert len(_rows(tmp_path)) == 1


def test_two_different_passwords_add_no_one(tmp_path: Path) -> None:
    code, out, _ = _invoke(
        tmp_path, "add-owner", "--tenant", TENANT, "--email", EMAIL,
        stdin=f"{PASSWORD}\n{PASSWORD}!\n",
    )  # fmt: skip
    assert code != 0
    assert "do not match" in out
    assert _rows(tmp_path) == []


def test_a_password_is_never_an_argument(tmp_path: Path) -> None:
    result = runner.invoke(
        app,
        ["--data-dir", str(tmp_path), "control", "add-owner", "--tenant", TENANT,
         "--email", EMAIL, "--password", PASSWORD],
    )  # fmt: skip
    assert result.exit_code == 2  # no such option
    assert _rows(tmp_path) == []


def test_bad_owners_are_refused_naming_why(tmp_path: Path) -> None:
    add = ("add-owner", "--tenant", TENANT, "--email", EMAIL, "--password-stdin")
    code, _, err = _invoke(tmp_path, *add, stdin="too short\n")
    assert code == 1 and "at least 12 characters" in err
    code, _, err = _invoke(tmp_path, *add, stdin=f"{PASSWORD}\nsecond line\n")
    assert code == 1 and "one line" in err
    code, _, err = _invoke(
        tmp_path, "add-owner", "--tenant", "no spaces allowed", "--email", EMAIL,
        "--password-stdin", stdin=PASSWORD,
    )  # fmt: skip
    assert code == 1 and "tenant must be" in err
    code, _, err = _invoke(
        tmp_path, "add-owner", "--tenant", TENANT, "--email", "not-an-email",
        "--password-stdin", stdin=PASSWORD,
    )  # fmt: skip
    assert code == 1 and "error:" in err
    assert _rows(tmp_path) == []
    assert _invoke(tmp_path, *add, stdin=PASSWORD)[0] == 0
    code, _, err = _invoke(tmp_path, *add, stdin=PASSWORD)
    assert code == 1 and "already an owner" in err
    assert len(_rows(tmp_path)) == 1


def test_the_settings_name_the_dashboard_database(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'elsewhere' / 'owners.db'}"
    result = runner.invoke(
        app,
        ["--data-dir", str(tmp_path), "control", "add-owner", "--tenant", TENANT,
         "--email", EMAIL, "--password-stdin"],
        input=PASSWORD,
        env={"CORRAL_DASHBOARD__DATABASE_URL": url},
    )  # fmt: skip
    assert result.exit_code == 0, result.stderr
    assert (tmp_path / "elsewhere" / "owners.db").exists()
    assert not (tmp_path / "control" / "dashboard.db").exists()
