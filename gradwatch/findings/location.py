"""Where the first wrong gradient enters: the places in the backward graph that explain which
parameters fail and which pass.

A bug in one node's backward makes a wrong gradient on some of the edges leaving that node;
every parameter reached through such an edge gets a wrong gradient, no other does. So a node is
a possible entry when the edges it could corrupt (those reaching no passing parameter) reach
every failing parameter. Parameters that were not judged (or warn) constrain nothing. Where no
node qualifies (two bugs, or an error cancelled on its way down), the bug cannot be located
from the per-parameter results, and the location says so instead of naming a module.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from gradwatch.findings.backward_graph import BackwardGraph

# More modules than this in the entry region are summarized (first and last named): the
# results were too sparse to narrow the place down.
MOST_NAMED = 6
# Parameters named on each side of the boundary.
MOST_BOUNDARY = 3


@dataclass(frozen=True)
class Location:
    """Where the first wrong gradient enters, or why that cannot be said.

    Attributes:
        located: whether one place explains every failing and passing parameter.
        modules: the modules whose backward may hold the bug, in backward order ("" is the
            model's own forward, None-made nodes are the loss's and appear as ``"(loss)"``).
        passing: the passing parameters right above that place.
        failing: the failing parameters right below it.
        text: one sentence for the report.
    """

    located: bool
    modules: tuple[str, ...]
    passing: tuple[str, ...]
    failing: tuple[str, ...]
    text: str

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe."""
        return {
            "located": self.located,
            "modules": list(self.modules),
            "passing": list(self.passing),
            "failing": list(self.failing),
            "text": self.text,
        }


LOSS = "(loss)"


def _mask(graph: BackwardGraph, verdicts: Mapping[str, str], wanted: str) -> int:
    return sum(1 << k for k, p in enumerate(graph.parameters) if verdicts.get(p) == wanted)


def entry_nodes(graph: BackwardGraph, failing: int, passing: int) -> list[int]:
    """Nodes whose corruptible edges (those reaching no passing parameter) reach every failing
    parameter, as bit masks over ``graph.parameters``.

    Example:
        >>> g = BackwardGraph(("a", "b"), {"a": "", "b": ""}, (None, None, None, None),
        ...                   ((1, 2), (3,), (), ()), (-1, -1, 0, 1))
        >>> entry_nodes(g, failing=0b10, passing=0b01)
        [0, 1]
    """
    reach = graph.reach()
    found = []
    for node, children in enumerate(graph.children):
        corruptible = 0
        for child in children:
            if not reach[child] & passing:
                corruptible |= reach[child]
        if failing and not failing & ~corruptible:
            found.append(node)
    return found


def _nearest(graph: BackwardGraph, start: Sequence[int], wanted: int) -> list[str]:
    """The parameters in ``wanted`` (a mask) of the modules whose parameters are fewest edges
    below the nodes ``start``."""
    frontier, seen = list(start), set(start)
    while frontier:
        hit = [
            graph.owners[graph.parameters[graph.leaf[n]]]
            for n in frontier
            if graph.leaf[n] >= 0 and wanted >> graph.leaf[n] & 1
        ]
        if hit:
            return [
                p
                for k, p in enumerate(graph.parameters)
                if graph.owners[p] in hit and wanted >> k & 1
            ]
        frontier = [c for n in frontier for c in graph.children[n] if c not in seen]
        seen.update(frontier)
    return []


def _role(module: str, graph: BackwardGraph, verdicts: Mapping[str, str]) -> str:
    """What to look at in ``module``: its input gradient where its own parameters pass."""
    if module == LOSS:
        return "the backward of the loss (outside the model's modules)"
    own = [verdicts.get(p) for p, m in graph.owners.items() if m == module]
    known = {*graph.owners.values(), *(m for m in graph.modules if m is not None)}
    has_children = any(m != module and m.startswith(f"{module}." if module else "") for m in known)
    name = module or "the model"
    if own and all(v == "pass" for v in own):
        return f"the input gradient of {name}"
    if has_children and not own:
        return f"{name}'s own forward (outside its submodules)"
    return f"the backward of {name}"


def _listing(names: Sequence[str], most: int = MOST_BOUNDARY) -> str:
    shown = ", ".join(names[:most])
    return shown + (f" and {len(names) - most} more" if len(names) > most else "")


def _common(modules: Sequence[str]) -> str:
    """The deepest module holding every one of ``modules`` ('' when none but the model)."""
    parts = [m.split(".") for m in modules if m != LOSS]
    if len(parts) != len(modules) or not parts:
        return ""
    common = []
    for level in zip(*parts, strict=False):
        if len(set(level)) != 1:
            break
        common.append(level[0])
    return ".".join(common)


def _sentence(
    modules: Sequence[str], above: Sequence[str], below: Sequence[str], roles: Sequence[str]
) -> str:
    inside = _common(modules)
    where = f" in {inside}," if inside and len(modules) > 1 else ""
    if above:
        passes = "passes" if len(above) == 1 else "pass"
        fails = "fails" if len(below) == 1 else "fail"
        between = f" between {_listing(above)} ({passes}) and {_listing(below)} ({fails})"
    else:
        between = f" above {_listing(below)} (every checked parameter it reaches fails)"
    if len(roles) > MOST_NAMED:
        look = (
            f"{len(roles)} places, from {roles[0]} to {roles[-1]} (judge more parameters, e.g. "
            "check more components, to narrow it down)"
        )
    else:
        look = ", ".join(roles[:-1]) + (" or " if len(roles) > 1 else "") + roles[-1]
    return f"The first wrong gradient enters{where}{between}: look at {look}."


def locate(graph: BackwardGraph, verdicts: Mapping[str, str]) -> Location | None:
    """Where the first wrong gradient enters, from each parameter's verdict ("pass", "warn",
    "fail", "not judged"); None when no parameter fails.

    Only "pass" and "fail" are evidence: a parameter that warns or was not judged may be either
    side. A parameter whose true gradient is 0 to within rounding (a bias before BatchNorm) tells
    nothing about the gradient flowing through it (BatchNorm cancels any error there too): give
    it "not judged".

    Example:
        >>> g = BackwardGraph(("head.weight", "body.weight"),
        ...                   {"head.weight": "head", "body.weight": "body"},
        ...                   (None, "head", "act", "body", "head", "body"),
        ...                   ((1,), (2, 4), (3,), (5,), (), ()), (-1, -1, -1, -1, 0, 1))
        >>> locate(g, {"head.weight": "pass", "body.weight": "fail"}).modules
        ('head', 'act', 'body')
    """
    unseen = [p for p, v in verdicts.items() if v == "fail" and p not in graph.parameters]
    if unseen:  # their gradient arrives some way the graph does not show: no place explains it
        fails = "fails" if len(unseen) == 1 else "fail"
        text = (
            f"The autograd graph of J does not reach {_listing(unseen)}, which {fails} (a "
            "gradient computed outside the graph, as in reentrant checkpointing?), so the bug "
            "cannot be located from the per-parameter results."
        )
        return Location(False, (), (), tuple(unseen), text)
    failing = _mask(graph, verdicts, "fail")
    if not failing:
        return None
    passing = _mask(graph, verdicts, "pass")
    nodes = entry_nodes(graph, failing, passing)
    failed = [p for p in graph.parameters if verdicts.get(p) == "fail"]
    if not nodes:
        text = (
            f"The failing parameters ({_listing(failed)}) are not all reached from one place "
            "that reaches no passing parameter: two wrong backwards, or an error that cancels "
            "on its way down (as through BatchNorm), so the bug cannot be located from the "
            "per-parameter results."
        )
        return Location(False, (), (), tuple(failed), text)
    modules = list(
        dict.fromkeys(LOSS if graph.modules[n] is None else graph.modules[n] for n in nodes)
    )
    above = _nearest(graph, nodes, passing)
    below = _nearest(graph, nodes, failing)
    roles = [_role(str(m), graph, verdicts) for m in modules]
    text = _sentence([str(m) for m in modules], above, below, roles)
    return Location(True, tuple(str(m) for m in modules), tuple(above), tuple(below), text)
