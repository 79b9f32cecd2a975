"""fastweights: Fast Weight Programmers and linear transformers in PyTorch.

Schlag, Irie & Schmidhuber (ICML 2021), "Linear Transformers Are Secretly Fast Weight Programmers".
"""

from .feature_maps import FeatureMap, get_feature_map, list_feature_maps, register_feature_map
from .layers import FastWeightAttention, SoftmaxAttention
from .ops import get_op, list_ops

__version__ = "0.1.0"

__all__ = [
    "FastWeightAttention", "SoftmaxAttention", "FeatureMap",
    "get_feature_map", "list_feature_maps", "register_feature_map", "get_op", "list_ops",
]
