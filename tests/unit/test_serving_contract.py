"""The serving contract: the OpenAPI document BentoML generates equals the checked-in one.

A change to a request or response model shows up as a diff of ``serving/openapi.json`` in
review. After an intended change, regenerate it with
``FITML_UPDATE_OPENAPI=1 .venv/bin/pytest tests/unit/test_serving_contract.py``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

CONTRACT = Path(__file__).resolve().parents[2] / "serving" / "openapi.json"


def current_openapi() -> dict[str, Any]:
    """The service's OpenAPI document (no model or store is loaded to make it)."""
    from serving.service import FitmlService

    spec: dict[str, Any] = json.loads(json.dumps(FitmlService.openapi_spec.asdict()))
    spec.get("info", {}).pop("version", None)  # BentoML puts the bento version here
    return spec


def test_openapi_matches_the_checked_in_contract() -> None:
    spec = current_openapi()
    if os.environ.get("FITML_UPDATE_OPENAPI") == "1":
        CONTRACT.write_text(json.dumps(spec, indent=1, sort_keys=True) + "\n")
    if not CONTRACT.is_file():
        pytest.fail(f"{CONTRACT} is missing; run with FITML_UPDATE_OPENAPI=1 to create it")
    assert spec == json.loads(CONTRACT.read_text()), (
        "the OpenAPI document changed: review the change, then run "
        "FITML_UPDATE_OPENAPI=1 .venv/bin/pytest tests/unit/test_serving_contract.py"
    )


def test_contract_has_the_endpoints_and_fields_the_session_service_uses() -> None:
    spec = json.loads(CONTRACT.read_text())
    for path in ("/recommend", "/predict_fit", "/livez", "/readyz", "/metrics"):
        assert path in spec["paths"], path
    ok = spec["paths"]["/recommend"]["post"]["responses"]["200"]
    response = ok["content"]["application/json"]["schema"]["properties"]
    for field in (
        "recommended_size",
        "confidence",
        "runner_up",
        "fit_note",
        "sizes",
        "model_versions",
        "request_id",
        "fallbacks",
        "variant",
    ):
        assert field in response, field
