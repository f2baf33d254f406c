"""Readout IBA: read-out network initialisation, training through Lightning (checkpointed, resumable),
one forward pass per heatmap."""

from __future__ import annotations

import warnings

import torch

from xattr.core.hooks import hook_count
from xattr.methods.iba.readout import ReadoutIBA, ReadoutNet
from xattr.models.tiny import TinyCNN


def _loader(n=3, b=8, size=16):
    g = torch.Generator().manual_seed(0)
    return [{"x": torch.randn(b, 3, size, size, generator=g), "target": torch.randint(0, 10, (b,), generator=g)}
            for _ in range(n)]


def test_readout_net_starts_near_alpha_5_and_clamps():
    net = ReadoutNet(12, 4)
    a = net(torch.randn(2, 12, 3, 3))
    assert a.shape == (2, 4, 3, 3) and torch.allclose(a, torch.full_like(a, 5.0), atol=0.05)
    with torch.no_grad():
        net.net[-1].bias.fill_(100.0)
    assert net(torch.randn(1, 12, 1, 1)).max() == 5.0


def test_readout_trains_checkpoints_resumes_and_attributes(tmp_path, monkeypatch):
    warnings.simplefilter("ignore")
    model = TinyCNN().eval()
    rb = ReadoutIBA(model, "conv2", ["conv1", "conv3", "fc"], epochs=2, lr=1e-2, n_samples=24)
    rb.fit(_loader(), tmp_path)
    ckpts = list((tmp_path / "iba_readout").glob("*/last.ckpt"))
    assert len(ckpts) == 1
    trained = {k: v.clone() for k, v in rb.readout.state_dict().items()}
    init = ReadoutNet(trained["net.0.weight"].shape[1], 16).state_dict()
    assert any(not torch.allclose(trained[k], init[k]) for k in ("net.4.bias",))  # it learned something
    x = torch.randn(3, 3, 16, 16)
    maps = rb.attribute(x, torch.tensor([0, 1, 2]))
    assert maps.shape == (3, 1, 16, 16) and torch.all(maps >= 0)
    assert torch.allclose(maps, rb.attribute(x, torch.tensor([5, 5, 5])))  # one deterministic pass
    assert hook_count(model) == 0 and all(p.requires_grad for p in model.parameters())
    # resume: a second fit with the same key loads the finished run instead of training again
    from xattr.methods.iba import readout as ro

    steps = []
    orig = ro.ReadoutTraining.training_step
    monkeypatch.setattr(ro.ReadoutTraining, "training_step", lambda self, b, i: steps.append(i) or orig(self, b, i))
    rb2 = ReadoutIBA(model, "conv2", ["conv1", "conv3", "fc"], epochs=2, lr=1e-2, n_samples=24)
    rb2.fit(_loader(), tmp_path)
    for k, v in rb2.readout.state_dict().items():
        assert torch.allclose(v, trained[k])
    assert steps == []  # loaded from last.ckpt, not trained again
    # another configuration (beta) is another checkpoint, trained from scratch
    rb3 = ReadoutIBA(model, "conv2", ["conv1", "conv3", "fc"], epochs=1, lr=1e-2, n_samples=24, beta=1.0)
    rb3.fit(_loader(), tmp_path)
    assert len(steps) == 3 and len(list((tmp_path / "iba_readout").glob("*/last.ckpt"))) == 2


def test_training_batch_size_is_the_methods_own_and_in_the_checkpoint_key(tmp_path, monkeypatch):
    """Two training batch sizes -> two checkpoints; the steps per epoch follow train_batch_size, not the
    estimation loader's batches."""
    warnings.simplefilter("ignore")
    from xattr.methods.iba import readout as ro

    steps = []
    orig = ro.ReadoutTraining.training_step
    monkeypatch.setattr(ro.ReadoutTraining, "training_step",
                        lambda self, b, i: steps.append(st_x(b).shape[0]) or orig(self, b, i))
    model = TinyCNN().eval()
    for bs in (4, 12):
        ReadoutIBA(model, "conv2", ["conv1", "conv3", "fc"], epochs=1, lr=1e-2, n_samples=24,
                   train_batch_size=bs).fit(_loader(), tmp_path)
    ckpts = sorted((tmp_path / "iba_readout").glob("*/last.ckpt"))
    assert len(ckpts) == 2 and {p.parent.name.split("-bs")[1].split("-")[0] for p in ckpts} == {"4", "12"}
    assert steps == [4] * 6 + [12] * 2  # 24 estimation images, re-batched


def st_x(batch):
    return batch["x"]
