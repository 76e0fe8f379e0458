"""What a long run shows: stage headers with times, one progress line per tuned model."""

from __future__ import annotations

import io
import logging
import sys

import pytest

from ml_pipeline.console import (
    LIBRARY_LOGGER,
    LOGGER,
    ConsoleHandler,
    emit,
    library_output,
    trial_line,
)


class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.fixture
def console() -> tuple[io.StringIO, _Tty]:
    logger = logging.getLogger(LOGGER)
    pipe, tty = io.StringIO(), _Tty()
    handlers = [ConsoleHandler(pipe), ConsoleHandler(tty)]
    old = logger.level, logger.propagate
    logger.setLevel(logging.INFO)
    logger.propagate = False
    for h in handlers:
        logger.addHandler(h)
    yield pipe, tty
    for h in handlers:
        logger.removeHandler(h)
    logger.setLevel(old[0])
    logger.propagate = old[1]


def _tune(n: int) -> None:
    emit("stage_start", "[5/7] tune ...", stage="train")
    for i in range(1, n + 1):
        emit(
            "trial",
            f"trial {i}",
            model="fit model",
            trial=i,
            n_trials=n,
            best=0.5 - i / 100,
            metric="multi_logloss",
            elapsed_s=10.0 * i,
            budget_left_s=600 - 10.0 * i,
        )
    emit("tuning_end", "done", model="fit model", trials=n, n_trials=n, note="")
    emit("stage_end", "[5/7] train done in 31.0 s", stage="train", seconds=31.0)


def test_a_pipe_gets_one_line_per_model_and_stage_times(console) -> None:
    pipe, _ = console
    _tune(3)
    lines = pipe.getvalue().splitlines()
    assert lines == [
        "[5/7] tune ...",
        "tuning fit model: trial 3/3, best multi_logloss 0.4700, 30 s, budget left 570 s",
        "[5/7] train done in 31.0 s",
    ]


def test_a_terminal_rewrites_the_progress_line_in_place(console) -> None:
    _, tty = console
    _tune(3)
    text = tty.getvalue()
    assert text.count("\r") == 3  # one rewrite per trial
    assert text.count("\n") == 3  # header, the model's line, the stage time
    assert "trial 1/3" in text and "trial 3/3" in text
    assert text.endswith("[5/7] train done in 31.0 s\n")


def test_the_time_budget_is_named_when_it_stops_tuning(console) -> None:
    pipe, _ = console
    emit(
        "trial",
        "t",
        model="size model",
        trial=1,
        n_trials=6,
        best=None,
        metric="l2",
        elapsed_s=5.0,
        budget_left_s=-1.0,
    )
    emit(
        "tuning_end",
        "end",
        model="size model",
        trials=1,
        n_trials=6,
        note="size model: tuning stopped at its time budget (5 s) after 1 of 6 trials",
    )
    text = pipe.getvalue()
    assert "trial 1/6, no trial completed yet, 5 s, budget left 0 s" in text
    assert "stopped at its time budget (5 s) after 1 of 6 trials" in text


def test_trial_line_without_a_budget() -> None:
    line = trial_line(
        {
            "model": "fit model",
            "trial": 2,
            "n_trials": 6,
            "best": 0.3,
            "metric": "l2",
            "elapsed_s": 4.0,
            "budget_left_s": None,
        }
    )
    assert line == "tuning fit model: trial 2/6, best l2 0.3000, 4 s"


def test_library_deprecations_are_not_shown_even_under_always() -> None:
    import subprocess
    import sys

    code = """
import warnings
from ml_pipeline.console import quiet_libraries
quiet_libraries()
with warnings.catch_warnings():
    warnings.simplefilter("always")  # what some libraries do inside their own calls
    warnings.warn("old api", DeprecationWarning, stacklevel=1)
    warnings.warn("soon", FutureWarning, stacklevel=1)
    warnings.warn("check your data", UserWarning, stacklevel=1)
"""
    err = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    ).stderr
    assert "old api" not in err and "soon" not in err
    assert "check your data" in err


def test_library_output_keeps_prints_off_the_terminal(
    console: tuple[io.StringIO, _Tty],
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    pipe, _ = console
    with caplog.at_level(logging.DEBUG, logger=LIBRARY_LOGGER):
        emit("stage_start", "[3/7] features ...", stage="features")
        with library_output("Feast materialize"):
            print("Materializing 4 feature views into the sqlite online store.")
            sys.stderr.write("user_profile: 100%|##########| 4/4\n")
            emit("note", "a fitml line still shows")
        emit("stage_end", "[3/7] features done in 1.0 s", stage="features")
    out, err = capsys.readouterr()
    assert "Materializing" not in out + err and "user_profile" not in out + err
    assert pipe.getvalue() == (
        "[3/7] features ...\na fitml line still shows\n[3/7] features done in 1.0 s\n"
    )
    kept = [r.getMessage() for r in caplog.records if r.name == LIBRARY_LOGGER]
    assert len(kept) == 1 and "Materializing 4 feature views" in kept[0]
    print("after")  # the streams are back
    assert capsys.readouterr().out == "after\n"


def test_library_output_shows_what_was_printed_when_the_call_fails(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with (
        pytest.raises(ValueError, match="no such feature view"),
        library_output("Feast materialize"),
    ):
        print("Materializing 1 feature views")
        raise ValueError("no such feature view")
    err = capsys.readouterr().err
    assert "Feast materialize printed before it failed:" in err
    assert "Materializing 1 feature views" in err
