"""Sliding-window inference: tiles cover every voxel, blending is a weighted mean, shapes are checked."""
from __future__ import annotations

import numpy as np
import pytest

from edgeinfer.errors import InferenceError
from edgeinfer.sliding import blend_weights, sliding_window, tile_starts


def test_tiles_cover_the_axis_and_the_last_one_ends_at_its_end():
    assert tile_starts(100, 32, 0.25) == [0, 24, 48, 68]
    assert tile_starts(32, 32, 0.5) == [0] and tile_starts(10, 32, 0.5) == [0]
    for size, roi, ov in ((97, 16, 0.0), (512, 96, 0.5), (300, 64, 0.25)):
        s = tile_starts(size, roi, ov)
        covered = np.zeros(size, bool)
        for a in s:
            covered[a:a + roi] = True
        assert covered.all() and s[-1] + roi == size and s == sorted(set(s))
    with pytest.raises(ValueError, match="overlap in"):
        tile_starts(10, 4, 1.0)


@pytest.mark.parametrize("blend", ["gaussian", "constant"])
@pytest.mark.parametrize("shape, roi", [((3, 37, 50), (3, 16, 16)), ((5, 20, 20), (1, 32, 32)), ((64,), (8,))])
def test_a_model_that_copies_its_input_gives_the_input_back(shape, roi, blend):
    x = np.random.default_rng(0).standard_normal((2, *shape)).astype(np.float32)
    calls = []
    y = sliding_window(x, roi, lambda t: calls.append(len(t)) or t[:, :1] * 2, overlap=0.5, batch=3, blend=blend,
                       progress=lambda n: None)
    assert y.shape == (1, *x.shape[1:]) and np.allclose(y, 2 * x[:1], atol=1e-5)
    assert max(calls) <= 3


def test_overlapping_tiles_are_blended_by_their_weights():
    x = np.zeros((1, 1, 24), np.float32)
    seen = iter(range(100))
    y = sliding_window(x, (1, 16), lambda t: np.stack([np.full((1, 1, 16), next(seen), np.float32) for _ in t]),
                       overlap=0.5, batch=1, blend="constant")
    assert tile_starts(24, 16, 0.5) == [0, 8]
    assert np.allclose(y[0, 0, :8], 0) and np.allclose(y[0, 0, 8:16], 0.5) and np.allclose(y[0, 0, 16:], 1)
    w = blend_weights((5, 7))
    assert w.shape == (5, 7) and w.max() == 1 and w[2, 3] == 1 and w.min() > 0 and w[0, 0] < w[2, 3]


def test_a_model_returning_another_shape_is_an_inference_error():
    with pytest.raises(InferenceError, match=r"returned \(1, 1, 8, 8\) for 1 tile\(s\) of \(16, 16\)"):
        sliding_window(np.zeros((1, 20, 20), np.float32), (16, 16), lambda t: np.zeros((1, 1, 8, 8)), batch=1)
