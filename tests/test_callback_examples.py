"""The examples run end to end: the digits demo prints its checks and the TensorBoard command, the
wrong backward fails its check at the broken layer (and stops fit with ``--raise``)."""

from __future__ import annotations

from pathlib import Path

import pytest

from gradwatch import Verdict
from tests.callback_models import QUIET_LIGHTNING, example

pytestmark = pytest.mark.filterwarnings(*QUIET_LIGHTNING)


def test_digits_demo_checks_and_prints_where_the_logs_are(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["--max-steps=12", "--after-steps", "5", f"--log-dir={tmp_path}", "--hidden=8"]
    check = example("digits").main(argv)
    assert list(check.reports) == [0, 5]
    assert all(r.verdict is Verdict.PASS for r in check.reports.values())
    out = capsys.readouterr().out
    assert "step    5: pass: difference" in out
    assert f"tensorboard --logdir {tmp_path / 'digits'}" in out
    assert list((tmp_path / "digits" / "version_0").glob("events.out.tfevents*"))


def test_wrong_backward_fails_at_the_broken_layer(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.warns(UserWarning, match="the gradient check failed"):
        check = example("wrong_backward").main([])
    report = check.reports[0]
    assert report.verdict is Verdict.FAIL
    assert {c.name for c in report.worst(10)} == {"hidden.bias"}
    assert "worst components: hidden.bias[" in capsys.readouterr().out


def test_wrong_backward_with_raise_stops_fit(capsys: pytest.CaptureFixture[str]) -> None:
    assert example("wrong_backward").main(["--raise"]) is None
    assert "fit stopped at step 0: GradientCheckError" in capsys.readouterr().out


def test_the_fixed_backward_passes() -> None:
    check = example("wrong_backward").main(["--fixed"])
    assert check.reports[0].verdict is Verdict.PASS
