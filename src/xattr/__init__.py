"""xattr: attribution methods and their evaluations, from Python or one command, batched on the GPU.

The Python API (``docs/api.md``; :mod:`xattr.api`):

>>> import xattr
>>> model = xattr.load_model("efficientnet_lite0")
>>> x, ids = xattr.load_images("assets/samples", model)
>>> maps = xattr.method("grad_cam", model).attribute(x, xattr.top1(model, x))
>>> xattr.evaluate(model, x, maps, metrics=["insertion_deletion"])

The command line: ``python -m xattr.run method=<name> model=<name> metric=[<name>]`` (docs/cli.md).
Names are imported on first use, so ``import xattr`` stays instant and the CLI starts fast.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

#: public name -> the module that defines it
_PUBLIC = {
    "load_model": "xattr.api", "load_images": "xattr.api", "method": "xattr.api", "metric": "xattr.api",
    "fit": "xattr.api", "explain": "xattr.api", "top1": "xattr.api", "evaluate": "xattr.api", "summary_table": "xattr.api", "plot": "xattr.api",
    "open_run": "xattr.api", "Run": "xattr.api", "quantus_explain": "xattr.api", "list_methods": "xattr.api",
    "list_metrics": "xattr.api", "list_models": "xattr.api",
    "Explanation": "xattr.methods.base", "Attribution": "xattr.methods.base",
    "Metric": "xattr.metrics.base", "MetricResult": "xattr.metrics.base",
    "ZooModel": "xattr.models.zoo", "Preprocess": "xattr.core.preprocess",
    "XattrConfigError": "xattr.errors",
}
__all__ = [
    "Attribution", "Explanation", "Metric", "MetricResult", "Preprocess", "Run", "XattrConfigError", "ZooModel",
    "evaluate", "explain", "fit", "list_methods", "list_metrics", "list_models", "load_images", "load_model",
    "method", "metric", "open_run", "plot", "quantus_explain", "summary_table", "top1",
]

if TYPE_CHECKING:  # for editors and type checkers; at run time the names load lazily (PEP 562)
    from xattr.api import (
        Run,
        evaluate,
        explain,
        fit,
        list_methods,
        list_metrics,
        list_models,
        load_images,
        load_model,
        method,
        metric,
        open_run,
        plot,
        quantus_explain,
        summary_table,
        top1,
    )
    from xattr.core.preprocess import Preprocess
    from xattr.errors import XattrConfigError
    from xattr.methods.base import Attribution, Explanation
    from xattr.metrics.base import Metric, MetricResult
    from xattr.models.zoo import ZooModel


def __getattr__(name: str) -> Any:
    if name in _PUBLIC:
        value = getattr(importlib.import_module(_PUBLIC[name]), name)
        globals()[name] = value
        return value
    if name in ("__path__", "__file__"):
        raise AttributeError(name)
    raise AttributeError(f"module 'xattr' has no attribute {name!r}; valid choices: {', '.join(__all__)}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_PUBLIC])
