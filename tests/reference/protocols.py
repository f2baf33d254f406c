"""Small, independent implementations of the reference evaluation protocols, written here from the facts in
../shared/REFERENCE.md and the behaviour of the files named on each function (the authors' code is not
copied: these are plain per-image numpy / torch loops). The tests in this folder run them on the same maps
as xattr's ``reference`` modes and require equality to 1e-6.

Conventions: one image at a time, maps ``(H, W)`` numpy float32 (as the references held them), images
``(C, H, W)`` torch float32, models called on stacked perturbed copies.
"""

from __future__ import annotations

import numpy as np
import torch
from scipy.integrate import trapezoid
from torchvision.transforms import GaussianBlur

# ----------------------------------------------------------------------------------------------- EHR
# InputIBA @5f03549e: input_iba/models/vision_attributor.py (how maps were stored) and
# input_iba/evaluation/vision/effective_heat_ratios.py (EffectiveHeatRatios.evaluate).


def store_mask_uint8(mask: np.ndarray) -> np.ndarray:
    """IBA masks (``show_feat_mask``): divided by their max, then saved as an 8-bit PNG
    (``(m * 255).astype(uint8)``)."""
    m = mask.astype(np.float32)
    m = m / m.max()
    return (m * np.float32(255)).astype(np.uint8)


def store_input_mask_uint8(input_mask: np.ndarray) -> np.ndarray:
    """InputIBA's input masks (``show_input_mask``): ``sigmoid(alpha)`` averaged over the colour channels, in
    (0, 1), saved as ``(m * 255).astype(uint8)`` with no division by the max (every commit of the code from
    April to December 2021)."""
    return (input_mask.astype(np.float32) * np.float32(255)).astype(np.uint8)


def store_baseline_uint8(attribution: np.ndarray) -> np.ndarray:
    """Baseline maps: Captum's signed attribution ``(C, H, W)``, mean over channels, times 255, cast to uint8
    with no normalisation (negative values wrap around to about 255, values above 1 wrap too)."""
    m = attribution.astype(np.float32).mean(0)
    with np.errstate(invalid="ignore"):
        return (m * np.float32(255)).astype(np.uint8)


def ehr(heatmap: np.ndarray, boxes: list[tuple[int, int, int, int]], base_threshold: float = 0.1,
        weight_by_heat: bool = True) -> tuple[float, np.ndarray]:
    """EHR of one map as the evaluator computes it: a map whose max is above 1 is read as 8-bit and divided
    by 255; heat below ``base_threshold`` is zeroed; 11 quantiles of the remaining heat, each threshold capped
    at 0.99 x max; ratio = (heat in the box at or above t) / (pixels at or above t); trapezoid AUC.
    Raises (IndexError, as the reference) when no heat reaches ``base_threshold``."""
    heatmap = heatmap.copy()
    if heatmap.ndim == 3:
        heatmap = heatmap.mean(0)
    roi = np.zeros(heatmap.shape, dtype=bool)
    for x1, y1, x2, y2 in boxes:
        roi[y1:y2, x1:x2] = True
    if heatmap.max() > 1.0:
        heatmap = heatmap.astype(float) / 255.0
    heatmap = heatmap.astype(float)
    poi = heatmap >= base_threshold
    heatmap[~poi] = 0.0
    values = heatmap[poi]
    quantiles = np.linspace(0, 1.0, 11)
    ratios = np.zeros(len(quantiles))
    top = heatmap.max()
    for i, q in enumerate(quantiles):
        t = min(np.quantile(values, q), top * 0.99)
        above = heatmap >= t
        inside = heatmap[above & roi].sum() if weight_by_heat else (above & roi).sum()
        ratios[i] = inside / (above.sum() + 1e-8)
    return float(trapezoid(ratios, quantiles)), ratios


# -------------------------------------------------------------------------------- insertion / deletion
# InputIBA @5f03549e: input_iba/evaluation/vision/insertion_deletion.py (VisionInsertionDeletion) and
# input_iba/evaluation/perturber.py (PixelPerturber).


class PixelPerturber:
    """Holds the current image; ``perturb(r, c)`` copies pixel (r, c) of ``replacement`` into it in place."""

    def __init__(self, start: torch.Tensor, replacement: torch.Tensor) -> None:
        self.current = start.clone()
        self.replacement = replacement

    def perturb(self, r: int, c: int) -> None:
        self.current[:, r, c] = self.replacement[:, r, c]

    def get_current(self) -> torch.Tensor:
        return self.current  # the same tensor every time (what makes the in-place defect possible)


def _perturb_curve(model, perturber: PixelPerturber, order: np.ndarray, w: int, target: int, per_step: int,
                   inplace_defect: bool, chunk: int = 80) -> np.ndarray:
    n = len(order)
    scores: list[float] = []
    done = 0
    while done < n:
        states = []
        for _ in range(chunk):
            k = min(n - done, per_step)
            for j in range(k):
                r, c = divmod(int(order[done + j]), w)
                perturber.perturb(r, c)
            cur = perturber.get_current()
            states.append(cur if inplace_defect else cur.clone())  # defect: the same tensor appended
            done += k
            if done == n:
                break
        with torch.no_grad():
            probs = model(torch.stack(states)).softmax(-1)[:, target]
        scores.extend(probs.double().tolist())
    return np.array(scores)


def insertion_deletion(model, heatmap: torch.Tensor, image: torch.Tensor, target: int, per_step: int = 10,
                       sigma: float = 15.0, inplace_defect: bool = False) -> dict[str, np.ndarray | float]:
    """Both games for one image: pixels ranked by ``topk`` of the map (use maps without ties); deletion sets
    them to 0, insertion starts from ``GaussianBlur(int(2 sigma - 1), sigma)`` of the image; the softmax
    probability of ``target`` after each step of ``per_step`` pixels (no unperturbed point), in chunks of 80
    steps; AUC = ``trapezoid(scores, dx=1 / len(scores))``. ``inplace_defect`` reproduces the released code's
    appending of the same in-place-modified tensor (every point of a chunk = the chunk's last state)."""
    n = heatmap.numel()
    order = torch.topk(heatmap.flatten(), n).indices.numpy()
    w = image.shape[-1]
    dele = _perturb_curve(model, PixelPerturber(image, torch.zeros_like(image)), order, w, target, per_step,
                          inplace_defect)
    canvas = GaussianBlur(int(2 * sigma - 1), sigma)(image)
    ins = _perturb_curve(model, PixelPerturber(canvas, image), order, w, target, per_step, inplace_defect)
    return {"deletion": dele, "insertion": ins,
            "deletion_auc": float(trapezoid(dele, dx=1.0 / len(dele))),
            "insertion_auc": float(trapezoid(ins, dx=1.0 / len(ins)))}


# --------------------------------------------------------------------------------------- bbox ratio
# IBA-paper-code @6bac54a8: scripts/eval_bounding_boxes.py (get_ration_top_in_bbox: an index map of the
# ranked float heatmap, 0 for the highest pixel, -k for the k-th; share of the n = box-area best inside).


def bbox_ratio(heatmap: np.ndarray, mask: np.ndarray) -> float:
    flat = heatmap.flatten()
    index = np.empty(flat.size, dtype=np.int64)
    index[np.argsort(-flat, kind="stable")] = -np.arange(flat.size)
    index = index.reshape(heatmap.shape)
    n = int(mask.sum())
    in_box = np.where(mask, index, index.min())
    return float((in_box > -n).sum() / n)


# ------------------------------------------------------------------------------------- Sensitivity-N
# InputIBA @5f03549e: input_iba/evaluation/vision/sensitivity_n.py (VisionSensitivityN: masks of n pixels
# reused for every image, x * (1 - mask), target logit of the clean minus the perturbed image, attribution
# summed in the mask, np.corrcoef per image). IBA-paper-code @6bac54a8: scripts/eval_sensitivity_n.py (tile
# masks, the same products, one np.corrcoef over all images' (image, mask) pairs per n).


def sensitivity_pairs(model, heatmap: torch.Tensor, image: torch.Tensor, target: int,
                      masks: list[torch.Tensor]) -> tuple[np.ndarray, np.ndarray]:
    """(attribution sums, logit drops) of one image over the given 0/1 pixel masks ``(H, W)``."""
    perturbed, sums = [], []
    for mask in masks:
        perturbed.append(image * (1 - mask))
        sums.append((heatmap * mask).sum())
    with torch.no_grad():
        out = model(torch.stack(perturbed + [image]))
    diff = out[-1:, target] - out[:-1, target]
    return torch.stack(sums).double().numpy(), diff.double().numpy()


def sensitivity_n_per_image(model, heatmap, image, target, masks) -> float:
    a, d = sensitivity_pairs(model, heatmap, image, target, masks)
    return float(np.corrcoef(a, d)[0, 1])


def sensitivity_n_pooled(model, heatmaps, images, targets, masks) -> float:
    pairs = [sensitivity_pairs(model, h, x, int(t), masks) for h, x, t in zip(heatmaps, images, targets)]
    a = np.stack([p[0] for p in pairs]).flatten()
    d = np.stack([p[1] for p in pairs]).flatten()
    return float(np.corrcoef(a, d)[0, 1])


# -------------------------------------------------------------------------------------- degradation
# IBA-paper-code @6bac54a8: attribution_bottleneck/evaluate/degradation.py (DegradationEval.eval): tiles
# ranked by the map's mean inside each (MoRF: highest first; LeRF: reverse), replaced one by one by the
# image's per-channel mean; softmax probability of the target; evaluation points
# round(linspace(0, 1, n_steps) * n_tiles): the original image, then the image after step s (s + 1 tiles
# replaced) whenever s is one of those numbers, s < n_tiles.


def degradation_curves(model, heatmap: np.ndarray, image: torch.Tensor, target: int, tile: int,
                       n_steps: int = 100, points: str = "reference") -> dict[str, np.ndarray]:
    """MoRF and LeRF probability curves of one image. ``points``: ``reference`` (the code's points, above)
    or ``exact`` (the image after exactly round(k / (n_steps - 1) * n_tiles) tiles, k = 0..n_steps-1)."""
    c, h, w = image.shape
    rows, cols = h // tile, w // tile  # sizes divisible by the tile here
    means = heatmap.reshape(rows, tile, cols, tile).mean((1, 3)).flatten()
    fill = image.mean((1, 2), keepdim=True).expand_as(image)
    counts = [int(p) for p in np.round(np.linspace(0, 1, n_steps) * rows * cols)]
    out = {}
    for name, order in (("morf", np.argsort(-means, kind="stable")), ("lerf", np.argsort(means, kind="stable"))):
        cur = image.clone()
        states = [image.clone()] if points == "reference" else []
        if points == "exact":
            states.extend(image.clone() for k in counts if k == 0)
        for s, t_idx in enumerate(order):
            r, q = divmod(int(t_idx), cols)
            cur[:, r * tile:(r + 1) * tile, q * tile:(q + 1) * tile] = fill[:, r * tile:(r + 1) * tile,
                                                                            q * tile:(q + 1) * tile]
            if points == "reference" and s in counts:
                states.append(cur.clone())
            if points == "exact":
                states.extend(cur.clone() for k in counts if k == s + 1)
        with torch.no_grad():
            out[name] = model(torch.stack(states)).softmax(-1)[:, target].double().numpy()
    return out


# ---------------------------------------------------------------------------------------------- LeRF
# RoarTorch src/lerf/pixel_perturbation_analysis.py (commit a410328; read at 5a8afb9): remove(..., bottom=True,
# gray=True) on the channel max of the signed map, replace value 0 in normalised space, softmax of the
# predicted class, |p0 - pq| / p0 per percentile (integers 1..10), averaged over images (x 100; no AUC).


def lerf_curve(model, image: torch.Tensor, attribution: np.ndarray, percentiles: list[int]) -> np.ndarray:
    """``|p0 - pq| / p0`` at each integer percentile for one image ``(3, H, W)`` and its map ``(C, H, W)``."""
    amap = np.max(attribution, axis=0)                      # signed channel max
    img = image.numpy()
    flat = np.ravel(np.copy(amap))
    changed = []
    for p in percentiles:
        k = int((p * img.size) / 300)                       # int(p * 3HW / 300) = int(p% of H*W)
        idx = flat.argsort()[:k][::-1]                      # the k lowest signed values
        mask = np.zeros(flat.shape, dtype=bool)
        mask[idx] = True
        mask = mask.reshape(img[0].shape)
        out = np.copy(img)
        for c in range(3):
            out[c, mask] = 0.0
        changed.append(out)
    with torch.no_grad():
        p0 = torch.softmax(model(image[None]), 1)[0].numpy()
        cls = int(p0.argmax())
        pq = torch.softmax(model(torch.from_numpy(np.stack(changed))), 1).numpy()[:, cls]
    return np.abs((p0[cls] - pq) / p0[cls])


# ---------------------------------------------------------------------------------------------- ROAR
# RoarTorch src/roar/roar_core.py remove(..., keep=False, gray=True) as CompoundImageFolderDataset calls it:
# maps read back from 8-bit PNG by ToTensor (uint8 / 255, float32), channel max (keepdims), the top
# int(p H W) pixels taken as argsort()[-k:] (numpy's default sort), every channel set to the fill.


def roar_removed(map_uint8: np.ndarray, percent: int) -> np.ndarray:
    """``(H, W)`` bool: the pixels RoarTorch removes from an image whose stored map is ``map_uint8`` ``(H, W)``."""
    attribution = (torch.from_numpy(map_uint8[None].astype(np.uint8)).float() / 255).numpy()  # ToTensor
    attribution = np.max(attribution, axis=0, keepdims=True)
    flat = np.array(np.ravel(np.copy(attribution[0])))
    k = int(percent * (3 * flat.size) / 3 / 100)
    mask = np.zeros(flat.shape, dtype=bool)
    mask[flat.argsort()[-k:][::-1]] = True
    return mask.reshape(map_uint8.shape)


def roar_train_image(image_uint8: np.ndarray, removed: np.ndarray, mean: tuple) -> np.ndarray:
    """A training image as RoarTorch feeds it to the augmentation: ToTensor ([0, 1], float32), removed pixels
    set to the dataset mean, then ``(image * 255).astype(np.uint8)`` (truncation), ``(3, H, W)`` uint8."""
    img = (torch.from_numpy(image_uint8).float() / 255).numpy()
    for c in range(3):
        img[c, removed] = mean[c]
    return (img * 255).astype(np.uint8)


def first_split(labels: list[int], ratio: float = 7.0 / 8.0) -> tuple[list[int], list[int]]:
    """RoarTorch's CIFAR10._uniform_train_val_split: per class, the first int(ratio n) indices train, the rest
    validate."""
    labels_np = np.array(labels)
    train, val = [], []
    for c in range(int(labels_np.max()) + 1):
        idx = np.argwhere(labels_np == c).ravel()
        n = int(ratio * len(idx))
        train += idx[:n].tolist()
        val += idx[n:].tolist()
    return train, val
