"""The QuickBooks fake, over HTTP: token rotation, access-token expiry, faults, requestid replay,
exact amounts and queries."""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Any

import pytest
from fastapi.testclient import TestClient

from corral.core.clock import ManualClock
from corral.fakes._contract import spec_json
from corral.fakes.quickbooks import QuickBooksFake
from tests.connectors._harness import FAKES_START as START
from tests.connectors._harness import QUICKBOOKS, contract_problems

TOKEN = "/oauth2/v1/tokens/bearer"


@pytest.fixture
def fake() -> QuickBooksFake:
    return QuickBooksFake(clock=ManualClock(START))


@pytest.fixture
def conn(fake: QuickBooksFake) -> dict[str, str]:
    return fake.new_connection()


@pytest.fixture
def http(fake: QuickBooksFake) -> TestClient:
    return TestClient(fake.app(), base_url="http://quickbooks.fake")


def _refresh(http: TestClient, conn: dict[str, str], refresh_token: str | None = None) -> Any:
    form = {"grant_type": "refresh_token", "refresh_token": refresh_token or conn["refresh_token"]}
    auth = (conn["client_id"], conn["client_secret"])
    return http.post(TOKEN, data=form, auth=auth, headers={"Accept": "application/json"})


@pytest.fixture
def access(http: TestClient, conn: dict[str, str]) -> str:
    return str(_refresh(http, conn).json()["access_token"])


def _invoice(
    http: TestClient, conn: dict[str, str], access: str, body: Any, request_id: str | None = None
) -> Any:
    params = {"minorversion": "75"} | ({"requestid": request_id} if request_id else {})
    return http.post(
        f"/v3/company/{conn['realm_id']}/invoice",
        params=params,
        content=body if isinstance(body, bytes) else json.dumps(body).encode(),
        headers={"Authorization": f"Bearer {access}", "Content-Type": "application/json"},
    )


def _body(customer: str = "1", *amounts: str) -> bytes:
    lines = ",".join(
        f'{{"Amount": {a}, "DetailType": "SalesItemLineDetail", "Description": "work", '
        f'"SalesItemLineDetail": {{"ItemRef": {{"value": "1"}}}}}}'
        for a in amounts or ("100.00",)
    )
    return f'{{"CustomerRef": {{"value": "{customer}"}}, "Line": [{lines}]}}'.encode()


_ITEM = "SalesItemLineDetail"


def _with_line(line: dict[str, Any]) -> bytes:
    return json.dumps({"CustomerRef": {"value": "1"}, "Line": [line]}).encode()


def _query(http: TestClient, conn: dict[str, str], access: str, query: str) -> Any:
    return http.get(
        f"/v3/company/{conn['realm_id']}/query",
        params={"query": query, "minorversion": "75"},
        headers={"Authorization": f"Bearer {access}"},
    )


# --- OAuth --------------------------------------------------------------------------------------


def test_refresh_rotates_and_the_used_token_is_invalid_grant(
    http: TestClient, conn: dict[str, str]
) -> None:
    first = _refresh(http, conn)
    assert first.status_code == 200
    grant = first.json()
    assert set(grant) == set(
        spec_json("quickbooks", "intuit_oauth_jsclient_token_fixtures.json")["bearer-token"]
    ) - {"id_token"}
    assert (grant["token_type"], grant["expires_in"], grant["x_refresh_token_expires_in"]) == (
        "bearer",
        3600,
        8726400,
    )
    assert grant["refresh_token"] != conn["refresh_token"]
    reused = _refresh(http, conn)
    fixture = spec_json("quickbooks", "intuit_oauth_jsclient_token_fixtures.json")["errorResponse"]
    assert (reused.status_code, reused.json()) == (400, fixture["json"])
    assert "intuit_tid" in reused.headers
    assert _refresh(http, conn, grant["refresh_token"]).status_code == 200


@pytest.mark.parametrize("auth", ["none", "wrong-secret"])
def test_the_token_endpoint_needs_the_client(
    http: TestClient, conn: dict[str, str], auth: str
) -> None:
    form = {"grant_type": "refresh_token", "refresh_token": conn["refresh_token"]}
    if auth == "none":
        response = http.post(TOKEN, data=form)
    else:
        response = http.post(TOKEN, data=form, auth=(conn["client_id"], "wrong"))
    assert (response.status_code, response.json()) == (401, {"error": "invalid_client"})
    assert _refresh(http, conn).status_code == 200


def test_other_grants_are_refused(http: TestClient, conn: dict[str, str]) -> None:
    form = {"grant_type": "authorization_code", "code": "x"}
    response = http.post(TOKEN, data=form, auth=(conn["client_id"], conn["client_secret"]))
    assert (response.status_code, response.json()["error"]) == (400, "unsupported_grant_type")


def test_a_revoked_refresh_token_is_invalid_grant(http: TestClient, conn: dict[str, str]) -> None:
    revoked = http.post(
        "/v2/oauth2/tokens/revoke",
        json={"token": conn["refresh_token"]},
        auth=(conn["client_id"], conn["client_secret"]),
    )
    assert revoked.status_code == 200
    assert _refresh(http, conn).json()["error"] == "invalid_grant"


def test_an_expired_access_token_is_401_code_3200(
    fake: QuickBooksFake, http: TestClient, conn: dict[str, str], access: str
) -> None:
    assert _invoice(http, conn, access, _body()).status_code == 200
    fake.expire_access_tokens()
    response = _invoice(http, conn, access, _body())
    fault = response.json()["Fault"]
    assert (response.status_code, fault["type"], fault["Error"][0]["code"]) == (
        401,
        "AUTHENTICATION",
        "3200",
    )
    assert len(fake.invoices(conn["realm_id"])) == 1


def test_a_token_works_for_its_own_company_only(
    fake: QuickBooksFake, http: TestClient, conn: dict[str, str], access: str
) -> None:
    other = fake.new_connection()
    response = _invoice(http, other, access, _body())
    assert (response.status_code, response.json()["Fault"]["Error"][0]["code"]) == (403, "3100")
    assert fake.invoices(other["realm_id"]) == []


# --- invoices -----------------------------------------------------------------------------------


def test_an_invoice_totals_its_lines_exactly(
    fake: QuickBooksFake, http: TestClient, conn: dict[str, str], access: str
) -> None:
    response = _invoice(http, conn, access, _body("2", "0.1", "0.2", "123456789012345.123456"))
    assert response.status_code == 200
    assert b'"TotalAmt":123456789012345.423456' in response.content
    invoice = response.json()["Invoice"]
    assert (invoice["CustomerRef"], invoice["DocNumber"], invoice["SyncToken"]) == (
        {"value": "2", "name": "Bill's Windsurf Shop"},
        "1001",
        "0",
    )
    assert invoice["Line"][-1]["DetailType"] == "SubTotalLineDetail"
    assert fake.invoices(conn["realm_id"])[0]["TotalAmt"] == Decimal("123456789012345.423456")


def test_unknown_invoice_fields_are_echoed(
    http: TestClient, conn: dict[str, str], access: str
) -> None:
    body = json.loads(_body()) | {"PrivateNote": "from corral", "CustomField": [{"Name": "x"}]}
    invoice = _invoice(http, conn, access, body).json()["Invoice"]
    assert (invoice["PrivateNote"], invoice["CustomField"]) == ("from corral", [{"Name": "x"}])


@pytest.mark.parametrize(
    ("body", "code", "element"),
    [
        (b'{"Line": [{"Amount": 1, "DetailType": "DescriptionOnly"}]}', "2020", "CustomerRef"),
        (b'{"CustomerRef": {"value": "1"}, "Line": []}', "2020", "Line"),
        (_with_line({"Amount": "1", "DetailType": "DescriptionOnly"}), "2010", "Line.Amount"),
        (_with_line({"Amount": 1, "DetailType": "Cheque"}), "2010", "Line.DetailType"),
        (_with_line({"Amount": 1, "DetailType": _ITEM}), "2020", "SalesItemLineDetail"),
        (
            _with_line({"Amount": 1, "DetailType": _ITEM, _ITEM: {"ItemRef": {"value": "77"}}}),
            "610",
            "ItemRef",
        ),
        (_body("404"), "610", "CustomerRef"),
        (json.dumps(json.loads(_body()) | {"DueDate": "2026-02-30"}).encode(), "2010", "DueDate"),
        (b"{not json", "2010", ""),
    ],
    ids=[
        "no-customer",
        "no-lines",
        "string-amount",
        "bad-detail",
        "no-item",
        "unknown-item",
        "unknown-customer",
        "bad-date",
        "not-json",
    ],
)
def test_bad_invoices_are_faults(
    fake: QuickBooksFake,
    http: TestClient,
    conn: dict[str, str],
    access: str,
    body: bytes,
    code: str,
    element: str,
) -> None:
    response = _invoice(http, conn, access, body)
    fault = response.json()["Fault"]
    assert (response.status_code, fault["type"]) == (400, "ValidationFault")
    assert (fault["Error"][0]["code"], fault["Error"][0]["element"]) == (code, element)
    assert fake.invoices(conn["realm_id"]) == []


def test_a_repeated_requestid_replays_the_first_answer(
    fake: QuickBooksFake, http: TestClient, conn: dict[str, str], access: str
) -> None:
    first = _invoice(http, conn, access, _body("1", "10"), request_id="r-1")
    again = _invoice(http, conn, access, _body("3", "99"), request_id="r-1")
    assert again.content == first.content
    other = _invoice(http, conn, access, _body("1", "10"), request_id="r-2")
    assert other.json()["Invoice"]["Id"] != first.json()["Invoice"]["Id"]
    assert len(fake.invoices(conn["realm_id"])) == 2


def test_a_requestid_past_50_characters_is_refused(
    http: TestClient, conn: dict[str, str], access: str
) -> None:
    response = _invoice(http, conn, access, _body(), request_id="r" * 51)
    assert (response.status_code, response.json()["Fault"]["Error"][0]["element"]) == (
        400,
        "requestid",
    )


# --- queries ------------------------------------------------------------------------------------


def test_customers_and_invoices_can_be_queried(
    fake: QuickBooksFake, http: TestClient, conn: dict[str, str], access: str
) -> None:
    customer = fake.add_customer(conn["realm_id"], "O'Brien Dental")
    found = _query(
        http, conn, access, "select * from Customer where DisplayName = 'O\\'Brien Dental'"
    )
    assert [c["Id"] for c in found.json()["QueryResponse"]["Customer"]] == [customer]
    everyone = _query(http, conn, access, "SELECT * FROM Customer STARTPOSITION 2 MAXRESULTS 2")
    assert [c["DisplayName"] for c in everyone.json()["QueryResponse"]["Customer"]] == [
        "Bill's Windsurf Shop",
        "Cool Cars",
    ]
    assert _query(http, conn, access, "select * from Invoice").json()["QueryResponse"] == {}
    _invoice(http, conn, access, _body())
    invoices = _query(http, conn, access, "select * from Invoice where Id = '5'").json()
    assert invoices["QueryResponse"]["maxResults"] == 1


def test_a_query_that_does_not_parse_is_a_fault(
    http: TestClient, conn: dict[str, str], access: str
) -> None:
    response = _query(http, conn, access, "delete from Customer")
    assert (response.status_code, response.json()["Fault"]["Error"][0]["code"]) == (400, "4000")


def test_answers_fit_the_description_and_never_echo_a_credential(
    fake: QuickBooksFake, http: TestClient, conn: dict[str, str], access: str
) -> None:
    _invoice(http, conn, access, _body("1", "12.50"), request_id="r-1")
    _invoice(http, conn, access, _body("404"))
    _query(http, conn, access, "select * from Customer")
    _refresh(http, conn)
    fake.expire_access_tokens()
    _invoice(http, conn, access, _body())
    assert contract_problems(QUICKBOOKS, fake.exchanges) == []
    api = [e for e in fake.exchanges if e.path != TOKEN]  # the token endpoint issues tokens
    secrets = [conn["client_secret"], conn["refresh_token"], conn["realm_id"]]
    assert not [s for s in secrets for e in fake.exchanges if s.encode() in e.response_body]
    assert not [e for e in api if access.encode() in e.response_body]
