"""Readout IBA: read-out network initialisation, training through Lightning (checkpointed, resumable),
one forward pass per heatmap."""

from __future__ import annotations

import warnings

import pytest
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


# ------------------------------------------------------------------ issue 26: Readout IBA pinned by hand


def _hand_stats(model, x, layers, seed=2):
    """Feature statistics of ``layers`` made up by hand (random means, stds partly under the 0.01 floor)."""
    from xattr.core.hooks import capture_many
    from xattr.methods.iba.statistics import FeatureStats

    mods = dict(model.named_modules())
    got = capture_many(model, {n: mods[model.xattr_layers[n]] for n in layers}, x)
    g = torch.Generator().manual_seed(seed)
    out = {}
    for n in layers:
        shape = got[n].shape[1:]
        std = torch.rand(shape, generator=g) + 0.2
        std.view(-1)[:3] = 0.001  # floored
        nonzero = torch.rand(shape, generator=g)
        out[n] = FeatureStats(torch.randn(shape, generator=g) * 0.3, std, nonzero, 100)
    return out


def _tinycnn_parts(model, x):
    """TinyCNN's layers by hand: conv1, conv2 (pre-ReLU), conv3, fc."""
    f = model.features
    a1 = f[0](x)
    a2 = f[2](torch.relu(a1))
    a3 = f[5](f[4](torch.relu(a2)))
    return a1, a2, a3, model(x)


def test_readout_features_normalised_resized_and_broadcast_by_hand():
    """The read-out input (module docstring): each layer's ``(r - mean) / max(std, min_std)``, conv3's 8 x 8 map
    resized bilinearly (half-pixel centres, as skimage / the reference) to conv2's 16 x 16, fc's vector broadcast
    over the grid, concatenated in the order given; ``r`` is conv2's output."""
    model = TinyCNN().eval()
    x = torch.randn(2, 3, 16, 16)
    rb = ReadoutIBA(model, "conv2", ["conv1", "conv3", "fc"], min_std=0.05)
    stats = _hand_stats(model, x, ["conv1", "conv2", "conv3", "fc"])
    rb.set_statistics(stats)
    r, feats = rb.features(x)
    a1, a2, a3, logits = _tinycnn_parts(model, x)

    def norm(a, n):
        return (a - stats[n].mean) / stats[n].std.clamp_min(0.05)

    up = torch.nn.functional.interpolate(norm(a3, "conv3"), size=(16, 16), mode="bilinear", align_corners=False)
    want = torch.cat([norm(a1, "conv1"), up, norm(logits, "fc")[:, :, None, None].expand(2, 10, 16, 16)], 1)
    torch.testing.assert_close(r, a2)
    torch.testing.assert_close(feats, want, rtol=1e-5, atol=1e-5)


def test_readout_net_shape_by_hand_and_clamped_both_ways():
    """``in -> max(1, in // 2) -> 2 out -> out`` 1x1 convolutions; alpha clamped to [-5, 5]."""
    net = ReadoutNet(12, 4)
    assert [(c.in_channels, c.out_channels) for c in net.net if isinstance(c, torch.nn.Conv2d)] == \
        [(12, 6), (6, 8), (8, 4)]
    assert ReadoutNet(1, 3).net[0].out_channels == 1
    with torch.no_grad():
        net.net[-1].bias.fill_(-100.0)
    assert net(torch.randn(1, 12, 1, 1)).min() == -5.0


def test_readout_defaults_options_cost_and_whole_error_lines():
    """Appendix F / the reference's defaults (beta 10, Adam lr 1e-5, 10 epochs; 10 copies for Table 1, seed 0);
    one forward per heatmap, no input gradient; options kept; bad options, a ViT token layer and an untrained
    read-out are one whole line each."""
    import inspect

    from tests.test_vit_methods import tiny_vit
    from xattr.errors import XattrConfigError

    params = inspect.signature(ReadoutIBA.__init__).parameters
    defaults = {k: p.default for k, p in params.items() if p.default is not inspect.Parameter.empty}
    assert defaults == {"beta": 10.0, "lr": 1e-5, "epochs": 10, "train_batch_limit": None,
                        "train_batch_size": None, "copies": 10, "seed": 0}
    assert ReadoutIBA.name == "readout_iba" and ReadoutIBA.requires_grad is False
    model = TinyCNN().eval()
    rb = ReadoutIBA(model, "conv2", ["conv1", "fc"], beta=2, lr=0.1, epochs=3, train_batch_limit=4,
                    train_batch_size=5, copies=6, seed=7)
    assert (rb.beta, rb.lr, rb.epochs, rb.train_batch_limit, rb.train_batch_size, rb.copies, rb.seed) == \
        (2.0, 0.1, 3, 4, 5, 6, 7)
    assert rb.layers == ["conv2", "conv1", "fc"] and rb.readout is None
    assert rb.forwards_per_image((3, 16, 16)) == 1.0
    cases = [
        ({"beta": 0}, "bad beta 0; valid choices: a number > 0"),
        ({"lr": 0}, "bad lr 0; valid choices: a number > 0"),
        ({"epochs": 0}, "bad epochs 0; valid choices: an integer >= 1"),
        ({"train_batch_limit": 0}, "bad train_batch_limit 0; valid choices: an integer >= 1 or null"),
        ({"train_batch_size": 0}, "bad train_batch_size 0; valid choices: an integer >= 1 or null"),
        ({"copies": 0}, "bad copies 0; valid choices: an integer >= 1"),
    ]
    for kw, line in cases:
        with pytest.raises(XattrConfigError) as err:
            ReadoutIBA(model, "conv2", ["conv1"], **kw)
        assert str(err.value) == line, kw
    layer = "encoder.layers.encoder_layer_0"
    with pytest.raises(XattrConfigError) as err:
        ReadoutIBA(tiny_vit(), layer, [layer])
    assert str(err.value) == (f"method readout_iba has no vision-transformer form (layer {layer!r} gives tokens): its "
                              "read-out network pools and convolves (B, C, h, w) feature maps; use iba or inverse_iba "
                              "(docs/transformers.md)")
    with pytest.raises(XattrConfigError) as err:
        rb.attribute(torch.randn(1, 3, 16, 16), 0)
    assert str(err.value) == "the read-out network is not trained: call fit(loader, cache_dir) first"


@pytest.mark.parametrize("kind", ["dict", "no_target", "tuple", "one_tuple"])
def test_one_training_step_by_hand(kind, monkeypatch):
    """ReadoutTraining's loss for one batch against the docstring's formula written out: alpha from the read-out,
    ``lam = sigmoid(alpha)`` (sigma 0), eq. 5's KL on the active features, one noisy copy ``lam r + (1 - lam)(mean
    + std eps)`` with ``eps`` from a generator seeded ``seed 100003 + epoch 10007 + batch index``, TinyCNN's layers
    after conv2 by hand, ``mean(CE + beta mean KL)``; the target is the batch's (dict or tuple) or the model's
    prediction when the batch has none."""
    from xattr.methods.iba import readout as ro

    model = TinyCNN().eval()
    x = torch.randn(3, 3, 16, 16)
    given = torch.tensor([4, 0, 7])
    batch = {"dict": {"x": x, "target": given}, "no_target": {"x": x, "id": torch.arange(3)}, "tuple": (x, given),
             "one_tuple": (x,)}[kind]
    rb = ReadoutIBA(model, "conv2", ["conv1", "conv3", "fc"], beta=0.7, seed=1, sigma=0)
    stats = _hand_stats(model, x, rb.layers)
    rb.set_statistics(stats)
    torch.manual_seed(3)
    readout = ReadoutNet(8 + 16 + 10, 16)
    with torch.no_grad():
        readout.net[-1].weight.mul_(2000.0)  # alpha away from +5: lam varies
    module = ro.ReadoutTraining(rb, readout)
    monkeypatch.setattr(ro.ReadoutTraining, "current_epoch", 3)
    with pytest.warns(UserWarning):  # self.log outside a Trainer
        loss = module.training_step(batch, 2)
    # by hand
    target = given if kind in ("dict", "tuple") else model(x).argmax(1)
    with torch.no_grad():
        _, feats = rb.features(x)
        alpha = readout(feats)
        lam = torch.sigmoid(alpha)
        s = stats["conv2"]
        mean, std, active = s.mean, s.std.clamp_min(0.01), (s.nonzero > 0.01).float()
        r = _tinycnn_parts(model, x)[1]
        r_n = (r - mean) / std
        kl = -0.5 * (1 + torch.log((1 - lam) ** 2) - (lam * r_n) ** 2 - (1 - lam) ** 2) * active
        eps = torch.randn(r.shape, generator=torch.Generator().manual_seed(1 * 100_003 + 3 * 10_007 + 2))
        z = (lam * r + (1 - lam) * (mean + std * eps)) * active
        f = model.features
        out = model.fc(model.pool(torch.relu(f[5](f[4](torch.relu(z))))).flatten(1))
        ce = torch.nn.functional.cross_entropy(out, target, reduction="none")
        want = (ce + 0.7 * kl.flatten(1).mean(1)).mean()
    assert lam.min() < 0.9  # the case is not trivial
    torch.testing.assert_close(loss.detach(), want, rtol=1e-5, atol=1e-5)


def test_checkpoint_directory_by_hand_and_training_reads_the_loader_in_order(tmp_path, monkeypatch, capfd):
    """The checkpoint folder is ``<model>-<layer>-b<beta>-e<epochs>-bs<batch>-<digest>``, the digest sha1 of the
    sorted JSON key (the statistics' key plus every training setting; the batch is the loader's when
    ``train_batch_size`` is None); it holds only ``last.ckpt``; ``train_batch_limit`` steps per epoch, the
    loader's batches in order; no progress bar; the read-out gives one alpha per channel of the bottleneck."""
    import hashlib
    import json

    from xattr.methods.iba import readout as ro
    from xattr.methods.iba import statistics as st

    warnings.simplefilter("ignore")
    seen = []

    def step(self, batch, i):
        seen.append((i, batch["x"].clone(), batch["target"].clone()))
        return self.readout.net[0].weight.sum() * 0

    monkeypatch.setattr(ro.ReadoutTraining, "training_step", step)
    model = TinyCNN().eval()
    rb = ReadoutIBA(model, "conv1", ["conv1", "conv3"], epochs=1, lr=1e-2, n_samples=24, train_batch_limit=5)
    loader = _loader(n=6, b=4)
    rb.fit(loader, tmp_path)
    _, key = st.cache_key(model, ["conv1", "conv3"], 24)
    key.update(readout=["conv1", "conv3"], beta=10.0, lr=0.01, epochs=1, limit=5, sigma=1.0, seed=0, batch_size=4,
               targets="label")
    digest = hashlib.sha1(json.dumps(key, sort_keys=True).encode()).hexdigest()[:10]
    folder = tmp_path / "iba_readout" / f"TinyCNN-conv1-b10-e1-bs4-{digest}"
    assert sorted(p.name for p in folder.iterdir()) == ["last.ckpt"]
    assert [i for i, _, _ in seen] == [0, 1, 2, 3, 4]
    for (_, xb, tb), want in zip(seen, loader[:5], strict=True):
        assert torch.equal(xb, want["x"]) and torch.equal(tb, want["target"])
    assert rb.readout(torch.zeros(1, 8 + 16, 16, 16)).shape == (1, 8, 16, 16)
    out = capfd.readouterr()
    assert "Epoch 0" not in out.out + out.err


def test_training_batches_re_batched_in_order_with_their_targets_and_the_loaders_collate(tmp_path, monkeypatch):
    """``train_batch_size``: the estimation images re-batched in order with their targets, from a list of batches
    and from a DataLoader's dataset (through that loader's own ``collate_fn``)."""
    from xattr.methods.iba import readout as ro

    warnings.simplefilter("ignore")
    seen = []

    def step(self, batch, i):
        seen.append((batch["x"].clone(), batch["target"].clone()))
        return self.readout.net[0].weight.sum() * 0

    monkeypatch.setattr(ro.ReadoutTraining, "training_step", step)
    model = TinyCNN().eval()
    loader = _loader()
    xs, ts = torch.cat([b["x"] for b in loader]), torch.cat([b["target"] for b in loader])
    ReadoutIBA(model, "conv2", ["conv3"], epochs=1, n_samples=24, train_batch_size=5).fit(loader, tmp_path / "a")
    assert [len(t) for _, t in seen] == [5, 5, 5, 5, 4]
    assert torch.equal(torch.cat([x for x, _ in seen]), xs) and torch.equal(torch.cat([t for _, t in seen]), ts)

    items = [{"image": xs[i], "label": ts[i]} for i in range(len(xs))]

    def collate(rows):  # the dataset's own keys -> the batch keys the methods read
        return {"x": torch.stack([r["image"] for r in rows]), "target": torch.stack([r["label"] for r in rows])}

    seen.clear()
    dl = torch.utils.data.DataLoader(items, batch_size=8, collate_fn=collate)
    ReadoutIBA(model, "conv2", ["conv3"], epochs=1, n_samples=24, train_batch_size=10).fit(dl, tmp_path / "b")
    assert [len(t) for _, t in seen] == [10, 10, 4]
    assert torch.equal(torch.cat([x for x, _ in seen]), xs) and torch.equal(torch.cat([t for _, t in seen]), ts)

    class Items(list):  # a dataset that says how its items make a batch (no loader collate_fn)
        def collate(self, rows):
            return collate(rows)

    class Batches:  # an iterable of batches with a dataset, not a DataLoader
        def __init__(self, dataset):
            self.dataset = dataset

        def __iter__(self):
            return iter([self.dataset.collate(self.dataset[i : i + 8]) for i in range(0, len(self.dataset), 8)])

    seen.clear()
    ReadoutIBA(model, "conv2", ["conv3"], epochs=1, n_samples=24, train_batch_size=12).fit(Batches(Items(items)),
                                                                                          tmp_path / "c")
    assert [len(t) for _, t in seen] == [12, 12]
    assert torch.equal(torch.cat([x for x, _ in seen]), xs) and torch.equal(torch.cat([t for _, t in seen]), ts)

    def no_target(self, batch, i):
        seen.append(sorted(batch))
        return self.readout.net[0].weight.sum() * 0

    monkeypatch.setattr(ro.ReadoutTraining, "training_step", no_target)
    seen.clear()
    ReadoutIBA(model, "conv2", ["conv3"], epochs=1, n_samples=24, train_batch_size=12).fit(
        [{"x": b["x"]} for b in loader], tmp_path / "d")
    assert seen == [["x"], ["x"]]  # no targets made up


def test_readout_table1_result_has_no_steps_and_the_same_map(tmp_path):
    """With the Table 1 auxiliaries the map is the deterministic one (the KL needs no noise); the result has no
    optimisation steps (losses and info ``(0, B)``) and ``copies`` noisy outputs per image."""
    warnings.simplefilter("ignore")
    model = TinyCNN().eval()
    rb = ReadoutIBA(model, "conv2", ["conv1", "conv3"], epochs=1, n_samples=24, copies=3)
    rb.set_statistics(_hand_stats(model, torch.randn(2, 3, 16, 16), rb.layers))
    torch.manual_seed(0)
    rb.readout = ReadoutNet(24, 16).eval()
    x = torch.randn(2, 3, 16, 16)
    res = rb.noisy_result(x)
    assert res.losses.shape == (0, 2) and res.info.shape == (0, 2) and res.outputs.shape == (2, 3, 10)
    e = rb.explain(x, torch.tensor([1, 2]), aux=["bottleneck/top1"])
    assert e.maps.shape == (2, 1, 16, 16)
    torch.testing.assert_close(e.maps, rb.attribute(x, torch.tensor([1, 2])))


def test_one_tail_for_every_training_batch_trains_the_read_out_a_fresh_split_per_batch_does(tmp_path, monkeypatch):
    """The read-out's training splits the network once and moves the tail from batch to batch
    (``NetworkTail.for_input``); before, every step traced, folded and checked a new split. Same batches
    (24 images in batches of 5: the last one 4), same seed: the same read-out, the same maps."""
    warnings.simplefilter("ignore")
    from xattr.methods.iba import tail as tail_mod

    model = TinyCNN().eval()
    x = torch.randn(3, 3, 16, 16)

    def train(cache):
        torch.manual_seed(0)  # the read-out's initial weights
        rb = ReadoutIBA(model, "conv2", ["conv1", "conv3", "fc"], epochs=2, lr=1e-2, n_samples=24, train_batch_size=5)
        rb.fit(_loader(), cache)
        return rb.readout.state_dict(), rb.attribute(x, torch.tensor([0, 1, 2]))

    built = []
    real_init = tail_mod.NetworkTail.__init__
    monkeypatch.setattr(tail_mod.NetworkTail, "__init__", lambda self, *a, **k: built.append(1) or real_init(self, *a, **k))
    new, new_maps = train(tmp_path / "new")
    assert len(built) == 1  # one split for 2 epochs x 5 batches
    monkeypatch.setattr(tail_mod.NetworkTail, "for_input",
                        lambda self, xb, r=None: tail_mod.NetworkTail(self.model, self.path, xb))  # the old way
    old, old_maps = train(tmp_path / "old")
    assert len(built) == 1 + 1 + 10  # the first step builds one, then every step (the first too) a fresh one
    init = ReadoutNet(old["net.0.weight"].shape[1], 16).state_dict()
    assert not torch.allclose(old["net.4.bias"], init["net.4.bias"])  # it trained
    for k in old:
        torch.testing.assert_close(new[k], old[k], rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(new_maps, old_maps, rtol=1e-5, atol=1e-7)


def test_the_read_out_trains_on_the_labels_as_the_reference_notebook():
    """The reference notebook's loss takes the dataset's class (``-log_softmax(model(x))[:, target]``); xattr's
    datasets name it ``label``. -1 (an unlabelled photo) and multi-hot findings fall back to the model's top-1."""
    from xattr.methods.iba.readout import training_targets

    torch.manual_seed(0)
    model = TinyCNN(num_classes=10).eval()
    x = torch.randn(4, 3, 16, 16)
    top1 = model(x).argmax(1)
    labels = (top1 + 1) % 10  # never the top-1
    assert torch.equal(training_targets({"x": x, "label": labels}, x, model), labels)
    assert torch.equal(training_targets({"x": x, "target": labels, "label": top1}, x, model), labels)
    assert torch.equal(training_targets((x, labels), x, model), labels)
    partly = labels.clone()
    partly[1] = -1
    assert torch.equal(training_targets({"x": x, "label": partly}, x, model),
                       torch.where(partly >= 0, partly, top1))
    assert torch.equal(training_targets({"x": x, "label": torch.ones(4, 10)}, x, model), top1)  # multi-hot
    assert torch.equal(training_targets({"x": x}, x, model), top1)


def test_a_read_out_fitted_on_label_batches_is_the_one_fitted_on_the_same_targets(tmp_path):
    warnings.simplefilter("ignore")
    model = TinyCNN().eval()
    batches = _loader()
    as_label = [{"x": b["x"], "label": b["target"]} for b in batches]

    def fit(data, cache):
        torch.manual_seed(0)
        rb = ReadoutIBA(model, "conv2", ["conv1", "conv3"], epochs=1, lr=1e-2, n_samples=24, train_batch_size=8)
        rb.fit(data, cache)
        return rb.readout.state_dict()

    ref, got = fit(batches, tmp_path / "t"), fit(as_label, tmp_path / "l")
    top1 = [{"x": b["x"]} for b in batches]
    other = fit(top1, tmp_path / "p")
    for k in ref:
        torch.testing.assert_close(got[k], ref[k], rtol=0, atol=0)
    assert any(not torch.allclose(other[k], ref[k]) for k in ref)


def test_a_stopped_read_out_training_resumes_from_its_last_finished_epoch(tmp_path, monkeypatch):
    """``last.ckpt`` is written after every epoch (Lightning's ``save_last`` alone writes none with
    ``save_top_k=0``): a training stopped in its third epoch resumes there, runs only the epochs left, and ends
    with the read-out of an uninterrupted training."""
    warnings.simplefilter("ignore")
    from xattr.methods.iba import readout as ro

    model = TinyCNN().eval()

    def make():
        torch.manual_seed(0)
        return ReadoutIBA(model, "conv2", ["conv1", "conv3"], epochs=3, lr=1e-2, n_samples=24, train_batch_size=8)

    whole = make()
    whole.fit(_loader(), tmp_path / "whole")
    orig, epochs = ro.ReadoutTraining.training_step, []

    def stop_in_epoch_2(self, batch, i):
        if self.current_epoch == 2:
            raise RuntimeError("stopped")
        return orig(self, batch, i)

    monkeypatch.setattr(ro.ReadoutTraining, "training_step", stop_in_epoch_2)
    with pytest.raises(RuntimeError, match="stopped"):
        make().fit(_loader(), tmp_path / "stopped")
    assert len(list((tmp_path / "stopped").rglob("last.ckpt"))) == 1
    monkeypatch.setattr(ro.ReadoutTraining, "training_step",
                        lambda self, batch, i: epochs.append(self.current_epoch) or orig(self, batch, i))
    resumed = make()
    resumed.fit(_loader(), tmp_path / "stopped")
    assert epochs == [2, 2, 2]  # 24 images in batches of 8: only the third epoch ran
    for k, v in whole.readout.state_dict().items():
        torch.testing.assert_close(resumed.readout.state_dict()[k], v, rtol=0, atol=0)


def test_the_read_out_on_parts_equals_the_read_out_on_the_resized_concatenation():
    """``forward_parts`` convolves each part at the smaller of its and the bottleneck's resolution, then resizes:
    a 1x1 convolution and a bilinear resize commute, so it is the reference's read-out (resize, concatenate,
    convolve) up to float rounding: a larger part (16 -> 8), a smaller one (4 -> 8), a vector (1 x 1) and one of
    the bottleneck's size."""
    import torch.nn.functional as F

    torch.manual_seed(0)
    net = ReadoutNet(3 + 5 + 7 + 4, 6)
    with torch.no_grad():
        net.net[-1].weight.normal_()  # away from the initial near-constant alpha, so a wrong path shows
        net.net[-1].bias.zero_()
    parts = [torch.randn(2, 3, 16, 16), torch.randn(2, 5, 4, 4), torch.randn(2, 7, 1, 1), torch.randn(2, 4, 8, 8)]
    cat = torch.cat([p if p.shape[-2:] == (8, 8) else F.interpolate(p, size=(8, 8), mode="bilinear",
                                                                    align_corners=False) for p in parts], 1)
    want = net(cat)
    assert want.abs().max() > 0.5 and want.std() > 0.1
    torch.testing.assert_close(net.forward_parts(parts, (8, 8)), want, rtol=1e-5, atol=1e-5)
