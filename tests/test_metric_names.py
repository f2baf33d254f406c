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
        # it describes itself (help(), the API reference): a docstring of its own, not only its base class's
        doc = type(m).__dict__.get("__doc__")
        assert isinstance(doc, str) and len(doc) > 60, (option, doc)


#: method options that build another option's class with other settings
METHOD_VARIANTS = {"lrp_alpha_beta": "lrp", "occlusion14": "occlusion"}


def test_every_method_option_targets_the_class_named_after_it():
    """The method's ``name`` (the cost line's label, a saved run's method) is the option that builds it; options
    that only change settings (``defaults:`` another option, or the same class) name the class they build."""
    import importlib

    from omegaconf import OmegaConf

    from xattr.config import CONF_DIR

    names = xattr.list_methods()
    assert {"greedy_pruning", "dgr", "neuron_mct", "input_iba", "grad_cam"} <= set(names)
    checked = 0
    for option in names:
        node = OmegaConf.load(CONF_DIR / "method" / f"{option}.yaml")
        if "_target_" not in node:  # a variant: defaults of another option
            continue
        module, _, cls = node["_target_"].rpartition(".")
        built = getattr(importlib.import_module(module), cls)
        assert built.name == METHOD_VARIANTS.get(option, option), (option, built.name)
        checked += 1
    assert checked >= 30
