"""The code blocks of the README and the docs, and the rule by which their shown output is checked.

A ```` ```python ```` block is an example: it runs on its own, in a fresh process, and a
```` ```text ```` block right after it shows lines of what it prints (``...`` marks lines left
out). A block with a ``title="…"`` is a fragment and is not run: its title says what it needs (the
reader's own model, a machine with several processes); a block whose title is a file of this
repository must hold that file, as it is.

Shown output is compared by a rule that holds on every machine: words, names and verdicts exactly;
integers exactly; a figure at or above ``NOISE_LEVEL`` to one unit of its second significant
digit; a figure below it (a correct gradient's difference, a noise floor: set by the last digits
of J, which differ between CPU kernels) within a factor of ``NOISE_FACTOR``.

Example:
    >>> figures_agree("pass 2.1e-08 of 64", "pass 2.3e-08 of 64")
    True
    >>> figures_agree("fail 4.3e-02", "fail 4.6e-02"), figures_agree("64 of 64", "63 of 64")
    (False, False)
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FENCE = re.compile(r"^```(\w+)([^\n]*)\n(.*?)^```", re.MULTILINE | re.DOTALL)
TITLE = re.compile(r'title="([^"]*)"')
# A number that stands alone: not a digit of a name such as `0.weight`, `layer1` or a version.
NUMBER = re.compile(r"(?<![\w.])-?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?(?!\.?\w)")
# Below this a figure is at the level of J's rounding: in float64 at ε = 1e-7 a correct gradient's
# difference and the noise floor lie between about 1e-10 and 1e-6, while the bugs the docs show
# make differences of 1e-3 and more; 1e-5 leaves a decade and more on each side.
NOISE_LEVEL = 1e-5
# Figures at that level move by 10-30% between CPU kernel paths (2.1e-08 on one, 2.3e-08 on
# another); a factor of 3 still tells 1e-8 from 1e-7, so a figure in the wrong decade fails.
NOISE_FACTOR = 3.0


@dataclass(frozen=True)
class Block:
    """One fenced block: its kind (``python``, ``text``, …), its title, its code, its line."""

    kind: str
    title: str | None
    code: str
    line: int


@dataclass(frozen=True)
class Example:
    """A runnable Python block and the lines its next ``text`` block shows (None: none shown)."""

    path: Path
    line: int
    code: str
    shown: list[str] | None

    @property
    def name(self) -> str:
        return f"{self.path.relative_to(ROOT)}:{self.line}"


def pages() -> list[Path]:
    """The README and every page under ``docs/``."""
    return [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]


def blocks(path: Path) -> list[Block]:
    """The fenced blocks of a Markdown file, in order."""
    text = path.read_text(encoding="utf-8")
    found = []
    for match in FENCE.finditer(text):
        title = TITLE.search(match.group(2))
        line = text.count("\n", 0, match.start()) + 1
        found.append(Block(match.group(1), title.group(1) if title else None, match.group(3), line))
    return found


def examples(path: Path) -> list[Example]:
    """The runnable Python blocks of a Markdown file, each with the output it shows."""
    found: list[Example] = []
    page = blocks(path)
    for at, block in enumerate(page):
        after = page[at + 1] if at + 1 < len(page) else None
        if block.kind != "python" or block.title is not None:
            continue
        shown = None
        if after is not None and after.kind == "text" and after.title is None:
            shown = [line.rstrip() for line in after.code.splitlines() if line.strip() != "..."]
        found.append(Example(path, block.line, block.code, shown))
    return found


def _skeleton(line: str) -> str:
    return " ".join(NUMBER.sub("#", line).split())


def _figure_agrees(shown: str, printed: str) -> bool:
    if not re.search(r"[.eE]", shown):  # an integer: a count, an index, a step
        return shown == printed
    s, p = float(shown), float(printed)
    if s == 0.0 or not math.isfinite(s):
        return s == p or (math.isnan(s) and math.isnan(p))
    if abs(s) < NOISE_LEVEL:
        return s * p > 0 and max(p / s, s / p) <= NOISE_FACTOR
    unit = 10.0 ** (math.floor(math.log10(abs(s))) - 1)  # the second significant digit's
    return abs(p - s) <= unit * (1 + 1e-9)


def figures_agree(shown: str, printed: str) -> bool:
    """Whether a printed line is the shown one, by the rule of this module."""
    if _skeleton(shown) != _skeleton(printed):
        return False
    pairs = zip(NUMBER.findall(shown), NUMBER.findall(printed), strict=True)
    return all(_figure_agrees(s, p) for s, p in pairs)


def missing(shown: list[str], printed: list[str]) -> list[str]:
    """The shown lines that no printed line matches."""
    return [line for line in shown if not any(figures_agree(line, p) for p in printed)]
