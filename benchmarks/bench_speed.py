"""Issue 14's benchmark: the check's speed where a user feels it, in one run.

    .venv/bin/python benchmarks/bench_speed.py [--repeats 3] [--threads N]
        [--parts first,sampled,load,directions,threads,refused] [--components 150,1000,2000]
        [--first mlp_cold,mlp_cold_before,mlp,cnn]

(1) first: the first full check in a fresh process against warm calls, the FLOP floor and
    torch.autograd.gradcheck, on the 64-128-64-10 tanh MLP (17,226 parameters, batch 32, float64,
    ε = 1e-7, one thread) and on a small CNN (conv-BN-ReLU twice, 3,002 parameters, 16x16 images,
    batch 8). Each repeat is a new Python process (a subprocess of this one), in which, in order:
    torch is imported, the model built, and the user's own loss run forward and backward once
    (torch warmed as by a user's training; not counted); gradwatch is imported (not counted);
    the first ``check_module`` call is timed, everything it does included (its imports, vmap's
    first tracing, its choice of evaluation paths, its measurement of memory); then
    ``torch.autograd.gradcheck`` over the flat θ (MLP only), then three warm checks; then the
    floor: 2n forwards at the float64 matmul rate measured there. ``mlp_cold`` (issue 23) runs
    nothing before the check, and ``mlp_cold_before`` the same with gradwatch imported as before
    issue 23 (without ``gradwatch.common.warmup``), side by side in each repeat; the full
    garbage collections and the imports inside the first call are counted. ``--first`` picks the
    cases.
(2) sampled: ``check_module(sample=k)`` for k = 150, 1,000, 2,000 against the batched-forward
    floor: the same 2k forwards (each of the check's batch), run as batches of 50 of them, on a
    float64 copy of the model with grad mode on, in the same process, alternating with the check.
    On ResNet-18 (torchvision's layout built from torch.nn, 11.2M parameters, 32x32 images,
    batch 4) and a small transformer (2 pre-norm encoder layers of width 128, 532k parameters,
    4 sequences of 32 tokens). torch's default thread count.
(3) load: the ResNet-18 ratio of (2) at k = 150 while another process runs float32 matmuls on
    every core (a training job sharing the machine), against the same ratio measured just before
    without it.
(4) directions: ``mode="directions"`` on ResNet-18 with one BatchNorm whose backward forgets the
    batch-mean terms (a custom autograd.Function in block layer3.0): seconds to the verdict and
    whether the localized tensors are in that block; the same model without the bug as control.
(5) threads: the plain loop (the transformer behind a test whose value is read out with
    ``bool``, which vmap cannot run) at torch's default thread count with the check's thread
    choice, on one thread, and at the default count without the choice (how it ran before).
(6) refused: what vmap refuses as written (an old-style autograd.Function, a buffer filled in
    place, a tiny BLOOM) against vmap-friendly twins; see ``benchmarks/refused.py``.

Seconds are wall time, with CPU time (this process and its threads) beside where it helps: the
machine may be shared, so every ratio is of two measurements taken side by side, repeated, and
reported as the median with the range. Not part of the test suite.
"""

from __future__ import annotations

import argparse
import copy as copying
import gc
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

if "--before-import-time" in sys.argv:  # (1)'s baseline: gradwatch imported as before issue 23
    sys.modules["gradwatch.common.warmup"] = type(sys)("gradwatch.common.warmup")
import gradwatch
from gradwatch.evaluation import threads as _threads

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import models
from bench_check import autograd_gradcheck, flat_cost, forward_flops, matmul_rate
from refused import bench_refused

Timing = tuple[float, float]  # (wall seconds, CPU seconds)


def timed(fn: Callable[[], Any]) -> tuple[Any, Timing]:
    wall, cpu = time.perf_counter(), time.process_time()
    out = fn()
    return out, (time.perf_counter() - wall, time.process_time() - cpu)


def summary(values: list[float], digits: int = 2) -> str:
    """Median and range: '1.23 (1.10-1.40)'."""
    if not values:
        return "n/a"
    low, mid, high = min(values), statistics.median(values), max(values)
    return f"{mid:.{digits}f} ({low:.{digits}f}-{high:.{digits}f})"


# -- (1) the first call, in fresh processes -----------------------------------------------------


def fresh(kind: str) -> dict[str, Any]:
    """Runs in a new process: the user's warm-up, the first check, gradcheck, warm checks."""
    torch.set_num_threads(1)
    if kind.startswith("mlp"):
        model, batch = models.mlp(), models.mlp_batch()
    else:
        model, batch = models.small_cnn(), models.image_batch(16, 8)
    loss = models.cross_entropy
    if kind != "mlp_cold":  # cold: nothing run before the check
        loss(model, batch).backward()  # the user's own forward and backward
        model.zero_grad()
    full, imported = [0], set(sys.modules)  # full garbage collections and imports in the call
    counting = lambda phase, info: full.__setitem__(0, full[0] + (info["generation"] == 2))  # noqa: E731
    gc.callbacks.append(counting)
    report, first = timed(lambda: gradwatch.check_module(model, loss, batch))
    gc.callbacks.remove(counting)
    found: dict[str, Any] = {"first": first, "verdict": report.verdict.value}
    found["inside"] = [full[0] // 2, len(set(sys.modules) - imported)]  # start and stop: 2 calls
    found["evaluation"] = next(n for n in report.notes if n.startswith("evaluation"))
    if kind.startswith("mlp") and "--before-import-time" not in sys.argv:  # once is enough
        batch64 = (batch[0].double(), batch[1])
        cost, theta = flat_cost(model, loss, batch64)
        _, found["gradcheck"] = timed(lambda: autograd_gradcheck(cost, theta))
    found["warm"] = [timed(lambda: gradwatch.check_module(model, loss, batch))[1] for _ in range(3)]
    n = sum(p.numel() for p in model.parameters())
    flops = forward_flops(model.double(), (batch[0].double(), batch[1]), loss)
    found["floor"] = 2 * n * flops / matmul_rate()
    return found


FIRST_KINDS = {
    "mlp_cold": "MLP 17,226 parameters, nothing run before the check",
    "mlp_cold_before": "the same, gradwatch imported as before issue 23 (no common.warmup)",
    "mlp": "MLP 17,226 parameters",
    "cnn": "small CNN 3,002 parameters",
}


def bench_first(repeats: int, kinds: list[str]) -> None:
    print("\n(1) first full check in a fresh process (one thread), against warm calls")
    runs: dict[str, list[dict[str, Any]]] = {kind: [] for kind in kinds}
    for _ in range(repeats):  # the kinds side by side, one fresh process each per repeat
        for kind in kinds:
            command = [sys.executable, __file__, "--fresh", kind.removesuffix("_before")]
            if kind.endswith("_before"):
                command.append("--before-import-time")
            done = subprocess.run(command, capture_output=True, text=True, check=True)
            runs[kind].append(json.loads(done.stdout.strip().splitlines()[-1]))
            first, warm = runs[kind][-1]["first"][0], runs[kind][-1]["warm"]
            print(f"    {kind}: first / warm {first / statistics.median(w[0] for w in warm):.2f}")
    for kind in kinds:
        report_first(kind, FIRST_KINDS[kind], runs[kind])


def report_first(kind: str, label: str, runs: list[dict[str, Any]]) -> None:
    first = [r["first"][0] for r in runs]
    warm = [statistics.median(w[0] for w in r["warm"]) for r in runs]
    ratio = [f / w for f, w in zip(first, warm, strict=True)]
    cpu = [r["first"][1] / statistics.median(w[1] for w in r["warm"]) for r in runs]
    print(f"  {label}: first {summary(first)} s, warm {summary(warm)} s, "
          f"first/warm {summary(ratio)} (CPU time {summary(cpu)}; target <= 1.3)")  # fmt: skip
    floor = [w / r["floor"] for w, r in zip(warm, runs, strict=True)]
    print(f"    warm / FLOP floor {summary(floor)}")
    inside = [r.get("inside", [-1, -1]) for r in runs]
    print(f"    in the first call: full garbage collections {[i[0] for i in inside]}, "
          f"modules imported {[i[1] for i in inside]}")  # fmt: skip
    if "gradcheck" in runs[0]:
        grad = [r["gradcheck"][0] for r in runs]
        print(f"    torch.autograd.gradcheck {summary(grad)} s; gradcheck / first call "
              f"{summary([g / f for g, f in zip(grad, first, strict=True)], 1)} "
              "(target >= 8)")  # fmt: skip
    print(f"    verdict {runs[0]['verdict']}; {runs[0]['evaluation']}")


# -- (2) sampled checks against the batched-forward floor ---------------------------------------


def resnet() -> tuple[nn.Module, Any, Any, Callable[[int], Any]]:
    images, labels = models.image_batch(32, 4)
    stack = lambda k: (images.double().repeat(k, 1, 1, 1), labels.repeat(k))  # noqa: E731
    return models.ResNet18(), (images, labels), models.cross_entropy, stack


def transformer() -> tuple[nn.Module, Any, Any, Callable[[int], Any]]:
    tokens = models.token_batch()
    return models.TinyTransformer(), tokens, models.language_loss, lambda k: tokens.repeat(k, 1)


def floor_of(model: nn.Module, loss: Any, stack: Callable[[int], Any]) -> Callable[[int], Timing]:
    """Seconds of ``count`` forwards of the batch as batches of 50 of them (float64, grad mode on,
    as the check evaluates J)."""
    copy = copying.deepcopy(model).double()
    for p in copy.parameters():
        p.requires_grad_(False)
    per_call = 50
    big = stack(per_call)

    def run(count: int) -> Timing:
        def forwards() -> None:
            with torch.enable_grad():
                for lo in range(0, count, per_call):
                    k = min(per_call, count - lo)
                    loss(copy, big if k == per_call else stack(k))

        return timed(forwards)[1]

    return run


def sampled_ratios(build: Callable[..., Any], k: int, repeats: int) -> dict[str, list[float]]:
    model, batch, loss, stack = build()
    floor = floor_of(model, loss, stack)
    floor(50)  # warm both
    gradwatch.check_module(model, loss, batch, sample=10)
    found: dict[str, list[float]] = {"check": [], "floor": [], "ratio": [], "cpu": []}
    for r in range(repeats):
        pair = {}
        for part in ("floor", "check") if r % 2 == 0 else ("check", "floor"):
            if part == "floor":
                pair[part] = floor(2 * k)
            else:
                report, pair[part] = timed(
                    lambda: gradwatch.check_module(model, loss, batch, sample=k)
                )
                found.setdefault("evaluations", []).append(report.evaluations)
                found.setdefault(
                    "note", [next(n for n in report.notes if n.startswith("evaluation"))]
                )
        found["check"].append(pair["check"][0])
        found["floor"].append(pair["floor"][0])
        found["ratio"].append(pair["check"][0] / pair["floor"][0])
        found["cpu"].append(pair["check"][1] / pair["floor"][1])
    return found


def bench_sampled(repeats: int, counts: list[int], which: list[str]) -> None:
    threads = torch.get_num_threads()
    print(f"\n(2) sampled checks against the batched-forward floor ({threads} threads)")
    cases = {
        "resnet": ("ResNet-18, 11.2M parameters", resnet),
        "transformer": ("transformer, 532k", transformer),
    }
    for label, build in (cases[w] for w in which):
        for k in counts:
            found = sampled_ratios(build, k, repeats)
            best = min(found["check"]) / min(found["floor"])  # the least disturbed of each
            print(f"  {label}, components={k}: check {summary(found['check'])} s, floor "
                  f"{summary(found['floor'])} s ({2 * k} forwards); check/floor "
                  f"{summary(found['ratio'])} (CPU {summary(found['cpu'])}; best of each "
                  f"{best:.2f}; target <= 1.5); "
                  f"{int(statistics.median(found['evaluations']))} evaluations")  # fmt: skip
        print(f"    {found['note'][0][:300]}")


# -- (3) the same under load ----------------------------------------------------------------------


COMPETITOR = (
    "import torch\na = torch.randn(1024, 1024)\nwhile True:\n    a = torch.tanh(a @ a * 1e-3)\n"
)


def bench_load(repeats: int) -> None:
    print("\n(3) ResNet-18, sample=150, with and without a process competing for the cores")
    quiet = sampled_ratios(resnet, 150, repeats)
    competitor = subprocess.Popen([sys.executable, "-c", COMPETITOR])
    try:
        time.sleep(2)
        loaded = sampled_ratios(resnet, 150, repeats)
    finally:
        competitor.kill()
        competitor.wait()
    q, lo = statistics.median(quiet["ratio"]), statistics.median(loaded["ratio"])
    print(f"  quiet: check/floor {summary(quiet['ratio'])} (check {summary(quiet['check'])} s)")
    print(f"  loaded: check/floor {summary(loaded['ratio'])} (check {summary(loaded['check'])} s)")
    print(f"  loaded ratio / quiet ratio {lo / q:.2f} (target <= 2)")


# -- (4) directions on a planted bug --------------------------------------------------------------


def bench_directions() -> None:
    print("\n(4) mode='directions' on ResNet-18, wrong BatchNorm backward planted in layer3.0.bn1")
    images, labels = models.image_batch(32, 4)
    for label, buggy in (("planted bug", "layer3.0"), ("control, no bug", None)):
        model = models.ResNet18(buggy=buggy)
        report, (wall, cpu) = timed(
            lambda m=model: gradwatch.check_module(
                m, models.cross_entropy, (images, labels), mode="directions"
            )
        )
        worst = report.worst(3)
        named = [w.name for w in worst]
        right = buggy is not None and all(n.startswith(f"{buggy}.") for n in named[:1])
        print(f"  {label}: {report.verdict.value} in {wall:.1f} s (CPU {cpu:.1f} s), "
              f"{report.evaluations} evaluations; worst {', '.join(named)}"
              + (f" -> names block {buggy}: {right}" if buggy else ""))  # fmt: skip
        notes = [n for n in report.notes if n.startswith("mode directions")]
        if notes:
            print(f"    {notes[0][:400]}")


# -- (5) the plain loop's threads -----------------------------------------------------------------


def _read_out(logits: torch.Tensor) -> torch.Tensor:
    """The logits, behind a test whose value is read out (always true): vmap cannot run it."""
    if not bool(torch.isfinite(logits).all()):
        raise FloatingPointError("the logits are not finite")
    return logits


def looped_loss(model: Any, tokens: torch.Tensor) -> torch.Tensor:
    return models.language_loss(lambda t: _read_out(model(t)), tokens)


def bench_threads(repeats: int) -> None:
    default = torch.get_num_threads()
    print("\n(5) the plain loop on the transformer (a value read out in its loss), sample=100")
    model, tokens = models.TinyTransformer(), models.token_batch()
    chosen_next = _threads.ThreadChoice.next

    def run(threads: int, choose: bool) -> float:
        torch.set_num_threads(threads)
        if not choose:
            _threads.ThreadChoice.next = lambda self: self.user  # type: ignore[method-assign]
        try:
            report, (wall, _) = timed(
                lambda: gradwatch.check_module(model, looped_loss, tokens, sample=100)
            )
        finally:
            _threads.ThreadChoice.next = chosen_next  # type: ignore[method-assign]
            torch.set_num_threads(default)
        assert "plain loop" in " ".join(report.notes)
        return wall

    variants = {
        f"default ({default} threads), the check's choice": (default, True),
        "one thread": (1, True),
        f"default ({default} threads), no choice (before)": (default, False),
    }
    runs: dict[str, list[float]] = {name: [] for name in variants}
    run(1, True)  # warm
    for r in range(repeats):
        for name in variants if r % 2 == 0 else reversed(list(variants)):
            runs[name].append(run(*variants[name]))
    base = runs["one thread"]
    for name, walls in runs.items():
        ratio = [w / b for w, b in zip(walls, base, strict=True)]
        print(f"  {name:48} {summary(walls)} s; / one thread {summary(ratio)}")
    print("  target: default with the choice no slower than one thread")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--parts", default="first,sampled,load,directions,threads,refused")
    parser.add_argument("--components", default="150,1000,2000")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: all)")
    parser.add_argument("--models", default="resnet,transformer", help="models of (2)")
    parser.add_argument("--first", default=",".join(FIRST_KINDS), help="the cases of (1)")
    parser.add_argument("--fresh", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--before-import-time", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.fresh:
        print(json.dumps(fresh(args.fresh)))
        return
    load = os.getloadavg()
    print(f"torch {torch.__version__}, {os.cpu_count()} cores, {torch.get_num_threads()} threads; "
          f"load average before {load[0]:.1f} {load[1]:.1f} {load[2]:.1f}")  # fmt: skip
    parts = args.parts.split(",")
    if "first" in parts:
        bench_first(args.repeats, args.first.split(","))
    if "sampled" in parts:
        bench_sampled(
            args.repeats, [int(k) for k in args.components.split(",")], args.models.split(",")
        )
    if "load" in parts:
        bench_load(args.repeats)
    if "directions" in parts:
        bench_directions()
    if "threads" in parts:
        bench_threads(args.repeats)
    if "refused" in parts:
        bench_refused(args.repeats, summary)
    load = os.getloadavg()
    print(f"\nload average after {load[0]:.1f} {load[1]:.1f} {load[2]:.1f}")


if __name__ == "__main__":
    main()
