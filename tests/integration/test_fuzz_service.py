"""Property-based fuzz of the HTTP API: nothing a client sends gets a 5xx.

Two fuzzers against the real server: schemathesis, generating valid and invalid requests from
the OpenAPI document the service publishes; and hypothesis, sending arbitrary JSON values and
mutated bytes to ``/recommend`` and ``/predict_fit``. Every answer must be 2xx or a 4xx with a
JSON body.
"""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

Served = Any  # the `served` fixture of conftest.py

pytestmark = [pytest.mark.integration, pytest.mark.slow]

FUZZ = settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=list(HealthCheck),
    derandomize=True,
)


OPERATIONS = ("/recommend", "/predict_fit")


@pytest.mark.parametrize("path", OPERATIONS)
@pytest.mark.parametrize("mode", list(schemathesis.GenerationMode), ids=lambda m: m.value)
def test_openapi_fuzz_never_5xx(served: Served, path: str, mode: Any) -> None:
    """Schemathesis cases (valid and invalid) from the published OpenAPI document."""
    schema = schemathesis.openapi.from_url(f"{served.url}/docs.json")
    operation = next(
        result.ok()
        for result in schema.get_all_operations()
        if result.ok().path == path and result.ok().method.upper() == "POST"
    )

    @given(case=operation.as_strategy(generation_mode=mode))
    @FUZZ
    def run(case: Any) -> None:
        case.call_and_validate(base_url=served.url, checks=[schemathesis.checks.not_a_server_error])

    run()


def check(response: httpx.Response) -> None:
    assert response.status_code < 500, response.text
    if response.status_code >= 400:
        body = response.json()
        assert "error" in json.dumps(body)


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=50),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=5)
    ),
    max_leaves=20,
)
fields = st.fixed_dictionaries(
    {},
    optional={
        "product_id": json_values | st.sampled_from(["p0001", "p0000", ""]),
        "user_id": json_values | st.sampled_from(["u000001", ""]),
        "measurements": json_values
        | st.dictionaries(
            st.sampled_from(["chest_cm", "waist_cm", "hips_cm", "height_cm", "x"]),
            st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=5),
        ),
        "fit_preference": json_values | st.sampled_from(["slim", "regular", "relaxed"]),
        "queries": json_values,
    },
)


@given(body=fields)
@FUZZ
def test_random_json_bodies_never_5xx(served: Served, body: dict[str, Any]) -> None:
    with httpx.Client(base_url=served.url, timeout=30) as client:
        for path in ("/recommend", "/predict_fit"):
            check(client.post(path, content=json.dumps(body, allow_nan=True)))


@given(
    raw=st.binary(max_size=300),
    content_type=st.sampled_from(
        [
            "application/json",
            "text/plain",
            "application/x-www-form-urlencoded",
            "multipart/form-data",
        ]
    ),
)
@FUZZ
def test_mutated_bytes_never_5xx(served: Served, raw: bytes, content_type: str) -> None:
    with httpx.Client(base_url=served.url, timeout=30) as client:
        check(client.post("/recommend", content=raw, headers={"Content-Type": content_type}))
