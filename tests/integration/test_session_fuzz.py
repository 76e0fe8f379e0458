"""Property-based fuzz of the session API from its exported OpenAPI document: never a 5xx."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from serving.session.openapi import OPENAPI_FILE
from serving.session.testing import ServiceProcess, clone_workdir, free_port

pytestmark = [pytest.mark.integration, pytest.mark.slow]

KEY = "fuzz-key"
schema = schemathesis.openapi.from_path(OPENAPI_FILE)


@pytest.fixture(scope="module")
def session_url(trained_workdir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    root = tmp_path_factory.mktemp("fuzz")
    clone = clone_workdir(trained_workdir, root / "var")
    with ServiceProcess(
        [
            "session-service",
            "--workdir",
            str(clone.workdir),
            "--prediction-url",
            f"http://127.0.0.1:{free_port()}",
        ],
        free_port(),
        root / "session.log",
        env={"FITML_API_KEYS": KEY, "FITML_RATE_LIMIT": "100000", "FITML_RATE_BURST": "100000"},
    ) as service:
        yield service.url


@schema.parametrize()
@settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
def test_no_server_errors(case: schemathesis.Case, session_url: str) -> None:
    case.call_and_validate(
        base_url=session_url,
        headers={"X-API-Key": KEY},
        timeout=10,
        checks=[schemathesis.checks.not_a_server_error],
        excluded_checks=[
            schemathesis.checks.positive_data_acceptance,
            schemathesis.checks.ignored_auth,
        ],
    )


@pytest.fixture(scope="module")
def known(session_url: str, trained_workdir: Path) -> dict[str, list[str]]:
    import json

    import pandas as pd

    attrs = pd.read_parquet(trained_workdir / "offline" / "features" / "product_attrs.parquet")
    lines = (trained_workdir / "examples" / "recommend.jsonl").read_text().splitlines()
    users = [b["user_id"] for b in map(json.loads, lines) if b.get("user_id")]
    return {"products": sorted(attrs["product_id"].astype(str))[:50], "users": users}


text = st.text(min_size=0, max_size=40)
number = st.one_of(st.none(), st.floats(allow_nan=False, allow_infinity=False), st.integers())


@settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
@given(data=st.data())
def test_deep_paths_never_5xx(data: st.DataObject, session_url: str, known: dict) -> None:
    """Bodies built around real products and shoppers reach the session and feedback paths."""
    body = data.draw(
        st.fixed_dictionaries(
            {"product_id": st.one_of(st.sampled_from(known["products"]), text)},
            optional={
                "user_id": st.one_of(st.sampled_from(known["users"]), text, st.none()),
                "measurements": st.dictionaries(
                    st.sampled_from(
                        [
                            "height_cm",
                            "weight_kg",
                            "chest_cm",
                            "waist_cm",
                            "hips_cm",
                            "inseam_cm",
                            "bust",
                        ]
                    ),
                    number,
                ),
                "fit_preference": st.sampled_from(["slim", "regular", "relaxed", "tight", None]),
            },
        )
    )
    with httpx.Client(base_url=session_url, headers={"X-API-Key": KEY}, timeout=10) as http:
        started = http.post("/api/v1/tryon/sessions", json=body)
        assert started.status_code < 500, started.text
        if started.status_code != 201:
            return
        session = started.json()
        sizes = [s["size"] for s in session["sizes"]]
        feedback = data.draw(
            st.fixed_dictionaries(
                {
                    "size": st.one_of(st.sampled_from(sizes), text),
                    "outcome": st.sampled_from(["too_small", "fit", "too_large", "snug"]),
                },
                optional={
                    "event_id": st.one_of(st.from_regex(r"\A[a-z0-9-]{1,20}\Z"), text),
                    "notes": st.dictionaries(st.sampled_from(["chest", "waist", "toes"]), text),
                },
            )
        )
        answer = http.post(
            f"/api/v1/tryon/sessions/{session['session_id']}/feedback", json=feedback
        )
        assert answer.status_code < 500, answer.text
        read = http.get(f"/api/v1/tryon/sessions/{session['session_id']}")
        assert read.status_code == 200, read.text
