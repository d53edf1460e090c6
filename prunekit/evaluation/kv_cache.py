"""The evaluation's KV caches: transformers' DynamicCache, or the same with each layer growing into a preallocated
buffer (`eval.kv_cache=preallocated`).

transformers' DynamicLayer appends a step's keys and values with `torch.cat` of the whole cache, so every decode
step copies every layer's cache once more: 15.7 % of the batch-8 HumanEval decode of Qwen2.5-Coder-0.5B in a
py-spy profile. transformers has no cache that avoids it and gives attention the same tensors: StaticCache
preallocates, but attends over the whole masked buffer, which changed greedy outputs in bf16 (docs/results/speed.md).
So `BufferedLayer` is hand-written: a DynamicLayer whose keys and values are views of the first n positions of a
buffer of doubling capacity. Attention sees exactly the values DynamicLayer would give it (same shape, same
numbers, other strides), and every DynamicLayer method keeps working on the views; one that replaces them with a
fresh tensor (a batch reorder or select) just starts a new buffer from it at the next update.
"""

from __future__ import annotations

import torch
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer

from prunekit.errors import ConfigError

KINDS = ("dynamic", "preallocated")
MIN_CAPACITY = 64  # positions: the first buffer of a short prompt


class BufferedLayer(DynamicLayer):
    """A DynamicLayer that writes new keys/values into spare capacity instead of concatenating."""

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        super().lazy_initialization(key_states, value_states)
        self._buffers: tuple[torch.Tensor, torch.Tensor] | None = None

    def _holds_views(self, batch: int, needed: int) -> bool:
        """The current keys/values are the leading positions of the buffer, which has room for `needed`."""
        buf = self._buffers
        return (buf is not None and self.keys.numel() > 0 and self.keys.data_ptr() == buf[0].data_ptr()
                and self.values.data_ptr() == buf[1].data_ptr() and buf[0].shape[0] == batch
                and needed <= buf[0].shape[-2])

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        n = self.get_seq_length()
        end = n + key_states.shape[-2]
        if not self._holds_views(key_states.shape[0], end):
            shape = (*key_states.shape[:-2], max(MIN_CAPACITY, 2 * end), key_states.shape[-1])
            keys, values = key_states.new_empty(shape), value_states.new_empty(shape)
            if n:  # the cached positions (after a reorder, a select or a full buffer): copied once
                keys[..., :n, :], values[..., :n, :] = self.keys, self.values
            self._buffers = (keys, values)
        keys, values = self._buffers
        keys[..., n:end, :], values[..., n:end, :] = key_states, value_states
        self.keys, self.values = keys[..., :end, :], values[..., :end, :]
        return self.keys, self.values

    def reset(self) -> None:
        self._buffers = None
        super().reset()


def make_cache(kind: str, model) -> DynamicCache:
    """A fresh cache of `kind` (KINDS) for `model`'s decoder. Sliding-window and other special layers stay
    transformers' own; only plain full-attention DynamicLayers are buffered."""
    if kind not in KINDS:
        raise ConfigError(f"kv_cache={kind!r}: allowed: {', '.join(KINDS)}")
    cache = DynamicCache(config=model.config.get_text_config(decoder=True))
    if kind == "preallocated":
        cache.layers = [BufferedLayer() if type(layer) is DynamicLayer else layer for layer in cache.layers]
    return cache
