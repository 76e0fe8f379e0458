"""Typed request and response bodies of the prediction service (the serving contract).

The OpenAPI document BentoML generates from these is checked in as ``serving/openapi.json``
(``tests/integration/test_service_contract.py`` fails when it drifts): a contract change
shows up in review. Identifiers are restricted to printable ASCII key characters, so nothing
a client sends can break the feature store's key encoding or the log.
"""

from __future__ import annotations

from typing import Final, Literal

from pydantic import BaseModel, ConfigDict, Field

FitPreference = Literal["slim", "regular", "relaxed"]
ID_PATTERN: Final = r"^[A-Za-z0-9][A-Za-z0-9_.:@-]*$"
"""User and product ids: letters, digits and ``_.:@-`` (UUIDs, ``u000123``, ``sku:42``)."""
SIZE_PATTERN: Final = r"^[A-Za-z0-9][A-Za-z0-9 ./+-]*$"
"""Size labels as charts write them (``XS``, ``00``, ``32``, ``2XL``)."""


class Measurements(BaseModel):
    """Body measurements a guest (or a shopper updating theirs) sends, metric."""

    model_config = ConfigDict(extra="forbid")

    height_cm: float | None = Field(default=None, ge=50, le=250)
    weight_kg: float | None = Field(default=None, ge=20, le=300)
    chest_cm: float | None = Field(default=None, ge=50, le=200)
    waist_cm: float | None = Field(default=None, ge=40, le=200)
    hips_cm: float | None = Field(default=None, ge=50, le=200)
    inseam_cm: float | None = Field(default=None, ge=40, le=120)


class SizeProbabilities(BaseModel):
    """The fit model's probabilities for one size."""

    size: str
    p_too_small: float = Field(ge=0, le=1)
    p_fit: float = Field(ge=0, le=1)
    p_too_large: float = Field(ge=0, le=1)


class RecommendResponse(BaseModel):
    """The answer to ``POST /recommend``."""

    recommended_size: str
    confidence: float = Field(ge=0, le=1, description="P(fit) of the size, lowered per fallback.")
    runner_up: str | None
    fit_note: str
    sizes: list[SizeProbabilities] = Field(description="Every size of the product, scored.")
    model_versions: dict[str, str] = Field(description="Registered version of each model.")
    request_id: str = Field(description="Joins this answer to the inference log and feedback.")
    fallbacks: list[str] = Field(
        default_factory=list,
        description="Why the answer had less to go on (each lowers the confidence).",
    )
    variant: Literal["champion", "challenger"] = Field(
        default="champion", description="Which model variant answered."
    )


class FitQuery(BaseModel):
    """One row of ``POST /predict_fit``: a shopper (id or measurements), a product, a size."""

    model_config = ConfigDict(extra="forbid")

    user_id: str | None = Field(default=None, min_length=1, max_length=128, pattern=ID_PATTERN)
    measurements: Measurements | None = None
    product_id: str = Field(min_length=1, max_length=128, pattern=ID_PATTERN)
    size: str = Field(min_length=1, max_length=16, pattern=SIZE_PATTERN)


class FitPrediction(BaseModel):
    """Probabilities for one ``FitQuery``."""

    product_id: str
    size: str
    p_too_small: float
    p_fit: float
    p_too_large: float
