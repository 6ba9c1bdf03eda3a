"""The report's public attributes, one name per fact: docs/reports.md lists exactly them (so the
page cannot go stale), the file's keys are those the page names, and the old names are gone."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import numpy as np
import pytest

import gradwatch

PAGE = Path(__file__).resolve().parent.parent / "docs" / "reports.md"
CLASSES = [
    gradwatch.GradCheckReport,
    gradwatch.ParameterResult,
    gradwatch.Component,
    gradwatch.JNoise,
    gradwatch.PrecisionDrift,
]


def public_attributes(cls: type) -> set[str]:
    """A dataclass's fields and the public names its class defines (properties, methods)."""
    fields = {f.name for f in dataclasses.fields(cls)}
    return fields | {n for n in vars(cls) if not n.startswith("_")}


def table_rows(cls: type, text: str | None = None) -> list[list[str]]:
    """The cells of each row of the table under ``### `cls``` (of the page, or of ``text``),
    header and rule left out."""
    text = PAGE.read_text(encoding="utf-8") if text is None else text
    section = text.split(f"### `{cls.__name__}`\n", 1)[1].split("\n#", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("| `")]
    return [[cell.strip() for cell in re.split(r"(?<!\\)\|", row)[1:-1]] for row in rows]


def documented(cls: type, text: str | None = None) -> list[str]:
    """The names of the first column: `a`, `b(k)`, … (a method's arguments left out)."""
    names = [re.findall(r"`(\w+)", row[0]) for row in table_rows(cls, text)]
    return [n for row in names for n in row]


@pytest.mark.parametrize("cls", CLASSES, ids=lambda c: c.__name__)
def test_the_page_lists_every_public_attribute_once_and_nothing_else(cls: type) -> None:
    names = documented(cls)
    assert len(names) == len(set(names)), names
    assert set(names) == public_attributes(cls)


@pytest.mark.parametrize("change", ["drop", "add"])
def test_a_page_that_drops_or_adds_a_row_is_caught(change: str) -> None:
    # The planted twins: the page with its `kinks` row gone, or with a row of an old name added.
    text = PAGE.read_text(encoding="utf-8")
    row = next(line for line in text.splitlines() if line.startswith("| `kinks` |"))
    planted = f"{row}\n{row.replace('`kinks`', '`per_parameter`')}" if change == "add" else ""
    changed = text.replace(row + "\n", planted + ("\n" if planted else ""), 1)
    assert changed != text
    assert set(documented(gradwatch.GradCheckReport, changed)) != public_attributes(
        gradwatch.GradCheckReport
    )


@pytest.fixture(scope="module")
def report() -> gradwatch.GradCheckReport:
    return gradwatch.check_function(lambda t: float(t @ t), np.ones(2), 2 * np.ones(2))


def test_the_files_keys_are_those_the_page_names(report: gradwatch.GradCheckReport) -> None:
    # The third column starts with the top-level key (a sub-key follows in parentheses).
    cells = [row[2] for row in table_rows(gradwatch.GradCheckReport)]
    named = [m.group(1) for m in (re.match(r'`"(\w+)"`', cell) for cell in cells) if m]
    assert set(named) == set(report.to_dict())


def test_the_file_names_a_fact_as_the_report_does(report: gradwatch.GradCheckReport) -> None:
    # The same name holds the same fact: a key that is an attribute's name holds its value.
    data = report.to_dict()
    for key in ("difference", "noise_floor", "reading_counts", "kink_count", "components_checked"):
        assert data[key] == getattr(report, key), key
    assert "numeric_noise" in data["worst"][0] and "noise" not in data["worst"][0]


@pytest.mark.parametrize(
    "old", ["per_parameter", "noise", "difference_without_kinks", "flagged_count"]
)
def test_an_old_name_of_the_report_is_gone(report: gradwatch.GradCheckReport, old: str) -> None:
    assert not hasattr(report, old)
    assert not hasattr(report.component(0), "noise")
