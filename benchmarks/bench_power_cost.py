"""Issue 19's cost: what the power work costs, this tree against a baseline, side by side.

    .venv/bin/python benchmarks/bench_power_cost.py [--base 73de4d9,a176ff6] [--repeats 3]
        [--threads 1] [--only zoo,speed | a comma list of workload names]

The workloads are the zoo's correct models (``tests/zoo.py``'s cases at seed 0 with their
default options, as ``tests/test_zoo.py`` checks them) and ``benchmarks/bench_speed.py``'s checks
(the full checks of the MLP and the small CNN, the sampled checks of ResNet-18 and the
transformer at 150, 1,000 and 2,000 components, ``mode="directions"`` on ResNet-18 with and
without its planted BatchNorm bug, the transformer through the plain loop at 100 components).
Both trees build them from this tree's ``tests/zoo.py`` and ``benchmarks/models.py``, so the
models, batches and options are the same; only gradwatch differs.

``--base`` is one commit or several (comma-separated): each is checked out (once) as a detached
worktree under the system's temporary folder, and its gradwatch imported from there
(``PYTHONPATH``) by this interpreter (the same torch). Each tree runs in one long-lived worker
process, warmed by one small check; every workload runs ``--repeats`` times in each tree, the
trees' order turned round at each repeat (A B C, C B A, ...), so a load that comes and goes on
a shared machine falls on all of them. The table gives per workload the median wall time of
each tree and, per baseline, the ratio new/base as the median of the paired ratios with their
range, and the ratio of the evaluations of J (deterministic, not disturbed by load); the
evaluations themselves follow, then the calls of J along directions (``ModuleObjective.line``:
the noise probes and the gate's) with the median seconds spent in them. Issue 19's target:
every ratio <= 1.3. Not part of the test suite.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import types
from collections.abc import Callable
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)

# -- the worker: one tree's gradwatch, the workloads by name ------------------------------------


def _zoo_cases() -> list[Any]:
    """This tree's zoo, imported by its path: ``tests.planting`` (which imports gradwatch's
    private modules, different in each tree) is needed only for a type, so a stub stands in."""
    import importlib.util

    sys.modules.setdefault("tests.planting", types.SimpleNamespace(Kind=str))  # type: ignore[arg-type]
    spec = importlib.util.spec_from_file_location("cost_zoo", os.path.join(ROOT, "tests", "zoo.py"))
    assert spec is not None and spec.loader is not None
    zoo = sys.modules["cost_zoo"] = importlib.util.module_from_spec(spec)  # for its dataclass
    spec.loader.exec_module(zoo)
    return list(zoo.CASES)


def _slug(name: str) -> str:
    keep = "".join(c if c.isalnum() else "-" for c in name.lower())
    return "zoo:" + "-".join(p for p in keep.split("-") if p)


def workloads() -> dict[str, Callable[[], Any]]:
    """Name → a call returning (model, loss, batch, options) for ``check_module``."""
    import models
    import torch

    found: dict[str, Callable[[], Any]] = {}
    for case in _zoo_cases():
        found[_slug(case.name)] = lambda c=case: (*c.build(0), dict(c.options))

    def image(build: Any, size: int, count: int) -> Callable[..., Any]:
        return lambda **opts: (build(), models.cross_entropy, models.image_batch(size, count), opts)

    found["speed:mlp-full"] = lambda: (models.mlp(), models.cross_entropy, models.mlp_batch(), {})
    found["speed:cnn-full"] = lambda: image(models.small_cnn, 16, 8)()
    for k in (150, 1000, 2000):
        found[f"speed:resnet18-sample{k}"] = lambda k=k: image(models.ResNet18, 32, 4)(sample=k)
        found[f"speed:transformer-sample{k}"] = lambda k=k: (
            models.TinyTransformer(), models.language_loss, models.token_batch(), {"sample": k},
        )  # fmt: skip
    found["speed:directions-bug"] = lambda: (
        models.ResNet18(buggy="layer3.0"), models.cross_entropy, models.image_batch(32, 4),
        {"mode": "directions"},
    )  # fmt: skip
    found["speed:directions-control"] = lambda: image(models.ResNet18, 32, 4)(mode="directions")

    def read_out(logits: torch.Tensor) -> torch.Tensor:  # a value read out: vmap cannot run it
        if not bool(torch.isfinite(logits).all()):
            raise FloatingPointError("the logits are not finite")
        return logits

    looped = lambda m, t: models.language_loss(lambda x: read_out(m(x)), t)  # noqa: E731
    found["speed:plain-loop-sample100"] = lambda: (
        models.TinyTransformer(), looped, models.token_batch(), {"sample": 100},
    )  # fmt: skip
    return found


def _count_lines() -> list[Any]:
    """[calls, seconds] of ``ModuleObjective.line`` (J along directions: the noise probes and the
    gate's), counted in whichever tree this worker imported; [0, 0.0] where it has none."""
    import importlib

    import gradwatch

    found: list[Any] = [0, 0.0]
    root = os.path.dirname(gradwatch.__file__)  # only this tree's modules: 0.3's layout, 0.2's
    for where in ("check/comparison", "_comparison"):
        if os.path.exists(os.path.join(root, f"{where}.py")):
            comparison = importlib.import_module("gradwatch." + where.replace("/", "."))
            break
    else:
        return found
    objective = getattr(comparison, "ModuleObjective", None)
    line = getattr(objective, "line", None)
    if line is None:
        return found

    def counted(self: Any, support: Any, rows: Any) -> Any:
        start = time.perf_counter()
        try:
            return line(self, support, rows)
        finally:
            found[0] += 1
            found[1] += time.perf_counter() - start

    objective.line = counted  # type: ignore[union-attr]
    return found


def worker(threads: int) -> None:
    """Reads workload names from stdin, answers one JSON line each."""
    import torch

    import gradwatch  # first, from PYTHONPATH: this worker's tree

    torch.set_num_threads(threads)
    sys.path.insert(0, HERE)
    table = workloads()
    lines = _count_lines()
    gradwatch.check_module(*table["speed:mlp-full"]()[:3], sample=50, progress=False)  # warm
    print(json.dumps({"gradwatch": os.path.dirname(gradwatch.__file__)}), flush=True)
    for line in sys.stdin:
        model, loss, batch, options = table[line.strip()]()
        wall, cpu = time.perf_counter(), time.process_time()
        report = gradwatch.check_module(model, loss, batch, progress=False, **options)
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        answer = {"wall": wall, "cpu": cpu, "evaluations": report.evaluations}
        answer.update(lines=lines[0], line_seconds=lines[1])
        lines[:] = [0, 0.0]
        print(json.dumps({**answer, "verdict": report.verdict.value}), flush=True)


# -- the runner ---------------------------------------------------------------------------------


class Tree:
    """A worker process whose ``import gradwatch`` finds ``root``'s."""

    def __init__(self, root: str, threads: int) -> None:
        env = {**os.environ, "PYTHONPATH": root}
        command = [sys.executable, os.path.abspath(__file__), "--worker", "--threads", str(threads)]
        self.process = subprocess.Popen(
            command, env=env, cwd=root, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )
        found = self._answer()["gradwatch"]
        if not found.startswith(os.path.realpath(root)):
            raise RuntimeError(f"the worker for {root} imported gradwatch from {found}")

    def _answer(self) -> dict[str, Any]:
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        if not line:
            raise RuntimeError(f"a worker stopped (exit code {self.process.wait()})")
        return dict(json.loads(line))

    def run(self, name: str) -> dict[str, Any]:
        assert self.process.stdin is not None
        self.process.stdin.write(name + "\n")
        self.process.stdin.flush()
        return self._answer()

    def close(self) -> None:
        assert self.process.stdin is not None
        self.process.stdin.close()
        self.process.wait()


def base_tree(commit: str) -> str:
    """A detached worktree of ``commit`` (made once, kept for later runs)."""
    sha = subprocess.run(
        ["git", "-C", ROOT, "rev-parse", "--short=12", commit],
        capture_output=True, text=True, check=True,
    ).stdout.strip()  # fmt: skip
    path = os.path.join(tempfile.gettempdir(), f"gradwatch-base-{sha}")
    if not os.path.isdir(path):
        subprocess.run(["git", "-C", ROOT, "worktree", "add", "--detach", path, sha], check=True)
    return path


def summary(values: list[float]) -> str:
    return f"{statistics.median(values):.2f} ({min(values):.2f}-{max(values):.2f})"


def measure(names: list[str], trees: dict[str, Tree], repeats: int) -> dict[str, Any]:
    """Each workload: a warm-up in each tree, then ``repeats`` side-by-side pairs."""
    runs: dict[str, dict[str, list[dict[str, Any]]]] = {}
    for name in names:
        runs[name] = {label: [] for label in trees}
        order = list(trees)
        for r in range(repeats):
            for label in order if r % 2 == 0 else order[::-1]:
                runs[name][label].append(trees[label].run(name))
        print_row(name, runs[name])
    return runs


def print_row(name: str, found: dict[str, list[dict[str, Any]]]) -> None:
    """One row: the median seconds of each tree; per baseline, new/base in time (median of
    the pairs, range) and in evaluations; the evaluations and verdicts of every tree."""
    new, cells, lines = found["new"], [name], []
    cells += [f"{statistics.median(r['wall'] for r in side):.2f}" for side in found.values()]
    for label, base in found.items():
        if label != "new":
            ratio = [n["wall"] / b["wall"] for b, n in zip(base, new, strict=True)]
            cells += [summary(ratio), f"{new[0]['evaluations'] / base[0]['evaluations']:.2f}"]
    cells.append(" / ".join(str(side[0]["evaluations"]) for side in found.values()))
    for side in found.values():  # the line calls of each tree, and the seconds in them
        seconds = statistics.median(r.get("line_seconds", 0.0) for r in side)
        lines.append(f"{side[0].get('lines', 0)} ({seconds:.2f} s)")
    cells.append(" / ".join(lines))
    cells.append(" / ".join(side[0]["verdict"] for side in found.values()))
    print("| " + " | ".join(cells) + " |", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", default="73de4d9,a176ff6", help="baseline commits")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="torch threads in each worker")
    parser.add_argument(
        "--only", default="zoo,speed", help="groups (zoo, speed) or names, in order"
    )
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(args.threads)
    sys.path.insert(0, HERE)
    table = workloads()
    names = [n for w in args.only.split(",") for n in table if w in (n, n.split(":")[0])]
    bases = args.base.split(",")
    print(f"new: {ROOT}; {args.threads} thread(s), {args.repeats} runs each side by side\n")
    head = ["workload", *(f"{b} s" for b in bases), "new s"]
    for b in bases:
        head += [f"time new/{b}", f"evaluations new/{b}"]
    head += [f"evaluations ({', '.join(bases)}, new)", "line calls (median s in them)", "verdicts"]
    print("| " + " | ".join(head) + " |\n" + "|---" * len(head) + "|")
    trees = {b: Tree(base_tree(b), args.threads) for b in bases}
    trees["new"] = Tree(ROOT, args.threads)
    try:
        measure(names, trees, args.repeats)
    finally:
        for tree in trees.values():
            tree.close()


if __name__ == "__main__":
    main()
