"""GradientCheck from a LightningCLI config: the example YAML parses and its schedule runs; bad
init args fail before training, naming the argument, the accepted values and the value."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from gradwatch.callbacks import GradientCheck
from tests.callback_models import EXAMPLES, QUIET_LIGHTNING, example

# LightningCLI 2.6 still calls jsonargparse APIs that jsonargparse 4.49 deprecated.
pytestmark = pytest.mark.filterwarnings(
    *QUIET_LIGHTNING, "ignore::DeprecationWarning:pytorch_lightning.cli"
)
CONFIG = EXAMPLES / "config.yaml"


@pytest.fixture(autouse=True)
def _no_pytest_arguments(monkeypatch: pytest.MonkeyPatch) -> None:
    # LightningCLI(args=...) warns when sys.argv holds arguments too (here: pytest's).
    monkeypatch.setattr(sys, "argv", ["cli.py"])


def test_the_example_config_sets_the_schedule_and_fit_runs_it(tmp_path: Path) -> None:
    # The YAML's schedule (step 0 and after_steps: [100]) on a smaller model, 101 steps.
    cli = example("cli").main(
        [
            "fit",
            f"--config={CONFIG}",
            f"--trainer.logger.init_args.save_dir={tmp_path}",
            "--trainer.max_steps=101",
            "--model.hidden=8",
        ]
    )
    (check,) = [c for c in cli.trainer.callbacks if isinstance(c, GradientCheck)]
    assert check.schedule.at_init and check.schedule.after_steps == (100,)
    assert check.on_fail == "raise"
    assert list(check.reports) == [0, 100]
    events = EventAccumulator(cli.trainer.logger.log_dir, size_guidance={"scalars": 0}).Reload()
    assert [e.step for e in events.Scalars("gradcheck/difference")] == [0, 100]


def _override(tmp_path: Path, init_args: str) -> Path:
    path = tmp_path / "override.yaml"
    path.write_text(
        "trainer:\n  callbacks:\n    - class_path: gradwatch.callbacks.GradientCheck\n"
        f"      init_args: {{{init_args}}}\n"
    )
    return path


TIP = (
    "tip: `cli.py fit --help` lists the options; JSONARGPARSE_DEBUG=true shows the parser's "
    "whole message"
)


def _error(tmp_path: Path, capsys: pytest.CaptureFixture[str], *args: str) -> list[str]:
    """The lines a bad config prints (examples/cli.py uses ShortErrorParser)."""
    with pytest.raises(SystemExit) as exited:
        example("cli").main(["fit", f"--config={CONFIG}", *args])
    assert exited.value.code == 2
    return capsys.readouterr().err.splitlines()


def test_a_value_outside_a_literal_is_rejected_by_the_parser(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = _override(tmp_path, "on_fail: explode")
    assert _error(tmp_path, capsys, f"--config={bad}") == [
        "error: trainer.callbacks: GradientCheck: `on_fail`: Expected a "
        "typing.Literal['warn', 'raise', 'ignore']. Got value: explode",
        TIP,
    ]


@pytest.mark.parametrize(
    ("args", "line"),
    [
        (
            ["init_args: {after_step: [100]}"],
            "trainer.callbacks: GradientCheck: `after_step` is no option; did you mean "
            "`after_steps`?",
        ),
        (
            ["init_args: {colour: red}"],
            "trainer.callbacks: GradientCheck: `colour` is no option",
        ),
        (
            ["--trainer.max_step=5"],
            "fit: 'trainer.max_step' is no option; did you mean 'trainer.max_steps'?",
        ),
        (["--model.hiden=5"], "fit: 'model.hiden' is no option; did you mean 'model.hidden'?"),
    ],
    ids=["callback-option", "no-close-option", "trainer-key", "model-key"],
)
def test_a_mistyped_key_is_one_line_with_the_key_meant(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str], line: str
) -> None:
    # One line and a tip, never the usage of every Trainer option (50 lines).
    if args[0].startswith("init_args"):
        args = [f"--config={_override(tmp_path, args[0].removeprefix('init_args: {')[:-1])}"]
    else:  # as a config file holds it, e.g. trainer: {max_step: 5}
        key, value = args[0].removeprefix("--").split("=")
        section, option = key.split(".")
        path = tmp_path / "typo.yaml"
        path.write_text(f"{section}:\n  {option}: {value}\n")
        args = [f"--config={path}"]
    assert _error(tmp_path, capsys, *args) == [f"error: {line}", TIP]


def test_a_mistyped_class_path_is_one_line_with_the_class_meant(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "typo.yaml"
    path.write_text("trainer:\n  callbacks:\n    - class_path: gradwatch.callbacks.GradientChek\n")
    assert _error(tmp_path, capsys, f"--config={path}")[0] == (
        "error: trainer.callbacks: class_path 'gradwatch.callbacks.GradientChek' does not "
        "exist; did you mean 'gradwatch.callbacks.GradientCheck'?"
    )


def test_the_parsers_whole_message_when_asked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("JSONARGPARSE_DEBUG", "true")
    bad = _override(tmp_path, "after_step: [100]")
    with pytest.raises(Exception, match="Option 'after_step' is not accepted"):
        example("cli").main(["fit", f"--config={CONFIG}", f"--config={bad}"])


@pytest.mark.parametrize(
    ("init_args", "key", "message"),
    [
        (
            "epsilon: -1.0",
            "epsilon",
            "`epsilon` must be 'auto' or a finite float in (0, 1), e.g. 1e-7; got -1.0",
        ),
        (
            "after_steps: [-100]",
            "after_steps",
            "`after_steps` must be a non-negative int or a list of them, e.g. [100, 1000]; "
            "got [-100]",
        ),
        (
            "every_n_steps: 0",
            "every_n_steps",
            "`every_n_steps` must be None or a positive int, e.g. 1000; got 0",
        ),
        ("sample: -3", "sample", "`sample` must be None (all) or a positive int"),
        (
            "thresholds: {pass_max: .inf}",
            "pass_max",
            "`pass_max` must be a positive finite float, e.g. 1e-7",
        ),
        ("thresholds: {warn_max: 0}", "warn_max", "`warn_max` must be a positive finite float"),
        (
            "thresholds: {pass_max: 1.0e-2, warn_max: 1.0e-3}",
            "warn_max",
            "`pass_max` must not exceed `warn_max`",
        ),
        ("seed: -1", "seed", "`seed` must be a non-negative int; got -1"),
        ("log_worst: -2", "log_worst", "`log_worst` must be a non-negative int; got -2"),
        ("name: grad check", "name", "`name` must be a non-empty str without spaces"),
    ],
)
def test_a_value_out_of_range_is_rejected_by_the_parser_naming_the_argument(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], init_args: str, key: str, message: str
) -> None:
    # As a wrong choice is: one line (no traceback, no usage), the argument named, before any
    # object is built.
    bad = _override(tmp_path, init_args)
    lines = _error(tmp_path, capsys, f"--config={bad}")
    assert lines == [f"error: trainer.callbacks: GradientCheck: {lines[0].split(': ', 3)[3]}", TIP]
    assert lines[0].startswith(f"error: trainer.callbacks: GradientCheck: {message}")
    assert f"`{key}`" in lines[0]
