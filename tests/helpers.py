"""Test helpers: compose the real configs (as lightning-hydra-template's tests do)."""

from __future__ import annotations

import signal
import subprocess
import time
from pathlib import Path

from hydra import compose, initialize_config_dir
from omegaconf import DictConfig, open_dict

from xattr.config import CONF_DIR


def compose_cfg(overrides: list[str], output_dir: Path | None = None) -> DictConfig:
    with initialize_config_dir(version_base="1.3", config_dir=str(CONF_DIR)):
        cfg = compose("config", overrides=overrides)
    with open_dict(cfg):
        cfg.name = cfg.get("name") if "hydra:" not in str(cfg._get_node("name")._value()) else "test"
        cfg.method_name = next((o.split("=", 1)[1] for o in overrides if o.startswith("method=")), "gradient")
        cfg.paths.output_dir = str(output_dir) if output_dir else "/tmp/xattr-test"
        cfg.paths.root = str(Path(__file__).resolve().parents[1])
    return cfg


def compose_train(overrides: list[str], run_dir: Path | None = None) -> DictConfig:
    """The ``train`` config as ``python -m xattr.train`` composes it, writing into ``run_dir``."""
    with initialize_config_dir(version_base="1.3", config_dir=str(CONF_DIR)):
        cfg = compose("train", overrides=overrides)
    with open_dict(cfg):
        cfg.paths.output_dir = str(run_dir or "/tmp/xattr-train-test")
        cfg.paths.root = str(Path(__file__).resolve().parents[1])
    return cfg


def sigkill_once_written(proc: subprocess.Popen, path: Path, timeout: float = 240) -> None:
    """SIGKILL a background training (stdout piped) as soon as ``path`` exists (e.g. ``last.ckpt``)."""
    t0 = time.time()
    try:
        while not path.is_file():
            assert proc.poll() is None, proc.stdout.read().decode()[-3000:]
            assert time.time() - t0 < timeout, f"no {path.name}"
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
        proc.stdout.close()


TINY_BERT_WORDS = "the a movie film was is great good bad awful plot acting and but not very ! . , i".split()


def tiny_bert_folder(folder: Path, seed: int = 0, layers: int = 2) -> Path:
    """A tiny ``BertForSequenceClassification`` (random weights, a wide initialiser so every token matters)
    and its word tokenizer (``[PAD] [UNK] [CLS] [SEP] [MASK]`` + 20 words) saved to ``folder``: what
    ``model=hf model.path=<folder>`` loads."""
    import torch
    import transformers

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *TINY_BERT_WORDS]
    (folder / "vocab.txt").write_text("\n".join(words) + "\n")
    tok = transformers.BertTokenizer(str(folder / "vocab.txt"), do_lower_case=True, model_max_length=64)
    torch.manual_seed(seed)
    cfg = transformers.BertConfig(vocab_size=len(words), hidden_size=16, num_hidden_layers=layers,
                                  num_attention_heads=2, intermediate_size=32, max_position_embeddings=64,
                                  num_labels=2, initializer_range=0.3, id2label={0: "negative", 1: "positive"},
                                  label2id={"negative": 0, "positive": 1})
    transformers.BertForSequenceClassification(cfg).save_pretrained(str(folder))
    tok.save_pretrained(str(folder))
    return folder
