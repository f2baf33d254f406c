"""InputIBA's three stages side by side (Fig. 1 of ch. 6): image, feature bottleneck, generator mask
``lambda_G`` and the final input mask ``Lambda*``, one row per image.

>>> maps = method.attribute(x, target)
>>> fig = stage_figure(images, method.last_stages)   # images (B, 3, H, W) in [0, 1]
>>> fig.savefig("input_iba_stages.png")
"""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

STAGES = (("feature", "feature IBA"), ("generator", "generator mask"), ("input", "InputIBA"))


def stage_figure(images: torch.Tensor, stages: dict[str, torch.Tensor], titles: list[str] | None = None,
                 cmap: str = "jet", size: float = 2.2) -> plt.Figure:
    """A ``B x 4`` grid; each map is shown min-max scaled per image (the stages have different units:
    bits per pixel, and [0, 1] masks)."""
    missing = [k for k, _ in STAGES if k not in stages]
    if missing:
        raise ValueError(f"stages lacks {missing}; run method.attribute first (keys: {sorted(stages)})")
    b = images.shape[0]
    fig, axes = plt.subplots(b, 4, figsize=(4 * size, b * size), squeeze=False)
    for i in range(b):
        img = images[i].detach().float().cpu().permute(1, 2, 0).clamp(0, 1).numpy()
        axes[i, 0].imshow(img)
        axes[i, 0].set_title(titles[i] if titles else "image", fontsize=8)
        for j, (key, name) in enumerate(STAGES, start=1):
            m = stages[key][i].detach().float().cpu().squeeze(0)
            m = (m - m.min()) / (m.max() - m.min()).clamp_min(1e-12)
            axes[i, j].imshow(img, alpha=1.0)
            axes[i, j].imshow(m.numpy(), cmap=cmap, alpha=0.6)
            axes[i, j].set_title(name, fontsize=8)
    for ax in axes.flat:
        ax.axis("off")
    fig.tight_layout()
    return fig
