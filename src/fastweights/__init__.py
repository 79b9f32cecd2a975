"""fastweights: Fast Weight Programmers and linear transformers in PyTorch.

Schlag, Irie & Schmidhuber (ICML 2021), "Linear Transformers Are Secretly Fast Weight Programmers".
"""

from . import compat
from .feature_maps import FeatureMap, get_feature_map, list_feature_maps, register_feature_map
from .layers import FastWeightAttention, SoftmaxAttention
from .models import LanguageModel, load_model
from .models.generate import generate
from .ops import get_op, list_ops

compat.install()

__version__ = "0.1.0"

__all__ = [
    "FastWeightAttention",
    "SoftmaxAttention",
    "FeatureMap",
    "LanguageModel",
    "generate",
    "get_feature_map",
    "list_feature_maps",
    "load_model",
    "register_feature_map",
    "get_op",
    "list_ops",
]
