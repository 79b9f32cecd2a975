"""Attention variant names, shared by the language models and the capacity experiment.

``'softmax'``, or ``'<map>[+<rule>]'`` with ``<map>`` one of ``linear`` (ELU + 1), ``relu``,
``identity``, ``dpfp-<nu>``, ``favor-<m>`` and ``<rule>`` an update rule of
:func:`fastweights.ops.list_rules` (the sum rule when omitted); plain ``'delta'`` is ``'linear+delta'``.
A final ``+rec`` makes it a recurrent FWP (the slow net also reads the layer's previous output);
``'rdn'``, the Recurrent Delta Net, is ``'linear+delta+rec'``. A final ``+neg`` (before ``+rec``)
lets a learned rate run in ``[0, 2]`` instead of ``[0, 1]`` (``beta_t = 2 sigmoid(.)``): the delta
rule's transition ``I - beta_t k_t k_t^T`` then has eigenvalues in ``[-1, 1]``, negative ones
included, which is what lets a linear RNN track state such as parity (Grazzi et al., ICLR 2025).
``<rule>product-<n>`` in place of ``<rule>`` takes ``n`` updates of that rule per token
(DeltaProduct, Siems et al. 2025: ``'deltaproduct-2'`` = ``'linear+deltaproduct-2'``; also
``'gated_deltaproduct-<n>'``): for the delta rules a product of ``n`` generalised Householder
transitions per token.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any, Dict, List, Mapping, Optional, Tuple

from ..ops import get_rule, list_rules

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
NEGATIVE = "+neg"  #: the suffix that lets a learned rate reach 2 (negative eigenvalues)
PRODUCT = "product"  #: ``<rule>product-<n>``: n updates of the rule per token


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
    - ``feature_map``: for the FWPs, a :class:`FeatureMapSpec`;
    - ``beta_max``: the largest learned rate, ``beta_t = beta_max sigmoid(.)``: 1, or 2 with ``+neg``;
    - ``steps``: updates of the rule per token (``n`` of ``<rule>product-<n>``; else 1).

    ``AttentionSpec("dpfp-2+delta")`` parses (a ``ValueError`` listing the grammar for an unknown
    name); an ``AttentionSpec`` given to it is returned as it is.
    """

    kind: str
    rule: Optional[str]
    feature_map: Optional[FeatureMapSpec]
    beta_max: float
    steps: int

    def __new__(cls, name: str) -> "AttentionSpec":
        if isinstance(name, AttentionSpec):
            return name
        if not isinstance(name, str):
            raise TypeError(f"attention must be a str, got {type(name).__name__}")
        spec = super().__new__(cls, name)
        spec.kind, spec.rule, spec.feature_map, spec.beta_max, spec.steps = _parse(name)
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
    """The attention variant names (``<nu>``, ``<m>``, ``<n>`` stand for positive integers)."""
    maps = ["linear", "relu", "identity", "dpfp-<nu>", "favor-<m>"]
    others = [r for r in list_rules() if r != DEFAULT_RULE]
    return (
        ["softmax", "delta", "delta+neg", "deltaproduct-<n>+neg", "rdn"]
        + maps
        + [f"{m}+{r}" for r in others for m in maps]
    )


def describe_attentions() -> str:
    """The attention-name grammar in one line, for help texts and errors."""
    maps = ", ".join(["linear (ELU + 1)", "relu", "identity", "dpfp-<nu>", "favor-<m>"])
    rules = ", ".join(f"{r} (default)" if r == DEFAULT_RULE else r for r in list_rules())
    return (
        f"'softmax', or '<map>[+<rule>][{NEGATIVE}][{RECURRENT}]' with <map> one of {maps} and <rule> one of "
        f"{rules} ('{NEGATIVE}': a learned rate in [0, 2], negative eigenvalues; '{RECURRENT}': a recurrent FWP, "
        f"whose slow net also reads its previous output); "
        f"'delta' = 'linear+delta', 'rdn' (Recurrent Delta Net) = 'linear+delta{RECURRENT}'; "
        f"'<rule>{PRODUCT}-<n>' in place of <rule>: n updates per token (DeltaProduct: deltaproduct-<n>)"
    )


def parse_attention(name: str) -> AttentionSpec:
    """The :class:`AttentionSpec` of an attention variant name (see the module docstring).

    Raises:
        ValueError: for an unknown name, listing the valid ones.
    """
    return AttentionSpec(name)


def _parse(name: str) -> Tuple[str, Optional[str], Optional[FeatureMapSpec], float, int]:
    """``(kind, rule, feature map, beta_max, steps)`` of an attention variant name (:class:`AttentionSpec`)."""
    if name == "softmax":
        return "softmax", None, None, 1.0, 1
    kind, full = "fwp", name
    if name == "rdn":
        kind, name = "recurrent", "delta"
    elif name.endswith(RECURRENT):
        kind, name = "recurrent", name[: -len(RECURRENT)]
    beta_max = 1.0
    if name.endswith(NEGATIVE):
        beta_max, name = 2.0, name[: -len(NEGATIVE)]
    steps = 1
    product = re.search(rf"(?:^|\+)([a-z_]+){PRODUCT}-([1-9]\d*)$", name)
    if product is not None and product.group(1) in list_rules():
        steps, prefix = int(product.group(2)), name[: product.start()]
        name = f"{prefix or 'linear'}+{product.group(1)}"
    base, rule = name, DEFAULT_RULE
    for r in list_rules():
        if name.endswith("+" + r):
            base, rule = name[: -len(r) - 1], r
    if name == "delta":
        base, rule = "linear", "delta"
    m = re.fullmatch(r"([a-z_]+)(?:-([1-9]\d*))?", base)
    if m is None or m.group(1) not in _MAPS or (_MAPS[m.group(1)][1] is None) != (m.group(2) is None):
        raise ValueError(f"unknown attention variant {full!r}; expected {describe_attentions()}")
    if beta_max != 1.0:
        spec = get_rule(rule)
        lo, hi = spec.bounds.get("beta", (-math.inf, math.inf))
        if not spec.learned_rate or hi < beta_max:
            raise ValueError(
                f"attention {full!r}: '{NEGATIVE}' needs a rule that learns a rate allowed up to {beta_max:g}; "
                f"rule {rule!r} " + ("learns no rate" if not spec.learned_rate else f"bounds it to [{lo:g}, {hi:g}]")
            )
    feature_map, param = _MAPS[m.group(1)]
    return kind, rule, FeatureMapSpec(feature_map, {param: int(m.group(2))} if param else {}), beta_max, steps
