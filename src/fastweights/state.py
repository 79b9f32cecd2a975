"""Save and restore recurrent states (fast weights, KV caches, LM states) with safetensors.

A state is any nesting of dicts (string keys) and lists whose leaves are tensors or plain
scalars (``int``, ``float``, ``bool``, ``None``): a layer state ``{"S": [B, H, d_k, d_v]}``, a
KV cache ``{"k", "v"}`` or a language-model state ``{"pos": int, "layers": [layer_state, ...]}``.
:func:`save_state` writes its tensors to one ``.safetensors`` file under dotted names
(``layers.0.S``) and the nesting, with the scalars, as JSON in the file's metadata; no pickle is
involved, so loading an untrusted file cannot run code. :func:`load_state` rebuilds the same
nesting (tuples come back as lists), so a stream (a chat, a log) can be paused and later continued exactly where it stopped::

    logits, _, state = model(prompt_ids)
    save_state("chat.safetensors", state)
    ...
    state = load_state("chat.safetensors")
    logits, state = model.step(next_id, state)   # as if it had never stopped
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Callable, Dict, Optional, Union

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import Tensor

from .atomic import atomic_write

PathLike = Union[str, os.PathLike]

_STRUCTURE_KEY = "fastweights.state"
_TENSOR_LEAF = "__tensor__"


def save_state(path: PathLike, state: Any) -> None:
    """Write ``state`` (nested dicts/lists of tensors and scalars) to a safetensors file.

    The write is atomic (temporary file, fsync, rename): a crash never leaves half a state.

    Raises:
        TypeError: a leaf that is neither a tensor nor an ``int``/``float``/``bool``/``None``, or a
            dict key that is not a string.
        ValueError: a dict key containing ``"."`` (the separator of the flat names).
    """
    tensors: Dict[str, Tensor] = {}
    structure = _flatten(state, "", tensors)
    metadata = {_STRUCTURE_KEY: json.dumps(structure)}
    atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=metadata))


def load_state(path: PathLike, device: Optional[Union[str, torch.device]] = None) -> Any:
    """Read a state written by :func:`save_state`, with its tensors on ``device`` (default CPU).

    Raises:
        FileNotFoundError: no file at ``path``.
        ValueError: the file is a safetensors file but not one written by :func:`save_state`.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no state file at {str(path)!r}")
    with safe_open(str(path), framework="pt") as f:
        metadata = f.metadata() or {}
    if _STRUCTURE_KEY not in metadata:
        raise ValueError(f"{str(path)!r} is not a state written by fastweights.state.save_state "
                         f"(its metadata lacks {_STRUCTURE_KEY!r})")
    tensors = load_file(str(path), device=str(device) if device is not None else "cpu")
    return _unflatten(json.loads(metadata[_STRUCTURE_KEY]), tensors)


def map_tensors(fn: Callable[[Tensor], Tensor], state: Any) -> Any:
    """``state`` (nested dicts and lists, e.g. an LM state) with ``fn`` applied to every tensor leaf:
    ``map_tensors(Tensor.detach, state)`` cuts its graph (truncated BPTT), ``map_tensors(lambda t:
    t.to(device), state)`` moves it."""
    if isinstance(state, Tensor):
        return fn(state)
    if isinstance(state, dict):
        return {k: map_tensors(fn, v) for k, v in state.items()}
    if isinstance(state, (list, tuple)):
        return [map_tensors(fn, v) for v in state]
    return state


def _flatten(node: Any, name: str, tensors: Dict[str, Tensor]) -> Any:
    """Move the tensors of ``node`` into ``tensors`` (under dotted names); return the JSON skeleton."""
    if isinstance(node, Tensor):
        # a private contiguous copy: safetensors refuses views and tensors sharing storage
        tensors[name] = node.detach().to("cpu", copy=True).contiguous()
        return {_TENSOR_LEAF: name}
    if isinstance(node, dict):
        out = {}
        for key, value in node.items():
            if not isinstance(key, str):
                raise TypeError(f"state dict keys must be str, got {type(key).__name__} ({key!r}) at {name or '<root>'!r}")
            if "." in key or key == _TENSOR_LEAF:
                raise ValueError(f"state dict key {key!r} at {name or '<root>'!r} may not contain '.' or be {_TENSOR_LEAF!r}")
            out[key] = _flatten(value, f"{name}.{key}" if name else key, tensors)
        return out
    if isinstance(node, (list, tuple)):
        return [_flatten(value, f"{name}.{i}" if name else str(i), tensors) for i, value in enumerate(node)]
    if node is None or isinstance(node, (bool, int, float)):
        return node
    raise TypeError(f"state leaves must be tensors or int/float/bool/None, got {type(node).__name__} at {name or '<root>'!r}")


def _unflatten(skeleton: Any, tensors: Dict[str, Tensor]) -> Any:
    """Inverse of :func:`_flatten`."""
    if isinstance(skeleton, dict):
        if set(skeleton) == {_TENSOR_LEAF}:
            return tensors[skeleton[_TENSOR_LEAF]]
        return {key: _unflatten(value, tensors) for key, value in skeleton.items()}
    if isinstance(skeleton, list):
        return [_unflatten(value, tensors) for value in skeleton]
    return skeleton
