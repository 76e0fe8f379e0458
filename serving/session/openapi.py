"""The session API's OpenAPI document, exported to ``serving/session_openapi.json``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Final

from fastapi.openapi.utils import get_openapi

OPENAPI_FILE: Final = Path(__file__).resolve().parents[1] / "session_openapi.json"


def openapi_document() -> dict[str, Any]:
    """The OpenAPI document of the session API (built without opening anything)."""
    from serving.session.app import create_app

    app = create_app(None)
    return get_openapi(
        title=app.title,
        version=app.version,
        description=app.description,
        routes=app.routes,
    )


def render() -> str:
    """The document as the exported text (sorted keys, two-space indent, final newline)."""
    return json.dumps(openapi_document(), indent=2, sort_keys=True) + "\n"


def export(path: Path = OPENAPI_FILE) -> Path:
    """Write the document to ``path`` (run after changing the API; a test checks it)."""
    path.write_text(render())
    return path


if __name__ == "__main__":  # python -m serving.session.openapi
    print(export())
