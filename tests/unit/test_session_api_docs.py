"""The session API's documentation: OpenAPI examples, browsable docs, the Postman collection.

The collection is checked against the current OpenAPI document and then run, request by
request in its order, against the app (as Postman's collection runner would: variables
substituted, the session id kept from "start a session").
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from serving.session.app import Services, create_app
from serving.session.charts import Chart, ChartBook
from serving.session.client import PredictionClient
from serving.session.config import ClientSettings, hash_key
from serving.session.delivery import Deliverer
from serving.session.observability import Metrics
from serving.session.openapi import openapi_document
from serving.session.openapi_docs import ASSETS_URL, CONTENT_SECURITY_POLICY
from serving.session.postman import COLLECTION_FILE, collection, render
from serving.session.schemas import EXAMPLE_PRODUCT, Feedback, StartSession
from serving.session.security import KeyRing, LocalRateLimiter
from serving.session.store import Outbox, SqliteEventStore

KEY = "docs-test-key"
CHART = Chart(
    product_id=EXAMPLE_PRODUCT,
    dimension="chest",
    sizes=("S", "M", "L"),
    indices=(2, 3, 4),
    low=(84.0, 92.0, 100.0),
    high=(92.0, 100.0, 108.0),
)
BODIES = {"/api/v1/tryon/sessions": StartSession, "feedback": Feedback}


def _answer(request: httpx.Request) -> httpx.Response:
    return httpx.Response(
        200,
        json={
            "recommended_size": "L",
            "confidence": 0.7,
            "runner_up": "M",
            "fit_note": "ok",
            "sizes": [
                {"size": s, "p_too_small": 0.2, "p_fit": 0.7, "p_too_large": 0.1}
                for s in CHART.sizes
            ],
            "model_versions": {"fit_model": "1", "size_model": "1"},
            "request_id": "r1",
        },
    )


def _services(tmp_path: Path) -> Services:
    store = SqliteEventStore(tmp_path / "events.db")
    outbox = Outbox(tmp_path / "outbox.db")
    metrics = Metrics()
    return Services(
        client=PredictionClient(
            "http://p", ClientSettings(), transport=httpx.MockTransport(_answer)
        ),
        charts=ChartBook(None, None, [CHART]),
        store=store,
        outbox=outbox,
        deliverer=Deliverer(outbox, store, lambda f: None, metrics, interval_s=0.05),
        limiter=LocalRateLimiter(1000, 1000),
        keys=KeyRing((hash_key(KEY),)),
        metrics=metrics,
    )


@pytest.fixture
def client(tmp_path: Path) -> Iterator[TestClient]:
    with TestClient(create_app(_services(tmp_path))) as test_client:
        yield test_client


def test_every_request_body_has_examples_that_validate() -> None:
    document = openapi_document()
    seen = 0
    for path, operations in document["paths"].items():
        for operation in operations.values():
            content = operation.get("requestBody", {}).get("content", {})
            if not content:
                continue
            examples = content["application/json"].get("examples", {})
            assert examples, f"{path} has no request examples"
            model = BODIES["feedback" if path.endswith("/feedback") else path]
            for example in examples.values():
                model.model_validate(example["value"])
                seen += 1
    assert seen >= 4
    for name in ("Session", "FeedbackAccepted", "ErrorBody"):
        assert document["components"]["schemas"][name]["examples"], name


def test_browsable_docs_and_their_switch(client: TestClient, tmp_path: Path) -> None:
    docs = client.get("/docs")
    assert docs.status_code == 200 and "swagger-ui" in docs.text and "/openapi.json" in docs.text
    assert client.get("/redoc").status_code == 200
    assert client.get("/docs/oauth2-redirect").status_code == 200
    assert client.get("/openapi.json").json() == openapi_document()
    with TestClient(create_app(_services(tmp_path / "off"), docs=False)) as closed:
        assert closed.get("/docs").status_code == 404
        assert closed.get("/openapi.json").status_code == 404


@pytest.mark.parametrize("page", ["/docs", "/redoc"])
def test_the_docs_pages_load_everything_from_the_service(client: TestClient, page: str) -> None:
    """Swagger UI's and ReDoc's files are served by the app, from the installed package."""
    html = client.get(page)
    sources = re.findall(r'(?:src|href)="([^"]+)"', html.text)
    assert sources and all(s.startswith(ASSETS_URL + "/") for s in sources), sources
    assert "fonts.googleapis" not in html.text and "cdn." not in html.text
    assert html.headers["Content-Security-Policy"] == CONTENT_SECURITY_POLICY
    for source in sources:
        asset = client.get(source)
        assert asset.status_code == 200 and len(asset.content) > 1000, source
    js = client.get(f"{ASSETS_URL}/swagger-ui-bundle.js")
    assert "javascript" in js.headers["content-type"] and b"SwaggerUIBundle" in js.content
    assert client.get(f"{ASSETS_URL}/../openapi_docs.py").status_code == 404


def test_postman_collection_is_current_and_covers_every_operation() -> None:
    assert COLLECTION_FILE.read_text() == render(), (
        "docs/session-api.postman_collection.json is stale: run `python -m serving.session.postman`"
    )
    document = openapi_document()
    exported = collection(document)
    assert exported["info"]["schema"].endswith("/v2.1.0/collection.json")
    covered = {
        (i["request"]["method"], "/" + "/".join(i["request"]["url"]["path"]))
        for i in exported["item"]
    }
    for path, operations in document["paths"].items():
        postman_path = path.replace("{session_id}", ":session_id")
        for method in operations:
            assert (method.upper(), postman_path) in covered, (method, path)
    assert all(i["response"] for i in exported["item"]), "every request has a saved answer"


def _substitute(text: str, variables: dict[str, str]) -> str:
    for key, value in variables.items():
        text = text.replace(f"{{{{{key}}}}}", value)
    return text


def test_the_collection_runs_against_the_app(client: TestClient) -> None:
    exported = json.loads(COLLECTION_FILE.read_text())
    variables = {v["key"]: v["value"] for v in exported["variable"]}
    variables.update(baseUrl="", apiKey=KEY)
    auth = {a["key"]: a["value"] for a in exported["auth"]["apikey"]}
    ran = 0
    for item in exported["item"]:
        request: dict[str, Any] = item["request"]
        path = "/" + "/".join(request["url"]["path"])
        for variable in request["url"].get("variable", []):
            path = path.replace(f":{variable['key']}", _substitute(variable["value"], variables))
        headers = {h["key"]: h["value"] for h in request["header"]}
        headers[auth["key"]] = _substitute(auth["value"], variables)
        body = request.get("body", {}).get("raw")
        response = client.request(request["method"], path, headers=headers, content=body)
        expected = item["response"][0]["code"]
        assert response.status_code == expected, (item["name"], response.text)
        if any(e["listen"] == "test" for e in item.get("event", [])):
            variables["sessionId"] = response.json()["session_id"]  # what its script keeps
        ran += 1
    assert ran == len(exported["item"]) >= 4
