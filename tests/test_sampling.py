"""sample_components: a reproducible sample of k components spread over every tensor."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gradwatch import Layout
from gradwatch.check.sampling import sample_components

LAYOUT = Layout.from_mapping({"W1": (50, 20), "b1": (50,), "W2": (3, 50), "b2": (3,)})


def tensors_hit(layout: Layout, indices: np.ndarray) -> set[str]:
    return {layout.names[int(t)] for t in layout.tensor_of(indices)}


@pytest.mark.parametrize("k", [4, 10, 37, 200])
def test_sample_has_k_distinct_sorted_components_in_every_tensor(k: int) -> None:
    indices = sample_components(LAYOUT, k, seed=0)
    assert indices.dtype == np.int64
    assert indices.size == k
    assert np.unique(indices).size == k
    assert np.all(np.diff(indices) > 0)
    assert indices.min() >= 0 and indices.max() < LAYOUT.size
    assert tensors_hit(LAYOUT, indices) == set(LAYOUT.names)


def test_large_tensors_get_a_share_in_proportion() -> None:
    counts = np.bincount(LAYOUT.tensor_of(sample_components(LAYOUT, 200, seed=0)), minlength=4)
    # W1 holds 1000 of 1203 components: about 83% of the sample.
    assert 150 <= counts[0] <= 175
    assert counts.min() >= 1


def test_same_seed_same_sample() -> None:
    np.testing.assert_array_equal(
        sample_components(LAYOUT, 25, seed=3), sample_components(LAYOUT, 25, seed=3)
    )


def test_other_seed_other_sample() -> None:
    assert not np.array_equal(
        sample_components(LAYOUT, 25, seed=3), sample_components(LAYOUT, 25, seed=4)
    )


@pytest.mark.parametrize("k", [None, 1203, 5000])
def test_none_or_k_at_least_n_means_every_component(k: int | None) -> None:
    np.testing.assert_array_equal(sample_components(LAYOUT, k), np.arange(LAYOUT.size))


def test_fewer_components_than_tensors_go_to_the_largest() -> None:
    indices = sample_components(LAYOUT, 2, seed=0)
    assert tensors_hit(LAYOUT, indices) == {"W1", "W2"}


def test_empty_tensors_are_never_sampled() -> None:
    layout = Layout.from_mapping({"a": (5,), "empty": (0,), "c": (7,)})
    indices = sample_components(layout, 4, seed=0)
    assert indices.size == 4
    assert tensors_hit(layout, indices) == {"a", "c"}


sizes = st.lists(st.integers(0, 30), min_size=1, max_size=6).filter(lambda s: sum(s) > 0)


@settings(deadline=None)  # a busy CI machine must not make timing a failure
@given(sizes=sizes, k=st.integers(1, 200), seed=st.integers(0, 2**32 - 1))
def test_sample_properties(sizes: list[int], k: int, seed: int) -> None:
    layout = Layout(tuple(f"t{i}" for i in range(len(sizes))), tuple((s,) for s in sizes))
    indices = sample_components(layout, k, seed=seed)
    assert indices.size == min(k, layout.size)
    assert np.unique(indices).size == indices.size
    assert np.all((indices >= 0) & (indices < layout.size))
    nonempty = {f"t{i}" for i, s in enumerate(sizes) if s > 0}
    if k >= len(nonempty):
        assert tensors_hit(layout, indices) == nonempty
