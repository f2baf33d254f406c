"""Which concepts the predictions rest on (dissertation ch. 9, sec. 2.3, L1755: "we select the top contributing
unit(s) and use their annotations ... for semantic explanation"), over a run of ``method=semantic_attribution``.

Per explained image the method returns its top unit (``semantic/unit``) and that unit's concept index
(``semantic/concept``, -1 when the unit is no detector). :class:`SemanticConcepts` keeps these per image and
gives, per explained class and over all images: the share of explanations whose top unit is a concept
detector, the share whose detector's concept *is* the explained class (where class and concept share a name,
as the synthetic set's findings and concepts do), the most frequent concept and the most frequent unit.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Any

import pandas as pd
import torch
from torch import nn

from xattr.analyses.base import Analysis
from xattr.errors import XattrConfigError

UNIT, CONCEPT = "semantic/unit", "semantic/concept"


class SemanticConcepts(Analysis):
    """Concepts of the top units of a semantic-attribution run, per explained class (module docstring).

    Args:
        classes: the model's class names by index (``None``: ``class_<i>``); a class whose name is also a
            concept's counts as matched when its top unit detects that concept.
    """

    name = "semantic_concepts"
    needs = (UNIT, CONCEPT, "method")
    paper = "Khakzar et al. (dissertation ch. 9), sec. 2.3 L1755 (semantic attribution)"

    def __init__(self, classes: Sequence[str] | None = None) -> None:
        self.classes = [str(c) for c in classes] if classes is not None else None
        self.concepts: dict[int, str] = {}
        self.rows: list[torch.Tensor] = []  # (B, 3) long: target, unit, concept per image

    def update(self, model: nn.Module, x: torch.Tensor, target: torch.Tensor, maps: torch.Tensor,
               **extras: Any) -> None:
        if UNIT not in extras or CONCEPT not in extras:
            raise XattrConfigError("semantic_concepts needs the auxiliaries 'semantic/unit' and 'semantic/concept'; "
                                   "valid choices: method=semantic_attribution")
        method = extras.get("method")
        if method is not None:
            self.concepts.update(getattr(method, "concepts", {}) or {})
        self.add(target, extras[UNIT], extras[CONCEPT])

    def add(self, target: torch.Tensor, unit: torch.Tensor, concept: torch.Tensor) -> None:
        self.rows.append(torch.stack([torch.as_tensor(t).detach().long().cpu().reshape(-1)
                                      for t in (target, unit, concept)], 1))

    def _name(self, cls: int) -> str:
        return self.classes[cls] if self.classes is not None and 0 <= cls < len(self.classes) else f"class_{cls}"

    def compute(self) -> pd.DataFrame:
        cols = ["class", "images", "detector_share", "matched_share", "top_concept", "top_unit"]
        if not self.rows:
            return pd.DataFrame(columns=cols)
        rows = torch.cat(self.rows)
        out = []
        groups = [(self._name(int(t)), rows[rows[:, 0] == t]) for t in torch.unique(rows[:, 0]).tolist()]
        for cls, r in [*groups, ("all", rows)]:
            concepts = [self.concepts.get(int(c), "none") if c >= 0 else "none" for c in r[:, 2].tolist()]
            names = [self._name(int(t)) for t in r[:, 0].tolist()]
            found = [c for c in concepts if c != "none"]
            out.append({"class": cls, "images": len(r),
                        "detector_share": len(found) / len(r),
                        "matched_share": sum(c == n for c, n in zip(concepts, names)) / len(r),
                        "top_concept": Counter(found).most_common(1)[0][0] if found else "none",
                        "top_unit": Counter(r[:, 1].tolist()).most_common(1)[0][0]})
        return pd.DataFrame(out, columns=cols)

    def state_dict(self) -> dict[str, Any]:
        return {"concepts": dict(self.concepts),
                "rows": torch.cat(self.rows) if self.rows else torch.zeros(0, 3, dtype=torch.long)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.concepts = {int(k): str(v) for k, v in state["concepts"].items()}
        self.rows = [state["rows"].clone()] if len(state["rows"]) else []

    def merge(self, other: SemanticConcepts) -> None:
        self.concepts.update(other.concepts)
        self.rows = self.rows + [r.clone() for r in other.rows]
