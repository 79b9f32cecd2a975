"""Files that must survive crashes and concurrent runs: atomic writes, the run lock, and decoding
states saved with safetensors."""

from .state import load_state, save_state

__all__ = ["load_state", "save_state"]
