"""Language models: config and presets, the decoder LM, the model directory on disk, and generation."""

from ..layers.spec import AttentionSpec, list_attentions, parse_attention
from .config import LMConfig, Preset, TrainConfig, get_preset, get_run_preset, list_presets
from .directory import load_model, read_config, save_weights, write_config
from .lm import LanguageModel, LMState

__all__ = [
    "AttentionSpec",
    "LMConfig",
    "LMState",
    "LanguageModel",
    "Preset",
    "TrainConfig",
    "get_preset",
    "get_run_preset",
    "list_attentions",
    "list_presets",
    "load_model",
    "parse_attention",
    "read_config",
    "save_weights",
    "write_config",
]
