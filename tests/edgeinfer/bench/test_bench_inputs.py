"""edgeinfer.bench.inputs: the feeds rotate over distinct real images."""
from __future__ import annotations

import numpy as np

from edgeinfer import bench


def test_inputs_rotate_over_distinct_real_images():
    imgs = [np.full((1, 4, 4), i, np.float32) for i in range(3)]
    feeds = bench.make_feeds(imgs, 2, "image")
    assert len(feeds) == 3
    firsts = [f["image"][:, 0, 0, 0].tolist() for f in feeds]
    assert firsts == [[0, 1], [2, 0], [1, 2]]  # wraps around the images, every batch differs
