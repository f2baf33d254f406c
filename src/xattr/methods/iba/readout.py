"""Readout IBA (Schulz et al., "Restricting the Flow", ICLR 2020, sec. 3.3, appendix F table 4).

A read-out network predicts alpha from feature maps collected in a first (clean) forward pass; it is
trained once on the estimation images (``fit``, with Lightning, checkpointed and resumable under
``cache_dir``) with IBA's loss ``L_CE + beta * L_I`` through one noisy forward pass per image; a heatmap
is then one clean forward pass plus the read-out (deterministic: the KL needs no noise).

Read-out network, as the reference code (../shared/REFERENCE.md): each read-out layer's output is
normalised by ``(r - mean) / max(std, min_std)``, resized bilinearly to the bottleneck's ``h x w`` (vectors
such as ``fc`` are broadcast) and concatenated; three 1x1 convolutions ``in -> in/2 -> 2 out -> out`` with
ReLUs; the last has bias 5 and weights scaled by 1e-3 (so lambda starts near sigmoid(5)); alpha is clamped
to +-5; then eq. 7's smoothing. Adam 1e-5, beta 10 (mean-KL convention), 10 epochs. Departure: the
released notebook's loss indexed a B x B matrix by mistake; xattr uses the per-image cross-entropy. The
class is the training image's label, as the notebook's (before session 15 the model's top-1 was used when the
batch named it ``label`` instead of ``target``, as xattr's datasets do): :func:`training_targets`.

The training batch size is the method's own (``train_batch_size``), not the run's ``batch_size``, and is
part of the checkpoint's key: two configurations never share a read-out. Asked for the auxiliaries
``bottleneck/*`` (Table 1, :meth:`ReadoutIBA.explain`), the read-out's alpha is applied to ``copies`` noisy
copies per image and the network tail gives the outputs.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Sequence
from pathlib import Path

import pytorch_lightning as pl
import torch
from torch import nn
from torch.nn import functional as F

from xattr.core.checks import check_positive, check_positive_int
from xattr.core.hooks import capture_many, frozen
from xattr.core.seeding import draw_noise
from xattr.core.trainer import LastEveryEpoch, accelerator_of, make_trainer
from xattr.errors import XattrConfigError
from xattr.methods.base import Explanation, with_prefix
from xattr.methods.iba import statistics as st
from xattr.methods.iba.bottleneck import AlphaResult, cross_entropy_loss, to_bits_map
from xattr.methods.iba.per_sample import IBABase, bottleneck_scores, check_shape
from xattr.methods.iba.tail import NetworkTail


class ReadoutNet(nn.Module):
    """Three 1x1 convolutions ``in -> in/2 -> 2 out -> out`` with ReLUs; output alpha clamped to +-5."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        mid = max(1, in_channels // 2)
        self.net = nn.Sequential(
            nn.Conv2d(in_channels, mid, 1), nn.ReLU(),
            nn.Conv2d(mid, 2 * out_channels, 1), nn.ReLU(),
            nn.Conv2d(2 * out_channels, out_channels, 1),
        )
        last = self.net[-1]
        with torch.no_grad():
            last.weight.mul_(1e-3)
            last.bias.fill_(5.0)

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        return self.net(feats).clamp(-5.0, 5.0)

    def forward_parts(self, parts: Sequence[torch.Tensor], size: tuple[int, int]) -> torch.Tensor:
        """``forward`` of the concatenated parts, each resized bilinearly to ``size`` first, with the first 1x1
        convolution taken part by part at the smaller of the part's and ``size``'s resolution. A 1x1 convolution
        (a mix of channels at each pixel) commutes with a bilinear resize (a mix of pixels in each channel), so
        the result is the same up to float rounding (``tests/test_iba_readout.py``); on MobileNet-V2, 1 280 of
        the 1 432 input channels (``last_conv``, 7 x 7) are convolved at 7 x 7 instead of 28 x 28, most of the
        read-out's arithmetic (docs/speed.md)."""
        first, out, start = self.net[0], None, 0
        h, w = size
        for part in parts:
            weight = first.weight[:, start : start + part.shape[1]]
            start += part.shape[1]
            if part.shape[-2:] != size and part.shape[-2] * part.shape[-1] > h * w:
                part = F.interpolate(part, size=size, mode="bilinear", align_corners=False)
            y = F.conv2d(part, weight)
            if y.shape[-2:] != size:
                y = F.interpolate(y, size=size, mode="bilinear", align_corners=False)
            out = y if out is None else out + y
        return self.net[1:](out + first.bias.view(1, -1, 1, 1)).clamp(-5.0, 5.0)


class ReadoutIBA(IBABase):
    """Readout Bottleneck.

    Args:
        model: classifier; ``layer``: bottleneck layer; ``readout_layers``: layers read out (paper names
            or module paths; the model yaml's ``layers.readout``).
        beta, lr, epochs, train_batch_limit: training (``train_batch_limit``: batches per epoch, None: all).
        train_batch_size: images per training step (``None``: the estimation loader's batches as they come;
            their size still goes into the checkpoint key).
        copies: noisy copies per image for the Table 1 auxiliaries (only computed when asked for).
        seed: seed of the training noise. Other arguments (``resize``, ...): see :class:`IBABase`.

    >>> rb = ReadoutIBA(net, "features.17", ["features.10", "features.17", "features.24", "classifier.6"])
    >>> rb.fit(loader, cache_dir); maps = rb.attribute(x, target)
    """

    name = "readout_iba"
    paper = "Schulz et al., ICLR 2020 (Readout Bottleneck)"
    requires_grad = False

    def forwards_per_image(self, shape: tuple[int, ...]) -> float:
        """Cost rule: one forward (the read-out network is trained once, in ``fit``); the Table 1 accuracies,
        only when asked for (``aux``), add ``copies`` noisy forwards."""
        return 1.0

    def __init__(self, model: nn.Module, layer: str, readout_layers: Sequence[str], beta: float = 10.0,
                 lr: float = 1e-5, epochs: int = 10, train_batch_limit: int | None = None,
                 train_batch_size: int | None = None, copies: int = 10, seed: int = 0, **kw) -> None:
        readout_layers = list(readout_layers)
        super().__init__(model, [layer] + [r for r in readout_layers if r != layer], **kw)
        self.refuse_tokens("its read-out network pools and convolves (B, C, h, w) feature maps")
        self.layer, self.readout_layers = layer, readout_layers
        check_positive("beta", beta)
        check_positive("lr", lr)
        self.beta, self.lr, self.epochs = float(beta), float(lr), check_positive_int("epochs", epochs)
        check_positive_int("train_batch_limit", train_batch_limit, allow_none=True)
        self.train_batch_limit, self.seed = train_batch_limit, seed
        self.train_batch_size = check_positive_int("train_batch_size", train_batch_size, allow_none=True)
        self.copies = check_positive_int("copies", copies)
        self.readout: ReadoutNet | None = None

    # --------------------------------------------------------------------- features
    def feature_parts(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """One clean forward pass: (bottleneck feature ``r`` (B, C, h, w), each read-out layer's output
        normalised by ``(f - mean) / max(std, min_std)`` at its own resolution, vectors as (B, C, 1, 1))."""
        with torch.no_grad():
            got = capture_many(self.model, {n: layer.module for n, layer in self.resolved.items()}, x)
        parts = []
        for name in self.readout_layers:
            s = self.stats[name]
            f = (got[name] - s.mean) / s.std.clamp_min(self.min_std)
            parts.append(f.reshape(f.shape[0], -1, 1, 1) if f.dim() == 2 else f)
        return got[self.layer], parts

    def features(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One clean forward pass: (bottleneck feature ``r`` (B, C, h, w), read-out input (B, in, h, w): the
        normalised parts resized bilinearly to ``h x w`` and concatenated, the reference's input)."""
        r, parts = self.feature_parts(x)
        size = r.shape[-2:]
        return r, torch.cat([f if f.shape[-2:] == size else
                             F.interpolate(f, size=size, mode="bilinear", align_corners=False) for f in parts], 1)

    # --------------------------------------------------------------------- training
    def _ckpt_dir(self, cache_dir: Path, batch_size: int) -> Path:
        _, key = st.cache_key(self.model, self.layers, self.n_samples, self.model_name, self.weights, self.dataset)
        key = {**key, "readout": self.readout_layers, "beta": self.beta, "lr": self.lr, "epochs": self.epochs,
               "limit": self.train_batch_limit, "sigma": self.sigma, "seed": self.seed, "batch_size": batch_size,
               "targets": "label"}  # trained on the labels (session 15; before: top-1 for "label" batches)
        digest = hashlib.sha1(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:10]
        return Path(cache_dir) / "iba_readout" / f"{key['model']}-{st._slug(self.layer)}-b{self.beta:g}-e{self.epochs}-bs{batch_size}-{digest}"

    def fit_forwards(self, n_images: int, cache_dir: Path | None = None) -> float:
        """Cost rule of :meth:`fit`, as counted through the head: the feature statistics (0 when cached), a probe
        of two images for the read-out's width, the tail's split on the first training batch (a recording
        forward and the split's check on one and two copies: 4 per image), then per training image and epoch 4:
        a clean forward for the read-out's input (1) and the tail's forward and input backward (3; moving
        the split to the batch runs only the layers before the bottleneck, which the head does not see; batches
        without labels add the model's top-1 forward, not counted here); over
        the epochs a checkpoint in ``cache_dir`` has not finished (known only with ``train_batch_size``, part
        of its key, which also sizes the first batch)."""
        stats = super().fit_forwards(n_images, cache_dir)
        epochs_left = self.epochs
        if cache_dir is not None and self.train_batch_size is not None:
            last = self._ckpt_dir(Path(cache_dir), self.train_batch_size) / "last.ckpt"
            if last.is_file():
                try:  # Lightning's checkpoint: "epoch" is the last finished epoch (0-based)
                    done = int(torch.load(last, map_location="cpu", weights_only=False).get("epoch", -1)) + 1
                except Exception:  # noqa: BLE001 - unreadable: count every epoch (it only sizes the estimate)
                    done = 0
                epochs_left = max(0, self.epochs - done)
        per_epoch = n_images
        if self.train_batch_limit is not None:
            per_epoch = min(n_images, self.train_batch_limit * (self.train_batch_size or 1))
        if not epochs_left:
            return stats
        probe = min(2, n_images, self.train_batch_size or 2)
        split = 4 * min(self.train_batch_size or 0, per_epoch)
        return stats + probe + split + 4.0 * epochs_left * per_epoch

    def fit(self, loader: Iterable[dict], cache_dir: Path | None = None) -> None:
        """Feature statistics (cached), then the read-out network (Lightning; resumes from ``last.ckpt``)."""
        super().fit(loader, cache_dir)
        loader = self._training_loader(loader)
        first = st.batch_images(next(iter(loader)))
        feats_in = sum(p.shape[1] for p in self.feature_parts(first[:2].to(self.device))[1])
        out_c = self.stats[self.layer].mean.shape[0]
        module = ReadoutTraining(self, ReadoutNet(feats_in, out_c))
        ckpt_dir = self._ckpt_dir(cache_dir, self.train_batch_size or first.shape[0]) if cache_dir is not None else None
        callbacks, resume = [], None
        if ckpt_dir is not None:
            callbacks.append(LastEveryEpoch(str(ckpt_dir)))  # last.ckpt after every epoch: a stop resumes there
            resume = ckpt_dir / "last.ckpt" if (ckpt_dir / "last.ckpt").is_file() else None
        trainer = make_trainer(
            max_epochs=self.epochs, accelerator=accelerator_of(self.device), devices=1,
            enable_checkpointing=ckpt_dir is not None, callbacks=callbacks, enable_progress_bar=False,
            default_root_dir=ckpt_dir, limit_train_batches=self.train_batch_limit or 1.0, num_sanity_val_steps=0,
        )
        with frozen(self.model):
            trainer.fit(module, train_dataloaders=loader, ckpt_path=resume)
        self.readout = module.readout.to(self.device).eval()

    def _training_loader(self, loader: Iterable) -> torch.utils.data.DataLoader:
        """Batches of ``train_batch_size`` from the estimation data (a loader's dataset, re-batched in order;
        any other iterable of batches is concatenated and re-batched); ``None``: its batches as they are."""
        if self.train_batch_size is None:
            if isinstance(loader, torch.utils.data.DataLoader):
                return loader
            return torch.utils.data.DataLoader(list(loader), batch_size=None, shuffle=False)
        dataset = getattr(loader, "dataset", None)
        if dataset is not None:
            collate = getattr(loader, "collate_fn", None) or getattr(dataset, "collate", None)
            return torch.utils.data.DataLoader(dataset, batch_size=self.train_batch_size, shuffle=False,
                                               **({"collate_fn": collate} if collate else {}))
        batches = list(loader)
        xs = torch.cat([st.batch_images(b) for b in batches])
        key = next((k for k in ("target", "label") if all(isinstance(b, dict) and k in b for b in batches)), None)
        ts = torch.cat([torch.as_tensor(b[key]).reshape(-1) for b in batches]) if key else None
        n = self.train_batch_size
        rows = [{"x": xs[i : i + n], **({key: ts[i : i + n]} if key else {})} for i in range(0, len(xs), n)]
        return torch.utils.data.DataLoader(rows, batch_size=None, shuffle=False)

    # --------------------------------------------------------------------- attribution
    def alpha_and_kl(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(alpha, per-feature KL in nats, r) for ``x`` from the trained read-out."""
        if self.readout is None:
            raise XattrConfigError("the read-out network is not trained: call fit(loader, cache_dir) first")
        r, parts = self.feature_parts(x)
        bn = self.bottleneck(self.layer)
        check_shape(r, bn, self.layer)
        alpha = self.readout.forward_parts(parts, tuple(r.shape[-2:]))
        return alpha, bn.kl(r, bn.lam(alpha)), r

    def _attribute(self, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return to_bits_map(self.alpha_and_kl(x)[1], tuple(x.shape[-2:]), self.resize)

    def _explain(self, x: torch.Tensor, target: torch.Tensor, aux: frozenset[str]) -> Explanation:
        if not any(a.startswith("bottleneck/") for a in aux):
            return Explanation(self._attribute(x, target))
        with torch.no_grad():
            res = self.noisy_result(x)
        return Explanation(to_bits_map(res.kl, tuple(x.shape[-2:]), self.resize),
                           with_prefix("bottleneck", bottleneck_scores(res, target)))

    def noisy_result(self, x: torch.Tensor) -> AlphaResult:
        """The Readout bottleneck's outcome on ``x``: alpha from the read-out network, ``copies`` noisy
        copies through the network tail (as in its training), KL of eq. 5; an ``AlphaResult`` without steps."""
        alpha, kl, r = self.alpha_and_kl(x)
        bn = self.bottleneck(self.layer)
        lam = bn.lam(alpha)
        eps = draw_noise((self.copies, *r.shape[1:]), r.shape[0], None, r.device)
        z = bn.sample(r[:, None], lam[:, None], eps).flatten(0, 1)
        tail = NetworkTail(self.model, self.resolved[self.layer], x)
        out = tail(z).float().reshape(r.shape[0], self.copies, -1)
        empty = torch.zeros(0, r.shape[0])
        return AlphaResult(alpha=alpha, kl=kl, outputs=out, losses=empty, info=empty)


def training_targets(batch, x: torch.Tensor, model: nn.Module) -> torch.Tensor:
    """The class each training image's cross-entropy is taken for: the batch's ``target``, else its ``label``
    (the dataset's class: the reference notebook trains on ImageNet's labels), else the second item of a
    ``(x, y)`` pair; the model's top-1 where there is none (label -1: an unlabelled photo) or where the labels
    are not class indices (multi-hot findings)."""
    y = None
    if isinstance(batch, dict):
        y = batch.get("target", batch.get("label"))
    elif isinstance(batch, (list, tuple)) and len(batch) > 1:
        y = batch[1]
    y = torch.as_tensor(y, device=x.device) if y is not None and not isinstance(y, (str, list)) else None
    classes = y is not None and y.shape == (x.shape[0],) and not y.is_floating_point()
    if classes and bool((y >= 0).all()):
        return y.long()  # no forward for the top-1
    with torch.no_grad():
        top1 = model(x).argmax(1)
    return torch.where(y >= 0, y.long(), top1) if classes else top1


class ReadoutTraining(pl.LightningModule):
    """Trains a :class:`ReadoutNet` for a :class:`ReadoutIBA` (the classifier stays frozen and outside
    the checkpoint): ``loss = CE(target) + beta * mean KL`` with one noisy pass per image."""

    def __init__(self, method: ReadoutIBA, readout: ReadoutNet) -> None:
        super().__init__()
        self.readout = readout
        object.__setattr__(self, "_method", method)  # not a submodule: never saved, never moved
        object.__setattr__(self, "_tail", None)  # the network after the bottleneck, built at the first step

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        m = self._method
        x = st.batch_images(batch).to(m.device)
        r, parts = m.feature_parts(x)
        target = training_targets(batch, x, m.model)
        bn = m.bottleneck(m.layer)
        alpha = self.readout.forward_parts([p.to(self.device) for p in parts], tuple(r.shape[-2:])).to(m.device)
        lam = bn.lam(alpha)
        kl = bn.kl(r, lam)
        g = torch.Generator(device=m.device).manual_seed(m.seed * 100_003 + self.current_epoch * 10_007 + batch_idx)
        z = bn.sample(r, lam, torch.randn(r.shape, generator=g, device=m.device))
        if self._tail is None:  # split and checked once; each batch after only recomputes its inputs
            object.__setattr__(self, "_tail", NetworkTail(m.model, m.resolved[m.layer], x))
        tail = self._tail.for_input(x, r)
        ce = cross_entropy_loss(target)(tail(z).float()[:, None])
        loss = (ce + m.beta * kl.flatten(1).mean(1)).mean()
        self.log("loss", loss.detach(), prog_bar=False, batch_size=x.shape[0])
        return loss

    def configure_optimizers(self):
        return torch.optim.Adam(self.readout.parameters(), lr=self._method.lr)
