"""A metric names itself: ``xattr.evaluate`` labels a metric object's results by its ``name``, and a run or a
table by the option that built it (``metric=[<name>]``), so the two must agree for every metric option."""

from __future__ import annotations

import xattr

#: options that build another option's class with other settings (their results carry the class's name)
VARIANTS = {"lerf_abs": ("lerf", {"rank": "abs"})}


def test_every_metric_option_builds_the_class_named_after_it():
    names = xattr.list_metrics()
    assert len(names) >= 25 and "ehr" in names and "bbox_ratio" in names and "iou" in names
    for option in names:
        m = xattr.metric(option)
        name, settings = VARIANTS.get(option, (option, {}))
        assert m.name == name, (option, m.name)
        for key, value in settings.items():
            assert getattr(m, key) == value, (option, key)
