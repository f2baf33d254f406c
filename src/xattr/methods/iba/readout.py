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
released notebook's loss indexed a B x B matrix by mistake; xattr uses the per-image cross-entropy.
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

from xattr.methods.iba import statistics as st
from xattr.methods.iba.bottleneck import cross_entropy_loss, frozen, to_bits_map
from xattr.methods.iba.per_sample import IBABase, check_shape
from xattr.methods.iba.tail import NetworkTail
from xattr.models.layers import layer_path


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


class ReadoutIBA(IBABase):
    """Readout Bottleneck.

    Args:
        model: classifier; ``layer``: bottleneck layer; ``readout_layers``: layers read out (paper names
            or module paths; the model yaml's ``layers.readout``).
        beta, lr, epochs, train_batch_limit: training (``train_batch_limit``: batches per epoch, None: all).
        seed: seed of the training noise. Other arguments: see :class:`IBABase`.

    >>> rb = ReadoutIBA(net, "features.17", ["features.10", "features.17", "features.24", "classifier.6"])
    >>> rb.fit(loader, cache_dir); maps = rb.attribute(x, target)
    """

    name = "readout_iba"
    paper = "Schulz et al., ICLR 2020 (Readout Bottleneck)"
    requires_grad = False

    def __init__(self, model: nn.Module, layer: str, readout_layers: Sequence[str], beta: float = 10.0,
                 lr: float = 1e-5, epochs: int = 10, train_batch_limit: int | None = None, seed: int = 0,
                 **kw) -> None:
        readout_layers = list(readout_layers)
        super().__init__(model, [layer] + [r for r in readout_layers if r != layer], **kw)
        self.layer, self.readout_layers = layer, readout_layers
        self.beta, self.lr, self.epochs = float(beta), float(lr), int(epochs)
        self.train_batch_limit, self.seed = train_batch_limit, seed
        self.readout: ReadoutNet | None = None

    # --------------------------------------------------------------------- features
    def features(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One clean forward pass: (bottleneck feature ``r`` (B, C, h, w), read-out input (B, in, h, w))."""
        paths = {name: layer_path(self.model, name) for name in self.layers}
        got: dict[str, torch.Tensor] = {}
        handles = [self.model.get_submodule(p).register_forward_hook(
            lambda _m, _i, out, n=n: got.__setitem__(n, out.detach())) for n, p in paths.items()]
        try:
            with torch.no_grad():
                self.model(x)
        finally:
            for h in handles:
                h.remove()
        r = got[self.layer]
        size = r.shape[-2:]
        parts = []
        for name in self.readout_layers:
            s = self.stats[name]
            f = (got[name] - s.mean) / s.std.clamp_min(self.min_std)
            f = f.reshape(f.shape[0], -1, 1, 1) if f.dim() == 2 else f
            if f.shape[-2:] != size:
                f = F.interpolate(f, size=size, mode="bilinear", align_corners=False)
            parts.append(f)
        return r, torch.cat(parts, 1)

    # --------------------------------------------------------------------- training
    def _ckpt_dir(self, cache_dir: Path) -> Path:
        _, key = st.cache_key(self.model, self.layers, self.n_samples, self.model_name, self.weights, self.dataset)
        key = {**key, "readout": self.readout_layers, "beta": self.beta, "lr": self.lr, "epochs": self.epochs,
               "limit": self.train_batch_limit, "sigma": self.sigma, "seed": self.seed}
        digest = hashlib.sha1(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:10]
        return Path(cache_dir) / "iba_readout" / f"{key['model']}-{st._slug(self.layer)}-b{self.beta:g}-e{self.epochs}-{digest}"

    def fit(self, loader: Iterable[dict], cache_dir: Path | None = None) -> None:
        """Feature statistics (cached), then the read-out network (Lightning; resumes from ``last.ckpt``)."""
        super().fit(loader, cache_dir)
        feats_in = self.features(_first_images(loader).to(self.device))[1].shape[1]
        out_c = self.stats[self.layer].mean.shape[0]
        module = ReadoutTraining(self, ReadoutNet(feats_in, out_c))
        ckpt_dir = self._ckpt_dir(cache_dir) if cache_dir is not None else None
        callbacks, resume = [], None
        if ckpt_dir is not None:
            callbacks.append(pl.callbacks.ModelCheckpoint(dirpath=ckpt_dir, save_last=True, save_top_k=0))
            resume = ckpt_dir / "last.ckpt" if (ckpt_dir / "last.ckpt").is_file() else None
        trainer = pl.Trainer(
            max_epochs=self.epochs, accelerator="gpu" if self.device.type == "cuda" else "cpu", devices=1,
            logger=False, enable_checkpointing=ckpt_dir is not None, callbacks=callbacks,
            enable_progress_bar=False, enable_model_summary=False, default_root_dir=ckpt_dir,
            limit_train_batches=self.train_batch_limit or 1.0, num_sanity_val_steps=0,
        )
        if not isinstance(loader, torch.utils.data.DataLoader):  # any iterable of batches, as they are
            loader = torch.utils.data.DataLoader(list(loader), batch_size=None, shuffle=False)
        with frozen(self.model):
            trainer.fit(module, train_dataloaders=loader, ckpt_path=resume)
        self.readout = module.readout.to(self.device).eval()

    # --------------------------------------------------------------------- attribution
    def alpha_and_kl(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(alpha, per-feature KL in nats, r) for ``x`` from the trained read-out."""
        if self.readout is None:
            from xattr.errors import XattrConfigError

            raise XattrConfigError("the read-out network is not trained: call fit(loader, cache_dir) first")
        r, feats = self.features(x)
        bn = self.bottleneck(self.layer)
        check_shape(r, bn, self.layer)
        alpha = self.readout(feats)
        return alpha, bn.kl(r, bn.lam(alpha)), r

    def _attribute(self, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return to_bits_map(self.alpha_and_kl(x)[1], tuple(x.shape[-2:]))


def _first_images(loader: Iterable) -> torch.Tensor:
    for batch in loader:
        return st.batch_images(batch)[:2]
    raise ValueError("the estimation loader is empty")


class ReadoutTraining(pl.LightningModule):
    """Trains a :class:`ReadoutNet` for a :class:`ReadoutIBA` (the classifier stays frozen and outside
    the checkpoint): ``loss = CE(target) + beta * mean KL`` with one noisy pass per image."""

    def __init__(self, method: ReadoutIBA, readout: ReadoutNet) -> None:
        super().__init__()
        self.readout = readout
        object.__setattr__(self, "_method", method)  # not a submodule: never saved, never moved

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        m = self._method
        x = st.batch_images(batch).to(m.device)
        r, feats = m.features(x)
        if isinstance(batch, dict) and "target" in batch:
            target = batch["target"].to(m.device).long()
        elif isinstance(batch, (list, tuple)) and len(batch) > 1:
            target = batch[1].to(m.device).long()
        else:
            with torch.no_grad():
                target = m.model(x).argmax(1)
        bn = m.bottleneck(m.layer)
        alpha = self.readout(feats.to(self.device)).to(m.device)
        lam = bn.lam(alpha)
        kl = bn.kl(r, lam)
        g = torch.Generator(device=m.device).manual_seed(m.seed * 100_003 + self.current_epoch * 10_007 + batch_idx)
        z = bn.sample(r, lam, torch.randn(r.shape, generator=g, device=m.device))
        tail = NetworkTail(m.model, m.layer, x)
        ce = cross_entropy_loss(target)(tail(z).float()[:, None])
        loss = (ce + m.beta * kl.flatten(1).mean(1)).mean()
        self.log("loss", loss.detach(), prog_bar=False, batch_size=x.shape[0])
        return loss

    def configure_optimizers(self):
        return torch.optim.Adam(self.readout.parameters(), lr=self._method.lr)
