"""Feature maps phi behind a small registry.

    >>> phi = get_feature_map("dpfp", d=16, nu=2)
    >>> phi.out_dim()
    64

Adding a map is one :class:`FeatureMap` subclass plus one :func:`register_feature_map` call;
no layer changes.
"""

from __future__ import annotations

from typing import Dict, List, Type

from .base import FeatureMap
from .dpfp import DPFP
from .elementwise import EluPlusOne, Identity, ReLU
from .favor import Favor
from .normalize import get_qk_norm, l2_normalize, sum_normalize

_REGISTRY: Dict[str, Type[FeatureMap]] = {
    "elu_p1": EluPlusOne,
    "relu": ReLU,
    "identity": Identity,
    "favor": Favor,
    "dpfp": DPFP,
}


def register_feature_map(name: str, cls: Type[FeatureMap]) -> None:
    """Make ``cls`` available as ``get_feature_map(name, ...)``."""
    if not (isinstance(cls, type) and issubclass(cls, FeatureMap)):
        raise TypeError(f"a feature map must be a FeatureMap subclass, got {cls!r}")
    _REGISTRY[name] = cls


def list_feature_maps() -> List[str]:
    """Names accepted by :func:`get_feature_map`."""
    return sorted(_REGISTRY)


def get_feature_map(name: str, d: int, **kwargs) -> FeatureMap:
    """Build the feature map ``name`` for inputs of size ``d`` (``kwargs``: e.g. ``nu``, ``m``)."""
    if name not in _REGISTRY:
        raise ValueError(f"unknown feature map {name!r}; expected one of {list_feature_maps()}")
    try:
        return _REGISTRY[name](d, **kwargs)
    except TypeError as e:
        raise TypeError(f"bad arguments {kwargs} for feature map {name!r}: {e}") from None


__all__ = [
    "FeatureMap",
    "DPFP",
    "EluPlusOne",
    "Favor",
    "Identity",
    "ReLU",
    "get_feature_map",
    "list_feature_maps",
    "register_feature_map",
    "get_qk_norm",
    "l2_normalize",
    "sum_normalize",
]
