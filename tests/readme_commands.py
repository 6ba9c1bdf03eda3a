"""The shell commands of the README and the docs, run as a reader runs them: every line of every
```bash block, page by page (the README first), in order, from the project's folder, exactly as
written (CI runs this on its clean checkout, after
``make test``: ``.venv/bin/python -m tests.readme_commands``).

A line's comment may say what to expect: ``exits 1`` (its exit status; 0 otherwise), or
``Ctrl+C`` (a server: it must answer at the address in the comment, then it is stopped). ``make
test`` is left out: it is what CI has just run.

Example:
    >>> [c.line for c in commands("```bash\\nmake demo   # trains\\nmake test\\n```\\n")]
    ['make demo']
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BLOCK = re.compile(r"^```bash\n(.*?)^```", re.MULTILINE | re.DOTALL)
SKIPPED = {"make test"}  # CI's own command, run just before this
COMMAND_TIMEOUT_S = 900
SERVER_TIMEOUT_S = 120


@dataclass(frozen=True)
class Command:
    """One README line: what to run, the exit status it must end with, and for a server the
    address that must answer (None otherwise)."""

    line: str
    status: int = 0
    address: str | None = None


def commands(readme: str) -> list[Command]:
    """The commands of ``readme``'s bash blocks, in order."""
    found = []
    for block in BLOCK.findall(readme):
        for raw in block.splitlines():
            line, _, comment = raw.partition("  #")
            line = line.strip()
            if not line or line.startswith("#") or line in SKIPPED:
                continue
            status = re.search(r"\bexits (\d+)", comment)
            address = (
                re.search(r"(http://localhost:\d+\S*)", comment) if "Ctrl+C" in comment else None
            )
            found.append(
                Command(
                    line,
                    int(status.group(1)) if status else 0,
                    address.group(1).rstrip(").,") if address else None,
                )
            )
    return found


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _answers(address: str) -> bool:
    try:
        with urllib.request.urlopen(address, timeout=5) as answer:
            return int(answer.status) == 200
    except OSError:
        return False


def serve(command: Command) -> str:
    """Starts a server command (on a free port, given as PORT), waits for its address to answer,
    stops it; what went wrong, or "" when it answered."""
    port = _free_port()
    assert command.address is not None
    address = re.sub(r"localhost:\d+", f"localhost:{port}", command.address)
    env = {**os.environ, "PORT": str(port)}
    server = subprocess.Popen(command.line, shell=True, cwd=ROOT, env=env, start_new_session=True)
    try:
        deadline = time.monotonic() + SERVER_TIMEOUT_S
        while time.monotonic() < deadline and server.poll() is None:
            if _answers(address):
                return ""
            time.sleep(1)
        return f"{address} did not answer (exit status {server.poll()})"
    finally:
        if server.poll() is None:
            os.killpg(server.pid, signal.SIGTERM)  # make and the server it started
        server.wait()


def run(command: Command) -> str:
    """Runs one command; what went wrong, or "" when it did what the README says."""
    if command.address is not None:
        return serve(command)
    done = subprocess.run(command.line, shell=True, cwd=ROOT, timeout=COMMAND_TIMEOUT_S)
    if done.returncode != command.status:
        return f"exit status {done.returncode}, the README says {command.status}"
    return ""


def pages() -> list[Path]:
    """The README, then the pages under docs/, whose ```bash blocks hold commands."""
    return [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def main() -> int:
    problems = []
    found = [c for page in pages() for c in commands(page.read_text(encoding="utf-8"))]
    for command in found:
        print(f"$ {command.line}", flush=True)
        problem = run(command)
        print(f"  -> {problem or 'as the README says'}", flush=True)
        if problem:
            problems.append(f"{command.line}: {problem}")
    for problem in problems:
        print(f"documented command failed: {problem}")
    print(f"{len(found) - len(problems)} passed, {len(problems)} failed")
    return 1 if problems or not found else 0


if __name__ == "__main__":
    sys.exit(main())
