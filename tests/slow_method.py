"""A method for tests/test_first_hour.py: random maps, slowly (a run long enough to interrupt)."""

from __future__ import annotations

import time

from xattr.methods.baselines.random import RandomAttribution


class SlowRandom(RandomAttribution):
    def _attribute(self, x, target):
        time.sleep(1.0)
        return super()._attribute(x, target)
