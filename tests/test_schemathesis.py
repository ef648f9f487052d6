"""Schemathesis against a live proxy: every operation of the proxy's own OpenAPI document, over real sockets.

The proxy (in-process memory cache, client, admin keys and a webhook secret configured) runs in front of the fake
Label Studio, both on 127.0.0.1 in a background thread with its own event loop, because schemathesis calls are
synchronous. Each operation gets positive and negative cases, and every response must be no server error, and
conform to the document in status, content type, body schema and declared headers.
"""

from __future__ import annotations

import json
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from openapi_spec_validator import validate
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    ignored_auth,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from proxy.openapi import document
from tests.support.live import Live, running_proxy
from tests.support.proxies import CLIENT_KEY

ADMIN_KEY = "admin-key-for-schemathesis-0123"
WEBHOOK_SECRET = "webhook-secret-for-schemathesis"
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
    response_headers_conformance,
    ignored_auth,
]

schema = schemathesis.openapi.from_dict(document())


@pytest.fixture(scope="module")
def live() -> Iterator[Live]:
    with running_proxy(
        annotations=3,
        proxy_admin_keys=(ADMIN_KEY,),
        proxy_webhook_secret=WEBHOOK_SECRET,
        proxy_upstream_timeout=2,
    ) as running:
        running.fake.add_annotation(project=2)
        yield running


def credentials_for(path: str) -> dict[str, str]:
    """What a legitimate caller of the operation sends: schemathesis's own values would only ever get 401."""
    if path.startswith("/cache/"):
        return {"Authorization": f"Token {ADMIN_KEY}"}
    if path.startswith("/webhooks/"):
        return {"X-Webhook-Secret": WEBHOOK_SECRET}
    return {"Authorization": f"Token {CLIENT_KEY}"}


def test_the_served_document_is_valid_openapi_and_is_the_one_tested(live: Live) -> None:
    with urllib.request.urlopen(f"{live.url}/openapi.json", timeout=5) as response:  # noqa: S310 - our own http URL
        assert response.headers["Content-Type"].startswith("application/json")
        served: dict[str, Any] = json.loads(response.read())
    validate(served)
    assert served == document()


@schema.parametrize()
@settings(
    max_examples=30,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
def test_every_operation_conforms_to_the_document(case: schemathesis.Case, live: Live) -> None:
    case.call_and_validate(base_url=live.url, headers=credentials_for(case.path), checks=CHECKS, timeout=10)
