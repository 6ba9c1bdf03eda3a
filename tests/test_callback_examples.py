"""The examples run end to end: the digits demo prints its checks and the TensorBoard command, the
wrong backward fails its check at the broken layer (and stops fit with ``--raise``)."""

from __future__ import annotations

from pathlib import Path

import pytest

from gradwatch import Verdict, load_report
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
    assert f"make tensorboard LOGDIR={tmp_path}" in out
    logs = tmp_path / "digits" / "version_0"
    assert list(logs.glob("events.out.tfevents*"))
    assert load_report(logs / "gradcheck" / "step_5.json")["verdict"] == "pass"


def test_wrong_backward_fails_at_the_broken_layer_and_logs_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.warns(UserWarning, match="the gradient check failed"):
        status = example("wrong_backward").main([f"--log-dir={tmp_path}"])
    assert status == 0  # the check warns; training goes on
    assert "worst components: hidden.bias[" in capsys.readouterr().out
    logs = tmp_path / "wrong_backward" / "version_0"
    for step in (0, 10):
        report = load_report(logs / "gradcheck" / f"step_{step}.json")
        assert report["verdict"] == "fail"
        assert {c["name"] for c in report["worst"]} == {"hidden.bias"}
    assert list(logs.glob("events.out.tfevents*"))


def test_wrong_backward_with_raise_stops_fit_and_exits_1(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert example("wrong_backward").main(["--raise", f"--log-dir={tmp_path}"]) == 1
    assert "fit stopped at step 0: GradientCheckError" in capsys.readouterr().out


def test_the_fixed_backward_passes() -> None:
    check = example("wrong_backward").run(fixed=True, log_dir=None)
    assert [r.verdict for r in check.reports.values()] == [Verdict.PASS, Verdict.PASS]
