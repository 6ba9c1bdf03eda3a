"""Layout: naming positions of θ after the parameters were reshaped and concatenated."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gradwatch import Layout
from gradwatch.layout import format_label

NET = {"W1": (2, 3), "b1": (2,), "W2": (1, 2), "b2": 1}


def test_sizes_and_offsets_follow_the_mapping_order() -> None:
    layout = Layout.from_mapping(NET)
    assert layout.names == ("W1", "b1", "W2", "b2")
    assert layout.shapes == ((2, 3), (2,), (1, 2), (1,))
    assert layout.sizes() == [6, 2, 2, 1]
    assert [int(o) for o in layout.offsets] == [0, 6, 8, 10, 11]
    assert layout.size == 11


@pytest.mark.parametrize(
    ("flat_index", "name", "index", "label"),
    [
        (0, "W1", (0, 0), "W1[0, 0]"),
        (4, "W1", (1, 1), "W1[1, 1]"),  # row-major, as numpy's ravel and torch's view(-1)
        (5, "W1", (1, 2), "W1[1, 2]"),
        (6, "b1", (0,), "b1[0]"),
        (9, "W2", (0, 1), "W2[0, 1]"),
        (10, "b2", (0,), "b2[0]"),
    ],
)
def test_locate_and_label(flat_index: int, name: str, index: tuple[int, ...], label: str) -> None:
    layout = Layout.from_mapping(NET)
    assert layout.locate(flat_index) == (name, index)
    assert layout.label(flat_index) == label


def test_tensor_of_many_positions() -> None:
    layout = Layout.from_mapping(NET)
    np.testing.assert_array_equal(
        layout.tensor_of(np.arange(11)), [0] * 6 + [1] * 2 + [2] * 2 + [3]
    )


def test_single_names_components_theta() -> None:
    layout = Layout.single(40)
    assert layout.size == 40
    assert layout.label(36) == "theta[36]"


def test_scalar_tensor_keeps_its_bare_name() -> None:
    layout = Layout.from_mapping({"scale": (), "w": (2,)})
    assert layout.sizes() == [1, 2]
    assert layout.locate(0) == ("scale", ())
    assert layout.label(0) == "scale"
    assert layout.label(1) == "w[0]"


def test_empty_tensor_is_skipped_when_locating() -> None:
    layout = Layout.from_mapping({"a": (2,), "empty": (0, 3), "c": (1,)})
    assert layout.sizes() == [2, 0, 1]
    assert layout.label(2) == "c[0]"


def test_format_label() -> None:
    assert format_label("fc.weight", (3, 1)) == "fc.weight[3, 1]"
    assert format_label("scale", ()) == "scale"


@pytest.mark.parametrize("flat_index", [-1, 11, 100])
def test_locate_outside_theta_raises(flat_index: int) -> None:
    with pytest.raises(IndexError, match=f"flat index {flat_index} is outside θ of size 11"):
        Layout.from_mapping(NET).locate(flat_index)


@pytest.mark.parametrize(
    ("layout", "error", "match"),
    [
        pytest.param([("W", (2,))], TypeError, r"`layout` must be an ordered mapping", id="list"),
        pytest.param({"W": "2x3"}, TypeError, r"`layout\['W'\]` must be a shape", id="str"),
        pytest.param({"W": (2, -1)}, TypeError, r"`layout\['W'\]`.*\(2, -1\)", id="negative"),
        pytest.param({"W": (2.0, 3)}, TypeError, r"`layout\['W'\]` must be a shape", id="float"),
        pytest.param({"W": None}, TypeError, r"`layout\['W'\]`.*None", id="none"),
    ],
)
def test_bad_mapping_is_rejected(layout: object, error: type[Exception], match: str) -> None:
    with pytest.raises(error, match=match):
        Layout.from_mapping(layout)  # type: ignore[arg-type]


def test_duplicate_names_are_rejected() -> None:
    with pytest.raises(ValueError, match=r"`layout` names must be unique.*\['W', 'W'\]"):
        Layout(("W", "W"), ((2,), (3,)))


def test_names_and_shapes_must_pair_up() -> None:
    with pytest.raises(ValueError, match="`names` and `shapes` must have the same length; got 2"):
        Layout(("W", "b"), ((2,),))


shapes = st.lists(st.lists(st.integers(0, 4), min_size=0, max_size=3).map(tuple), max_size=5)


@settings(deadline=None)  # a busy CI machine must not make timing a failure
@given(shapes)
def test_every_position_round_trips(shape_list: list[tuple[int, ...]]) -> None:
    layout = Layout(tuple(f"t{i}" for i in range(len(shape_list))), tuple(shape_list))
    assert layout.size == sum(int(np.prod(s)) for s in shape_list)
    for flat in range(layout.size):
        name, index = layout.locate(flat)
        t = layout.names.index(name)
        local = int(np.ravel_multi_index(index, layout.shapes[t])) if index else 0
        assert int(layout.offsets[t]) + local == flat
