"""Test helpers: compose the real configs (as lightning-hydra-template's tests do)."""

from __future__ import annotations

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
