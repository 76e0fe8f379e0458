"""Typed request and response bodies of the session API (``/api/v1/tryon``)."""

from __future__ import annotations

import re
from datetime import datetime
from typing import Annotated, Any, Final, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator

from serving.schemas import FitPreference, Measurements

Outcome = Literal["too_small", "fit", "too_large"]
Area = Literal["chest", "waist", "hips", "length", "shoulders", "sleeves", "inseam"]
ID_PATTERN = r"^[A-Za-z0-9._:@-]+$"

_UNSTORABLE = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f\ud800-\udfff]")


def storable_text(value: str) -> str:
    """Free text every event store can hold: no control character, no lone surrogate.

    PostgreSQL's JSONB and text refuse NUL; control characters and unpaired surrogates are
    not text a shopper types.

    Raises:
        ValueError: naming the character and its position (never echoing the text).
    """
    bad = _UNSTORABLE.search(value)
    if bad is not None:
        raise ValueError(
            f"contains the character U+{ord(bad.group()):04X} at position {bad.start()}; "
            "send plain text without control characters or unpaired surrogates"
        )
    return value


StorableText = Annotated[str, Field(max_length=500), AfterValidator(storable_text)]


EXAMPLE_USER: Final = "u000123"
EXAMPLE_PRODUCT: Final = "p0030"
EXAMPLE_SESSION: Final = "3f2b9c1e5d7a4e0f9b8c6d5e4f3a2b1c"

START_EXAMPLES: Final[dict[str, Any]] = {
    "known_shopper": {
        "summary": "A known shopper",
        "description": "The prediction service reads the shopper's profile and fit history.",
        "value": {"user_id": EXAMPLE_USER, "product_id": EXAMPLE_PRODUCT},
    },
    "guest": {
        "summary": "A guest with measurements",
        "description": "No account: the measurements the shopper typed, metric.",
        "value": {
            "product_id": EXAMPLE_PRODUCT,
            "measurements": {"height_cm": 178, "chest_cm": 98, "waist_cm": 84},
            "fit_preference": "regular",
        },
    },
}
"""Request examples of ``POST /api/v1/tryon/sessions`` (OpenAPI and the Postman collection)."""

FEEDBACK_EXAMPLES: Final[dict[str, Any]] = {
    "too_small": {
        "summary": "The size tried was too small",
        "value": {
            "event_id": "ev-7f3c2a",
            "size": "M",
            "outcome": "too_small",
            "notes": {"chest": "tight across the chest"},
        },
    },
    "fit": {
        "summary": "The size fits",
        "value": {"event_id": "ev-9a1d4b", "size": "L", "outcome": "fit"},
    },
}
"""Request examples of ``POST /api/v1/tryon/sessions/{session_id}/feedback``."""


class StartSession(BaseModel):
    """Start a try-on session: a known shopper (``user_id``) or a guest with measurements."""

    model_config = ConfigDict(extra="forbid")

    product_id: str = Field(min_length=1, max_length=128, pattern=ID_PATTERN)
    user_id: str | None = Field(default=None, min_length=1, max_length=128, pattern=ID_PATTERN)
    measurements: Measurements | None = None
    fit_preference: FitPreference | None = None

    @model_validator(mode="after")
    def _shopper_given(self) -> StartSession:
        if self.user_id is None and (
            self.measurements is None
            or all(v is None for v in self.measurements.model_dump().values())
        ):
            raise ValueError("give user_id, or measurements for a guest session")
        return self


class SizeOption(BaseModel):
    """One size of the product, with the fit model's probabilities when the model answered."""

    size: str
    size_index: int
    p_too_small: float | None = None
    p_fit: float | None = None
    p_too_large: float | None = None


class FeedbackOut(BaseModel):
    """Feedback recorded in a session."""

    event_id: str
    size: str
    outcome: Outcome
    notes: dict[Area, str] = Field(default_factory=dict)
    event_timestamp: datetime


class Session(BaseModel):
    """A try-on session and the recommendation it was given."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "session_id": EXAMPLE_SESSION,
                    "created_at": "2026-11-30T14:05:12.345Z",
                    "product_id": EXAMPLE_PRODUCT,
                    "guest": False,
                    "recommended_size": "L",
                    "confidence": 0.71,
                    "runner_up": "M",
                    "fit_note": "runs small in the chest: between sizes, size up",
                    "sizes": [
                        {
                            "size": "M",
                            "size_index": 3,
                            "p_too_small": 0.41,
                            "p_fit": 0.55,
                            "p_too_large": 0.04,
                        },
                        {
                            "size": "L",
                            "size_index": 4,
                            "p_too_small": 0.12,
                            "p_fit": 0.71,
                            "p_too_large": 0.17,
                        },
                    ],
                    "degraded": False,
                    "degraded_reason": None,
                    "fallbacks": [],
                    "model_versions": {"fit_model": "3", "size_model": "3"},
                    "prediction_request_id": "9c1d0e2f4a3b",
                    "feedback": [],
                }
            ]
        }
    )

    session_id: str
    created_at: datetime
    product_id: str
    guest: bool
    recommended_size: str
    confidence: float | None = Field(
        description="The model's confidence in [0, 1]; null when the size-chart rule answered."
    )
    runner_up: str | None
    fit_note: str
    sizes: list[SizeOption]
    degraded: bool = Field(description="True when the prediction service was not used.")
    degraded_reason: str | None = None
    fallbacks: list[str] = Field(default_factory=list)
    model_versions: dict[str, str] = Field(default_factory=dict)
    prediction_request_id: str | None = None
    feedback: list[FeedbackOut] = Field(default_factory=list)


class Feedback(BaseModel):
    """What the shopper said about a size they tried."""

    model_config = ConfigDict(extra="forbid")

    event_id: str | None = Field(
        default=None,
        min_length=1,
        max_length=128,
        pattern=ID_PATTERN,
        description="Idempotency key (required here or as the Idempotency-Key header): "
        "resending the same event id records it once.",
    )
    size: str = Field(min_length=1, max_length=16)
    outcome: Outcome
    notes: dict[Area, StorableText] = Field(
        default_factory=dict, description="Optional free-text notes per body area."
    )


class FeedbackAccepted(BaseModel):
    """Feedback was accepted: stored durably, delivered to the stores as soon as they answer."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {"event_id": "ev-7f3c2a", "session_id": EXAMPLE_SESSION, "status": "accepted"}
            ]
        }
    )

    event_id: str
    session_id: str
    status: Literal["accepted", "duplicate"]


class ErrorBody(BaseModel):
    """The body of every 4xx/5xx answer: what was wrong and what to do."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [{"detail": "body.product_id: String should have at least 1 character"}]
        }
    )

    detail: str


def error_example(detail: str) -> dict[str, Any]:
    """An OpenAPI ``responses`` entry's example of an error body saying ``detail``."""
    return {"content": {"application/json": {"example": {"detail": detail}}}}
