"""Online evaluation of a challenger: live fit feedback joined to the inference log.

The prediction service answers each request with the champion or (sticky per shopper, a
share of them) the challenger, or scores the challenger in its shadow; every answer is in the
inference log with its variant, the sizes' probabilities and the recommended size. Shoppers
then say how the size they tried fitted. :func:`experiment_report` joins each piece of
feedback to the answer the shopper saw (by ``request_id`` when the feedback carries it, else
the latest answer for the same hashed shopper and product at or before the feedback) and
compares the variants on:

- **agreement**: the feedback agrees with the recommended size (too small: the recommendation
  was larger than the size tried; too large: smaller; fit: the same size), as
  :mod:`evaluation.evaluate` measures it offline;
- **log loss** of the fit outcome the shopper reported, under the probabilities the answering
  variant gave the size they tried (not available for a shadow variant: only its
  recommendation is logged).

Each with a 95% confidence interval, their difference (challenger - champion) with its
interval, and a sequential test (a mixture sequential probability ratio test on the
difference in agreement, whose always-valid p-value may be looked at after every piece of
feedback without inflating the false-alarm rate) that says whether there is enough evidence
yet. :func:`online_gate` turns the report into a promotion verdict.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Final

import numpy as np
import pandas as pd

from ml_pipeline.errors import InvalidValueError

CHAMPION: Final = "champion"
CHALLENGER: Final = "challenger"
Z95: Final = 1.959963984540054
EPS: Final = 1e-6
"""Probabilities are clipped to [EPS, 1 - EPS] in the log loss."""
DEFAULT_ALPHA: Final = 0.05
DEFAULT_TAU: Final = 0.05
"""Spread of the mixture over differences in agreement in the sequential test (a few
points of agreement is the effect size worth detecting)."""
MIN_PER_ARM: Final = 30
"""The sequential test starts once each arm (or the paired sample) has this many pieces of
feedback: before that, the normal approximation of the estimated difference is poor."""
FEEDBACK_COLUMNS: Final = ("user_id", "product_id", "size", "outcome", "event_timestamp")


def read_inference_log(directory: str | Path) -> pd.DataFrame:
    """The ``/recommend`` answers of an inference log directory, one row per answer.

    Args:
        directory: the service's inference log directory (``inferences-*.jsonl``).

    Returns:
        ``request_id``, ``logged_at`` (UTC), ``user_hash``, ``product_id``, ``variant``,
        ``recommended_size``, ``sizes`` (``[[size, p_too_small, p_fit, p_too_large], ...]``)
        and ``shadow_size`` (the shadow challenger's recommendation, or None).

    Raises:
        FileNotFoundError: naming the directory when it holds no inference log.
    """
    files = sorted(Path(directory).glob("inferences-*.jsonl"))
    if not files:
        raise FileNotFoundError(
            f"no inference log (inferences-*.jsonl) in {directory}; serve some requests first"
        )
    rows = []
    for path in files:
        with path.open() as handle:
            for line in handle:
                record = json.loads(line)
                if record.get("endpoint") != "recommend":
                    continue
                shadow = record.get("shadow") or {}
                rows.append(
                    {
                        "request_id": record["request_id"],
                        "logged_at": record["logged_at"],
                        "user_hash": record.get("user_hash"),
                        "product_id": record.get("product_id"),
                        "variant": record.get("variant", CHAMPION),
                        "recommended_size": str(record["recommended_size"]),
                        "sizes": record["sizes"],
                        "shadow_size": shadow.get("recommended_size"),
                    }
                )
    frame = pd.DataFrame(rows)
    if frame.empty:
        return frame
    frame["logged_at"] = pd.to_datetime(frame["logged_at"], utc=True)
    return frame


def join_feedback(
    inferences: pd.DataFrame,
    feedback: pd.DataFrame,
    hash_user: Callable[[str | None], str | None],
) -> pd.DataFrame:
    """Each piece of feedback with the answer the shopper saw.

    Feedback with a ``request_id`` that is in the log joins on it; the rest joins the latest
    answer for the same hashed shopper and product at or before the feedback's
    ``event_timestamp``. Feedback without an answer, or on a size the answer did not list, is
    dropped.

    Returns:
        One row per joined piece of feedback: ``event_timestamp``, ``variant``, ``outcome``,
        ``tried_pos`` and ``recommended_pos`` (positions among the product's sizes),
        ``p_outcome`` (the answering variant's probability of the reported outcome at the
        tried size) and ``shadow_pos`` (the shadow recommendation's position, or NaN).
    """
    missing = [c for c in FEEDBACK_COLUMNS if c not in feedback]
    if missing:
        raise InvalidValueError(
            "feedback columns", missing, "are missing", f"give {', '.join(FEEDBACK_COLUMNS)}"
        )
    fb = feedback.copy()
    fb["event_timestamp"] = pd.to_datetime(fb["event_timestamp"], utc=True)
    fb["user_hash"] = [hash_user(None if pd.isna(u) else str(u)) for u in fb["user_id"]]
    fb["product_id"] = fb["product_id"].astype(str)
    fb["_row"] = np.arange(len(fb))
    answers = inferences.sort_values("logged_at", kind="stable")
    by_id = pd.DataFrame()
    if "request_id" in fb and len(answers):
        by_id = fb[fb["request_id"].notna()].merge(
            answers.drop(columns=["user_hash", "product_id"]), on="request_id", how="inner"
        )
    rest = fb[~fb["_row"].isin(by_id["_row"] if len(by_id) else [])]
    rest = rest.drop(columns=["request_id"], errors="ignore").sort_values("event_timestamp")
    rest = rest[rest["user_hash"].notna()]
    by_time = pd.DataFrame()
    if len(rest) and len(answers):
        keyed = answers[answers["user_hash"].notna()]
        by_time = pd.merge_asof(
            rest,
            keyed,
            left_on="event_timestamp",
            right_on="logged_at",
            by=["user_hash", "product_id"],
            direction="backward",
        ).dropna(subset=["request_id"])
    joined = pd.concat([by_id, by_time], ignore_index=True)
    out = []
    for row in joined.itertuples(index=False):
        sizes = [str(s[0]) for s in row.sizes]
        tried = str(row.size)
        if tried not in sizes or row.outcome not in _OUTCOME_COLUMN:
            continue
        pos = sizes.index(tried)
        shadow = getattr(row, "shadow_size", None)
        out.append(
            {
                "event_timestamp": row.event_timestamp,
                "variant": row.variant,
                "outcome": row.outcome,
                "tried_pos": pos,
                "recommended_pos": sizes.index(row.recommended_size),
                "p_outcome": float(row.sizes[pos][_OUTCOME_COLUMN[row.outcome]]),
                "shadow_pos": (
                    sizes.index(str(shadow))
                    if isinstance(shadow, str) and str(shadow) in sizes
                    else np.nan
                ),
            }
        )
    frame = pd.DataFrame(
        out,
        columns=[
            "event_timestamp",
            "variant",
            "outcome",
            "tried_pos",
            "recommended_pos",
            "p_outcome",
            "shadow_pos",
        ],
    )
    return frame.sort_values("event_timestamp", kind="stable").reset_index(drop=True)


_OUTCOME_COLUMN: Final = {"too_small": 1, "fit": 2, "too_large": 3}
"""Where each outcome's probability sits in an inference log's ``sizes`` entry."""


def agrees(recommended: np.ndarray, tried: np.ndarray, outcome: Iterable[str]) -> np.ndarray:
    """Whether each piece of feedback agrees with the recommended size (as 0/1 floats)."""
    outcome = np.asarray(list(outcome))
    rec = np.asarray(recommended, dtype=float)
    tried = np.asarray(tried, dtype=float)
    agree = np.where(
        outcome == "too_small",
        rec > tried,
        np.where(outcome == "too_large", rec < tried, rec == tried),
    )
    return agree.astype(float)


@dataclass(frozen=True)
class Estimate:
    """A mean with its 95% confidence interval and the number of observations."""

    value: float
    low: float
    high: float
    n: int


@dataclass(frozen=True)
class SequentialTest:
    """The mixture SPRT on the difference in agreement (challenger - champion)."""

    p_value: float
    """Always-valid p-value after the last observation (the running minimum)."""
    decided: bool
    """Whether ``p_value`` fell below ``alpha``: enough evidence of a difference."""
    favours: str | None
    """``challenger`` or ``champion`` once decided, else None."""
    decided_after: int | None
    """Pieces of feedback (both variants together) when it first fell below ``alpha``."""
    alpha: float
    tau: float


@dataclass(frozen=True)
class ExperimentReport:
    """Champion against challenger on live feedback."""

    mode: str
    """``split`` (each answer by one variant) or ``shadow`` (the challenger scored beside)."""
    n_feedback: int
    agreement: dict[str, Estimate]
    log_loss: dict[str, Estimate]
    agreement_diff: Estimate | None
    log_loss_diff: Estimate | None
    sequential: SequentialTest | None
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict of the report."""
        return asdict(self)


def mean_ci(values: np.ndarray) -> Estimate:
    """The mean with a normal-approximation 95% interval (NaN bounds below two values)."""
    x = np.asarray(values, dtype=float)
    n = len(x)
    if n == 0:
        return Estimate(math.nan, math.nan, math.nan, 0)
    mean = float(x.mean())
    if n < 2:
        return Estimate(mean, math.nan, math.nan, n)
    half = Z95 * float(x.std(ddof=1)) / math.sqrt(n)
    return Estimate(mean, mean - half, mean + half, n)


def proportion_ci(successes: float, n: int) -> Estimate:
    """A share with its 95% Wilson score interval (sound near 0 and 1 and for small n)."""
    if n == 0:
        return Estimate(math.nan, math.nan, math.nan, 0)
    p = successes / n
    z2 = Z95 * Z95
    centre = (p + z2 / (2 * n)) / (1 + z2 / n)
    half = Z95 * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / (1 + z2 / n)
    return Estimate(p, centre - half, centre + half, n)


def _diff(a: np.ndarray, b: np.ndarray) -> Estimate | None:
    """Mean(a) - mean(b) of independent samples, with a Welch-type normal 95% interval."""
    if len(a) < 2 or len(b) < 2:
        return None
    d = float(a.mean() - b.mean())
    se = math.sqrt(a.var(ddof=1) / len(a) + b.var(ddof=1) / len(b))
    return Estimate(d, d - Z95 * se, d + Z95 * se, len(a) + len(b))


def msprt_p_values(
    groups: np.ndarray, values: np.ndarray, *, tau: float = DEFAULT_TAU
) -> tuple[np.ndarray, np.ndarray]:
    """Always-valid p-values of "no difference in mean" after each observation, in order.

    The mixture sequential probability ratio test (Johari, Pekelis, Walsh: "Always valid
    inference", 2017) with a normal mixture of spread ``tau`` over the difference: after
    each observation the likelihood ratio of the estimated difference
    ``d = mean(challenger) - mean(champion)`` with variance ``V`` is
    ``sqrt(V / (V + tau^2)) * exp(d^2 tau^2 / (2 V (V + tau^2)))``; the p-value is the running
    minimum of its inverse. Stopping the first time it falls below ``alpha`` keeps the false
    alarm rate at ``alpha``.

    Args:
        groups: 1 for a challenger observation, 0 for a champion one (or, paired, all 1 with
            ``values`` the per-pair differences).
        values: the observations (0/1 agreement, or paired differences).
        tau: the mixture's spread.

    Returns:
        The p-values and the running differences, one per observation.
    """
    g = np.asarray(groups, dtype=float)
    x = np.asarray(values, dtype=float)
    paired = bool(np.all(g == 1))
    p_values = np.ones(len(x))
    diffs = np.full(len(x), np.nan)
    n1 = n0 = s1 = s0 = q1 = q0 = 0.0
    running = 1.0
    for i in range(len(x)):
        if g[i] == 1:
            n1, s1, q1 = n1 + 1, s1 + x[i], q1 + x[i] * x[i]
        else:
            n0, s0, q0 = n0 + 1, s0 + x[i], q0 + x[i] * x[i]
        if paired:
            if n1 < MIN_PER_ARM:
                p_values[i] = running
                continue
            d = s1 / n1
            var = max(q1 / n1 - d * d, 1e-4) * n1 / (n1 - 1)
            v = var / n1
        else:
            if n1 < MIN_PER_ARM or n0 < MIN_PER_ARM:
                p_values[i] = running
                continue
            m1, m0 = s1 / n1, s0 / n0
            # A floor on the variance keeps the first few all-equal observations from
            # looking like certainty.
            var1 = max(q1 / n1 - m1 * m1, 1e-4) * n1 / (n1 - 1)
            var0 = max(q0 / n0 - m0 * m0, 1e-4) * n0 / (n0 - 1)
            d, v = m1 - m0, var1 / n1 + var0 / n0
        t2 = tau * tau
        log_ratio = 0.5 * math.log(v / (v + t2)) + d * d * t2 / (2 * v * (v + t2))
        running = min(running, math.exp(-min(log_ratio, 700.0)))
        p_values[i] = running
        diffs[i] = d
    return p_values, diffs


def experiment_report(
    joined: pd.DataFrame, *, alpha: float = DEFAULT_ALPHA, tau: float = DEFAULT_TAU
) -> ExperimentReport:
    """Compare the variants on feedback joined to their answers (:func:`join_feedback`).

    In ``split`` mode the variants answered different shoppers; in ``shadow`` mode (the
    champion answered, the challenger's recommendation was logged beside it) the agreement
    comparison is paired on the same feedback and the challenger has no log loss.
    """
    if not 0 < alpha < 1:
        raise InvalidValueError("alpha", alpha, "must be in (0, 1)", "e.g. 0.05")
    notes: list[str] = []
    agree = agrees(joined["recommended_pos"], joined["tried_pos"], joined["outcome"])
    p = np.clip(joined["p_outcome"].to_numpy(dtype=float), EPS, 1 - EPS)
    loss = -np.log(p)
    variant = joined["variant"].to_numpy(dtype=object)
    shadow = joined["shadow_pos"].to_numpy(dtype=float)
    mode = "shadow" if np.isfinite(shadow).any() else "split"
    agreement: dict[str, Estimate] = {}
    log_loss: dict[str, Estimate] = {}
    agreement_diff = log_loss_diff = None
    sequential = None
    if mode == "shadow":
        has = np.isfinite(shadow) & (variant == CHAMPION)
        champion = agree[has]
        challenger = agrees(shadow[has], joined["tried_pos"][has], joined["outcome"][has])
        agreement[CHAMPION] = proportion_ci(float(champion.sum()), len(champion))
        agreement[CHALLENGER] = proportion_ci(float(challenger.sum()), len(challenger))
        log_loss[CHAMPION] = mean_ci(loss[variant == CHAMPION])
        paired = challenger - champion
        agreement_diff = mean_ci(paired)
        notes.append("shadow: the challenger's probabilities are not logged, so no log loss")
        if len(paired):
            pv, _ = msprt_p_values(np.ones(len(paired)), paired, tau=tau)
            sequential = _decision(pv, agreement_diff.value, alpha, tau)
    else:
        for name in (CHAMPION, CHALLENGER):
            mask = variant == name
            agreement[name] = proportion_ci(float(agree[mask].sum()), int(mask.sum()))
            log_loss[name] = mean_ci(loss[mask])
        ch, cp = variant == CHALLENGER, variant == CHAMPION
        agreement_diff = _diff(agree[ch], agree[cp])
        log_loss_diff = _diff(loss[ch], loss[cp])
        if ch.sum() and cp.sum():
            keep = ch | cp
            pv, _ = msprt_p_values(ch[keep].astype(float), agree[keep], tau=tau)
            diff = agreement_diff.value if agreement_diff is not None else math.nan
            sequential = _decision(pv, diff, alpha, tau)
        else:
            notes.append("one variant has no feedback yet: nothing to compare")
    return ExperimentReport(
        mode=mode,
        n_feedback=len(joined),
        agreement=agreement,
        log_loss=log_loss,
        agreement_diff=agreement_diff,
        log_loss_diff=log_loss_diff,
        sequential=sequential,
        notes=notes,
    )


def _decision(p_values: np.ndarray, diff: float, alpha: float, tau: float) -> SequentialTest:
    below = np.flatnonzero(p_values < alpha)
    decided = len(below) > 0
    favours = None
    if decided:
        favours = CHALLENGER if diff > 0 else CHAMPION
    return SequentialTest(
        p_value=float(p_values[-1]),
        decided=decided,
        favours=favours,
        decided_after=int(below[0]) + 1 if decided else None,
        alpha=alpha,
        tau=tau,
    )


def online_gate(report: ExperimentReport) -> tuple[bool, str]:
    """Whether live feedback supports promoting the challenger, and why.

    Promote only when the sequential test has decided for the challenger and, where both
    have it, the challenger's fit-outcome log loss is not worse beyond its interval.
    """
    test = report.sequential
    if test is None or not test.decided:
        p = "n/a" if test is None else f"{test.p_value:.3f}"
        return False, f"not enough evidence yet (always-valid p = {p}, n = {report.n_feedback})"
    if test.favours != CHALLENGER:
        return False, f"the champion agrees with feedback more (p = {test.p_value:.3g})"
    if report.log_loss_diff is not None and report.log_loss_diff.low > 0:
        return False, "the challenger agrees more but its log loss is worse"
    return True, f"the challenger agrees with feedback more (p = {test.p_value:.3g})"


def format_report(report: ExperimentReport) -> str:
    """The report as a plain-text table."""

    def est(e: Estimate | None, digits: int = 3) -> str:
        if e is None or e.n == 0 or math.isnan(e.value):
            return "-"
        if math.isnan(e.low):
            return f"{e.value:.{digits}f}"
        return f"{e.value:.{digits}f} [{e.low:.{digits}f}, {e.high:.{digits}f}]"

    lines = [
        f"online experiment ({report.mode}; {report.n_feedback} pieces of feedback joined)",
        f"{'variant':<12} {'n':>7}  {'agreement [95% CI]':<26} {'log loss [95% CI]':<26}",
    ]
    for name in (CHAMPION, CHALLENGER):
        a = report.agreement.get(name)
        lines.append(
            f"{name:<12} {a.n if a else 0:>7}  {est(a):<26} {est(report.log_loss.get(name)):<26}"
        )
    lines.append(
        f"{'difference':<12} {'':>7}  {est(report.agreement_diff):<26} "
        f"{est(report.log_loss_diff):<26}"
    )
    if report.sequential is not None:
        s = report.sequential
        verdict = (
            f"decided for the {s.favours} after {s.decided_after} pieces of feedback"
            if s.decided
            else "not enough evidence yet"
        )
        lines.append(
            f"sequential test: always-valid p = {s.p_value:.4f} (alpha {s.alpha}): {verdict}"
        )
    lines += [f"note: {n}" for n in report.notes]
    return "\n".join(lines)


def read_feedback(path: str | Path) -> pd.DataFrame:
    """Feedback events from a parquet file, a folder of them, or a JSON lines file."""
    path = Path(path)
    if path.is_dir():
        files = sorted(path.glob("*.parquet"))
        if not files:
            raise FileNotFoundError(f"no feedback (*.parquet) in {path}")
        return pd.concat([pd.read_parquet(f) for f in files], ignore_index=True)
    if not path.is_file():
        raise FileNotFoundError(f"no feedback file at {path}")
    if path.suffix == ".parquet":
        return pd.read_parquet(path)
    return pd.read_json(path, lines=True)


def workdir_report(
    inference_dir: str | Path,
    feedback: str | Path,
    *,
    pseudonyms: Callable[[str | None], str | None],
    alpha: float = DEFAULT_ALPHA,
    tau: float = DEFAULT_TAU,
) -> ExperimentReport:
    """The report of a work directory: its inference log against the given feedback.

    Args:
        inference_dir: the prediction service's inference log directory.
        feedback: feedback events (see :func:`read_feedback`); by default the CLI passes the
            feedback pushed into the work directory's event log.
        pseudonyms: the deployment's keyed pseudonyms of user ids, as the prediction service
            wrote them into its log (:func:`serving.pseudonym.load_pseudonymizer`).
        alpha: the sequential test's false-alarm rate.
        tau: the spread of the sequential test's mixture.
    """
    joined = join_feedback(read_inference_log(inference_dir), read_feedback(feedback), pseudonyms)
    return experiment_report(joined, alpha=alpha, tau=tau)
