"""A fastweights language model as a ``transformers`` causal LM: ``from_pretrained``, ``save_pretrained``
and ``generate`` on any attention variant.

The model's modules are those of a :class:`~fastweights.models.LanguageModel`, under the same names,
so ``model.safetensors`` is the same file for both: a directory written by ``fastweights train``
loads here, and one written by ``save_pretrained`` loads with :func:`fastweights.models.load_model`.

Left-padded prompts (``attention_mask`` 0 before each row's first token) are read as
:func:`fastweights.models.generate.prefill` reads them: each row from its own tokens, at its own positions,
so a row decodes exactly as it would alone; later columns must all be tokens. The state travels
between ``generate`` steps in a :class:`~fastweights.hf.cache.FastWeightCache`, and each generated
token is one :meth:`LanguageModel.step`, as in :func:`fastweights.models.generate.generate`.

``from_pretrained`` on a local folder checks its ``model.safetensors`` as
:func:`fastweights.models.load_model` does (complete, the SHA-256 ``config.json`` records, no NaN or
inf: one ``ValueError`` or ``FileNotFoundError`` naming the file), and ``save_pretrained`` records
that SHA-256 (:mod:`fastweights.models.directory`).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Optional

import torch
import torch.nn.functional as F
from torch import Tensor
from transformers import GenerationMixin, PreTrainedModel
from transformers.modeling_outputs import CausalLMOutputWithPast
from transformers.utils import SAFE_WEIGHTS_INDEX_NAME

from ..models import LanguageModel, read_config
from ..models.directory import (
    CONFIG_FILE,
    WEIGHTS_FILE,
    WEIGHTS_RECORD,
    check_finite_weights,
    check_weights_file,
    record_weights,
)
from ..models.generate import prefill, unpad
from .cache import FastWeightCache
from .configuration import FastWeightsConfig, check_local_folder

#: the keyword ``transformers`` passes the cache under (``past_key_values``, renamed ``cache`` in 5.2x)
CACHE_ARG = "cache" if "cache" in CausalLMOutputWithPast.__dataclass_fields__ else "past_key_values"


class FastWeightsForCausalLM(PreTrainedModel, GenerationMixin):
    """A :class:`~fastweights.models.LanguageModel` (any attention variant) as a ``transformers`` model.

    ``forward(input_ids [B, T], attention_mask [B, past + T], labels [B, T], cache)`` returns
    ``CausalLMOutputWithPast`` with ``logits [B, T, V]`` (log-probabilities with an adaptive
    softmax; zeros at padded positions), the mean next-token ``loss`` over non-padded positions
    where ``labels != -100``, and the :class:`FastWeightCache` after the new columns.

    ``self.lm`` is the :class:`LanguageModel` over this model's modules (shared, not copied).
    """

    config_class = FastWeightsConfig
    main_input_name = "input_ids"
    _is_stateful = True  # no cropping: assisted decoding and similar rollbacks are refused
    _tied_weights_keys = {"wte.weight": "head.weight"}  # as LanguageModel ties them

    def __init__(self, config: FastWeightsConfig) -> None:
        super().__init__(config)
        lm = LanguageModel(config.lm_config)
        for name, module in lm.named_children():  # parameter names as `fastweights train` writes them
            self.add_module(name, module)
        self.__dict__["lm"] = lm  # outside the module tree: its modules are already registered above
        self.post_init()

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: Any, *args: Any, **kwargs: Any) -> "FastWeightsForCausalLM":
        """``PreTrainedModel.from_pretrained``, after :func:`check_local_folder`; a local folder's
        ``model.safetensors`` is checked before it is read and its weights after (module docstring).
        A sharded save (``model.safetensors.index.json``) is left to ``transformers``."""
        check_local_folder(pretrained_model_name_or_path)
        folder = (
            Path(pretrained_model_name_or_path, kwargs.get("subfolder") or "")
            if isinstance(pretrained_model_name_or_path, (str, os.PathLike))
            else None
        )
        local = folder is not None and folder.is_dir() and not (folder / SAFE_WEIGHTS_INDEX_NAME).is_file()
        if local:
            record = read_config(folder).get(WEIGHTS_RECORD) if (folder / CONFIG_FILE).is_file() else None
            check_weights_file(folder / WEIGHTS_FILE, record)
        model = super().from_pretrained(pretrained_model_name_or_path, *args, **kwargs)
        if local:
            check_finite_weights(model, folder / WEIGHTS_FILE)
        return model

    def save_pretrained(self, save_directory: Any, *args: Any, **kwargs: Any) -> None:
        """``PreTrainedModel.save_pretrained``, then the SHA-256 of the ``model.safetensors`` written
        recorded in ``config.json`` (which ``transformers`` writes first, without one)."""
        super().save_pretrained(save_directory, *args, **kwargs)
        if kwargs.get("is_main_process", True) and (Path(save_directory) / WEIGHTS_FILE).is_file():
            record_weights(save_directory)

    @classmethod
    def _supports_default_dynamic_cache(cls) -> bool:
        return False  # the state is a FastWeightCache, made by the first forward

    def _init_weights(self, module: torch.nn.Module) -> None:
        """Weights missing from a checkpoint get :class:`LanguageModel`'s base initialisation."""
        LanguageModel._init_weights(module)

    def get_input_embeddings(self) -> Optional[torch.nn.Module]:
        return self.lm.wte

    def forward(
        self,
        input_ids: Tensor,
        attention_mask: Optional[Tensor] = None,
        labels: Optional[Tensor] = None,
        use_cache: Optional[bool] = None,
        return_dict: Optional[bool] = None,
        **kwargs: Any,
    ) -> CausalLMOutputWithPast:
        """Read ``input_ids`` after the columns the cache (keyword :data:`CACHE_ARG`) holds; see the
        class docstring."""
        cache = kwargs.pop(CACHE_ARG, None)
        unsupported = sorted(name for name, value in kwargs.items() if value is not None and value is not False)
        if unsupported:
            raise ValueError(f"FastWeightsForCausalLM.forward does not take {unsupported}")
        if cache is not None and not isinstance(cache, FastWeightCache):
            raise ValueError(
                f"cache must be a FastWeightCache (made by this model's forward), got {type(cache).__name__}"
            )
        if return_dict is False:
            raise ValueError("return_dict must be True or None: the output is a CausalLMOutputWithPast")
        T = input_ids.shape[1]
        if cache is None or cache.state is None:
            logits, state = self._read_prompts(input_ids, attention_mask)  # [B, T, V]
        else:
            if attention_mask is not None and not bool(attention_mask[:, -T:].all()):
                raise ValueError(
                    "attention_mask may be 0 only before each row's first token (left padding), "
                    f"got {attention_mask[:, -T:].tolist()} for the new columns"
                )
            if T == 1:
                step_logits, state = self.lm.step(input_ids[:, 0], cache.state)  # [B, V]
                logits = step_logits[:, None]  # [B, 1, V]
            else:
                logits, _, state = self.lm(input_ids, state=cache.state)  # [B, T, V]
        loss = self._loss(logits, labels, attention_mask[:, -T:] if attention_mask is not None else None)
        if use_cache is False:
            return CausalLMOutputWithPast(loss=loss, logits=logits)
        cache = cache if cache is not None else FastWeightCache(self.lm)
        cache.advance(state, T)
        return CausalLMOutputWithPast(loss=loss, logits=logits, **{CACHE_ARG: cache})

    def prepare_inputs_for_generation(
        self, input_ids: Tensor, attention_mask: Optional[Tensor] = None, use_cache: bool = True, **kwargs: Any
    ) -> dict:
        """The columns the cache has not read yet, the mask and the cache (``generate`` passes the
        whole sequence each step)."""
        cache = kwargs.get(CACHE_ARG)
        seen = cache.get_seq_length() if cache is not None else 0
        return {
            "input_ids": input_ids[:, seen:],
            "attention_mask": attention_mask,
            CACHE_ARG: cache,
            "use_cache": use_cache,
        }

    def _read_prompts(self, input_ids: Tensor, attention_mask: Optional[Tensor]) -> tuple:
        """Each left-padded row from its own tokens: logits ``[B, T, V]`` right-aligned (zeros at
        padding) and the batch state."""
        rows = unpad(input_ids, attention_mask)
        row_logits, state = prefill(self.lm, rows)
        B, T = input_ids.shape
        logits = row_logits[0].new_zeros(B, T, row_logits[0].shape[-1])  # [B, T, V]
        for b, out in enumerate(row_logits):
            logits[b, T - out.shape[0] :] = out
        return logits, state

    @staticmethod
    def _loss(logits: Tensor, labels: Optional[Tensor], mask: Optional[Tensor]) -> Optional[Tensor]:
        """Mean cross-entropy of ``labels[:, t + 1]`` given the logits at t, over unpadded t with a
        label other than -100 (``transformers``' shifted-labels convention)."""
        if labels is None:
            return None
        if labels.shape != logits.shape[:2]:
            raise ValueError(
                f"labels must have the shape of input_ids {list(logits.shape[:2])}, got {list(labels.shape)}"
            )
        targets = labels[:, 1:].clone()  # [B, T - 1]
        if mask is not None:
            targets[mask[:, :-1] == 0] = -100
        return F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), targets.flatten(), ignore_index=-100)
