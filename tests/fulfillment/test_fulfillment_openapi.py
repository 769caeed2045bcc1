"""schemathesis against /openapi.json of a real uvicorn: for data that fits the schema and data
that does not, every answer is documented (status, content type, body shape) and none is 5xx.

(schemathesis' own pytest plugin — `@schema.parametrize()` over `from_fixture` — breaks on
pytest 9, so each operation is driven through `APIOperation.as_strategy` under hypothesis.)
"""

from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, assume, given, settings
from schemathesis import GenerationMode
from schemathesis.config import SchemathesisConfig
from schemathesis.specs.openapi.checks import positive_data_acceptance

from station.fulfillment.client import FulfillmentClient
from station.fulfillment.store import Role

# An invalid body may also be refused for its size (413, documented under 4XX).
CONFIG = SchemathesisConfig.from_dict(
    {"checks": {"negative_data_rejection": {
        "expected-statuses": ["400", "401", "403", "404", "405", "406", "409", "413", "415", "422",
                              "428", "429", "5xx"]}}})

OPERATIONS = [
    ("POST", "/v1/fpr/shipments"),
    ("GET", "/v1/fpr/shipments/{shipment_id}"),
    ("GET", "/.well-known/transport-keys.jwks"),
    ("GET", "/.well-known/signing-keys.jwks"),
    ("POST", "/v1/station/claim"),
    ("POST", "/v1/station/items/{item_id}/heartbeat"),
    ("POST", "/v1/station/items/{item_id}/submit"),
    ("POST", "/v1/station/items/{item_id}/release"),
    ("GET", "/v1/fpr/shipments"),
    ("PATCH", "/v1/fpr/shipments/{shipment_id}"),
    ("DELETE", "/v1/fpr/shipments/{shipment_id}"),
    ("POST", "/v1/station/status"),
    ("GET", "/v1/operator/shipments"),
    ("GET", "/v1/operator/shipments/{shipment_id}"),
    ("POST", "/v1/operator/shipments/{shipment_id}/state"),
    ("GET", "/v1/operator/stations"),
    ("GET", "/v1/operator/items/failed"),
    ("GET", "/v1/operator/audit"),
    ("GET", "/v1/operator/tenants"),
    ("POST", "/v1/station/items/{item_id}/confirm"),
    ("GET", "/v1/station/queue"),
    # directory-connected provisioning (issue 15)
    ("POST", "/v1/directories"),
    ("GET", "/v1/directories"),
    ("GET", "/v1/directories/{name}"),
    ("PATCH", "/v1/directories/{name}"),
    ("DELETE", "/v1/directories/{name}"),
    ("POST", "/v1/directories/{name}/test"),
    ("POST", "/v1/directories/{name}/preflight"),
    ("POST", "/v1/directories/{name}/enrollments"),
    ("GET", "/v1/directories/{name}/enrollments"),
    ("GET", "/v1/directories/{name}/audit"),
]


CROSS_FIELD_LIMITS = {("POST", "/v1/fpr/shipments"), ("PATCH", "/v1/fpr/shipments/{shipment_id}"),
                     ("POST", "/v1/operator/shipments/{shipment_id}/state")}


@pytest.fixture
def seeded(start_service, shipment_body):
    """The service with a customer and a station token and a few queued items. Schemathesis
    sends many invalid tokens from one address: past the failed-token limit those would be 429
    (docs/HARDENING.md), which its auth check does not expect, so the limit is lifted here."""
    service = start_service(failed_token_limit=10**9)
    tokens = {Role.CUSTOMER: service.token(Role.CUSTOMER, "acme"),
              Role.STATION: service.token(Role.STATION, "station-1"),
              Role.OPERATOR: service.token(Role.OPERATOR, "operator-1")}
    with FulfillmentClient(service.url, tokens[Role.CUSTOMER]) as customer:
        for _ in range(3):
            customer.post_shipment(shipment_body())
    return service, tokens


def _cases():
    """Each operation with data that fits the schema; those with inputs also with data that
    does not (the JWKS routes take no input, so nothing negative can be made for them)."""
    for method, path in OPERATIONS:
        yield method, path, GenerationMode.POSITIVE
        if not path.startswith("/.well-known/"):
            yield method, path, GenerationMode.NEGATIVE


@pytest.mark.parametrize("method, path, mode", list(_cases()))
def test_the_api_matches_its_openapi(seeded, method, path, mode):
    service, tokens = seeded
    schema = schemathesis.openapi.from_url(f"{service.url}/openapi.json", config=CONFIG)
    live = sorted((m.upper(), p) for p, ops in schema.raw_schema["paths"].items() for m in ops)
    assert live == sorted(OPERATIONS)
    operation = schema[path][method]
    role = (Role.STATION if path.startswith("/v1/station/")
            else Role.OPERATOR if path.startswith("/v1/operator/") else Role.CUSTOMER)
    headers = {"Authorization": f"Bearer {tokens[role]}"}
    # A schema-valid shipment still carries JWEs whose headers the schema cannot describe
    # (a kid we hold, a P-384 epk), and limits that span fields (region required for US and CA,
    # telephone 40 except for IN, no control or bidi characters; 103 needs a tracking number):
    # the door refuses those with 400 by design.
    # A directory route acts on a stored configuration verified with a real directory (and a
    # PIN-delivery key on the P-384 curve): schema-valid data names none, so 400/404 by design.
    excluded = [positive_data_acceptance] if (method, path) in CROSS_FIELD_LIMITS \
        or path.startswith("/v1/directories") else []

    @given(case=operation.as_strategy(generation_mode=mode))
    @settings(max_examples=30, deadline=None, suppress_health_check=list(HealthCheck), database=None)
    def check(case):
        if mode is GenerationMode.NEGATIVE:
            # A query member whose value is None, [] or {} is not sent at all (`limit=1&` with
            # `{"": []}` goes out as `?limit=1`): the server never sees that invalid part, so such
            # a case cannot test its rejection (found with hypothesis seed 9697…3875).
            assume(all(value not in (None, [], {}) for value in (case.query or {}).values()))
        case.call_and_validate(headers=headers, excluded_checks=excluded)

    check()
