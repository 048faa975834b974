"""Schemathesis over the gateway's OpenAPI schema, against a live gateway over the simulator.

Pass criteria: no 5xx for any generated request, and every response that the schema documents
matches it. Examples are bounded so the whole run stays well under a minute on two cores."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error, response_schema_conformance

from gateway.app import create_app
from tests.servers import gateway_settings, serve


@pytest.fixture(scope="module")
def live_gateway(sim_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    tmp: Path = tmp_path_factory.mktemp("schema")
    with serve(create_app(gateway_settings(sim_url, tmp))) as url:
        yield url


@pytest.mark.slow
def test_generated_requests_get_no_5xx_and_documented_answers(live_gateway: str) -> None:
    schema = schemathesis.openapi.from_url(live_gateway + "/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]  # type: ignore[union-attr]
    assert len(operations) >= 6
    for operation in operations:

        @given(case=operation.as_strategy())
        @settings(max_examples=12, deadline=None, suppress_health_check=list(HealthCheck), database=None)
        def run(case: Any) -> None:
            case.call_and_validate(checks=[not_a_server_error, response_schema_conformance], timeout=30)

        run()
