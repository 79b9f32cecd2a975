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
from typing import Any, Dict, List, Mapping, Optional, Tuple

from ..ops import list_rules

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
class FeatureMapSpec:
    """A registered feature map (:func:`fastweights.feature_maps.list_feature_maps`) and its keyword
    arguments (``{"nu": 2}`` for ``dpfp-2``)."""

    name: str
    kwargs: Mapping[str, Any] = field(default_factory=dict)


class AttentionSpec(str):
    """An attention variant: its name, parsed once into typed parts.

    It is the name itself (a ``str``: equal to it, written to configs and checkpoints as it), with
    the parts the model, trainer, capacity experiment and Hugging Face code read:

    - ``kind``: ``'softmax'``, ``'fwp'`` or ``'recurrent'`` (a recurrent FWP, whose slow net also
      reads the layer's previous output);
    - ``rule``: for the FWPs, the update rule (a name of :func:`fastweights.ops.list_rules`);
    - ``feature_map``: for the FWPs, a :class:`FeatureMapSpec`.

    ``AttentionSpec("dpfp-2+delta")`` parses (a ``ValueError`` listing the grammar for an unknown
    name); an ``AttentionSpec`` given to it is returned as it is.
    """

    kind: str
    rule: Optional[str]
    feature_map: Optional[FeatureMapSpec]

    def __new__(cls, name: str) -> "AttentionSpec":
        if isinstance(name, AttentionSpec):
            return name
        if not isinstance(name, str):
            raise TypeError(f"attention must be a str, got {type(name).__name__}")
        spec = super().__new__(cls, name)
        spec.kind, spec.rule, spec.feature_map = _parse(name)
        return spec

    def __getnewargs__(self) -> Tuple[str]:  # copy and pickle rebuild it from its name
        return (str(self),)

    @property
    def is_fast_weight(self) -> bool:
        """Whether the layer is a fast weight programmer (has an update rule and a fixed-size state)."""
        return self.rule is not None

    @property
    def is_recurrent(self) -> bool:
        """Whether it is a recurrent FWP (the slow net also reads the layer's previous output)."""
        return self.kind == "recurrent"


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
    """The :class:`AttentionSpec` of an attention variant name (see the module docstring).

    Raises:
        ValueError: for an unknown name, listing the valid ones.
    """
    return AttentionSpec(name)


def _parse(name: str) -> Tuple[str, Optional[str], Optional[FeatureMapSpec]]:
    """``(kind, rule, feature map)`` of an attention variant name (:class:`AttentionSpec`)."""
    if name == "softmax":
        return "softmax", None, None
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
    return kind, rule, FeatureMapSpec(feature_map, {param: int(m.group(2))} if param else {})
