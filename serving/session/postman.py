"""A Postman collection of the session API, exported from its OpenAPI document.

One request per operation and request example of the OpenAPI document (so the collection
says nothing the API does not), with the API key as a collection-wide ``apikey`` auth, the
base URL, key and session id as collection variables, the documented response as the saved
example, and a test script on "start a session" that keeps the new ``session_id`` for the
requests after it. ``docs/session-api.postman_collection.json`` is the committed export
(``python -m serving.session.postman``); a test keeps it current and runs it.
"""

from __future__ import annotations

import json
from http import HTTPStatus
from pathlib import Path
from typing import Any, Final

COLLECTION_FILE: Final = (
    Path(__file__).resolve().parents[2] / "docs" / "session-api.postman_collection.json"
)
SCHEMA_URL: Final = "https://schema.getpostman.com/json/collection/v2.1.0/collection.json"
VARIABLES: Final = {
    "baseUrl": "http://127.0.0.1:8000",
    "apiKey": "change-me",
    "sessionId": "",
}
_CAPTURE_SESSION: Final = [
    "if (pm.response.code === 201) {",
    "    pm.collectionVariables.set('sessionId', pm.response.json().session_id);",
    "}",
]


def _component(document: dict[str, Any], ref: str) -> dict[str, Any]:
    node: Any = document
    for part in ref.removeprefix("#/").split("/"):
        node = node[part]
    return dict(node)


def _response_examples(document: dict[str, Any], operation: dict[str, Any]) -> list[Any]:
    """The documented responses that carry an example: (code, example body)."""
    out = []
    for code, response in sorted(operation.get("responses", {}).items()):
        media = response.get("content", {}).get("application/json", {})
        schema = media.get("schema", {})
        if "example" in media:
            out.append((int(code), response.get("description", ""), media["example"]))
        elif "$ref" in schema:
            examples = _component(document, schema["$ref"]).get("examples") or []
            if examples:
                out.append((int(code), response.get("description", ""), examples[0]))
    return out


def _url(path: str) -> dict[str, Any]:
    segments = [s for s in path.split("/") if s]
    variables = []
    postman_segments = []
    for segment in segments:
        if segment.startswith("{") and segment.endswith("}"):
            name = segment[1:-1]
            postman_segments.append(f":{name}")
            camel = "".join(w.capitalize() if i else w for i, w in enumerate(name.split("_")))
            variables.append({"key": name, "value": f"{{{{{camel}}}}}"})
        else:
            postman_segments.append(segment)
    url: dict[str, Any] = {
        "raw": "{{baseUrl}}/" + "/".join(postman_segments),
        "host": ["{{baseUrl}}"],
        "path": postman_segments,
    }
    if variables:
        url["variable"] = variables
    return url


def _item(
    document: dict[str, Any],
    method: str,
    path: str,
    operation: dict[str, Any],
    example: dict[str, Any] | None,
) -> dict[str, Any]:
    name = operation.get("summary", f"{method.upper()} {path}")
    request: dict[str, Any] = {
        "method": method.upper(),
        "header": [],
        "url": _url(path),
        "description": operation.get("description", operation.get("summary", "")),
    }
    if example is not None:
        name = f"{name}: {example.get('summary', '')}".rstrip(": ")
        request["header"] = [{"key": "Content-Type", "value": "application/json"}]
        request["body"] = {
            "mode": "raw",
            "raw": json.dumps(example["value"], indent=2),
            "options": {"raw": {"language": "json"}},
        }
    responses = [
        {
            "name": f"{code} {description}",
            "originalRequest": request,
            "status": HTTPStatus(code).phrase,
            "code": code,
            "header": [{"key": "Content-Type", "value": "application/json"}],
            "body": json.dumps(body, indent=2),
            "_postman_previewlanguage": "json",
        }
        for code, description, body in _response_examples(document, operation)
    ]
    item: dict[str, Any] = {"name": name, "request": request, "response": responses}
    if method == "post" and "{" not in path:  # starts a session: keep its id for the others
        item["event"] = [
            {"listen": "test", "script": {"type": "text/javascript", "exec": _CAPTURE_SESSION}}
        ]
    return item


def collection(document: dict[str, Any]) -> dict[str, Any]:
    """The Postman (v2.1) collection of an OpenAPI document."""
    info = document["info"]
    items = []
    for path, operations in document["paths"].items():
        for method, operation in operations.items():
            body = operation.get("requestBody", {}).get("content", {}).get("application/json", {})
            examples = list(body.get("examples", {}).values()) or [None]
            items += [_item(document, method, path, operation, ex) for ex in examples]
    return {
        "info": {
            "name": info["title"],
            "description": f"{info.get('description', '')}\n\nExported from the OpenAPI "
            f"document (version {info['version']}) by `python -m serving.session.postman`. "
            "Set the collection variables baseUrl and apiKey; run 'Start a try-on session' "
            "first (it keeps the session id for the others).",
            "schema": SCHEMA_URL,
        },
        "auth": {
            "type": "apikey",
            "apikey": [
                {"key": "key", "value": "X-API-Key", "type": "string"},
                {"key": "value", "value": "{{apiKey}}", "type": "string"},
                {"key": "in", "value": "header", "type": "string"},
            ],
        },
        "variable": [{"key": k, "value": v, "type": "string"} for k, v in VARIABLES.items()],
        "item": items,
    }


def render() -> str:
    """The collection of the current session API as exported text."""
    from serving.session.openapi import openapi_document

    return json.dumps(collection(openapi_document()), indent=2) + "\n"


def export(path: Path = COLLECTION_FILE) -> Path:
    """Write the collection to ``path`` (run after changing the API; a test checks it)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render())
    return path


if __name__ == "__main__":  # python -m serving.session.postman
    print(export())
