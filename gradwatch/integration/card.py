"""The callback's at-a-glance image of a check, the first card TensorBoard shows (drawn here,
without Lightning; ``gradwatch.callbacks`` writes it): the verdict, the difference of every
check so far against the pass and fail bands on a log scale, and the parameters worst first,
with their names.

An image rather than charts because TensorBoard's landing page (Time Series) draws one tag per
chart, on a linear axis, smoothed: none of which suits three checks read against two bands.
:func:`card_content` decides what the card says (tested as text); :func:`render` only draws it.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from gradwatch.integration.text import (
    ParameterRow,
    difference_of,
    log10,
    parameter_rows,
    verdict_of,
)
from gradwatch.report import GradCheckReport

__all__ = ["SMALLEST", "WIDTH", "CardContent", "Point", "card_content", "render", "run_lines"]

# TensorBoard shows a card in a box of about 345 × 215 CSS pixels (327 wide at 1280 × 800 with
# its settings open): the card is drawn at twice that, 720 wide and at most 450 high, so it is
# sharp on a screen of two device pixels per CSS pixel and keeps its shape in the box.
WIDTH = 720
# The smallest type on the card, in its pixels: shown at about 0.45 of its size, 28 px is
# 12.7 CSS pixels, the smallest that reads cleanly once the browser scales it down (24 px,
# 11 CSS pixels, blurred "1e-03" into "1c 03").
SMALLEST = 28
ROWS = 4  # parameters listed; the rest are counted (five no longer fit 450 pixels at 28 px)
HISTORY = 12  # checks drawn in the chart, the latest ones
# The chart's log10 axis: the formula is at most 1 (triangle inequality), and anything below
# 1e-12 reads the same (a clean pass) unless a check went lower.
TOP, BOTTOM = 0.0, -12.0
COLORS = {
    "pass": (46, 125, 50),
    "warn": (230, 126, 0),
    "fail": (198, 40, 40),
    "not judged": (110, 110, 110),
}
BAND_FILLS = {"pass": (232, 245, 233), "warn": (255, 243, 224), "fail": (255, 235, 238)}
INK, FAINT = (33, 33, 33), (97, 97, 97)
# The card's bands, in pixels: banner, the run's name (a line per 34), chart, its steps, rows,
# footer.
BANNER, RUN_LINE, CHART_HEIGHT, STEPS, ROW, FOOTER = 60, 34, 100, 36, 40, 34
FAILURE_LINES = 5


@dataclass(frozen=True)
class Point:
    """One check in the chart: its step, the difference its verdict reads, the verdict."""

    step: int
    difference: float
    verdict: str


@dataclass(frozen=True)
class CardContent:
    """Everything the card says, as text and numbers."""

    verdict: str
    title: str  # "FAIL at step 0"
    difference: str  # "difference 4.3e-02"
    history: tuple[Point, ...]
    rows: tuple[tuple[str, str, str], ...]  # (verdict, name, difference)
    footer: str
    pass_max: float
    warn_max: float
    failure: str = ""  # why the check has no reading (it raised, J is NaN or not deterministic)
    run: str = ""  # the run as TensorBoard names it, e.g. "wrong_backward/version_0"


def card_content(
    step: int, report: GradCheckReport, history: Sequence[Point], run: str = ""
) -> CardContent:
    """What the card of the check at ``step`` of ``run`` says; ``history`` holds the earlier
    checks.

    Examples:
        >>> import numpy as np, gradwatch
        >>> report = gradwatch.check_function(
        ...     lambda t: float(t @ t), np.ones(2), np.array([2.0, 4.0]), layout={"w": 1, "b": 1})
        >>> content = card_content(5, report, [])
        >>> content.title, content.rows[0][:2]
        ('FAIL at step 5', ('fail', 'b'))
    """
    verdict = verdict_of(report)
    difference = difference_of(report)
    rows = parameter_rows(report)
    shown = [] if report.failure else rows[:ROWS]  # a reason there is no reading says more
    return CardContent(
        verdict=verdict,
        title=f"{verdict.upper()} at step {step}",
        difference=(
            f"difference {difference:.1e} on {report.judged_share:.0%} of components"
            if math.isfinite(difference)
            else ""
        ),
        history=(*history, Point(step, difference, verdict))[-HISTORY:],
        rows=tuple((r.verdict, r.name, _value(r)) for r in shown),
        footer=_footer(rows[len(shown) :] if shown else []),
        pass_max=report.thresholds.pass_max,
        warn_max=report.thresholds.warn_max,
        failure=str(report.failure or ""),
        run=run,
    )


def _value(row: ParameterRow) -> str:
    return f"{row.difference:.1e}" if math.isfinite(row.difference) else "-"


def _footer(rest: Sequence[ParameterRow]) -> str:
    if not rest:
        return ""
    counts: dict[str, int] = {}
    for row in rest:
        counts[row.verdict] = counts.get(row.verdict, 0) + 1
    return f"and {len(rest)} more: " + ", ".join(f"{n} {v}" for v, n in counts.items())


# -- drawing ------------------------------------------------------------------------------------


@cache
def _font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    # Pillow's own font (no system fonts needed); a bitmap font where FreeType is missing.
    return ImageFont.load_default(size=size)


def render(content: CardContent) -> np.ndarray:
    """The card as an RGB array (height × 720 × 3, uint8), at most 450 pixels high."""
    failure = _lines(content.failure[:1].upper() + content.failure[1:], SMALLEST)
    run_size, run = run_lines(content.run)
    chart_top = BANNER + RUN_LINE * len(run) + 12
    rows_top = chart_top + CHART_HEIGHT + STEPS
    body = 34 * len(failure[:FAILURE_LINES]) + ROW * len(content.rows)
    height = rows_top + body + (FOOTER if content.footer else 0) + 8
    image = Image.new("RGB", (WIDTH, height), "white")
    draw = ImageDraw.Draw(image)
    _banner(draw, content)
    for i, line in enumerate(run):
        middle = BANNER + RUN_LINE * i + RUN_LINE // 2 + 4
        draw.text((20, middle), line, font=_font(run_size), fill=INK, anchor="lm")
    _chart(draw, content, chart_top)
    y = rows_top
    for line in failure[:FAILURE_LINES]:
        draw.text((16, y), line, font=_font(SMALLEST), fill=INK)
        y += 34
    for verdict, name, value in content.rows:
        _row(draw, y, verdict, name, value)
        y += ROW
    if content.footer:
        footer = (186, y + FOOTER // 2), content.footer
        draw.text(*footer, font=_font(SMALLEST), fill=FAINT, anchor="lm")
    return np.asarray(image)


def run_lines(run: str, width: float = WIDTH - 40) -> tuple[int, list[str]]:
    """The run's name whole, as (font size, lines): one line at 32 px, or smaller down to
    :data:`SMALLEST`, else broken after a ``/`` (or anywhere) into lines of that size; never
    cut short.

    Example:
        >>> run_lines("wrong_backward/version_0")
        (32, ['wrong_backward/version_0'])
    """
    if not run:
        return SMALLEST, []
    for size in range(32, SMALLEST - 1, -2):
        if _font(size).getlength(run) <= width:
            return size, [run]
    font, lines, line = _font(SMALLEST), [], ""
    for piece in re.findall(r"[^/]*/|[^/]+", run):  # "a/b/c" as "a/", "b/", "c"
        for char in piece if font.getlength(piece) > width else [piece]:
            if line and font.getlength(line + char) > width:
                lines.append(line)
                line = ""
            line += char
    return SMALLEST, [*lines, line] if line else lines


def _color(verdict: str) -> tuple[int, int, int]:
    return COLORS[verdict]


def _banner(draw: ImageDraw.ImageDraw, content: CardContent) -> None:
    middle = BANNER // 2
    draw.rectangle((0, 0, WIDTH, BANNER), fill=_color(content.verdict))
    title = (20, middle), content.title
    # Pillow's own font has no bold face: a stroke of the text's colour stands in.
    draw.text(
        *title, font=_font(38), fill="white", anchor="lm", stroke_width=1, stroke_fill="white"
    )
    draw.text((WIDTH - 20, middle), content.difference, font=_font(32), fill="white", anchor="rm")


def _y(value: float, bottom: float, top: float) -> float:
    clipped = min(max(value, bottom), TOP)
    return top + (TOP - clipped) / (TOP - bottom) * CHART_HEIGHT


def _chart(draw: ImageDraw.ImageDraw, content: CardContent, top: float) -> None:
    """The difference of each check (log10) over the fail, warn and pass bands: the bands'
    names on the left, their limits on the right."""
    left, right = 96, WIDTH - 110
    finite = [log10(p.difference) for p in content.history if math.isfinite(p.difference)]
    bottom = min([BOTTOM, *(math.floor(d) for d in finite)])
    edges = [
        top,
        _y(math.log10(content.warn_max), bottom, top),
        _y(math.log10(content.pass_max), bottom, top),
    ]
    edges.append(top + CHART_HEIGHT)
    for word, upper, lower in zip(("fail", "warn", "pass"), edges, edges[1:], strict=False):
        draw.rectangle((left, upper, right, lower), fill=BAND_FILLS[word])
        middle = (upper + lower) / 2
        draw.text((left - 12, middle), word, font=_font(SMALLEST), fill=_color(word), anchor="rm")
    for edge, value in zip(edges[1:3], (content.warn_max, content.pass_max), strict=True):
        draw.line((left, edge, right, edge), fill=(189, 189, 189), width=2)
        draw.text((right + 10, edge), f"{value:.0e}", font=_font(SMALLEST), fill=INK, anchor="lm")
    _points(draw, content.history, (left + 36, right - 36), (top, bottom))


def _points(
    draw: ImageDraw.ImageDraw,
    history: Sequence[Point],
    span: tuple[float, float],
    axis: tuple[float, float],
) -> None:
    """The checks, left to right over ``span``, the latest larger; steps under the first, the
    latest, and all of them when there are few. ``axis``: the chart's top pixel, its bottom
    log10 value."""
    (left, right), (top, bottom) = span, axis
    spacing = (right - left) / max(len(history) - 1, 1)
    xs = [left + i * spacing if len(history) > 1 else right for i in range(len(history))]
    line = [
        (x, _y(log10(p.difference), bottom, top))
        for x, p in zip(xs, history, strict=True)
        if math.isfinite(p.difference)
    ]
    if len(line) > 1:
        draw.line(line, fill=(97, 97, 97), width=3)
    below = top + CHART_HEIGHT + 6
    for number, (x, point) in enumerate(zip(xs, history, strict=True)):
        latest = number == len(history) - 1
        r = 12 if latest else 8
        if math.isfinite(point.difference):
            y = _y(log10(point.difference), bottom, top)
            box = (x - r, y - r, x + r, y + r)
            draw.ellipse(box, fill=_color(point.verdict), outline="white", width=2)
        else:  # no difference to place: a cross at the top
            y = top + r + 4
            for dx in (-r, r):
                draw.line((x - dx, y - r, x + dx, y + r), fill=_color(point.verdict), width=4)
        if latest or number == 0 or len(history) <= 4:
            text = f"step {point.step}" if latest or number == 0 else str(point.step)
            shade = INK if latest else FAINT
            draw.text((x, below), text, font=_font(SMALLEST), fill=shade, anchor="mt")


def _row(draw: ImageDraw.ImageDraw, y: int, verdict: str, name: str, value: str) -> None:
    middle = y + ROW // 2
    draw.rounded_rectangle((16, y + 3, 170, y + ROW - 3), radius=8, fill=_color(verdict))
    draw.text((93, middle), verdict, font=_font(SMALLEST), fill="white", anchor="mm")
    font = _font(32)  # the names and numbers the card is read for, a size above the rest
    room = WIDTH - 20 - font.getlength(value) - 24 - 186  # between the chip and the value
    draw.text((186, middle), _fitted(name, font, room), font=font, fill=INK, anchor="lm")
    draw.text((WIDTH - 20, middle), value, font=font, fill=INK, anchor="rm")


def _fitted(text: str, font: ImageFont.FreeTypeFont | ImageFont.ImageFont, width: float) -> str:
    """``text``, its middle replaced by "..." until it fits ``width`` pixels."""
    if font.getlength(text) <= width:
        return text
    keep = len(text)
    while keep > 2:
        keep -= 1
        head = (keep + 1) // 2
        short = f"{text[:head]}...{text[len(text) - (keep - head) :]}"
        if font.getlength(short) <= width:
            return short
    return text[:1] + "..."


def _lines(text: str, size: int) -> list[str]:
    """``text`` broken into lines that fit the card at font ``size``."""
    font, lines, line = _font(size), [], ""
    for word in text.split():
        trial = f"{line} {word}".strip()
        if font.getlength(trial) > WIDTH - 32 and line:
            lines.append(line)
            line = word
        else:
            line = trial
    return [*lines, line] if line else lines
