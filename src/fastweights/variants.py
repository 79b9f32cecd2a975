"""Attention variant names, shared by the language models and the capacity experiment.

``'softmax'``, or ``'<map>[+<rule>]'`` with ``<map>`` one of ``linear`` (ELU + 1), ``relu``,
``identity``, ``dpfp-<nu>``, ``favor-<m>`` and ``<rule>`` an update rule of
:func:`fastweights.ops.list_rules` (the sum rule when omitted); plain ``'delta'`` is ``'linear+delta'``.
A final ``+rec`` makes it a recurrent FWP (the slow net also reads the layer's previous output);
``'rdn'``, the Recurrent Delta Net, is ``'linear+delta+rec'``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Tuple

from .ops import list_rules

#: feature-map part of an attention name -> (registered feature map, regex of its parameter or None)
_MAPS: Dict[str, Tuple[str, Optional[str]]] = {
    "linear": ("elu_p1", None),
    "relu": ("relu", None),
    "identity": ("identity", None),
    "dpfp": ("dpfp", "nu"),
    "favor": ("favor", "m"),
}
DEFAULT_RULE = "sum"  #: the rule of a name without ``+<rule>`` (linear attention, as in the paper)
RECURRENT = "+rec"  #: the suffix of a recurrent FWP


@dataclass(frozen=True)
class AttentionSpec:
    """A parsed attention variant: ``kind`` is ``'softmax'``, ``'fwp'`` or ``'recurrent'`` (a recurrent
    FWP, whose slow net also reads the layer's previous output); for the FWPs the update ``rule`` (a
    name of :func:`fastweights.ops.list_rules`), the registered ``feature_map`` and its keyword arguments."""

    kind: str
    rule: Optional[str] = None
    feature_map: Optional[str] = None
    feature_map_kwargs: Dict[str, Any] = field(default_factory=dict)


def list_attentions() -> List[str]:
    """The attention variant names (``<nu>``, ``<m>`` stand for positive integers)."""
    maps = ["linear", "relu", "identity", "dpfp-<nu>", "favor-<m>"]
    others = [r for r in list_rules() if r != DEFAULT_RULE]
    return ["softmax", "delta", "rdn"] + maps + [f"{m}+{r}" for r in others for m in maps]


def describe_attentions() -> str:
    """The attention-name grammar in one line, for help texts and errors."""
    maps = ", ".join(["linear (ELU + 1)", "relu", "identity", "dpfp-<nu>", "favor-<m>"])
    rules = ", ".join(f"{r} (default)" if r == DEFAULT_RULE else r for r in list_rules())
    return (
        f"'softmax', or '<map>[+<rule>][{RECURRENT}]' with <map> one of {maps} and <rule> one of {rules} "
        f"('{RECURRENT}': a recurrent FWP, whose slow net also reads its previous output); "
        f"'delta' = 'linear+delta', 'rdn' (Recurrent Delta Net) = 'linear+delta{RECURRENT}'"
    )


def parse_attention(name: str) -> AttentionSpec:
    """Parse an attention variant name (see the module docstring) into an :class:`AttentionSpec`.

    Raises:
        ValueError: for an unknown name, listing the valid ones.
    """
    if not isinstance(name, str):
        raise TypeError(f"attention must be a str, got {type(name).__name__}")
    if name == "softmax":
        return AttentionSpec("softmax")
    kind, full = "fwp", name
    if name == "rdn":
        kind, name = "recurrent", "delta"
    elif name.endswith(RECURRENT):
        kind, name = "recurrent", name[: -len(RECURRENT)]
    base, rule = name, DEFAULT_RULE
    for r in list_rules():
        if name.endswith("+" + r):
            base, rule = name[: -len(r) - 1], r
    if name == "delta":
        base, rule = "linear", "delta"
    m = re.fullmatch(r"([a-z_]+)(?:-([1-9]\d*))?", base)
    if m is None or m.group(1) not in _MAPS or (_MAPS[m.group(1)][1] is None) != (m.group(2) is None):
        raise ValueError(f"unknown attention variant {full!r}; expected {describe_attentions()}")
    feature_map, param = _MAPS[m.group(1)]
    kwargs: Dict[str, Any] = {param: int(m.group(2))} if param else {}
    return AttentionSpec(kind, rule, feature_map, kwargs)
