"""The feature-map interface: phi applied per head to queries and keys."""

from __future__ import annotations

from torch import Tensor, nn


class FeatureMap(nn.Module):
    """A map ``phi: R^d -> R^{d_k}`` applied to the last dimension of queries and keys.

    Subclasses implement :meth:`forward` and :meth:`out_dim`. Maps with random parameters
    (FAVOR+) also override :meth:`resample`; :meth:`training_step` is what a layer calls once per
    training forward, so such maps can redraw on their own schedule. Asymmetric maps may override
    :meth:`forward_query` / :meth:`forward_key` (both default to :meth:`forward`).
    """

    #: whether phi(x) >= 0 for every x (sum-normalisation is only safe for such maps)
    non_negative: bool = False

    def __init__(self, d: int) -> None:
        super().__init__()
        if not isinstance(d, int) or d < 1:
            raise ValueError(f"the input dimension d must be a positive int, got {d!r}")
        self.d = d

    def out_dim(self, d: int | None = None) -> int:
        """Output dimension d_k for an input of dimension ``d`` (default: this map's own)."""
        raise NotImplementedError

    def forward(self, x: Tensor) -> Tensor:  # pragma: no cover - abstract
        """``x: [..., d]`` -> ``phi(x): [..., d_k]``."""
        raise NotImplementedError

    def forward_query(self, x: Tensor) -> Tensor:
        """phi for queries ``[..., d] -> [..., d_k]``."""
        return self(x)

    def forward_key(self, x: Tensor) -> Tensor:
        """phi for keys ``[..., d] -> [..., d_k]``."""
        return self(x)

    def resample(self) -> None:
        """Redraw random parameters, if the map has any."""

    def training_step(self) -> None:
        """Called by a layer once per forward in training mode (a hook for redraw schedules)."""

    def _check(self, x: Tensor) -> None:
        if x.shape[-1] != self.d:
            raise ValueError(
                f"{type(self).__name__} was built for inputs of size d = {self.d}, got last dimension {x.shape[-1]}"
            )

    def extra_repr(self) -> str:
        return f"d={self.d}, out_dim={self.out_dim()}"
