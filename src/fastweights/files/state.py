"""Save and restore decoding states (fast weights, KV caches, LM states) with safetensors.

A state is any nesting of dicts (string keys) and lists whose leaves are tensors or plain
scalars (``int``, ``float``, ``bool``, ``None``): a layer state ``{"S": [B, H, d_k, d_v]}``, a
KV cache ``{"k", "v"}`` or a language-model state ``{"pos": int, "layers": [layer_state, ...]}``.
:func:`save_state` writes its tensors to one ``.safetensors`` file under dotted names
(``layers.0.S``) and the nesting, with the scalars, as JSON in the file's metadata; no pickle is
involved, so loading an untrusted file cannot run code. :func:`load_state` rebuilds the same
nesting (tuples come back as lists), so a stream (a chat, a log) can be paused and later continued
exactly where it stopped::

    logits, _, state = model(prompt_ids)
    save_state("chat.safetensors", state)
    ...
    state = load_state("chat.safetensors")
    logits, state = model.step(next_id, state)   # as if it had never stopped

The file's metadata also holds a SHA-256 of its tensors (names, dtypes, shapes and bytes), so that
:func:`load_state` refuses a file damaged after it was written, as it refuses a truncated one and
one holding NaN or inf; files written before the digest existed are checked without it.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, List, Optional, Tuple, Union

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import Tensor

from .atomic import atomic_write

PathLike = Union[str, os.PathLike]

_STRUCTURE_KEY = "fastweights.files.state"
_DIGEST_KEY = "fastweights.sha256"
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
    metadata = {_STRUCTURE_KEY: json.dumps(structure), _DIGEST_KEY: tensors_sha256(tensors)}
    atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=metadata))


def load_state(path: PathLike, device: Optional[Union[str, torch.device]] = None) -> Any:
    """Read a state written by :func:`save_state`, with its tensors on ``device`` (default CPU).

    Raises:
        FileNotFoundError: no file at ``path``.
        ValueError: the file is empty, truncated or not a safetensors file, was not written by
            :func:`save_state`, does not match the SHA-256 in its metadata (it changed after it was
            written), or holds NaN or inf; one line naming the file.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no state file at {str(path)!r}")
    metadata = read_safetensors_header(path, "state file").get("__metadata__") or {}
    if _STRUCTURE_KEY not in metadata:
        raise ValueError(
            f"{str(path)!r} is not a state written by fastweights.files.state.save_state "
            f"(its metadata lacks {_STRUCTURE_KEY!r})"
        )
    try:
        tensors = load_file(str(path))
    except SafetensorError as e:
        raise ValueError(f"cannot read state file {path}: {e}") from None
    if _DIGEST_KEY in metadata and tensors_sha256(tensors) != metadata[_DIGEST_KEY]:
        raise ValueError(
            f"state file {path} does not match the SHA-256 in its metadata: "
            "it changed after it was written (damaged on disk or in a copy)"
        )
    bad = nonfinite(sorted(tensors.items()))
    if bad:
        raise ValueError(f"state file {path} holds non-finite values (NaN or inf) in {', '.join(bad[:3])}")
    if device is not None:
        tensors = {name: t.to(device) for name, t in tensors.items()}
    return _unflatten(json.loads(metadata[_STRUCTURE_KEY]), tensors)


def read_safetensors_header(path: Path, what: str) -> Dict[str, Any]:
    """The JSON header of the safetensors file ``path``, after checking that the file is complete:
    8 bytes giving the header's length, the header, then exactly the tensor bytes it describes.

    safetensors' own errors (``incomplete metadata, file not fully covered``) name neither the file
    nor the sizes; these do.

    Raises:
        ValueError: one line ``<what> <path> is empty / truncated / not a safetensors file``.
    """
    size = path.stat().st_size
    if size == 0:
        raise ValueError(f"{what} {path} is empty (0 bytes)")
    with open(path, "rb") as f:
        prefix = f.read(8)
        length = int.from_bytes(prefix, "little") if len(prefix) == 8 else size
        header = f.read(length) if length <= size - 8 else None
    if header is None:
        raise ValueError(f"{what} {path} is truncated or not a safetensors file ({size:,} bytes, no complete header)")
    try:
        doc = json.loads(header)
        end = max([entry["data_offsets"][1] for name, entry in doc.items() if name != "__metadata__"], default=0)
        expected = 8 + length + int(end)
    except (ValueError, TypeError, KeyError, IndexError, AttributeError) as e:
        raise ValueError(f"{what} {path} is not a safetensors file (unreadable header: {e})") from None
    if size != expected:
        problem = "truncated" if size < expected else "longer than its header says"
        raise ValueError(f"{what} {path} is {problem}: {size:,} bytes, its header describes {expected:,}")
    return doc


def tensors_sha256(tensors: Dict[str, Tensor]) -> str:
    """The SHA-256 (hex) of named CPU tensors: each name, dtype, shape and bytes, in name order."""
    digest = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name]
        digest.update(json.dumps([name, str(t.dtype), list(t.shape)]).encode())
        digest.update(t.contiguous().reshape(-1).view(torch.uint8).numpy())
    return digest.hexdigest()


def nonfinite(named: Iterable[Tuple[str, Tensor]]) -> List[str]:
    """The names of the floating-point tensors that hold a NaN or an infinity."""
    return [name for name, t in named if t.is_floating_point() and not bool(torch.isfinite(t).all())]


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
                raise TypeError(
                    f"state dict keys must be str, got {type(key).__name__} ({key!r}) at {name or '<root>'!r}"
                )
            if "." in key or key == _TENSOR_LEAF:
                raise ValueError(
                    f"state dict key {key!r} at {name or '<root>'!r} may not contain '.' or be {_TENSOR_LEAF!r}"
                )
            out[key] = _flatten(value, f"{name}.{key}" if name else key, tensors)
        return out
    if isinstance(node, (list, tuple)):
        return [_flatten(value, f"{name}.{i}" if name else str(i), tensors) for i, value in enumerate(node)]
    if node is None or isinstance(node, (bool, int, float)):
        return node
    raise TypeError(
        f"state leaves must be tensors or int/float/bool/None, got {type(node).__name__} at {name or '<root>'!r}"
    )


def _unflatten(skeleton: Any, tensors: Dict[str, Tensor]) -> Any:
    """Inverse of :func:`_flatten`."""
    if isinstance(skeleton, dict):
        if set(skeleton) == {_TENSOR_LEAF}:
            return tensors[skeleton[_TENSOR_LEAF]]
        return {key: _unflatten(value, tensors) for key, value in skeleton.items()}
    if isinstance(skeleton, list):
        return [_unflatten(value, tensors) for value in skeleton]
    return skeleton
