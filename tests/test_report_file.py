"""Report files: standard JSON (no NaN or Infinity token, no number as a string), read back by
load_report with every number a float, not-judged values NaN; files of 0.2 still load."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import gradwatch
from gradwatch import Verdict


def _refuse(token: str) -> float:
    raise AssertionError(f"{token} is no JSON: the file is not standard JSON")


def _strings(value: Any) -> list[str]:
    if isinstance(value, dict):
        return [s for item in value.values() for s in _strings(item)]
    if isinstance(value, list):
        return [s for item in value for s in _strings(item)]
    return [value] if isinstance(value, str) else []


@pytest.fixture(scope="module")
def not_judged() -> gradwatch.GradCheckReport:
    # J constant, its gradient zero: nothing to judge, every difference NaN.
    report = gradwatch.check_function(lambda t: 1.0, np.ones(3), np.zeros(3))
    assert report.verdict is Verdict.NOT_JUDGED
    assert math.isnan(report.parameters["theta"].difference)
    return report


@pytest.fixture(scope="module")
def infinite() -> gradwatch.GradCheckReport:
    # A gradient with an infinite component: the worst component's analytic value is inf.
    grad = np.array([math.inf, 4.0])
    return gradwatch.check_function(lambda t: float(t @ t), np.array([1.0, 2.0]), grad)


def test_a_not_judged_difference_is_null_in_the_file_and_nan_when_loaded(
    tmp_path: Path, not_judged: gradwatch.GradCheckReport
) -> None:
    path = gradwatch.save_report(not_judged, tmp_path / "r.json", step=3)
    text = path.read_text(encoding="utf-8")
    raw = json.loads(text, parse_constant=_refuse)  # no NaN, Infinity, -Infinity token
    assert raw["parameters"]["theta"]["difference"] is None and raw["difference"] is None
    assert raw["non_finite"]["/parameters/theta/difference"] == "nan"
    assert raw["non_finite"]["/difference"] == "nan"
    numbers = {k: v for k, v in raw.items() if k != "non_finite"}
    assert not {"nan", "inf", "-inf"} & set(_strings(numbers))  # no number written as a string
    data = gradwatch.load_report(path)
    theta = data["parameters"]["theta"]["difference"]
    assert math.isnan(theta) and math.isnan(data["difference"])
    assert not theta < 1e-3  # a comparison, never a TypeError
    assert data["location"] is None and "non_finite" not in data  # null that is no number
    assert (data["verdict"], data["step"]) == ("not judged", 3)


def test_infinities_keep_their_sign_and_the_loaded_dict_is_to_dict(
    tmp_path: Path, infinite: gradwatch.GradCheckReport
) -> None:
    path = gradwatch.save_report(infinite, tmp_path / "r.json")
    raw = json.loads(path.read_text(encoding="utf-8"), parse_constant=_refuse)
    assert raw["worst"][0]["analytic"] is None
    assert raw["non_finite"]["/worst/0/analytic"] == "inf"
    data = gradwatch.load_report(path)
    assert data["worst"][0]["analytic"] == math.inf
    expected = infinite.to_dict()
    assert expected["worst"][0]["analytic"] == math.inf  # to_dict() keeps floats as floats
    # The same dict, NaN compared as NaN (the file's text, written twice, is the same).
    assert json.dumps({k: data[k] for k in expected}) == json.dumps(expected)


def test_a_context_value_is_converted_alike_its_key_escaped(tmp_path: Path) -> None:
    report = gradwatch.check_function(lambda t: float(t @ t), np.ones(2), 2 * np.ones(2))
    path = gradwatch.save_report(report, tmp_path / "r.json", extra={"a/b~c": -math.inf})
    raw = json.loads(path.read_text(encoding="utf-8"), parse_constant=_refuse)
    assert raw["non_finite"] == {"/extra/a~1b~0c": "-inf"}
    assert gradwatch.load_report(path)["extra"] == {"a/b~c": -math.inf}


def test_a_file_of_0_2_with_nan_strings_loads_under_0_3s_names(tmp_path: Path) -> None:
    old = {
        "gradwatch_version": "0.2.0",
        "verdict": "not judged",
        "difference": "nan",
        "readings": {"agrees": 0, "disagrees": 0, "not judged": 2},
        "kinks": 1,
        "parameters": {"4.bias": {"verdict": "not judged", "difference": "nan"}},
        "per_parameter": {"4.bias": "nan", "4.weight": 1.5e-9},
        "worst": [{"name": "4.bias", "analytic": "-inf", "noise": "inf", "reason": "within noise"}],
        "location": None,
    }
    path = tmp_path / "old.json"
    path.write_text(json.dumps(old), encoding="utf-8")
    data = gradwatch.load_report(path)
    assert math.isnan(data["difference"]) and math.isnan(data["parameters"]["4.bias"]["difference"])
    assert data["reading_counts"] == {"agrees": 0, "disagrees": 0, "not judged": 2}
    assert data["kink_count"] == 1
    assert not {"readings", "kinks", "per_parameter"} & set(data)
    assert data["worst"] == [
        {
            "name": "4.bias",
            "analytic": -math.inf,
            "numeric_noise": math.inf,
            "reason": "within noise",
        }
    ]
    assert data["location"] is None and data["verdict"] == "not judged"


def test_a_file_of_0_2_with_non_finite_pointers_loads_under_0_3s_names(tmp_path: Path) -> None:
    # What builds between 0.2.0 and 0.3.0 wrote: null in place, the pointer under the old key.
    old = {
        "gradwatch_version": "0.2.0",
        "difference": None,
        "readings": {"agrees": 1, "disagrees": 0, "not judged": 1},
        "per_parameter": {"b": None},
        "coverage": {"judged_share": 0.5, "not_judged": ["b"]},
        "worst": [{"name": "b", "noise": None, "rel_error": None}],
        "non_finite": {
            "/difference": "nan",
            "/per_parameter/b": "nan",
            "/worst/0/noise": "inf",
            "/worst/0/rel_error": "nan",
        },
    }
    path = tmp_path / "old.json"
    path.write_text(json.dumps(old), encoding="utf-8")
    data = gradwatch.load_report(path)
    assert set(data) == {"gradwatch_version", "difference", "reading_counts", "worst", "coverage"}
    assert data["coverage"] == {"judged_share": 0.5, "parameters_not_judged": ["b"]}
    assert math.isnan(data["difference"]) and data["reading_counts"]["agrees"] == 1
    assert data["worst"][0]["numeric_noise"] == math.inf and "noise" not in data["worst"][0]
    assert math.isnan(data["worst"][0]["rel_error"])


def test_a_file_of_0_3_keeps_its_keys(tmp_path: Path) -> None:
    # 0.3's names are not mapped again: a key of that name in a 0.3 file stays what it is.
    report = gradwatch.check_function(lambda t: float(t @ t), np.ones(2), 2 * np.ones(2))
    path = gradwatch.save_report(report, tmp_path / "r.json", kinks="context of the user")
    data = gradwatch.load_report(path)
    assert data["kinks"] == "context of the user" and data["kink_count"] == report.kink_count


def test_context_must_not_take_the_files_own_key(tmp_path: Path) -> None:
    report = gradwatch.check_function(lambda t: float(t @ t), np.ones(2), 2 * np.ones(2))
    with pytest.raises(ValueError, match=r"`context` must not repeat .*\['non_finite'\]"):
        gradwatch.save_report(report, tmp_path / "r.json", non_finite={})
