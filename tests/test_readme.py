"""The README's examples run, and the output they show is the output they print."""

from __future__ import annotations

import contextlib
import io
import re
from pathlib import Path

import pytest

from tests import readme_commands

README = Path(__file__).resolve().parent.parent / "README.md"
BLOCK = re.compile(r"^```(\w+)\n(.*?)^```", re.MULTILINE | re.DOTALL)


def blocks() -> list[tuple[str, str]]:
    return [(m.group(1), m.group(2)) for m in BLOCK.finditer(README.read_text(encoding="utf-8"))]


def test_readme_has_runnable_examples() -> None:
    assert sum(kind == "python" for kind, _ in blocks()) >= 2


def test_readme_python_blocks_run_and_print_what_the_readme_shows(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Python blocks run in order in one namespace (```py marks fragments that need your own
    # model and are not run); a ```text block right after one holds lines
    # of its output ("..." marks lines left out).
    monkeypatch.chdir(tmp_path)
    namespace: dict[str, object] = {"__name__": "__readme__"}
    printed: list[str] = []
    for kind, code in blocks():
        if kind == "python":
            out = io.StringIO()
            with contextlib.redirect_stdout(out):
                exec(compile(code, str(README), "exec"), namespace)
            printed = [line.rstrip() for line in out.getvalue().splitlines()]
        elif kind == "text" and printed:
            shown = [line.rstrip() for line in code.splitlines() if line.strip() != "..."]
            missing = [line for line in shown if line not in printed]
            assert not missing, "README shows output the example does not print:\n" + "\n".join(
                missing
            )
            printed = []
        else:  # a text block after a shell command shows that command's output, not Python's
            printed = []


def test_readme_shell_commands_are_the_ones_ci_runs() -> None:
    # CI runs them after `make test` (.ci/run: python -m tests.readme_commands), as written.
    found = readme_commands.commands(README.read_text(encoding="utf-8"))
    assert [(c.line, c.status, c.address) for c in found] == [
        ("make demo", 0, None),
        ("make wrong-backward", 0, None),
        ("make tensorboard", 0, "http://localhost:6006/?smoothing=0"),
        (".venv/bin/python examples/cli.py fit --config examples/config.yaml", 0, None),
        (".venv/bin/python examples/wrong_backward.py --raise", 1, None),
    ]
    assert "readme_commands" in (README.parent / ".ci" / "run").read_text()
