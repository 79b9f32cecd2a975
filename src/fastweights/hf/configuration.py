"""The ``transformers`` configuration of a fastweights language model.

``config.json`` keeps the layout ``fastweights train`` writes (read by
:func:`fastweights.models.load_model`)::

    {"format": "fastweights-lm", "version": 1, "model_type": "fastweights",
     "model": {LMConfig fields}, "tokenizer": {...}, "data": {...}, "train": {...}, ...}

:class:`FastWeightsConfig` holds the ``model`` section as the :class:`~fastweights.models.LMConfig`
it describes, keeps the other sections as they were (``save_pretrained`` writes them back), and
adds the keys ``transformers`` writes (``model_type``, ``architectures``, ``transformers_version``).
The generic names ``transformers`` reads (``vocab_size``, ``hidden_size``, ``num_hidden_layers``,
``num_attention_heads``, ``tie_word_embeddings``) are read-only views of the ``model`` section.
The ``weights`` section (the digest of ``model.safetensors``) is not kept: it describes the file
beside the ``config.json`` it was read from, and ``save_pretrained`` records the file it writes.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any, Optional

from transformers import PretrainedConfig

from ..models import LMConfig
from ..models.directory import CONFIG_FILE, FORMAT, WEIGHTS_RECORD

MODEL_TYPE = "fastweights"
_LM_FIELDS = frozenset(f.name for f in dataclasses.fields(LMConfig))


def check_local_folder(name: Any) -> None:
    """``FileNotFoundError("no such folder: <name>")`` when a ``from_pretrained`` argument names no
    file or folder but can only be a local path: a path object, or a string that starts with ``/``,
    ``.`` or ``~``, holds a backslash or more than one ``/``, or is ``<folder>/<name>`` where
    ``<folder>`` is a local folder of fastweights run directories (``runs/typo``). ``transformers``
    would take it for a Hub repo id: retry the network for half a minute and blame the Hub, or reject
    it as a malformed repo id. Anything else (``name``, ``namespace/name``, also beside a local
    ``namespace/`` folder of other models) is left to ``transformers``."""
    if not isinstance(name, (str, os.PathLike)) or os.path.exists(name):
        return
    text = os.fspath(name)
    if (
        not isinstance(name, str)
        or text.startswith((".", "/", "~"))
        or "\\" in text
        or text.count("/") > 1
        or os.path.isabs(text)
        or ("/" in text and _holds_runs(text.split("/")[0]))
    ):
        raise FileNotFoundError(f"no such folder: {text}")


def _holds_runs(folder: str) -> bool:
    """Whether local ``folder`` has a fastweights model directory among its sub-folders."""
    if not os.path.isdir(folder):
        return False
    for config in Path(folder).glob(f"*/{CONFIG_FILE}"):
        try:
            if json.loads(config.read_text(encoding="utf-8")).get("format") == FORMAT:
                return True
        except (OSError, ValueError, AttributeError):
            continue
    return False


class FastWeightsConfig(PretrainedConfig):
    """A :class:`~fastweights.models.LMConfig` as a ``transformers`` ``PretrainedConfig``.

    Args:
        model: the ``LMConfig`` as a dict (the ``model`` section of ``config.json``); default
            ``LMConfig(vocab_size=256)``.
        format, version: the fastweights ``config.json`` format tag (kept so that
            :func:`fastweights.models.load_model` reads a ``save_pretrained`` directory).
        **kwargs: ``LMConfig`` fields (override ``model``), then ``PretrainedConfig`` arguments and
            extra sections (``tokenizer``, ``data``, ``train``), kept as attributes.

    Example::

        config = FastWeightsConfig(vocab_size=65, attention="delta", pos_emb="none")
        config.lm_config.attention  # 'delta'
    """

    model_type = MODEL_TYPE

    def __init__(self, model: Optional[dict] = None, format: str = FORMAT, version: int = 1, **kwargs: Any) -> None:
        if format != FORMAT:
            raise ValueError(f"format must be {FORMAT!r} (a fastweights LM config), got {format!r}")
        overrides = {name: kwargs.pop(name) for name in list(kwargs) if name in _LM_FIELDS}
        kwargs.pop(WEIGHTS_RECORD, None)  # the digest of the weights read beside config.json (module docstring)
        self.model = LMConfig.from_dict(
            {**(model if model is not None else {"vocab_size": 256}), **overrides}
        ).to_dict()
        self.format, self.version = format, version
        super().__init__(**kwargs)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: Any, **kwargs: Any) -> "FastWeightsConfig":
        """``PretrainedConfig.from_pretrained``, after :func:`check_local_folder`."""
        check_local_folder(pretrained_model_name_or_path)
        return super().from_pretrained(pretrained_model_name_or_path, **kwargs)

    @classmethod
    def from_lm_config(cls, cfg: LMConfig, **kwargs: Any) -> "FastWeightsConfig":
        """The configuration of a model built from ``cfg``."""
        return cls(model=cfg.to_dict(), **kwargs)

    @property
    def lm_config(self) -> LMConfig:
        """The :class:`~fastweights.models.LMConfig` of the ``model`` section."""
        return LMConfig.from_dict(self.model)

    @property
    def vocab_size(self) -> int:
        return self.model["vocab_size"]

    @property
    def hidden_size(self) -> int:
        return self.model["d_model"]

    @property
    def num_hidden_layers(self) -> int:
        return self.model["n_layers"]

    @property
    def num_attention_heads(self) -> int:
        return self.model["n_heads"]

    @property
    def tie_word_embeddings(self) -> bool:
        """Whether the input embedding is the output projection (not with an adaptive softmax, whose
        tied input is built from the softmax's own matrices)."""
        return bool(self.model["tie_embeddings"]) and self.model["adaptive_cutoffs"] is None
