"""Network dissection (dissertation ch. 9, eq. 5 L1731): IoU of thresholded unit maps with concept masks,
summed over the images holding the concept; exact quantile thresholds; detectors; state, resume and merge."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from xattr.analyses.dissection import Dissection, detector_counts, quantile_thresholds
from xattr.errors import XattrConfigError


class Probe(nn.Module):
    """A 1x1 conv copying the input's channels (the dissected layer ``features.0``) and a linear head."""

    def __init__(self, channels: int = 2) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(channels, channels, 1, bias=False), nn.ReLU())
        self.head = nn.Linear(channels, 3)
        with torch.no_grad():
            self.features[0].weight.copy_(torch.eye(channels).view(channels, channels, 1, 1))
        self.num_classes = 3

    def forward(self, x):
        return self.head(self.features(x).mean((2, 3)))

#: the paper text's settings (the config's defaults are the CheXplain-Dissection code's; see the module docstring)
TEXT = {"quantile_on": "features", "union": "concept_images", "labels": "multi", "mask_size": None}


def _squares(n: int, size: int, side: int, seed: int) -> torch.Tensor:
    """``(n, size, size)`` bool: one ``side``-square per image at a random place, in every other image."""
    g = torch.Generator().manual_seed(seed)
    m = torch.zeros(n, size, size, dtype=torch.bool)
    for i in range(0, n, 2):
        r, c = torch.randint(0, size - side, (2,), generator=g).tolist()
        m[i, r : r + side, c : c + side] = True
    return m


def test_a_unit_equal_to_a_concept_mask_has_iou_one_and_is_a_detector():
    n, s = 12, 16
    blob, ring = _squares(n, s, 3, 0), _squares(n, s, 2, 1)
    masks = torch.stack([blob, ring], 1)                        # (n, 2, s, s): concepts blob, ring
    g = torch.Generator().manual_seed(2)
    x = torch.stack([blob.float(), torch.rand(n, s, s, generator=g)], 1)  # unit 0 = blob's mask, unit 1 noise
    d = Dissection("features.0", **TEXT, concepts=["blob", "ring"], quantile=0.95)
    for i in range(0, n, 4):                                    # through update(): captures the layer
        d.update(Probe(), x[i : i + 4], torch.zeros(4, dtype=torch.long), None, concept_masks=masks[i : i + 4])
    iou, thr, images = d.iou()
    assert iou[0, 0].item() == 1.0 and iou[0, 1].item() == 0.0   # the mask's own unit: IoU 1 with blob
    assert thr[0].item() == 0.0                                   # 6 * 9 / 3072 = 1.8% of values above 0 < 5%
    assert images.tolist() == [6, 6]
    df = d.compute().set_index("unit")
    assert df.loc[0, "concept"] == "blob" and df.loc[0, "iou"] == 1.0 and bool(df.loc[0, "detector"])
    assert iou[1].max() < 0.04 and not bool(df.loc[1, "detector"])  # noise: 5% of pixels, hardly on squares
    counts = detector_counts(d.compute(), d.names()).set_index("concept")["detectors"]
    assert counts.to_dict() == {"blob": 1, "ring": 0, "total": 1}


@pytest.mark.parametrize("q", [0.99, 0.995, 0.9])
def test_quantile_threshold_leaves_exactly_the_fraction_above_it(q):
    n_img, k, h, w = 20, 3, 10, 10                              # n = 2000 values per unit
    n = n_img * h * w
    g = torch.Generator().manual_seed(0)
    acts = torch.stack([torch.randperm(n, generator=g).float() / n for _ in range(k)], 1).view(n_img, h, w, k)
    acts = acts.permute(0, 3, 1, 2).contiguous()                # uniform on {0, 1/n, ..., (n-1)/n}, shuffled
    t = quantile_thresholds(acts, q)
    m = round((1 - q) * n)                                      # 20, 10, 200
    for u in range(k):
        assert int((acts[:, u] > t[u]).sum()) == m
        assert t[u].item() == pytest.approx((n - m - 1) / n)    # the (n - m)-th smallest of i / n


def _three_images() -> tuple[torch.Tensor, torch.Tensor]:
    """One unit, one concept, 10 x 10: image 1 unit = concept = pixel (0, 0); image 2 concept on 99 pixels,
    the unit on 1 of them; image 3 without the concept, the unit on 5 pixels."""
    masks = torch.zeros(3, 1, 10, 10, dtype=torch.bool)
    acts = torch.zeros(3, 1, 10, 10)
    masks[0, 0, 0, 0] = True
    acts[0, 0, 0, 0] = 1.0
    masks[1, 0].view(-1)[:99] = True
    acts[1, 0, 5, 5] = 1.0
    acts[2, 0, 0, :5] = 1.0
    return acts, masks


def test_iou_is_a_dataset_sum_not_a_mean_of_image_ious():
    """Image 1: unit and concept on the same pixel (IoU 1); image 2: the unit on 1 of the concept's 99
    pixels (IoU 1/99); image 3 lacks the concept and the unit fires on 5 pixels (not counted).
    Eq. 5: (1 + 1) / (1 + 99) = 0.02; the mean of the image IoUs would be (1 + 1/99) / 2 = 0.505."""
    acts, masks = _three_images()
    d = Dissection("x", **TEXT, concepts=["c"], quantile=0.95)          # 7 of 300 values > 0: T = 0
    d.add(acts, masks)
    iou, thr, images = d.iou()
    assert thr.item() == 0.0 and images.item() == 2
    assert iou.item() == pytest.approx(2 / 100)
    per_image = [1.0, 1 / 99]
    assert abs(iou.item() - sum(per_image) / 2) > 0.4


def test_code_variants_union_over_all_images_and_quantile_of_upsampled_maps():
    """``union: all_images`` (the code's netdissect IoU) adds the unit's 5 pixels of image 3 to the union:
    2 / 105; ``quantile_on: upsampled`` leaves exactly the fraction above T among the upsampled values."""
    acts, masks = _three_images()
    d = Dissection("x", **{**TEXT, "union": "all_images"}, concepts=["c"], quantile=0.95)
    d.add(acts, masks)
    assert d.iou()[0].item() == pytest.approx(2 / 105)
    g = torch.Generator().manual_seed(3)
    low = torch.rand(6, 2, 4, 4, generator=g)
    t = quantile_thresholds(low, 0.99, size=(16, 16))
    up = torch.nn.functional.interpolate(low, size=(16, 16), mode="bilinear", align_corners=False)
    for u in range(2):
        assert int((up[:, u] > t[u]).sum()) == round(0.01 * 6 * 256)   # 15 of 1536
    assert not torch.allclose(t, quantile_thresholds(low, 0.99))     # differs from the feature-map quantile
    with pytest.raises(XattrConfigError, match="unknown union 'all'; valid choices: concept_images, all_images"):
        Dissection("x", union="all")


def test_low_resolution_maps_are_upsampled_bilinearly_to_the_masks():
    """A 2x2 map with one hot corner upsampled to 8x8 (align_corners=False): only the pixels nearest it
    exceed a threshold between the corner's neighbours' interpolated values."""
    acts = torch.tensor([[[[1.0, 0.0], [0.0, 0.0]]]])
    masks = torch.zeros(1, 1, 8, 8, dtype=torch.bool)
    masks[0, 0, :2, :2] = True
    d = Dissection("x", **TEXT, concepts=["corner"], quantile=0.5)      # 4 values: T = the 2nd smallest = 0
    d.add(acts, masks)
    up = torch.nn.functional.interpolate(acts, size=(8, 8), mode="bilinear", align_corners=False)[0, 0]
    inter = ((up > 0) & masks[0, 0]).sum().item()
    union = ((up > 0) | masks[0, 0]).sum().item()
    assert d.iou()[0].item() == pytest.approx(inter / union)
    assert union > inter == 4                                   # the hot corner spreads over 6x6 pixels


def _random_batches(seed: int, sizes=(3, 4, 2), k: int = 5, c: int = 3):
    g = torch.Generator().manual_seed(seed)
    out = []
    for b in sizes:
        acts = torch.rand(b, k, 4, 4, generator=g)
        masks = torch.rand(b, c, 12, 12, generator=g) > 0.8
        masks[:, 1] = False if b == 2 else masks[:, 1]          # a concept absent from a batch
        grey = (torch.rand(b, 12, 12, generator=g) * 255).to(torch.uint8)
        out.append((acts, masks, grey))
    return out


def test_save_load_merge_equals_one_pass(tmp_path):
    batches = _random_batches(0)
    one = Dissection("x", **TEXT, concepts=["a", "b", "c"], quantile=0.9, iou_threshold=0.01)
    for a, m, gr in batches:
        one.add(a, m, gr)
    # a run killed after its first batch: the engine's saved state, reloaded, then the rest
    torch.save({"state": one.state_dict()}, tmp_path / "full.pt")
    first = Dissection("x", **TEXT, concepts=["a", "b", "c"], quantile=0.9, iou_threshold=0.01)
    first.add(*batches[0])
    torch.save({"state": first.state_dict()}, tmp_path / "part.pt")
    resumed = Dissection("x", **TEXT, concepts=["a", "b", "c"], quantile=0.9, iou_threshold=0.01)
    resumed.load_state_dict(torch.load(tmp_path / "part.pt", weights_only=False)["state"])
    for a, m, gr in batches[1:]:
        resumed.add(a, m, gr)
    # two shards merged
    left, right = (Dissection("x", **TEXT, concepts=["a", "b", "c"], quantile=0.9, iou_threshold=0.01) for _ in range(2))
    left.add(*batches[1])
    right.add(*batches[0])
    right.add(*batches[2])
    left.merge(right)
    want = one.compute()
    assert want["detector"].any()
    for other in (resumed, left):
        pd.testing.assert_frame_equal(other.compute(), want)
        pd.testing.assert_frame_equal(other.iou_table(), one.iou_table())
    # the quantities themselves, from all images at once
    acts = torch.cat([b[0] for b in batches])
    masks = torch.cat([b[1] for b in batches])
    t = quantile_thresholds(acts, 0.9)
    up = torch.nn.functional.interpolate(acts, size=(12, 12), mode="bilinear", align_corners=False) > t.view(1, -1, 1, 1)
    has = masks.flatten(2).any(-1)
    for u, c in [(0, 0), (3, 2), (4, 1)]:
        sel = has[:, c]
        inter = (up[sel, u] & masks[sel, c]).sum().item()
        union = (up[sel, u] | masks[sel, c]).sum().item()
        assert one.iou()[0][u, c].item() == pytest.approx(inter / union)


def test_extras_and_figure(tmp_path):
    d = Dissection("x", **TEXT, concepts=["a", "b", "c"], quantile=0.9, iou_threshold=0.01, examples=2, top_units=2)
    for a, m, gr in _random_batches(1):
        d.add(a, m, gr)
    files = d.write_extras(tmp_path)
    assert [f.name for f in files] == ["dissection_iou.csv", "dissection_detectors.csv", "dissection.png"]
    assert all(f.is_file() and f.stat().st_size > 0 for f in files)
    iou = pd.read_csv(files[0])
    assert len(iou) == 5 * 3 and set(iou["concept"]) == {"a", "b", "c"}
    det = pd.read_csv(files[1])
    assert det["concept"].tolist() == ["a", "b", "c", "total"]
    assert det["detectors"].iloc[-1] == det["detectors"].iloc[:-1].sum() == d.compute()["detector"].sum()
    panels = d.figure_panels()
    assert [len(p["images"]) for p in panels] == [2, 2, 2] and panels[0]["unit_masks"].shape == (2, 2, 12, 12)


def test_bad_input_is_one_line():
    with pytest.raises(XattrConfigError, match="bad quantile 1.5; valid choices"):
        Dissection("x", quantile=1.5)
    d = Dissection("features.0", **TEXT, concepts=["a", "b", "c"])
    x = torch.rand(2, 2, 8, 8)
    with pytest.raises(XattrConfigError, match="dissection needs batches with 'concept_masks'"):
        d.update(Probe(), x, torch.zeros(2, dtype=torch.long), None)
    with pytest.raises(XattrConfigError, match="concept_masks have 2 concepts, the config names 3"):
        d.update(Probe(), x, torch.zeros(2, dtype=torch.long), None, concept_masks=torch.zeros(2, 2, 8, 8).bool())
    with pytest.raises(XattrConfigError, match="unknown layer 'conv9'"):
        Dissection("conv9", concepts=["a", "b"]).update(Probe(), x, torch.zeros(2, dtype=torch.long), None,
                                                        concept_masks=torch.zeros(2, 2, 8, 8).bool())


FAST = ["experiment=dissection_f2", "model.weights=random", "dataset.limit=8", "batch_size=4", "trainer=cpu",
        "logger=none", "trainer.enable_progress_bar=false", "analysis.dissection.quantile=0.99"]


def test_run_writes_the_dissection_and_a_killed_run_resumes_it(tmp_path):
    import shutil

    from tests.helpers import compose_cfg
    from xattr.run import run

    full = run(compose_cfg(FAST, output_dir=tmp_path / "full"))
    a = full / "analyses"
    units = pd.read_csv(a / "dissection.csv")
    assert len(units) == 64 and set(units["layer"]) == {"stage3"} and (units["images"] == 8).all()
    assert set(units["concept"]) <= {"blob", "ring", "streak", "texture"}
    for f in ("dissection_iou.csv", "dissection_detectors.csv", "dissection.png"):
        assert (a / f).is_file(), f
    killed = tmp_path / "killed"  # state of batch 2 saved, its heatmaps (the done marker) not yet
    shutil.copytree(full, killed)
    (killed / "heatmaps" / "b0000004-4.npz").unlink()
    (killed / "analyses" / "dissection.csv").unlink()
    again = run(compose_cfg(FAST, output_dir=killed))
    pd.testing.assert_frame_equal(pd.read_csv(again / "analyses" / "dissection.csv"), units)
    assert torch.load(a / "dissection.pt", weights_only=False)["state"]["acts"].shape == (8, 64, 8, 8)


def _fake_dissection_run(root, name: str, loss: str, detectors: dict[str, int], units: int = 10):
    from omegaconf import OmegaConf

    d = root / name
    (d / "analyses").mkdir(parents=True)
    cfg = {"model": {"name": "synthetic_cxr_resnet8", "weights": f"/m/synthetic_cxr_{loss}.pt"}, "method_name": "random", "trained_loss": loss,
           "dataset": {"name": "synthetic_cxr"},
           "analysis": {"dissection": {"concepts": ["blob", "ring", "streak", "texture"], "quantile": 0.995,
                                       "iou_threshold": 0.04}}}
    OmegaConf.save(OmegaConf.create(cfg), d / "config.yaml")
    pd.DataFrame({"id": ["0"], "index": [0]}).to_parquet(d / "per_image.parquet")
    rows = [c for c, n in detectors.items() for _ in range(n)]
    rows += ["blob"] * (units - len(rows))
    pd.DataFrame({"layer": "stage3", "unit": range(units), "concept": rows, "concept_index": 0,
                  "iou": [0.1] * sum(detectors.values()) + [0.01] * (units - sum(detectors.values())),
                  "detector": [True] * sum(detectors.values()) + [False] * (units - sum(detectors.values())),
                  "threshold": 1.0, "images": 500}).to_csv(d / "analyses" / "dissection.csv", index=False)


def test_dissection_f2_table_counts_detectors_per_model_and_concept(tmp_path):
    from xattr.tables import build_table

    _fake_dissection_run(tmp_path, "bce", "bce", {"blob": 2, "ring": 1})
    _fake_dissection_run(tmp_path, "w", "weighted_bce", {"blob": 3, "streak": 2, "texture": 1})
    df = build_table("dissection_f2", [tmp_path], tmp_path / "tables").set_index("")
    assert df.loc["BCE", "detectors (paper)"] == "65" and df.loc["Weighted BCE", "detectors (paper)"] == "100"
    assert df.loc["BCE", "detectors (ours)"] == "3" and df.loc["Weighted BCE", "detectors (ours)"] == "6"
    assert df.loc["BCE", ["blob (ours)", "ring (ours)", "streak (ours)", "texture (ours)"]].tolist() == ["2", "1", "0", "0"]
    assert df.loc["Weighted BCE", "texture (ours)"] == "1" and df.loc["BCE", "units"] == "10"
    assert df.loc["Weighted BCE", "weights"] == "synthetic_cxr_weighted_bce.pt"
    md = (tmp_path / "tables" / "dissection_f2.md").read_text()
    assert "SYNTHETIC" in md


def test_the_figure_shows_each_concepts_top_units_masks_and_iou_by_hand(tmp_path, monkeypatch):
    """Issue 26: what the figure shows, read back from its axes, against a hand case. Four 8 x 8 images, two
    concepts, the dissected layer copies them (unit 0 = blob's mask, unit 1 = ring's): 8 of 256 values of each
    unit are 1, so at quantile 0.9 the threshold is 0 and each unit's mask is its concept's mask (IoU 1 with
    it, 0 with the other). Examples (2 per concept): blob in images 0 and 2, ring in 1 and 2. Rows: blob's
    units by IoU (0, then 1), ring's (1, then 0); each cell: the grey image (min-max of the channels' mean:
    1 on either square, 0 elsewhere) tinted ``0.55 g + 0.45 (1, 0.15, 0.1)`` on the unit's mask, and the
    concept's square outlined at the half-pixel edges."""
    import xattr.viz.dissection as vd

    def square(r, c):
        m = torch.zeros(8, 8, dtype=torch.bool)
        m[r : r + 2, c : c + 2] = True
        return m

    none = torch.zeros(8, 8, dtype=torch.bool)
    blob = torch.stack([square(1, 1), none, square(5, 1), none])
    ring = torch.stack([none, square(4, 5), square(1, 5), none])
    masks = torch.stack([blob, ring], 1)
    x = masks.float()
    figs = []
    real = vd.save_figure
    monkeypatch.setattr(vd, "save_figure", lambda fig, path, **kw: figs.append(fig) or real(fig, path, **kw))
    d = Dissection("features.0", concepts=["blob", "ring"], quantile=0.9, iou_threshold=0.04, examples=2, top_units=2)
    d.update(Probe(), x, torch.zeros(4, dtype=torch.long), None, concept_masks=masks)
    files = d.write_extras(tmp_path)
    iou = pd.read_csv(files[0])
    assert iou["iou"].tolist() == [1.0, 0.0, 0.0, 1.0] and iou["images"].tolist() == [2, 2, 2, 2]
    assert pd.read_csv(files[1])["detectors"].tolist() == [1, 1, 2]
    (fig,) = figs
    axes = [ax for ax in fig.axes]
    assert len(axes) == 4 * 2
    labels = [axes[2 * r].get_ylabel() for r in range(4)]
    assert labels == ["blob\nunit 0\nIoU 1.000\n(detector)", "blob\nunit 1\nIoU 0.000",
                      "ring\nunit 1\nIoU 1.000\n(detector)", "ring\nunit 0\nIoU 0.000"]
    # (row, example) -> (image, the unit's mask in it, the concept's mask in it)
    want = {(0, 0): (0, blob[0], blob[0]), (0, 1): (2, blob[2], blob[2]),
            (1, 0): (0, ring[0], blob[0]), (1, 1): (2, ring[2], blob[2]),
            (2, 0): (1, ring[1], ring[1]), (2, 1): (2, ring[2], ring[2]),
            (3, 0): (1, blob[1], ring[1]), (3, 1): (2, blob[2], ring[2])}
    for (r, e), (i, unit, concept) in want.items():
        ax = axes[2 * r + e]
        shown = np.asarray(ax.images[0].get_array(), dtype=np.float64)
        grey = (blob[i] | ring[i]).numpy().astype(np.float64)
        expected = np.repeat(grey[..., None], 3, -1)
        u = unit.numpy()
        expected[u] = 0.55 * grey[u][:, None] + 0.45 * np.array([1.0, 0.15, 0.1])
        np.testing.assert_allclose(shown, expected, atol=1e-6, err_msg=f"row {r} example {e}")
        rows, cols = np.nonzero(concept.numpy())
        (contour,) = [c for c in ax.collections if c.get_paths()]
        v = np.concatenate([p.vertices for p in contour.get_paths()])
        np.testing.assert_allclose([v[:, 0].min(), v[:, 0].max(), v[:, 1].min(), v[:, 1].max()],
                                   [cols.min() - 0.5, cols.max() + 0.5, rows.min() - 0.5, rows.max() + 0.5])


def _bilinear(a: np.ndarray, oh: int, ow: int) -> np.ndarray:
    """Bilinear upsampling of ``(..., h, w)`` with half-pixel centres (``align_corners=False``), by hand."""
    h, w = a.shape[-2:]

    def taps(n_in, n_out):
        src = np.maximum((np.arange(n_out) + 0.5) * n_in / n_out - 0.5, 0.0)
        i0 = np.floor(src).astype(int)
        return i0, np.minimum(i0 + 1, n_in - 1), src - i0

    r0, r1, wr = taps(h, oh)
    c0, c1, wc = taps(w, ow)
    rows = a[..., r0, :] * (1 - wr)[:, None] + a[..., r1, :] * wr[:, None]
    return rows[..., c0] * (1 - wc) + rows[..., c1] * wc


def test_the_codes_settings_through_update_equal_a_numpy_dissection():
    """CheXplain-Dissection's settings (``labels: single``, ``mask_size``, ``quantile_on: upsampled``,
    ``union: all_images``) through ``update`` on a 1x1 identity probe, against numpy: masks resized nearest
    (source index floor(i * 8 / 6), floor(j * 8 / 7)), overlapping concepts resolved to the highest index, the unit maps
    (the conv's output: the input itself) upsampled bilinearly by hand to 6 x 7 (non-square 4 x 5 features), each unit's
    threshold the value with round(0.1 n) of its n upsampled values above it, the union with the unit's pixels
    of the images without the concept."""
    g = torch.Generator().manual_seed(4)
    n, k = 6, 2
    x = torch.randn(n, k, 4, 5, generator=g)
    masks = torch.rand(n, 3, 8, 8, generator=g) > 0.6
    masks[2, 1] = False  # concept 1 absent from image 2
    d = Dissection("features.0", concepts=["a", "b", "c"], quantile=0.9, quantile_on="upsampled",
                   union="all_images", labels="single", mask_size=[6, 7])
    for i in range(0, n, 3):
        d.update(Probe(k), x[i : i + 3], torch.zeros(3, dtype=torch.long), None, concept_masks=masks[i : i + 3])
    iou, thr, images = d.iou()
    rows, cols = np.floor(np.arange(6) * 8 / 6).astype(int), np.floor(np.arange(7) * 8 / 7).astype(int)
    lab = masks.numpy()[:, :, rows][:, :, :, cols]                     # (n, 3, 6, 7) nearest
    top = (lab * np.arange(1, 4)[None, :, None, None]).max(1)           # highest concept index per pixel
    lab = np.stack([top == c + 1 for c in range(3)], 1)
    up = _bilinear(x.half().double().numpy(), 6, 7)  # (n, k, 6, 7); the state keeps float16 activations
    for u in range(k):
        vals = np.sort(up[:, u].ravel())
        t = vals[len(vals) - round(0.1 * len(vals)) - 1]
        assert thr[u].item() == pytest.approx(t, abs=1e-5)
        unit = up[:, u] > t  # its top round(0.1 n) values
        for c in range(3):
            has = lab[:, c].reshape(n, -1).any(1)
            inter = (unit & lab[:, c])[has].sum()
            union = (unit | lab[:, c])[has].sum() + unit[~has].sum()
            assert iou[u, c].item() == pytest.approx(inter / union, abs=1e-12), (u, c)
    assert images.tolist() == [float(lab[:, c].reshape(n, -1).any(1).sum()) for c in range(3)]
    feats = quantile_thresholds(x, 0.8)  # on the 4 x 5 features: 120 values, 24 above
    for u in range(k):
        assert int((x[:, u] > feats[u]).sum()) == 24


def test_blocks_thresholds_at_the_extremes_detector_counts_and_grey_thumbnails(monkeypatch):
    """Computing in blocks of a few units and images gives the one-block result; a quantile so low that every
    value lies above it gives the minimum (the 1st smallest), ``quantile`` 1 - 1/n the maximum; detector counts
    list the units' concepts when none are named; the figure's grey thumbnails are the channel mean, upsampled
    bilinearly to the masks' size and min-max scaled to 0..255, by hand."""
    from xattr.analyses import dissection

    g = torch.Generator().manual_seed(6)
    acts = torch.rand(5, 3, 4, 4, generator=g)
    masks = torch.rand(5, 2, 8, 8, generator=g) > 0.7
    masks[:3, 1] = False  # concept 1 only in the last two images: the union adds the unit's pixels of the rest
    whole = Dissection("x", **{**TEXT, "union": "all_images"}, quantile=0.9)
    whole.add(acts, masks)
    want = whole.iou()
    up_thresholds = quantile_thresholds(acts, 0.9, size=(8, 8))
    monkeypatch.setattr(dissection, "BLOCK_ELEMENTS", 40)  # 1 unit, 1-2 images per block
    blocked = Dissection("x", **{**TEXT, "union": "all_images"}, quantile=0.9)
    blocked.add(acts, masks)
    for a, b in zip(blocked.iou(), want):
        torch.testing.assert_close(a, b, equal_nan=True)
    torch.testing.assert_close(quantile_thresholds(acts, 0.9, size=(8, 8)), up_thresholds)
    monkeypatch.undo()
    low = torch.randperm(20, generator=g).float().view(1, 1, 4, 5)  # 20 values: 0..19
    assert quantile_thresholds(low, 0.01).item() == 0.0  # round(0.99 * 20) = 20 above: the minimum
    assert quantile_thresholds(low, 0.95).item() == 18.0  # 1 above: the second largest
    units = pd.DataFrame({"unit": [0, 1, 2], "concept": ["b", "a", "b"], "detector": [True, True, False]})
    assert detector_counts(units).to_dict("list") == {"concept": ["a", "b", "total"], "detectors": [1, 1, 2]}
    x = torch.rand(1, 2, 4, 4, generator=g) * 3 - 1
    d = Dissection("features.0", **TEXT, concepts=["c"])
    d.update(Probe(2), x, torch.zeros(1, dtype=torch.long), None, concept_masks=torch.ones(1, 1, 8, 8, dtype=torch.bool))
    grey = _bilinear(x.double().mean(1).numpy()[0], 8, 8)
    expect = np.round((grey - grey.min()) / (grey.max() - grey.min()) * 255).astype(np.uint8)
    assert np.abs(d.example_images[0].numpy().astype(int) - expect.astype(int)).max() <= 1  # float32 rounding
    assert (d.example_images[0].numpy() == expect).mean() > 0.95


def test_settings_defaults_and_every_bad_input_is_a_whole_line():
    """The text's defaults (quantile 0.995, IoU above 0.04, masks at their own size), the figure's 4 examples and
    3 units; mask_size as one side or [H, W]; the bounds of quantile (0, 1) and iou_threshold [0, 1); every
    refused input is one whole line."""
    import re

    d = Dissection("x")
    assert (d.quantile, d.iou_threshold, d.quantile_on, d.union, d.labels, d.mask_size, d.examples, d.top_units) == (
        0.995, 0.04, "features", "concept_images", "multi", None, 4, 3)
    assert Dissection("x", mask_size=56).mask_size == (56, 56) and Dissection("x", mask_size=[6, 8]).mask_size == (6, 8)
    assert Dissection("x", iou_threshold=0).iou_threshold == 0.0 and Dissection("x", quantile=0.5).quantile == 0.5
    assert Dissection("x", quantile_on="upsampled", labels="single").labels == "single"

    def line(msg):
        return "^" + re.escape(msg) + "$"

    for kw, msg in (
            ({"quantile": 0.0}, "bad quantile 0.0; valid choices: a number in (0, 1), 0.995 (paper) or 0.99 (code)"),
            ({"quantile": 1.0}, "bad quantile 1.0; valid choices: a number in (0, 1), 0.995 (paper) or 0.99 (code)"),
            ({"iou_threshold": 1.0}, "bad iou_threshold 1.0; valid choices: a number in [0, 1), 0.04 (paper)"),
            ({"iou_threshold": 1.5}, "bad iou_threshold 1.5; valid choices: a number in [0, 1), 0.04 (paper)"),
            ({"iou_threshold": "a"}, "bad iou_threshold 'a'; valid choices: a number in [0, 1), 0.04 (paper)"),
            ({"mask_size": 0}, "bad mask_size [0, 0]; valid choices: null, an integer >= 1 or [H, W]"),
            ({"mask_size": [1, 0]}, "bad mask_size [1, 0]; valid choices: null, an integer >= 1 or [H, W]"),
            ({"mask_size": [4, 4, 4]}, "bad mask_size [4, 4, 4]; valid choices: null, an integer >= 1 or [H, W]"),
            ({"quantile_on": "maps"}, "unknown quantile_on 'maps'; valid choices: features, upsampled"),
            ({"labels": "one"}, "unknown labels 'one'; valid choices: single, multi")):
        with pytest.raises(XattrConfigError, match=line(msg)):
            Dissection("x", **kw)
    assert Dissection("x", mask_size=[1, 1]).mask_size == (1, 1)
    d = Dissection("features.0", **TEXT, concepts=["a", "b"])
    x, t = torch.rand(2, 2, 8, 8), torch.zeros(2, dtype=torch.long)
    with pytest.raises(XattrConfigError, match=line("dissection needs batches with 'concept_masks' (B, C, H, W); valid "
                                                    "choices: dataset=synthetic_cxr, or a dataset that yields concept masks")):
        d.update(Probe(), x, t, None)
    with pytest.raises(XattrConfigError, match=line("bad concept_masks shape (2, 8, 8); valid choices: (B, C, H, W) bool")):
        d.update(Probe(), x, t, None, concept_masks=torch.zeros(2, 8, 8).bool())
    with pytest.raises(XattrConfigError, match=line("layer 'head' gives (2, 3); valid choices: a layer with spatial "
                                                    "feature maps (B, K, h, w)")):
        Dissection("head", concepts=["a", "b"]).update(Probe(), x, t, None, concept_masks=torch.zeros(2, 2, 8, 8).bool())
    d.add(torch.rand(1, 2, 4, 4), torch.zeros(1, 2, 8, 8, dtype=torch.bool))
    with pytest.raises(ValueError, match=line("dissection batch of shape (2, 4, 4, 2, 6, 8) after (2, 4, 4, 2, 8, 8)")):
        d.add(torch.rand(1, 2, 4, 4), torch.zeros(1, 2, 6, 8, dtype=torch.bool))


class _Pair(nn.Module):
    """A layer that returns a tuple (its first element is dissected), then a head."""

    def __init__(self):
        super().__init__()
        self.pair = _PairLayer()

    def forward(self, x):
        return self.pair(x)[0].mean((2, 3))


class _PairLayer(nn.Module):
    def forward(self, x):
        return x, -x


def test_edge_cases_of_the_iou_by_hand():
    """By hand, one unit, non-square masks (4 x 6): a concept in no image has NaN IoU (either union), one in a
    single image counts the unit's pixels elsewhere under ``all_images``; a union of one pixel gives IoU 1; a
    unit whose best finite IoU follows a NaN picks the finite one; unnamed concepts are concept_<i>; a tuple
    output is read by its first element; ``multi`` labels keep overlapping masks; an empty state has the
    columns and round-trips."""
    acts = torch.zeros(3, 1, 4, 6)
    acts[0, 0, 0, 0] = 1.0  # the unit fires on pixel (0, 0) of image 0 and (3, 5) of image 2
    acts[2, 0, 3, 5] = 1.0
    masks = torch.zeros(3, 3, 4, 6, dtype=torch.bool)
    masks[0, 1, 0, 0] = True  # concept 1: only image 0, exactly the unit's pixel
    masks[:, 2, 0, :2] = True  # concept 2: every image, two pixels
    for union, iou1 in (("concept_images", 1.0), ("all_images", 1 / 2)):
        d = Dissection("x", quantile=0.9, union=union)  # 2 of 72 values above T = 0
        d.add(acts, masks)
        iou, thr, images = d.iou()
        assert thr.item() == 0.0 and images.tolist() == [0.0, 1.0, 3.0]
        assert np.isnan(iou[0, 0].item()) and iou[0, 1].item() == pytest.approx(iou1)
        row = d.compute().iloc[0]
        assert row["concept"] == "concept_1" and row["concept_index"] == 1 and row["iou"] == pytest.approx(iou1)
    assert d.names() == ["concept_0", "concept_1", "concept_2"]
    assert list(d.compute().columns) == ["layer", "unit", "concept", "concept_index", "iou", "detector", "threshold", "images"]
    empty = Dissection("x")
    assert list(empty.compute().columns) == list(d.compute().columns) and empty.names() == []
    again = Dissection("x")
    again.load_state_dict(empty.state_dict())
    assert again.shape is None and again.compute().empty
    x = torch.randn(2, 2, 4, 6)
    pair = Dissection("pair", **TEXT, quantile=0.9)
    over = torch.ones(2, 2, 4, 6, dtype=torch.bool)  # two concepts on every pixel: multi keeps both
    pair.update(_Pair(), x, torch.zeros(2, dtype=torch.long), None, concept_masks=over)
    assert torch.equal(pair.acts[0], x.half()) and pair.iou()[2].tolist() == [2.0, 2.0]


def test_unit_rows_order_detector_bound_csvs_figure_panels_and_merged_examples(tmp_path):
    """compute() on a hand case: detectors first, then IoU descending, then unit; an IoU of exactly 0 stays 0 and one equal to
    the threshold is no detector ("exceeds"); the CSVs carry no index column and may go to a new nested folder;
    figure panels skip a concept without examples and flag a unit as a detector only for its best concept; a
    merge appends the other's examples after its own images, up to ``examples``; shards of other shapes refuse."""
    import re

    acts = torch.zeros(2, 4, 2, 2)
    acts[0, 0, 0, 0] = 1.0  # unit 0: pixel (0, 0) of image 0; units 1, 3: never on; unit 2: 2 pixels of image 0
    acts[0, 2, 1, :] = 1.0
    acts[1, 2, 1, 1] = 1.0  # and pixel (1, 1) of image 1
    masks = torch.zeros(2, 2, 2, 2, dtype=torch.bool)
    masks[0, 1, 0, :] = True  # concept 1: image 0's top row and pixel (1, 1) of image 1 (concept 0: nowhere)
    masks[1, 1, 1, 1] = True  # unit 0: 1 / (2 + 1); unit 2: 1 / (4 + 1); unit 1: 0
    d = Dissection("x", **TEXT, quantile=0.5, iou_threshold=1 / 3, top_units=2)  # T = 0 for every unit
    grey = torch.zeros(2, 2, 2, dtype=torch.uint8)
    d.add(acts, masks, grey)
    iou = d.iou()[0]
    assert iou[0, 1].item() == pytest.approx(1 / 3) and iou[2, 1].item() == pytest.approx(1 / 5)
    rows = d.compute()
    assert rows.index.tolist() == [0, 1, 2, 3] and rows["unit"].tolist() == [0, 2, 1, 3]  # by IoU, then unit
    assert not rows["detector"].any()  # 1/3 does not exceed 1/3
    assert rows.set_index("unit").loc[1, "iou"] == 0.0  # never on: IoU 0, not NaN
    assert rows["threshold"].tolist() == [0.0] * 4
    assert d.figure_panels()[0]["detector"] == [False, False]  # 1/3 does not exceed 1/3 in the figure either
    d.iou_threshold = 0.3
    assert d.compute()["detector"].tolist() == [True, False, False, False]
    assert list(d.iou_table().columns) == ["unit", "concept", "iou", "images"]
    files = d.write_extras(tmp_path / "a" / "b")
    assert list(pd.read_csv(files[0]).columns) == ["unit", "concept", "iou", "images"]
    assert list(pd.read_csv(files[1]).columns) == ["concept", "detectors"]
    panels = d.figure_panels()
    assert [p["concept"] for p in panels] == ["concept_1"]  # concept 0 has no example: skipped, not the end
    assert panels[0]["units"] == [0, 2] and panels[0]["detector"] == [True, False]
    # merge: 2 examples kept per concept, the other's rows offset by this one's images
    left = Dissection("x", **TEXT, quantile=0.5, examples=2)
    left.add(acts[:1], masks[:1], grey[:1])
    right = Dissection("x", **TEXT, quantile=0.5, examples=2)
    right.add(acts, masks, grey + 7)
    left.merge(right)
    assert left.example_rows == [[], [0, 1]] and left.n_images == 3
    assert torch.equal(left.example_images[1], grey[0] + 7)
    three = Dissection("x", **TEXT, quantile=0.5, examples=3)
    three.add(acts[:1], masks[:1], grey[:1])
    three.merge(right)
    assert three.example_rows == [[], [0, 1, 2]] and torch.equal(three.example_images[2], grey[1] + 7)
    bare = Dissection("x", **TEXT, quantile=0.5)
    bare.add(acts, masks)  # no thumbnails: no figure
    assert [f.name for f in bare.write_extras(tmp_path / "bare")] == ["dissection_iou.csv", "dissection_detectors.csv"]
    other = Dissection("x", **TEXT)
    other.add(torch.zeros(1, 1, 2, 2), torch.zeros(1, 2, 2, 2, dtype=torch.bool))
    with pytest.raises(ValueError, match="^" + re.escape("cannot merge dissections of different shapes (4, 2, 2, 2, 2, 2) "
                                                         "and (1, 2, 2, 2, 2, 2)") + "$"):
        left.merge(other)
