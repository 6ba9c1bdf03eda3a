"""How a report reads, handed over by its renderers: :mod:`gradwatch.reporting.text` and
``.advice`` and :mod:`gradwatch.report_file` import the report (it is data they read), never the
reverse, so each puts its functions here when it is imported, and the report's methods (``str``,
``headline``, ``to_dict``, its ``message``) call them from here. ``gradwatch/__init__`` imports
every renderer before any report can be made.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

__all__ = ["WORDS", "renders"]

# The renderers' functions by name: what the report calls to put itself into words.
WORDS: dict[str, Callable[..., Any]] = {}


def renders(**functions: Callable[..., Any]) -> None:
    """Hands the report the functions that put it into words; called by its renderers at import.

    Example:
        >>> import gradwatch  # imports every renderer
        >>> sorted(WORDS)
        ['advice', 'as_dict', 'headline', 'non_finite', 'summary', 'worst_markdown']
    """
    WORDS.update(functions)
