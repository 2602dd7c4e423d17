"""The statistics the window is chosen on (``edgeinfer.preprocess.stats``): percentiles read off a
histogram of the stored integers are numpy's, and the contrast check costs a bounded sample."""
import numpy as np
import pytest

from edgeinfer.preprocess import Window, apply_window, contrast, stats
from edgeinfer.preprocess.stats import _percentiles


# --- contrast ----------------------------------------------------------------------------------------
def test_contrast_check_samples_a_bounded_number_of_pixels(monkeypatch):
    """Cost is bounded by construction (about 512 x 512 values, whatever the detector), not by a timer."""
    seen = []
    real = np.percentile
    monkeypatch.setattr(np, "percentile", lambda a, q, *args, **kw: seen.append(np.size(a)) or real(a, q, *args, **kw))
    for shape in ((3000, 3000), (4320, 4320), (600, 64)):
        contrast(np.random.default_rng(0).random(shape, dtype=np.float32), None)
    assert max(seen) <= 512 * 512 and 0 < seen[-1] <= 600 * 64


# --- percentiles from a histogram of the stored integers ------------------------------------------
@pytest.mark.parametrize("dtype, lo, hi", [(np.uint16, 0, 4096), (np.uint16, 0, 65535), (np.int16, -2000, 3000),
                                           (np.uint8, 0, 255), (np.int32, -70000, 70000),
                                           (np.uint32, 4_000_000_000, 4_000_900_000)])
@pytest.mark.parametrize("slope", [1.0, 0.5, -2.0])
def test_histogram_percentiles_are_numpy_s(dtype, lo, hi, slope):
    rng = np.random.default_rng(abs(hash((np.dtype(dtype).str, lo, slope))) % 2**32)
    for n in (1, 2, 3, 17, 1000, 262_144):
        base = rng.integers(lo, hi + 1, n).astype(dtype)
        values = lambda part: part.astype(np.float32) * np.float32(slope) + np.float32(-100)  # noqa: E731
        for q in ((0.5, 99.5), (1.0, 99.0), (0.0, 100.0), (37.0, 63.0)):
            want = np.percentile(values(base), q)
            got = _percentiles(base, q, values, 1 if slope > 0 else -1)
            np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-9)
        w = Window("header", float(np.median(values(base))), float(max(2.0, np.ptp(values(base)) / 3)))
        shaded = lambda part: apply_window(values(part), w)  # noqa: E731 - a window never decreases
        want = np.percentile(shaded(base), (1.0, 99.0))
        np.testing.assert_allclose(_percentiles(base, (1.0, 99.0), shaded, 1 if slope > 0 else -1), want,
                                   rtol=1e-12, atol=1e-9)


def test_a_histogram_never_spans_more_than_its_range(monkeypatch):
    # uint32 values near 4e9 in a narrow range: counted from their minimum, not from 0 (32 GB)
    seen = []
    real = np.bincount
    monkeypatch.setattr(stats.np, "bincount",
                        lambda a, *k, **kw: seen.append(int(a.max()) + 1) or real(a, *k, **kw))
    base = np.array([4_000_000_000, 4_000_000_007, 4_000_500_000], np.uint32)
    got = stats._percentiles(base, (0.0, 100.0), lambda p: p.astype(np.float64), 1)
    assert list(got) == [4_000_000_000, 4_000_500_000] and seen == [500_001]


def test_histogram_percentiles_decline_what_they_cannot_answer():
    ident = lambda part: part.astype(np.float32)  # noqa: E731
    assert _percentiles(np.array([1.5, 2.5], np.float32), (1.0, 99.0), ident, 1) is None   # floats: sorted
    assert _percentiles(np.array([0, 2**21], np.int32), (1.0, 99.0), ident, 1) is None     # range too wide
    assert _percentiles(np.array([], np.uint16), (1.0, 99.0), ident, 1) is None
    assert _percentiles(np.array([1, 2], np.uint16), (1.0, 99.0), ident, 0) is None        # a table: unknown
    huge = lambda part: part.astype(np.float32) * np.float32(3e38)  # noqa: E731 - inf at the top
    with np.errstate(over="ignore"):
        assert _percentiles(np.array([1, 2], np.uint16), (1.0, 99.0), huge, 1) is None
