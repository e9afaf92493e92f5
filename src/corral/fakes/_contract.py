"""Check an HTTP exchange against a provider's published API description.

The descriptions are the trimmed upstream files in ``corral/fakes/specs/`` (their provenance is
in ``specs/README.md``). OpenAPI files are checked with openapi-core; Google's discovery document
(not OpenAPI) with jsonschema over its schemas, see :class:`DiscoveryContract`.

Paths are checked relative to the description's server: a fake serves them at its root, and a
connector pointed at a fake sends them there. Every file's ``servers`` (top-level, path and
operation level) is replaced by one neutral server before loading, so that the token endpoints
that live on other hosts (``auth.calendly.com``, ``oauth.platform.intuit.com``) are found too.

Security requirements are checked for presence (a request without the scheme's header fails);
which credentials are valid is the fakes' business, and they answer 401 in the provider's own
error shape. Trimmed files keep upstream quirks
(``specs/README.md``), so they are loaded without validating the description itself.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import Any, Protocol

from jsonschema import Draft202012Validator
from openapi_core import Config, OpenAPI
from openapi_core.templating.paths.exceptions import PathNotFound, PathsNotFound
from openapi_core.testing import MockRequest, MockResponse

_HOST = "http://provider.test"
_METHODS = ("get", "put", "post", "delete", "patch", "head", "options")


@dataclass(frozen=True, slots=True)
class Exchange:
    """One HTTP request and its response, as a fake saw it or a connector sent it.

    ``path`` is relative to the provider's server (``/v1/refunds``), without the query string;
    ``query`` holds the decoded query parameters.
    """

    method: str
    path: str
    query: Mapping[str, str]
    headers: Mapping[str, str]
    body: bytes
    status: int
    response_headers: Mapping[str, str]
    response_body: bytes


class Contract(Protocol):
    """What a contract test asks of a description."""

    def request_problems(self, exchange: Exchange) -> list[str]:
        """Why the request does not fit the description (empty when it fits)."""
        ...

    def response_problems(self, exchange: Exchange) -> list[str]:
        """Why the response does not fit the description (empty when it fits)."""
        ...


def spec_text(provider_dir: str, name: str) -> str:
    """The text of one packaged description file, e.g. ``("stripe", "stripe.supplement.json")``."""
    return resources.files("corral.fakes").joinpath("specs", provider_dir, name).read_text("utf-8")


@cache
def spec_json(provider_dir: str, name: str) -> Any:
    """One packaged description file, parsed (cached: treat it as read-only)."""
    return json.loads(spec_text(provider_dir, name))


def _prepared(document: Any) -> dict[str, Any]:
    """A copy openapi-core can check, with the meaning of the upstream file kept.

    - one neutral server (see the module docstring);
    - form bodies lose their ``encoding`` map: openapi-core 0.19 cannot deserialize Stripe's
      ``deepObject`` entries, and corral's connectors send flat form fields only (a bracketed
      key then fails the schema instead of passing unchecked);
    - query parameters lose ``style: deepObject`` (Stripe's ``expand``): openapi-core 0.19
      cannot deserialize that style and fails on such a parameter even when a request does not
      send it. The parameter stays declared, read in the default ``form`` style (an ``expand``
      list is flat; corral sends none);
    - OpenAPI 3.0 ``nullable: true`` is made explicit where the 3.0 validator overlooks it:
      beside ``anyOf``/``oneOf`` without a ``type`` and on an ``enum`` without ``null``
      (Stripe marks such fields nullable and returns ``null`` in them).
    """
    doc: dict[str, Any] = copy.deepcopy(document)
    doc["servers"] = [{"url": _HOST}]
    for item in doc.get("paths", {}).values():
        item.pop("servers", None)
        _plain_query_styles(item.get("parameters", []))
        for method in _METHODS:
            if method in item:
                item[method].pop("servers", None)
                _plain_query_styles(item[method].get("parameters", []))
                form = (
                    item[method]
                    .get("requestBody", {})
                    .get("content", {})
                    .get("application/x-www-form-urlencoded")
                )
                if form is not None:
                    form.pop("encoding", None)
    _explicit_nulls(doc)
    return doc


def _plain_query_styles(parameters: list[Any]) -> None:
    for parameter in parameters:
        if parameter.get("in") == "query" and parameter.get("style") == "deepObject":
            del parameter["style"]


def _explicit_nulls(node: Any) -> None:
    if isinstance(node, list):
        for child in node:
            _explicit_nulls(child)
        return
    if not isinstance(node, dict):
        return
    if node.get("nullable") is True:
        if "enum" in node and None not in node["enum"]:
            node["enum"] = [*node["enum"], None]
        for combinator in ("anyOf", "oneOf"):
            if combinator in node and "type" not in node:
                node[combinator] = [
                    *node[combinator],
                    {"type": "object", "nullable": True, "enum": [None]},
                ]
    for child in node.values():
        _explicit_nulls(child)


def _header_dict(headers: Mapping[str, str]) -> dict[str, str]:
    return {key.lower(): value for key, value in headers.items()}


def _mime(headers: Mapping[str, str], default: str = "application/json") -> str:
    value = _header_dict(headers).get("content-type", default)
    return value.split(";", 1)[0].strip() or default


class OpenAPIContract:
    """One provider's OpenAPI files (several for HighLevel and Calendly), tried in order.

    A request belongs to the first file that describes its path and method; a path no file
    describes is itself a problem.
    """

    def __init__(self, documents: Sequence[Any]) -> None:
        # Trimmed files keep upstream quirks: load them without validating the description.
        config = Config(spec_validator_cls=None)  # type: ignore[arg-type]
        self._apis = [
            (doc, OpenAPI.from_dict(_prepared(doc), config=config))  # type: ignore[arg-type]
            for doc in documents
        ]

    @classmethod
    def from_files(cls, provider_dir: str, *names: str) -> OpenAPIContract:
        return cls([spec_json(provider_dir, name) for name in names])

    def _request(self, exchange: Exchange) -> MockRequest:
        return MockRequest(
            _HOST,
            exchange.method.lower(),
            exchange.path,
            args=dict(exchange.query),
            headers=_header_dict(exchange.headers),
            data=exchange.body or None,
            content_type=_mime(exchange.headers),
        )

    def _api_for(self, exchange: Exchange) -> OpenAPI | None:
        for _doc, api in self._apis:
            try:
                api.validate_request(self._request(exchange))
            except (PathNotFound, PathsNotFound):
                continue
            except Exception:
                return api
            return api
        return None

    def request_problems(self, exchange: Exchange) -> list[str]:
        api = self._api_for(exchange)
        if api is None:
            return [f"{exchange.method} {exchange.path}: no such operation in the description"]
        try:
            api.validate_request(self._request(exchange))
        except Exception as exc:
            return [_explain(f"request {exchange.method} {exchange.path}", exc)]
        return []

    def response_problems(self, exchange: Exchange) -> list[str]:
        api = self._api_for(exchange)
        if api is None:
            return [f"{exchange.method} {exchange.path}: no such operation in the description"]
        response = MockResponse(
            exchange.response_body,
            status_code=exchange.status,
            headers=_header_dict(exchange.response_headers),
            content_type=_mime(exchange.response_headers),
        )
        try:
            api.validate_response(self._request(exchange), response)
        except Exception as exc:
            return [
                _explain(f"response {exchange.status} to {exchange.method} {exchange.path}", exc)
            ]
        return []


def _explain(where: str, exc: Exception) -> str:
    """openapi-core keeps the useful detail in ``__cause__`` and ``schema_errors``."""
    parts = [f"{where}: {type(exc).__name__}: {exc}"]
    cause = exc.__cause__
    while cause is not None:
        parts.append(f"{type(cause).__name__}: {cause}")
        for error in getattr(cause, "schema_errors", ())[:5]:
            location = "/".join(str(p) for p in error.absolute_path) or "(body)"
            parts.append(f"  at {location}: {error.message}")
        cause = cause.__cause__
    return "\n".join(parts)


class DiscoveryContract:
    """Google's discovery format: methods with ``httpMethod``/``path`` and ``schemas`` by id.

    Each discovery schema becomes a JSON Schema (``$ref: "Event"`` to ``#/$defs/Event``); query
    parameters are checked for being known and for their declared ``type``/``enum``; request and
    response bodies for fitting ``request``/``response`` schemas. Error bodies (status >= 400)
    are checked against the Google JSON error envelope of the OAuth supplement instead.
    """

    def __init__(self, discovery: Any, error_schema: Mapping[str, Any] | None = None) -> None:
        self._doc = discovery
        self._defs = {name: _from_discovery(s) for name, s in discovery.get("schemas", {}).items()}
        self._error_schema = error_schema
        self._methods: list[tuple[str, list[str], dict[str, Any]]] = []
        for method in _discovery_methods(discovery.get("resources", {})):
            self._methods.append((method["httpMethod"], _split(method["path"]), method))
        self._base = "/" + discovery.get("servicePath", "").strip("/")

    def _method(self, exchange: Exchange) -> tuple[dict[str, Any], dict[str, str]] | None:
        path = exchange.path
        if path.startswith(self._base + "/"):
            path = path[len(self._base) :]
        parts = _split(path)
        for http_method, template, method in self._methods:
            if http_method != exchange.method.upper() or len(template) != len(parts):
                continue
            bound: dict[str, str] = {}
            for want, got in zip(template, parts, strict=True):
                if want.startswith("{") and want.endswith("}"):
                    bound[want[1:-1]] = got
                elif want != got:
                    break
            else:
                return method, bound
        return None

    def _validate(self, ref: str, value: Any) -> list[str]:
        schema = {"$ref": f"#/$defs/{ref}", "$defs": self._defs}
        return [
            f"at {'/'.join(str(p) for p in e.absolute_path) or '(body)'}: {e.message}"
            for e in Draft202012Validator(schema).iter_errors(value)
        ]

    def request_problems(self, exchange: Exchange) -> list[str]:
        found = self._method(exchange)
        where = f"request {exchange.method} {exchange.path}"
        if found is None:
            return [f"{exchange.method} {exchange.path}: no such method in the discovery document"]
        method, _bound = found
        params = {**self._doc.get("parameters", {}), **method.get("parameters", {})}
        problems = []
        for name, value in exchange.query.items():
            spec = params.get(name)
            if spec is None or spec.get("location") != "query":
                problems.append(f"{where}: unknown query parameter {name!r}")
            elif "enum" in spec and value not in spec["enum"]:
                problems.append(f"{where}: {name}={value!r} is not one of {spec['enum']}")
            elif spec.get("type") == "integer" and not value.lstrip("-").isdigit():
                problems.append(f"{where}: {name}={value!r} is not an integer")
            elif spec.get("type") == "boolean" and value not in ("true", "false"):
                problems.append(f"{where}: {name}={value!r} is not a boolean")
        for name, spec in params.items():
            if (
                spec.get("required")
                and spec.get("location") == "query"
                and name not in exchange.query
            ):
                problems.append(f"{where}: missing required query parameter {name!r}")
        request = method.get("request")
        if request is not None:
            try:
                body = json.loads(exchange.body)
            except ValueError:
                return [*problems, f"{where}: body is not JSON"]
            problems += [f"{where}: {p}" for p in self._validate(request["$ref"], body)]
        elif exchange.body:
            problems.append(f"{where}: this method takes no body")
        return problems

    def response_problems(self, exchange: Exchange) -> list[str]:
        found = self._method(exchange)
        where = f"response {exchange.status} to {exchange.method} {exchange.path}"
        if found is None:
            return [f"{exchange.method} {exchange.path}: no such method in the discovery document"]
        method, _bound = found
        if exchange.status >= 400:
            if self._error_schema is None:
                return []
            try:
                body = json.loads(exchange.response_body)
            except ValueError:
                return [f"{where}: error body is not JSON"]
            return [
                f"{where}: {e.message}"
                for e in Draft202012Validator(dict(self._error_schema)).iter_errors(body)
            ]
        response = method.get("response")
        if response is None:
            return [f"{where}: expected an empty body"] if exchange.response_body.strip() else []
        try:
            body = json.loads(exchange.response_body)
        except ValueError:
            return [f"{where}: body is not JSON"]
        return [f"{where}: {p}" for p in self._validate(response["$ref"], body)]


def _split(path: str) -> list[str]:
    return [part for part in path.split("/") if part]


def _discovery_methods(resources_: Mapping[str, Any]) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = []
    for resource in resources_.values():
        found += list(resource.get("methods", {}).values())
        found += _discovery_methods(resource.get("resources", {}))
    return found


_DISCOVERY_TYPES = {"string", "integer", "number", "boolean", "object", "array", "null"}


def _from_discovery(schema: Mapping[str, Any]) -> dict[str, Any]:
    """A discovery schema as JSON Schema (discovery is a JSON Schema draft 3 dialect).

    ``type: any`` and unknown keywords impose nothing; ``format`` is informational (int64 values
    are strings in discovery); ``required`` is per property in draft 3 and ignored here, as
    Google's own clients do, since Calendar marks output-only fields required.
    """
    if "$ref" in schema:
        return {"$ref": f"#/$defs/{schema['$ref']}"}
    out: dict[str, Any] = {}
    kind = schema.get("type")
    if kind in _DISCOVERY_TYPES:
        out["type"] = kind
    if "enum" in schema:
        out["enum"] = list(schema["enum"])
    if "properties" in schema:
        out["properties"] = {k: _from_discovery(v) for k, v in schema["properties"].items()}
    if "additionalProperties" in schema:
        out["additionalProperties"] = _from_discovery(schema["additionalProperties"])
    if "items" in schema:
        out["items"] = _from_discovery(schema["items"])
    return out
