"""Training: what ``python -m xattr.train`` fits (ROAR retraining, the IMDB LSTM, chest X-ray recipes).

- :mod:`.module`: :class:`~.module.Classifier`, the Lightning module (cross-entropy on ``batch["label"]``,
  accuracy per split, optimizer and LR scheduler from config);
- :mod:`.data`: :class:`~.data.ClassificationData`, train / val / test from a dataset config (validation
  carved from the training split with a fixed seed, per class when stratified; train-time augmentation;
  the dataset's own ``collate``);
- :mod:`.nets`: how the network is built and its trained weights exported (``ZooNet``, ``ImdbLSTMNet``).
- :mod:`.losses` (config group ``loss``): cross-entropy, multi-label BCE / weighted BCE, MSE / weighted MSE;
  :mod:`.tasks`: the multi-label (AUC / AP per finding) and regression Lightning modules (chest X-ray).

Layering: ``xattr.training`` imports only :mod:`xattr.core`, :mod:`xattr.errors`, :mod:`xattr.models` and
:mod:`xattr.data` (never methods, metrics, engine, tables, run or config).
"""

from xattr.training.data import ClassificationData, RandomCropFlip, balanced_indices, split_indices
from xattr.training.module import Classifier
from xattr.training.nets import ImdbLSTMNet, ZooNet

__all__ = ["Classifier", "ClassificationData", "ImdbLSTMNet", "RandomCropFlip", "ZooNet", "balanced_indices",
           "split_indices"]
