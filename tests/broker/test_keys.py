"""Key providers: one conformance suite for both backends, then each backend's own promises."""

from __future__ import annotations

import base64
import json
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.config import Config
from moto import mock_aws

from corral.broker.keys import (
    DATA_KEY_BYTES,
    LOCAL_BLOB_MAGIC,
    AwsKmsKeyProvider,
    EncryptionContextError,
    KeyProvider,
    KeyProviderUnavailable,
    KeyUnwrapError,
    LocalKeyProvider,
    canonical_context,
)
from corral.core.errors import BrokerError

REGION = "us-west-2"
CONTEXT = {"tenant_id": "brightsmile", "connection_id": "stripe-1"}
OTHER_TENANT = {"tenant_id": "oakplumbing", "connection_id": "stripe-1"}
OTHER_CONNECTION = {"tenant_id": "brightsmile", "connection_id": "stripe-2"}


def fake_aws_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    """Explicit fake credentials for this test only, so nothing reaches a real account."""
    for name, value in {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_SESSION_TOKEN": "testing",
        "AWS_DEFAULT_REGION": REGION,
    }.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("AWS_PROFILE", raising=False)


@pytest.fixture
def kms(monkeypatch: pytest.MonkeyPatch) -> Iterator[AwsKmsKeyProvider]:
    """A provider over a fresh symmetric key in moto's KMS, us-west-2."""
    fake_aws_credentials(monkeypatch)
    with mock_aws():
        client = boto3.client("kms", region_name=REGION)
        key_id = client.create_key(Description="corral broker test")["KeyMetadata"]["KeyId"]
        yield AwsKmsKeyProvider(key_id, client=client)


@pytest.fixture
def local(tmp_path: Path) -> LocalKeyProvider:
    return LocalKeyProvider(tmp_path / "keys" / "broker.keys")


@pytest.fixture(params=["local", "aws-kms"])
def provider(request: pytest.FixtureRequest) -> KeyProvider:
    """Each backend, fresh."""
    chosen: KeyProvider = request.getfixturevalue("local" if request.param == "local" else "kms")
    return chosen


def flip(blob: bytes, index: int) -> bytes:
    changed = bytearray(blob)
    changed[index] ^= 0x01
    return bytes(changed)


# ---------------------------------------------------------------------------------------------
# Conformance: every KeyProvider


def test_provider_satisfies_the_protocol(provider: KeyProvider) -> None:
    assert isinstance(provider, KeyProvider)
    assert isinstance(provider.key_id, str)
    assert provider.key_id


def test_round_trip(provider: KeyProvider) -> None:
    data_key, blob = provider.generate_data_key(CONTEXT)
    assert len(data_key) == DATA_KEY_BYTES
    assert data_key not in blob
    assert provider.unwrap(blob, CONTEXT) == data_key
    assert provider.unwrap(blob, dict(reversed(list(CONTEXT.items())))) == data_key


def test_data_keys_are_fresh(provider: KeyProvider) -> None:
    first, first_blob = provider.generate_data_key(CONTEXT)
    second, second_blob = provider.generate_data_key(CONTEXT)
    assert first != second
    assert first_blob != second_blob


@pytest.mark.parametrize(
    "wrong",
    [
        pytest.param(OTHER_TENANT, id="other-tenant"),
        pytest.param(OTHER_CONNECTION, id="other-connection"),
        pytest.param({**CONTEXT, "tenant_id": CONTEXT["tenant_id"] + " "}, id="tenant-spelling"),
    ],
)
def test_unwrap_with_another_context_fails(provider: KeyProvider, wrong: dict[str, str]) -> None:
    _, blob = provider.generate_data_key(CONTEXT)
    with pytest.raises(KeyUnwrapError) as caught:
        provider.unwrap(blob, wrong)
    assert caught.value.tenant_id == wrong["tenant_id"]
    assert caught.value.connection_id == wrong["connection_id"]
    assert wrong["tenant_id"] in str(caught.value)


@pytest.mark.parametrize("where", ["first", "middle", "last"])
def test_unwrap_of_a_flipped_byte_fails(provider: KeyProvider, where: str) -> None:
    data_key, blob = provider.generate_data_key(CONTEXT)
    index = {"first": 0, "middle": len(blob) // 2, "last": len(blob) - 1}[where]
    with pytest.raises(KeyUnwrapError) as caught:
        provider.unwrap(flip(blob, index), CONTEXT)
    assert data_key.hex() not in str(caught.value)


def test_unwrap_of_a_truncated_blob_fails(provider: KeyProvider) -> None:
    _, blob = provider.generate_data_key(CONTEXT)
    with pytest.raises(KeyUnwrapError):
        provider.unwrap(blob[:-1], CONTEXT)


def test_rewrap_keeps_the_data_key_and_changes_the_blob(provider: KeyProvider) -> None:
    data_key, blob = provider.generate_data_key(CONTEXT)
    rewrapped = provider.rewrap(blob, CONTEXT)
    assert rewrapped != blob
    assert provider.unwrap(rewrapped, CONTEXT) == data_key
    assert provider.unwrap(blob, CONTEXT) == data_key  # the old blob still opens


def test_rewrap_with_another_context_fails(provider: KeyProvider) -> None:
    _, blob = provider.generate_data_key(CONTEXT)
    with pytest.raises(KeyUnwrapError):
        provider.rewrap(blob, OTHER_TENANT)


BAD_CONTEXTS: list[Any] = [
    pytest.param({"connection_id": "stripe-1"}, id="no-tenant"),
    pytest.param({"tenant_id": "brightsmile"}, id="no-connection"),
    pytest.param({"tenant_id": "", "connection_id": "stripe-1"}, id="empty-tenant"),
    pytest.param({"tenant_id": "brightsmile", "connection_id": ""}, id="empty-connection"),
    pytest.param({"tenant_id": 7, "connection_id": "stripe-1"}, id="tenant-not-str"),
    pytest.param({**CONTEXT, "n": 1}, id="extra-value-not-str"),
    pytest.param([("tenant_id", "a"), ("connection_id", "b")], id="not-a-mapping"),
]


@pytest.mark.parametrize("context", BAD_CONTEXTS)
def test_malformed_context_is_refused(provider: KeyProvider, context: Any) -> None:
    with pytest.raises(EncryptionContextError):
        provider.generate_data_key(context)
    _, blob = provider.generate_data_key(CONTEXT)
    with pytest.raises(EncryptionContextError):
        provider.unwrap(blob, context)
    with pytest.raises(EncryptionContextError):
        provider.rewrap(blob, context)


@pytest.mark.parametrize("context", BAD_CONTEXTS)
def test_canonical_context_validates(context: Any) -> None:
    with pytest.raises(EncryptionContextError) as caught:
        canonical_context(context)
    assert isinstance(caught.value, ValueError)
    assert isinstance(caught.value, BrokerError)


def test_canonical_context_is_rfc8785() -> None:
    context = {"tenant_id": "caf\u00e9", "connection_id": "stripe-1"}
    assert canonical_context(context) == b'{"connection_id":"stripe-1","tenant_id":"caf\xc3\xa9"}'


def test_a_context_with_other_keys_is_refused() -> None:
    # The KMS key policy allows exactly tenant_id and connection_id; so does the code.
    with pytest.raises(EncryptionContextError, match="unknown keys \\['purpose'\\]"):
        canonical_context({**CONTEXT, "purpose": "refresh_token"})


# ---------------------------------------------------------------------------------------------
# Local key file


def read_lines(path: Path) -> list[dict[str, str]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_key_file_is_created_private(tmp_path: Path) -> None:
    path = tmp_path / "data" / "broker.keys"
    provider = LocalKeyProvider(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    (line,) = read_lines(path)
    assert set(line) == {"created", "id", "key_b64"}
    assert line["id"] == provider.key_id
    assert len(base64.b64decode(line["key_b64"])) == 32
    assert [p.name for p in path.parent.iterdir()] == ["broker.keys"]  # no temp file left


def test_injected_entropy_decides_the_keys(tmp_path: Path) -> None:
    counter = iter(range(1, 1000))

    def entropy(n: int) -> bytes:
        return bytes([next(counter)]) * n

    provider = LocalKeyProvider(tmp_path / "k", entropy=entropy)
    (line,) = read_lines(tmp_path / "k")
    assert base64.b64decode(line["key_b64"]) == bytes([1]) * 32
    assert provider.key_id == "local-" + "02" * 8
    data_key, blob = provider.generate_data_key(CONTEXT)
    assert data_key == bytes([3]) * 32
    assert blob[len(LOCAL_BLOB_MAGIC) + 1 + len(provider.key_id) :][:12] == bytes([4]) * 12


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o660])
def test_key_file_readable_by_others_is_refused(local: LocalKeyProvider, mode: int) -> None:
    local.path.chmod(mode)
    with pytest.raises(KeyProviderUnavailable) as caught:
        LocalKeyProvider(local.path)
    assert f"{mode:04o}" in str(caught.value)
    assert str(local.path) in str(caught.value)


@pytest.mark.parametrize("size", [0, 16, 31, 33, 64])
def test_key_of_the_wrong_size_is_refused(tmp_path: Path, size: int) -> None:
    path = tmp_path / "broker.keys"
    record = {"created": "2026-03-03T17:00:00Z", "id": "local-x", "key_b64": ""}
    record["key_b64"] = base64.b64encode(b"k" * size).decode()
    path.write_text(json.dumps(record) + "\n")
    path.chmod(0o600)
    with pytest.raises(KeyProviderUnavailable) as caught:
        LocalKeyProvider(path)
    assert f"{size} bytes, want 32" in str(caught.value)


@pytest.mark.parametrize(
    "content",
    [
        pytest.param("", id="empty"),
        pytest.param("not json\n", id="not-json"),
        pytest.param('{"id": "a"}\n', id="missing-fields"),
        pytest.param('{"created": "t", "id": "a", "key_b64": "!!!"}\n', id="bad-base64"),
    ],
)
def test_malformed_key_file_is_refused(tmp_path: Path, content: str) -> None:
    path = tmp_path / "broker.keys"
    path.write_text(content)
    path.chmod(0o600)
    with pytest.raises(KeyProviderUnavailable):
        LocalKeyProvider(path)


def test_duplicate_key_ids_are_refused(local: LocalKeyProvider) -> None:
    line = local.path.read_text()
    local.path.write_text(line + line)
    with pytest.raises(KeyProviderUnavailable, match="twice"):
        LocalKeyProvider(local.path)


def test_rotation(local: LocalKeyProvider) -> None:
    old_id = local.key_id
    old_key, old_blob = local.generate_data_key(CONTEXT)

    new_id = local.rotate()
    assert new_id == local.key_id != old_id
    assert local.key_ids == [old_id, new_id]
    assert stat.S_IMODE(local.path.stat().st_mode) == 0o600
    assert [line["id"] for line in read_lines(local.path)] == [old_id, new_id]

    assert local.unwrap(old_blob, CONTEXT) == old_key  # old blobs still unwrap
    new_key, new_blob = local.generate_data_key(CONTEXT)
    assert new_id.encode() in new_blob and old_id.encode() not in new_blob
    moved = local.rewrap(old_blob, CONTEXT)
    assert new_id.encode() in moved and old_id.encode() not in moved

    reopened = LocalKeyProvider(local.path)  # the key file survives a reopen
    assert reopened.key_ids == [old_id, new_id]
    assert reopened.unwrap(old_blob, CONTEXT) == old_key
    assert reopened.unwrap(moved, CONTEXT) == old_key
    assert reopened.unwrap(new_blob, CONTEXT) == new_key


def test_a_rotation_by_another_process_is_picked_up(local: LocalKeyProvider) -> None:
    other = LocalKeyProvider(local.path)
    other.rotate()
    data_key, blob = other.generate_data_key(CONTEXT)
    assert local.unwrap(blob, CONTEXT) == data_key


def test_blob_with_an_unknown_key_id_names_it(tmp_path: Path) -> None:
    first = LocalKeyProvider(tmp_path / "one.keys")
    second = LocalKeyProvider(tmp_path / "two.keys")
    _, blob = first.generate_data_key(CONTEXT)
    with pytest.raises(KeyUnwrapError) as caught:
        second.unwrap(blob, CONTEXT)
    assert caught.value.key_id == first.key_id
    assert first.key_id in str(caught.value)
    assert "unknown master key" in str(caught.value)


def test_blob_of_another_format_is_refused(local: LocalKeyProvider) -> None:
    _, blob = local.generate_data_key(CONTEXT)
    with pytest.raises(KeyUnwrapError, match="cl1"):
        local.unwrap(b"xx1" + blob[3:], CONTEXT)


def test_repr_and_errors_hold_no_key_material(local: LocalKeyProvider) -> None:
    key_b64 = read_lines(local.path)[0]["key_b64"]
    assert key_b64 not in repr(local)
    local.path.chmod(0o644)
    with pytest.raises(KeyProviderUnavailable) as caught:
        LocalKeyProvider(local.path)
    assert key_b64 not in str(caught.value)


# ---------------------------------------------------------------------------------------------
# AWS KMS


def test_kms_blob_is_bound_to_its_key(kms: AwsKmsKeyProvider) -> None:
    _, blob = kms.generate_data_key(CONTEXT)
    client = boto3.client("kms", region_name=REGION)
    other_id = client.create_key()["KeyMetadata"]["KeyId"]
    other = AwsKmsKeyProvider(other_id, client=client)
    assert other.key_id != kms.key_id
    assert other.region == REGION
    moved = other.rewrap(blob, CONTEXT)  # ReEncrypt: from whichever key, to the current one
    assert other.unwrap(moved, CONTEXT) == kms.unwrap(blob, CONTEXT)


def test_kms_unknown_key_is_unavailable_on_generate(monkeypatch: pytest.MonkeyPatch) -> None:
    fake_aws_credentials(monkeypatch)
    with mock_aws():
        provider = AwsKmsKeyProvider("alias/missing", region=REGION)
        with pytest.raises(KeyProviderUnavailable) as caught:
            provider.generate_data_key(CONTEXT)
    assert "alias/missing" in str(caught.value)
    assert REGION in str(caught.value)


def test_kms_unreachable_endpoint_is_unavailable(monkeypatch: pytest.MonkeyPatch) -> None:
    fake_aws_credentials(monkeypatch)
    client = boto3.client(
        "kms",
        region_name=REGION,
        endpoint_url="http://127.0.0.1:9",
        config=Config(connect_timeout=0.5, read_timeout=0.5, retries={"total_max_attempts": 1}),
    )
    provider = AwsKmsKeyProvider("alias/corral-broker", client=client)
    for call in (
        lambda: provider.generate_data_key(CONTEXT),
        lambda: provider.unwrap(b"blob", CONTEXT),
        lambda: provider.rewrap(b"blob", CONTEXT),
    ):
        with pytest.raises(KeyProviderUnavailable) as caught:
            call()
        message = str(caught.value)
        assert "alias/corral-broker" in message
        assert REGION in message
        assert "127.0.0.1:9" in message
        assert "Traceback" not in message


def test_kms_default_client_uses_region(monkeypatch: pytest.MonkeyPatch) -> None:
    fake_aws_credentials(monkeypatch)
    monkeypatch.setenv("AWS_DEFAULT_REGION", "eu-central-1")
    provider = AwsKmsKeyProvider("alias/corral-broker")
    assert provider.region == REGION
    assert REGION in provider.endpoint_url
    assert "alias/corral-broker" in repr(provider)


def test_kms_empty_key_id_is_refused() -> None:
    with pytest.raises(ValueError, match="key_id"):
        AwsKmsKeyProvider("", client=object())
