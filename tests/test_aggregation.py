"""FedAvg: weighted means by hand, keys and dtypes kept, bad input rejected."""

from __future__ import annotations

import numpy as np
import pytest

from fed_a2v.federation.aggregation import fedavg, fedavg_per_adapter, split_by_adapter

A = {"w": np.array([[1.0, 2.0], [3.0, 4.0]], dtype=np.float32),
     "b": np.array([0.0, -4.0], dtype=np.float32)}
B = {"w": np.array([[5.0, 6.0], [7.0, 8.0]], dtype=np.float32),
     "b": np.array([4.0, 4.0], dtype=np.float32)}


def test_fedavg_weighted_by_hand():
    out = fedavg([A, B], [1, 3])
    assert set(out) == {"w", "b"}
    np.testing.assert_allclose(out["w"], [[4.0, 5.0], [6.0, 7.0]])  # 0.25 a + 0.75 b
    np.testing.assert_allclose(out["b"], [3.0, 2.0])
    for key in out:
        np.testing.assert_allclose(out[key], 0.25 * A[key] + 0.75 * B[key], rtol=1e-6)


def test_fedavg_equal_weights_and_single_state():
    out = fedavg([A, B], [2, 2])
    np.testing.assert_allclose(out["w"], (A["w"] + B["w"]) / 2)
    alone = fedavg([A], [5])
    assert all(np.array_equal(alone[k], A[k]) for k in A)


def test_fedavg_zero_weight_node_is_ignored():
    out = fedavg([A, B], [0, 10])
    assert all(np.array_equal(out[k], B[k]) for k in B)


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.float16])
def test_fedavg_preserves_dtype_and_shape(dtype):
    a = {k: v.astype(dtype) for k, v in A.items()}
    b = {k: v.astype(dtype) for k, v in B.items()}
    out = fedavg([a, b], [1, 3])
    for key in a:
        assert out[key].dtype == dtype
        assert out[key].shape == a[key].shape


def test_fedavg_does_not_modify_inputs():
    a = {k: v.copy() for k, v in A.items()}
    fedavg([a, B], [1, 3])
    assert all(np.array_equal(a[k], A[k]) for k in A)


def test_fedavg_errors():
    with pytest.raises(ValueError):
        fedavg([], [])
    with pytest.raises(ValueError):
        fedavg([A, B], [1])
    with pytest.raises(ValueError, match="> 0"):
        fedavg([A, B], [0, 0])
    with pytest.raises(ValueError):
        fedavg([A, B], [1, -1])


def _node(scale: float) -> dict[str, np.ndarray]:
    return {"clip.pool.w": np.full((2, 3), scale, dtype=np.float32),
            "clip.head.b": np.full(3, -scale, dtype=np.float32),
            "t5.pool.w": np.full((4,), 2 * scale, dtype=np.float32)}


def test_split_by_adapter():
    groups = split_by_adapter(_node(1.0))
    assert set(groups) == {"clip", "t5"}
    assert set(groups["clip"]) == {"clip.pool.w", "clip.head.b"}
    assert set(groups["t5"]) == {"t5.pool.w"}
    assert groups["t5"]["t5.pool.w"].shape == (4,)


def test_fedavg_per_adapter_by_hand():
    out = fedavg_per_adapter([_node(1.0), _node(5.0)], [1, 3])
    assert set(out) == set(_node(1.0))
    np.testing.assert_allclose(out["clip.pool.w"], np.full((2, 3), 4.0))  # 0.25*1 + 0.75*5
    np.testing.assert_allclose(out["clip.head.b"], np.full(3, -4.0))
    np.testing.assert_allclose(out["t5.pool.w"], np.full(4, 8.0))
    assert all(v.dtype == np.float32 for v in out.values())


def test_fedavg_per_adapter_errors():
    with pytest.raises((ValueError, IndexError)):
        fedavg_per_adapter([], [])
    with pytest.raises(ValueError):
        fedavg_per_adapter([_node(1.0), _node(2.0)], [0, 0])


def test_fedavg_rejects_mismatched_shapes():
    a = {"w": np.ones((2, 3), dtype=np.float32)}
    b = {"w": np.arange(3, dtype=np.float32)}  # a malformed reply: (3,) instead of (2, 3)
    with pytest.raises(ValueError):
        fedavg([a, b], [1, 1])
