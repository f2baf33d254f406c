"""Chest X-ray training (dissertation ch. 8-9): BCE / weighted BCE / weighted MSE against hand computations
(including #pos = 0), AUC and AP per finding against scikit-learn, a tiny synthetic run end to end whose
exported weights the zoo loads, and the region metrics (mask IoU, severity Pearson) by hand."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from sklearn.metrics import average_precision_score, roc_auc_score

from tests.helpers import compose_train
from xattr.errors import XattrConfigError
from xattr.metrics.region import MaskIoU, SeverityCorrelation
from xattr.models.zoo import load_model
from xattr.train import train
from xattr.training.losses import (
    BCE,
    MSE,
    WeightedBCE,
    WeightedMSE,
    batch_pos_weight,
    dataset_pos_weight,
    inverse_frequency,
)
from xattr.training.tasks import per_finding_scores

REPO = Path(__file__).resolve().parents[1]


def sig(z: float) -> float:
    return 1.0 / (1.0 + math.exp(-z))


def hand_bce(z: list[list[float]], y: list[list[int]], beta) -> float:
    """mean over all labels of -(beta_c y log s + (1 - y) log(1 - s)); ``beta`` a number or one per class."""
    terms = []
    for zr, yr in zip(z, y):
        for c, (zz, yy) in enumerate(zip(zr, yr)):
            b = beta[c] if isinstance(beta, list) else beta
            terms.append(-(b * yy * math.log(sig(zz)) + (1 - yy) * math.log(1 - sig(zz))))
    return sum(terms) / len(terms)


Z = [[0.5, -1.0, 2.0], [-0.3, 0.8, -2.5]]


def test_weighted_bce_batch_matches_hand_computation() -> None:
    y = [[1, 0, 0], [0, 0, 1]]  # 2 positives, 4 negatives: beta = 2
    got = WeightedBCE("batch")(torch.tensor(Z), torch.tensor(y, dtype=torch.float32))
    assert float(batch_pos_weight(torch.tensor(y, dtype=torch.float32))) == 2.0
    assert math.isclose(float(got), hand_bce(Z, y, 2.0), rel_tol=1e-6)
    plain = BCE()(torch.tensor(Z), torch.tensor(y, dtype=torch.float32))
    assert math.isclose(float(plain), hand_bce(Z, y, 1.0), rel_tol=1e-6) and float(got) > float(plain)
    # one positive of 6: beta = 5
    y1 = [[0, 0, 0], [0, 1, 0]]
    assert math.isclose(float(WeightedBCE("batch")(torch.tensor(Z), torch.tensor(y1, dtype=torch.float32))),
                        hand_bce(Z, y1, 5.0), rel_tol=1e-6)


def test_weighted_bce_without_positives() -> None:
    """#pos = 0: beta = #neg (finite), and the loss is the plain BCE of the negatives."""
    y0 = torch.zeros(2, 3)
    assert float(batch_pos_weight(y0)) == 6.0
    got = WeightedBCE("batch")(torch.tensor(Z), y0)
    assert torch.isfinite(got) and math.isclose(float(got), hand_bce(Z, [[0] * 3] * 2, 6.0), rel_tol=1e-6)


def test_weighted_bce_dataset_weighting_per_class() -> None:
    train_labels = torch.tensor([[1, 0, 0], [1, 1, 0], [0, 0, 0], [1, 0, 0]], dtype=torch.float32)
    # N = 4: class 0 has P = 3 -> 1/3, class 1 P = 1 -> 3, class 2 P = 0 -> N = 4
    assert dataset_pos_weight(train_labels).tolist() == pytest.approx([1 / 3, 3.0, 4.0])
    loss = WeightedBCE("dataset")
    with pytest.raises(RuntimeError, match="fit"):
        loss(torch.tensor(Z), torch.zeros(2, 3))
    loss.fit(train_labels)
    y = [[1, 1, 0], [0, 0, 1]]
    got = loss(torch.tensor(Z), torch.tensor(y, dtype=torch.float32))
    assert math.isclose(float(got), hand_bce(Z, y, [1 / 3, 3.0, 4.0]), rel_tol=1e-6)
    with pytest.raises(XattrConfigError, match="valid choices: batch, dataset"):
        WeightedBCE("epoch")


def test_weighted_mse_inverse_frequency() -> None:
    ref = torch.tensor([0.0, 0.0, 0.0, 6.0])  # N = 4, V = 2: beta(0) = 4 / (2 * 3), beta(6) = 4 / (2 * 1)
    assert inverse_frequency(torch.tensor([0.0, 6.0, 3.0]), ref).tolist() == pytest.approx([2 / 3, 2.0, 1.0])
    loss = WeightedMSE("dataset")
    loss.fit(ref)
    out, y = torch.tensor([1.0, 4.0]), torch.tensor([0.0, 6.0])
    assert math.isclose(float(loss(out, y)), (2 / 3 * 1.0 + 2.0 * 4.0) / 2, rel_tol=1e-6)
    assert math.isclose(float(MSE()(out, y)), (1.0 + 4.0) / 2)
    # batch weighting: counts over the batch (two values once each: beta = 1)
    assert math.isclose(float(WeightedMSE("batch")(out, y)), 2.5)


def test_auc_and_ap_per_finding_match_sklearn() -> None:
    g = torch.Generator().manual_seed(0)
    labels = (torch.rand(60, 3, generator=g) < torch.tensor([0.5, 0.2, 0.0])).float()
    scores = labels * 0.4 + torch.rand(60, 3, generator=g)
    aucs, aps = per_finding_scores(scores, labels)
    for k in range(2):
        assert aucs[k] == pytest.approx(roc_auc_score(labels[:, k], scores[:, k]), abs=1e-6)
        assert aps[k] == pytest.approx(average_precision_score(labels[:, k], scores[:, k]), abs=1e-6)
    assert math.isnan(aucs[2]) and math.isnan(aps[2])  # no positives


def test_synthetic_recipe_trains_and_exports_loadable_weights(tmp_path: Path, one_thread) -> None:
    cfg = compose_train(["recipe=synthetic_cxr", "loss=weighted_bce", "loss.weighting=dataset",
                         "dataset.n_train=60", "dataset.n_test=30", "dataset.size=32", "batch_size=20",
                         "data.val_fraction=0.25", "trainer.max_epochs=1", "trainer.accelerator=cpu",
                         "trainer.num_sanity_val_steps=0", "trainer.enable_progress_bar=false", "logger=none"],
                        tmp_path)
    assert cfg.monitor == "val_loss" and cfg.monitor_mode == "min" and cfg.loss.weighting == "dataset"
    run = train(cfg)
    res = json.loads((run / "results.json").read_text())
    assert res["test_acc"] is None and 0.0 <= res["test_auc"] <= 1.0 and "test_ap/blob" in res
    assert res["test_size"] == 30 and res["train_size"] + res["val_size"] == 60
    zoo = load_model("synthetic_cxr_resnet8", weights=res["weights"])
    best = torch.load(run / "checkpoints" / "best.ckpt", map_location="cpu", weights_only=False)["state_dict"]
    for k, v in zoo.net.state_dict().items():
        assert torch.equal(v, best["net." + k]), k
    assert zoo.labels == ["blob", "ring", "streak", "texture"] and zoo.net.num_classes == 4


# ---------------------------------------------------------------- region metrics
def test_mask_iou_by_hand() -> None:
    masks = torch.zeros(2, 2, 4, 4, dtype=torch.bool)
    masks[0, 1, :2, :2] = True      # image 0, finding 1: top-left 2x2
    masks[1, 0, :, 0] = True        # image 1, finding 0: first column
    maps = torch.zeros(2, 1, 4, 4)
    maps[0, 0, :2, :3] = 1.0        # 6 pixels, 4 inside: IoU 4 / 6
    maps[1, 0, 0, 0] = 1.0          # 1 pixel inside the 4-pixel column: 1 / 4
    x = torch.zeros(2, 3, 4, 4)
    r = MaskIoU()(None, x, torch.tensor([1, 0]), maps, concept_masks=masks)
    assert r.scores["mask_iou"].tolist() == pytest.approx([4 / 6, 1 / 4])
    # explaining a finding whose mask is empty: NaN (no region to localise)
    r = MaskIoU()(None, x, torch.tensor([0, 1]), maps, concept_masks=masks)
    assert all(math.isnan(v) for v in r.scores["mask_iou"].tolist())
    # quantile mode: the top 25% (4 pixels) of image 0's map, ties broken stably: the first 4 of the 6 ones in
    # raster order, (0,0) (0,1) (0,2) (1,0); 3 of them in the 2x2 mask: IoU 3 / (4 + 4 - 3) = 3/5
    r = MaskIoU(threshold=0.25, mode="quantile")(None, x[:1], torch.tensor([1]), maps[:1], concept_masks=masks[:1])
    assert float(r.scores["mask_iou"][0]) == pytest.approx(3 / 5)


def test_severity_pearson_by_hand() -> None:
    sev = torch.tensor([[[0.0, 1.0], [2.0, 3.0]]]).unsqueeze(0)  # (1, 1, 2, 2)
    x = torch.zeros(1, 3, 2, 2)
    same = SeverityCorrelation()(None, x, torch.tensor([0]), sev * 2 + 1, severity=sev)
    assert float(same.scores["severity_pcc"][0]) == pytest.approx(1.0)
    m = torch.tensor([[[[1.0, 0.0], [0.0, 1.0]]]])  # centred map [.5,-.5,-.5,.5], severity [-1.5,-.5,.5,1.5]
    r = SeverityCorrelation()(None, x, torch.tensor([0]), m, severity=sev)
    assert float(r.scores["severity_pcc"][0]) == pytest.approx(0.0, abs=1e-12)
    m2 = torch.tensor([[[[0.0, 0.0], [1.0, 1.0]]]])  # [-.5,-.5,.5,.5]: cov 2 / (1 * sqrt(5)) = 0.8944
    r = SeverityCorrelation()(None, x, torch.tensor([0]), m2, severity=sev)
    assert float(r.scores["severity_pcc"][0]) == pytest.approx(2 / math.sqrt(5))
    small = SeverityCorrelation()(None, x, torch.tensor([0]), m2 * 0.1, severity=sev)  # Pearson is scale-free:
    assert float(small.scores["severity_pcc"][0]) == pytest.approx(2 / math.sqrt(5))  # |a| |c| = 0.22 < 1 too
    flat = SeverityCorrelation()(None, x, torch.tensor([0]), m2, severity=torch.zeros(1, 1, 2, 2))
    assert math.isnan(float(flat.scores["severity_pcc"][0]))


def test_loss_group_bad_option_is_one_line(capsys) -> None:
    from xattr.config import check_overrides

    with pytest.raises(SystemExit):
        check_overrides(["loss=focal"])
    err = capsys.readouterr().err.strip()
    assert "unknown loss 'focal'; valid choices:" in err and "weighted_bce" in err and "\n" not in err


def test_region_metrics_edges_batches_and_what_they_ask_for_by_hand() -> None:
    """MaskIoU: a target outside the masks (k, -1) and a missing extra are NaN, the batch's third image indexes
    its own mask; a mask of another size is one error naming both. SeverityCorrelation: a batch of two with
    different means (each image centred by its own mean), a missing severity map is NaN. Both read the run's
    method for ``map_kind: auto`` under ``reference_uint8``, and ask the engine for it."""
    import re

    masks = torch.zeros(3, 2, 4, 4, dtype=torch.bool)
    masks[:, 0, :2, :2] = True
    masks[:, 1, 2:, 2:] = True
    maps = torch.zeros(3, 1, 4, 4)
    maps[:, 0, :2, :2] = 1.0  # exactly finding 0's mask
    x = torch.zeros(3, 3, 4, 4)
    r = MaskIoU()(None, x, torch.tensor([2, -1, 0]), maps, concept_masks=masks).scores["mask_iou"]
    assert math.isnan(r[0]) and math.isnan(r[1]) and r[2].item() == 1.0
    r = MaskIoU()(None, x, torch.tensor([0, 1, 1]), maps, concept_masks=masks).scores["mask_iou"]
    assert r.tolist() == [1.0, 0.0, 0.0]
    assert all(math.isnan(v) for v in MaskIoU()(None, x, torch.tensor([0, 0, 0]), maps).scores["mask_iou"].tolist())
    with pytest.raises(ValueError, match="^" + re.escape("concept_masks (2, 2) do not match the map size (4, 4)") + "$"):
        MaskIoU()(None, x, torch.tensor([0, 0, 0]), maps, concept_masks=masks[..., :2, :2])
    with pytest.raises(XattrConfigError, match=r"^unknown mode 'bogus'; valid choices: value, quantile$"):
        MaskIoU(mode="bogus")
    sev = torch.tensor([[0.0, 1.0], [2.0, 3.0]]).expand(2, 1, 2, 2) + torch.tensor([0.0, 10.0]).view(2, 1, 1, 1)
    m = torch.tensor([[[[0.0, 0.0], [1.0, 1.0]]], [[[5.0, 5.0], [6.0, 6.0]]]])  # each: [-.5, -.5, .5, .5] centred
    pcc = SeverityCorrelation()(None, torch.zeros(2, 3, 2, 2), torch.zeros(2), m, severity=sev).scores["severity_pcc"]
    assert pcc.tolist() == pytest.approx([2 / math.sqrt(5)] * 2)
    none = SeverityCorrelation()(None, torch.zeros(2, 3, 2, 2), torch.zeros(2), m).scores["severity_pcc"]
    assert none.shape == (2,) and all(math.isnan(v) for v in none.tolist())
    assert MaskIoU.needs == ("concept_masks", "method") and SeverityCorrelation.needs == ("severity", "method")
    mask_method = type("M", (), {"__module__": "xattr.methods.iba.per_sample"})()
    for metric, extra, key in ((MaskIoU, {"concept_masks": masks}, "mask_iou"), (SeverityCorrelation, {"severity": sev[:1].expand(3, 1, 2, 2)}, "severity_pcc")):
        xs, ms = (x, maps) if metric is MaskIoU else (torch.zeros(3, 3, 2, 2), torch.rand(3, 1, 2, 2))
        auto = metric(normalise="reference_uint8")(None, xs, torch.zeros(3, dtype=torch.long), ms, method=mask_method,
                                                    **extra).scores[key]
        fixed = metric(normalise="reference_uint8", map_kind="mask")(None, xs, torch.zeros(3, dtype=torch.long), ms,
                                                                     **extra).scores[key]
        torch.testing.assert_close(auto, fixed, equal_nan=True)
