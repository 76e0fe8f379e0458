"""Typed request and response bodies of the prediction service (the serving contract)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

FitPreference = Literal["slim", "regular", "relaxed"]


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
    p_too_small: float
    p_fit: float
    p_too_large: float


class RecommendResponse(BaseModel):
    """The answer to ``POST /recommend``."""

    recommended_size: str
    confidence: float = Field(ge=0, le=1)
    runner_up: str | None
    fit_note: str
    sizes: list[SizeProbabilities]
    model_versions: dict[str, str]
    request_id: str
    fallbacks: list[str] = Field(
        default_factory=list,
        description="Why the answer had less to go on (each lowers the confidence).",
    )
    variant: Literal["champion", "challenger"] = "champion"


class FitQuery(BaseModel):
    """One row of ``POST /predict_fit``: a shopper (id or measurements), a product, a size."""

    model_config = ConfigDict(extra="forbid")

    user_id: str | None = Field(default=None, max_length=128)
    measurements: Measurements | None = None
    product_id: str = Field(min_length=1, max_length=128)
    size: str = Field(min_length=1, max_length=16)


class FitPrediction(BaseModel):
    """Probabilities for one ``FitQuery``."""

    product_id: str
    size: str
    p_too_small: float
    p_fit: float
    p_too_large: float
