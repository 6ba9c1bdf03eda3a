"""GradientCheck's constructor: every argument outside its accepted values fails at once, with a
message naming the argument, the accepted values and the value received."""

from __future__ import annotations

import copy
import math
import pickle
import traceback
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from gradwatch import check_module
from gradwatch.callbacks import GradientCheck

STEPS = "`after_steps` must be a non-negative int or a list of them, e.g. [100, 1000]; got "
# The engine's messages (gradwatch.check_module takes these arguments too).
EPSILON = "`epsilon` must be 'auto' or a finite float in (0, 1), e.g. 1e-7; got "
EPSILON_TYPE = "`epsilon` must be 'auto' or a float in (0, 1), e.g. 1e-7; got "
SAMPLE = "`sample` must be None (all) or a positive int, e.g. 2000; got "
NAME = (
    "`name` must be a non-empty str without spaces, the prefix of the logged tags, e.g. "
    "'gradcheck/encoder'; got "
)
INCLUDE = (
    "`include` must be None, a glob of parameter names or a non-empty list of them, e.g. "
    "['encoder.*']"
)


@pytest.mark.parametrize(
    ("arguments", "error", "message"),
    [
        (
            {"on_fail": "explode"},
            ValueError,
            "`on_fail` must be one of 'warn', 'raise', 'ignore'; got 'explode'",
        ),
        ({"dropout": "on"}, ValueError, "`dropout` must be one of 'off', 'freeze'; got 'on'"),
        (
            {"mode": "random"},
            ValueError,
            "`mode` must be one of 'components', 'directions'; got 'random'",
        ),
        ({"at_init": "yes"}, TypeError, "`at_init` must be True or False; got 'yes'"),
        (
            {"after_steps": -1},
            ValueError,
            STEPS + "-1",
        ),
        (
            {"after_steps": [10, -5]},
            ValueError,
            STEPS + "[10, -5]",
        ),
        (
            {"after_steps": [1.5]},
            TypeError,
            STEPS + "[1.5]",
        ),
        (
            {"after_steps": "100"},
            TypeError,
            STEPS + "'100'",
        ),
        ({"after_steps": [True]}, TypeError, STEPS + "[True]"),
        ({"after_steps": (3, 1.5)}, TypeError, STEPS + "(3, 1.5)"),
        (
            {"every_n_steps": 0},
            ValueError,
            "`every_n_steps` must be None or a positive int, e.g. 1000; got 0",
        ),
        (
            {"every_n_steps": 2.0},
            TypeError,
            "`every_n_steps` must be None or a positive int, e.g. 1000; got 2.0",
        ),
        (
            {"epsilon": 0},
            ValueError,
            EPSILON + "0",
        ),
        (
            {"epsilon": -1e-7},
            ValueError,
            EPSILON + "-1e-07",
        ),
        (
            {"epsilon": math.nan},
            ValueError,
            EPSILON + "nan",
        ),
        (
            {"epsilon": 1.0},
            ValueError,
            EPSILON + "1.0",
        ),
        (
            {"epsilon": "1e-7"},
            TypeError,
            EPSILON_TYPE + "'1e-7'",
        ),
        (
            {"epsilon": math.inf},
            ValueError,
            EPSILON + "inf",
        ),
        (
            {"epsilon": 1e3},  # absurdly large: a secant, not a slope
            ValueError,
            EPSILON + "1000.0",
        ),
        (
            {"sample": 0},
            ValueError,
            SAMPLE + "0",
        ),
        (
            {"sample": -5},
            ValueError,
            SAMPLE + "-5",
        ),
        (
            {"sample": 2.5},
            TypeError,
            SAMPLE + "2.5",
        ),
        (
            {"every_n_steps": -3},
            ValueError,
            "`every_n_steps` must be None or a positive int, e.g. 1000; got -3",
        ),
        (
            {"include": 3},
            TypeError,
            INCLUDE + "; got 3",
        ),
        (
            {"include": []},
            ValueError,
            INCLUDE + "; got []",
        ),
        (
            {"thresholds": {"pass_max": 0.0}},
            ValueError,
            "`pass_max` must be a positive finite float, e.g. 1e-7; got 0.0",
        ),
        (
            {"thresholds": {"warn_max": math.inf}},
            ValueError,
            "`warn_max` must be a positive finite float, e.g. 1e-3; got inf",
        ),
        (
            {"thresholds": 1e-7},
            TypeError,
            "`thresholds` must be None, a gradwatch.Thresholds or a mapping "
            "{'pass_max': ..., 'warn_max': ...}; got 1e-07",
        ),
        (
            {"thresholds": {"pass_max": 1e-2, "warn_max": 1e-3}},
            ValueError,
            "`pass_max` must not exceed `warn_max` (pass <= pass_max < warn <= warn_max < fail); "
            "got pass_max=0.01, warn_max=0.001",
        ),
        ({"seed": -1}, ValueError, "`seed` must be a non-negative int; got -1"),
        ({"log_worst": -1}, ValueError, "`log_worst` must be a non-negative int; got -1"),
        ({"log_worst": 2.5}, TypeError, "`log_worst` must be a non-negative int; got 2.5"),
        ({"name": ""}, ValueError, NAME + "''"),
        ({"name": "grad check"}, ValueError, NAME + "'grad check'"),
        ({"name": "enc\t"}, ValueError, NAME + "'enc\\t'"),
        ({"name": 3}, TypeError, NAME + "3"),
        ({"name": None}, TypeError, NAME + "None"),
    ],
    ids=lambda value: str(value) if not isinstance(value, str | type) else "",
)
def test_bad_arguments_fail_at_construction(
    arguments: dict[str, Any], error: type[Exception], message: str
) -> None:
    with pytest.raises(error) as raised:
        GradientCheck(**arguments)
    assert str(raised.value) == "GradientCheck: " + message  # the whole message, exactly


@pytest.mark.parametrize(
    "arguments",
    [
        {"epsilon": 0},
        {"epsilon": "1e-7"},
        {"sample": 0},
        {"sample": 2.5},
        {"dropout": "on"},
        {"mode": "random"},
        {"seed": -1},
        {"thresholds": {"pass_max": 0.0}},
        {"thresholds": {"pass_max": 1e-2, "warn_max": 1e-3}},
    ],
    ids=str,
)
def test_what_check_module_takes_fails_as_in_check_module(arguments: dict[str, Any]) -> None:
    # One rule per argument: the callback hands these to the engine, which checks them alike.
    with pytest.raises((TypeError, ValueError)) as direct:
        check_module(nn.Linear(2, 1), lambda m, b: m(b).sum(), torch.ones(1, 2), **arguments)
    with pytest.raises(type(direct.value)) as raised:
        GradientCheck(**arguments)
    assert str(raised.value) == f"GradientCheck: {direct.value}"


@pytest.mark.parametrize(
    ("after_steps", "expected"),
    [(100, (100,)), ([300, 100, 100], (100, 300)), ((), ()), ([0], (0,))],
)
def test_after_steps_takes_a_step_or_a_list(after_steps: Any, expected: tuple[int, ...]) -> None:
    assert GradientCheck(after_steps=after_steps).schedule.after_steps == expected


def test_epsilon_may_be_auto() -> None:
    assert GradientCheck(epsilon="auto").epsilon == "auto"


def test_defaults_are_the_materials() -> None:
    check = GradientCheck()
    assert check.schedule.at_init and check.schedule.after_steps == (100,)
    assert check.schedule.every_n_steps is None
    assert check.state_dict() == {"checks": []}


@pytest.mark.parametrize(
    ("removed", "meant"),
    [("components", "sample"), ("pass_max", "thresholds"), ("warn_max", "thresholds")],
)
def test_the_options_removed_in_0_3_0_name_their_replacement(removed: str, meant: str) -> None:
    with pytest.raises(TypeError) as raised:
        GradientCheck(**{removed: 50})
    assert str(raised.value).startswith(
        f"GradientCheck: `{removed}` is no option; did you mean `{meant}`? its options: "
    )


# --- told as GradientCheck's, from its constructor ----------------------------------------------


def test_an_unknown_option_names_gradient_check_and_the_option_meant() -> None:
    with pytest.raises(TypeError) as raised:
        GradientCheck(after_step=[100])  # type: ignore[call-arg]
    assert str(raised.value).startswith(
        "GradientCheck: `after_step` is no option; did you mean `after_steps`? its options: "
        "at_init, after_steps, every_n_steps, epsilon,"
    )
    assert "GradientCheckBase" not in str(raised.value)
    with pytest.raises(TypeError, match=r"^GradientCheck: `colour` is no option; its options"):
        GradientCheck(colour="red")  # type: ignore[call-arg]
    with pytest.raises(TypeError, match=r"^GradientCheck takes its options as keywords, e\.g\."):
        GradientCheck(True)  # type: ignore[misc]


def test_a_subclass_with_its_own_arguments_is_built_as_its_init_says() -> None:
    class Named(GradientCheck):
        def __init__(self, folder: str, **options: Any) -> None:
            super().__init__(**options)
            self.folder = folder

    named = Named("logs", after_steps=[5])
    assert (named.folder, named.schedule.after_steps) == ("logs", (5,))
    with pytest.raises(TypeError, match=r"missing 1 required positional argument: 'folder'"):
        Named(after_steps=[5])  # Python's own word: the subclass's __init__ is named right
    with pytest.raises(TypeError, match=r"^Named takes its options as keywords"):
        Named("logs", 1)  # type: ignore[arg-type]


def test_a_bad_value_is_raised_from_the_constructor_with_no_chain() -> None:
    with pytest.raises(ValueError, match=r"^GradientCheck: `epsilon` must be") as raised:
        GradientCheck(epsilon=-1.0)
    assert raised.value.__cause__ is None and raised.value.__suppress_context__
    frames = traceback.extract_tb(raised.value.__traceback__)
    assert len(frames) == 2  # this test's call, then the constructor
    assert (Path(frames[-1].filename).name, frames[-1].name) == ("_hooks.py", "__init__")


def test_a_callback_pickles_and_copies_with_its_options() -> None:
    check = GradientCheck(after_steps=[5], on_fail="raise")
    for copied in (pickle.loads(pickle.dumps(check)), copy.deepcopy(check)):
        assert (copied.schedule, copied.on_fail) == (check.schedule, "raise")
