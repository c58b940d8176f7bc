"""Attention that computes each sequence of a padded batch at its own length, so a text's
vector does not depend on the texts batched with it.

Dynamic INT8 quantizes each token's inputs with its own scale, so padding never enters a
scale. But a padded batch changes the float computation around the quantizers: attention over
a longer (masked) key axis sums in another order, which moves a real token's activations by
~1e-7, and now and then that moves a value across a rounding boundary of the next per-token
quantizer. One step there is ``max|x| / 127`` of the row; six layers on, the text's vector
differs from its solo vector by up to ~1e-2 (FP32: ~1e-7). :func:`use_per_sequence_attention`
makes a Hugging Face encoder run scaled dot-product attention on each sequence alone, at its
unpadded length, exactly as for the text on its own. Everything else in a BERT-style encoder
works per token, so the result is the same to the bit whatever the batch.

It registers one attention function and its mask function under a name of its own with
transformers' ``AttentionInterface`` (at the first call, not at import) and switches only the
model it is given to that name.
"""

from __future__ import annotations

import logging
from typing import Any

import torch

__all__ = ["use_per_sequence_attention", "ATTENTION_NAME"]

logger = logging.getLogger(__name__)

ATTENTION_NAME = "quant_retriever_per_sequence"


def _key_lengths(attention_mask: torch.Tensor | None, batch: int, length: int) -> list[int] | None:
    """Each sequence's number of real tokens when the mask is plain right padding (a boolean
    ``[batch, 1, queries, keys]`` mask whose rows are ``True`` for a prefix of the keys);
    ``None`` for any other mask."""
    if attention_mask is None:
        return [length] * batch
    if attention_mask.dtype != torch.bool or attention_mask.dim() != 4 or attention_mask.shape[-1] != length:
        return None
    keys = attention_mask[:, 0, 0, :]  # [batch, keys]
    lengths = keys.sum(dim=-1)  # [batch]
    prefix = torch.arange(length, device=keys.device)[None, :] < lengths[:, None]
    if not torch.equal(keys, prefix) or not bool((attention_mask == keys[:, None, None, :]).all()):
        return None
    return lengths.tolist()


def _per_sequence_attention(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """transformers' SDPA attention on each sequence alone; rows past a sequence's end are 0.

    query, key, value: ``[batch, heads, length, head_dim]``; returns ``[batch, length, heads,
    head_dim]`` as transformers' attention functions do."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    batch, heads, length, head_dim = query.shape
    lengths = _key_lengths(attention_mask, batch, length)
    if lengths is None or getattr(module, "is_causal", False) or key.shape[2] != length:
        return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)
    out = query.new_zeros(batch, length, heads, head_dim)
    for b, n in enumerate(lengths):
        if n == 0:
            continue
        # contiguous copies: the same layout, so the same kernel path, as for the text alone
        rows = [t[b : b + 1, :, :n].contiguous() for t in (query, key, value)]
        out[b, :n] = sdpa_attention_forward(module, *rows, None, **kwargs)[0][0]
    return out, None


def _register() -> bool:
    try:
        from transformers import AttentionInterface
        from transformers.masking_utils import AttentionMaskInterface, sdpa_mask
    except ImportError:
        return False
    if ATTENTION_NAME not in AttentionInterface():
        AttentionInterface.register(ATTENTION_NAME, _per_sequence_attention)
        AttentionMaskInterface.register(ATTENTION_NAME, sdpa_mask)
    return True


def use_per_sequence_attention(transformer: torch.nn.Module) -> bool:
    """Switch a Hugging Face encoder that runs SDPA attention to per-sequence attention, in
    place; False (nothing changed) for a model that runs another attention (eager, flash) or
    a transformers without the attention interface."""
    config = getattr(transformer, "config", None)
    if getattr(config, "_attn_implementation", None) != "sdpa" or getattr(config, "is_decoder", False):
        logger.debug("%s does not run SDPA attention; its batches stay padded.", type(transformer).__name__)
        return False
    if not _register():
        return False
    config._attn_implementation = ATTENTION_NAME
    return True
