"""Files a check leaves next to the logger's: each report as JSON
(``<log_dir>/<name>/step_<N>.json``, read back with :func:`gradwatch.load_report`), and, when
gradwatch itself failed, the traceback to attach to a bug report."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from gradwatch import GradCheckReport, save_report


def _folders(trainer: Any) -> list[Path]:
    found: list[Path] = []
    for logger in getattr(trainer, "loggers", []):
        folder = getattr(logger, "log_dir", None)
        if isinstance(folder, str | Path) and str(folder) and Path(folder) not in found:
            found.append(Path(folder))
    return found


def log_dirs(trainer: Any) -> list[Path]:
    """The folders of the trainer's loggers that have one (``log_dir``), each once; none on a
    process other than rank zero, which writes no logs."""
    return _folders(trainer) if getattr(trainer, "is_global_zero", True) else []


def report_path(log_dir: Path, name: str, step: int) -> Path:
    """Where the report of the check at ``step`` goes.

    Example:
        >>> report_path(Path("runs/digits/version_0"), "gradcheck", 100).as_posix()
        'runs/digits/version_0/gradcheck/step_100.json'
    """
    return log_dir / name / f"step_{step}.json"


def write_report(
    trainer: Any, name: str, step: int, logged_step: int, report: GradCheckReport
) -> list[Path]:
    """The report as JSON in every logger's folder; returns the files written."""
    context = {"check": name, "step": step, "logged_step": logged_step}
    return [
        save_report(report, report_path(folder, name, step), **context)
        for folder in log_dirs(trainer)
    ]


def write_error(trainer: Any, name: str, step: int, text: str) -> Path | None:
    """``text`` (a traceback for a bug report) in the first logger's folder, if there is one.
    Every process that hit the error writes its own, when it has a folder."""
    folders = _folders(trainer)
    if not folders:
        return None
    rank = int(getattr(trainer, "global_rank", 0))
    suffix = f"_rank_{rank}" if int(getattr(trainer, "world_size", 1)) > 1 else ""
    path = folders[0] / name / f"step_{step}_error{suffix}.txt"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path
