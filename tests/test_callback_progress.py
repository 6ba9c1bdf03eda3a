"""The callback's progress: the engine's bar on stderr during a long check (also with Lightning's
bar off), none with ``progress=False``, and console lines that start a line of their own next to
Lightning's progress bar."""

from __future__ import annotations

import io
import logging
import re
from collections.abc import Iterator
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import lightning_utilities.core.rank_zero as rank_zero_module
import pytest
import pytorch_lightning as pl
from pytorch_lightning.callbacks import TQDMProgressBar

from gradwatch.callbacks import GradientCheck
from gradwatch.reporting import progress as _progress
from tests.callback_models import QUIET_LIGHTNING, TinyModule, loader, trainer

pytestmark = pytest.mark.filterwarnings(*QUIET_LIGHTNING)

TIME_LEFT = re.compile(r"gradient check: +\d+%.*\d+/\d+ \[\d\d:\d\d<\d\d:\d\d")


@pytest.fixture
def every_check_is_long(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_progress, "DELAY_S", 0.0)
    monkeypatch.setattr(_progress, "REFRESH_S", 0.0)
    monkeypatch.setattr(_progress, "LOG_REFRESH_S", 0.0)


def _fit(root: Path, *callbacks: pl.Callback, steps: int = 1, **options: object) -> None:
    pl.seed_everything(0, verbose=False)
    trainer(root, callbacks=list(callbacks), max_steps=steps, **options).fit(TinyModule(), loader())


@pytest.mark.usefixtures("every_check_is_long")
@pytest.mark.parametrize("show", [True, False])
def test_a_long_check_in_fit_shows_the_time_left_unless_told_not_to(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], show: bool
) -> None:
    _fit(tmp_path, GradientCheck(after_steps=(), progress=show))  # Lightning's own bar is off
    err = capsys.readouterr().err
    assert bool(TIME_LEFT.search(err)) is show
    assert ("gradient check:" in err) is show


def test_progress_must_be_a_bool() -> None:
    with pytest.raises(TypeError, match=r"GradientCheck: `progress` must be True or False; got 1"):
        GradientCheck(progress=1)  # type: ignore[arg-type]


@pytest.fixture
def terminal() -> Iterator[io.StringIO]:
    """One stream for stdout, stderr and Lightning's log lines, as a terminal shows them (the
    test redirects stdout and stderr to it: pytest sets its own at the start of the test)."""
    screen = io.StringIO()
    handler = logging.StreamHandler(screen)
    # The logger rank_zero_info writes to: the package imported last sets it (pytorch_lightning
    # or lightning), so it is read where it is kept.
    lightning = rank_zero_module.log
    lightning.addHandler(handler)
    level = lightning.level
    lightning.setLevel(logging.INFO)
    try:
        yield screen
    finally:
        lightning.removeHandler(handler)
        lightning.setLevel(level)


def test_the_console_line_starts_its_own_line_under_lightnings_bar(
    tmp_path: Path, terminal: io.StringIO
) -> None:
    check = GradientCheck(at_init=False, after_steps=(2,), progress=False)
    with redirect_stdout(terminal), redirect_stderr(terminal):
        _fit(tmp_path, check, TQDMProgressBar(), steps=3, enable_progress_bar=True)
    screen = terminal.getvalue()
    at = screen.index("GradientCheck at step 2:")
    assert "Epoch 0" in screen[:at]  # Lightning's bar was drawn before the line
    assert screen[at - 1] in "\r\n"  # ... and cleared: the line does not continue it
