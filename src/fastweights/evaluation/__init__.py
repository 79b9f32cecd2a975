"""Scoring a language model on a text: sliding-window and carried-state losses, loss by position,
and the reports of ``fastweights eval``."""

from .loss import PROTOCOLS, EvalResult, carried_state_loss, evaluate, position_profile, sliding_window_loss

__all__ = ["PROTOCOLS", "EvalResult", "carried_state_loss", "evaluate", "position_profile", "sliding_window_loss"]
