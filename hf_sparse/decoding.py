"""Sparse decoding: a KV cache that keeps only the window and the global tokens of ``sliding_window``.

A causal module patched with ``sliding_window`` (or ``longformer``, its subclass) lets a query at position ``t``
see the keys ``t - window .. t`` and the first ``num_global`` real tokens of its row (positions count from each
row's first real token, see :mod:`hf_sparse.kernels.call`). Every other key is dead for every later query, so
its cache layer can drop it. This module builds that on Transformers' own cache machinery:

* :class:`WindowCacheLayer` is a ``DynamicLayer`` (``transformers.cache_utils``) that, after each attention
  call, keeps per batch row the ``num_global`` global keys plus the last ``window`` keys, and records the
  absolute position of every key it holds. To the rest of Transformers it looks like a full cache of the whole
  sequence: ``get_seq_length`` counts every token seen and ``get_mask_sizes`` asks for the full-width mask, so
  position ids and the model's causal / padding mask are exactly those of a full cache.
* :func:`cache_hook` is a forward pre-hook (registered per patched model by ``patch_model``, removed by
  ``unpatch_model``): for a forward with a cache (``generate``, or ``use_cache=True``) it gives the cache a
  :class:`WindowCacheLayer` for every such module while the cache is still empty (a :class:`FullCache` is left
  alone). Nothing global is changed.
* The attention function (:mod:`hf_sparse.integration`) takes the keys of such a layer, evaluates the pattern
  and the model's mask at the kept keys' absolute positions (:func:`windowed_attention`) and lets the layer
  evict afterwards (:meth:`WindowCacheLayer.evict`).

Memory is ``O(window + num_global)`` per layer and the time per token is flat in the generated length; greedy
tokens equal those of the no-cache forward of the same patched model (``tests/test_decoding.py``). Every other
pattern (block_local, strided, dilated, random, bigbird, local_2d, topk_blocks, learned_gate, unions) keeps
Transformers' full cache, as before.
"""

from __future__ import annotations

import inspect
import weakref
from collections.abc import Callable, Iterable
from typing import Any

import torch
from transformers.cache_utils import DynamicCache, DynamicLayer

from .kernels import AttentionCall, run_attention
from .patterns import Dense, MaskContext, Pattern, SlidingWindow, bound_mask_mod

#: Names under which Transformers 5.x models take their cache (``past_key_values`` is the deprecated one).
_CACHE_KWARGS = ("cache", "past_key_values")


class FullCache(DynamicCache):
    """A plain ``DynamicCache`` that :func:`cache_hook` leaves alone: pass ``cache=FullCache()`` to ``generate`` or
    ``forward`` to keep every key (e.g. for assisted decoding, which crops the cache)."""


def cache_window(pattern: Pattern) -> tuple[int, int] | None:
    """``(window, num_global)`` when a causal module with ``pattern`` can decode from a window cache, else
    ``None`` (the pattern keeps the full cache)."""
    if isinstance(pattern, SlidingWindow):
        return pattern.window, pattern.num_global
    return None


class WindowCacheLayer(DynamicLayer):
    """A ``DynamicLayer`` that keeps, per batch row, the ``num_global`` global keys and the last ``window`` keys.

    Attributes:
        window, num_global: what to keep (the pattern's options).
        state: the patched module's state; :meth:`update` leaves itself there for the attention call.
        cumulative_length: tokens seen (what ``get_seq_length`` reports).
        positions: ``[B, kept]`` int64 absolute position of each held key; ``-1`` marks a global slot that holds
            nothing (its token is in the window, or not there yet).
        offsets: ``[B]`` position of each row's first real token, known after the first attention call.
    """

    is_croppable = False

    def __init__(self, window: int, num_global: int, state: Any) -> None:
        super().__init__()
        self.window, self.num_global, self.state = window, num_global, state
        self.cumulative_length = 0
        self.positions: torch.Tensor | None = None
        self.offsets: torch.Tensor | None = None
        self._returned: weakref.ref | None = None

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any, **kwargs: Any
               ) -> tuple[torch.Tensor, torch.Tensor]:
        """Append the new keys; return every held key (globals, window, new ones) for this call."""
        keys, values = super().update(key_states, value_states)
        batch, new = key_states.shape[0], key_states.shape[-2]
        fresh = torch.arange(self.cumulative_length, self.cumulative_length + new, device=key_states.device)
        fresh = fresh.expand(batch, new)
        self.positions = fresh if self.positions is None else torch.cat([self.positions, fresh], dim=1)
        self.cumulative_length += new
        self._returned = weakref.ref(keys)
        self.state.cache_layer = self
        return keys, values

    def produced(self, key: torch.Tensor) -> bool:
        """Whether ``key`` is the tensor this layer's latest :meth:`update` returned."""
        return self._returned is not None and self._returned() is key

    @property
    def evicted(self) -> bool:
        """Whether keys were dropped (the held keys are then not the contiguous positions ``0 .. seen - 1``)."""
        return self.keys is not None and self.keys.shape[-2] < self.cumulative_length

    def evict(self, row_offsets: Callable[[], torch.Tensor | None]) -> None:
        """Drop every key no later query can attend. ``row_offsets()`` (``[B]`` first real token of each row, or
        ``None`` for 0: the call's :meth:`~hf_sparse.kernels.AttentionCall.row_offsets`) is read on the first
        call, whose keys are all there."""
        if self.offsets is None:
            batch, device, offsets = self.keys.shape[0], self.keys.device, row_offsets()
            self.offsets = offsets.to(device) if offsets is not None else torch.zeros(batch, dtype=torch.long,
                                                                                      device=device)
        g, held = self.num_global, self.keys.shape[-2]
        if held <= g + self.window:
            return
        keys, values = self.keys[:, :, -self.window:], self.values[:, :, -self.window:]
        positions = self.positions[:, -self.window:]
        if g:
            start = self.cumulative_length - self.window                    # the window holds [start, seen)
            want = self.offsets[:, None] + torch.arange(g, device=self.offsets.device)   # [B, G] global positions
            column = (self.positions[:, None, :] == want[:, :, None]).to(torch.int8).argmax(-1)
            gathered = [t.gather(2, column[:, None, :, None].expand(t.shape[0], t.shape[1], g, t.shape[3]))
                        for t in (self.keys, self.values)]
            keys, values = torch.cat([gathered[0], keys], dim=2), torch.cat([gathered[1], values], dim=2)
            positions = torch.cat([torch.where(want < start, want, -1), positions], dim=1)
        self.keys, self.values, self.positions = keys, values, positions

    def get_seq_length(self) -> int:
        return self.cumulative_length

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        """The full-width mask (``seen + query_length`` keys from 0), as for a full cache."""
        return self.cumulative_length + query_length, 0

    def reset(self) -> None:
        super().reset()
        self.positions = self.offsets = self._returned = None

    def crop(self, tokens_to_remove: int) -> None:
        if self.evicted:
            raise ValueError("hf_sparse: a window KV cache that has dropped keys cannot be cropped; generate without "
                             "assisted decoding, or pass cache=hf_sparse.decoding.FullCache() to keep every key")
        super().crop(tokens_to_remove)
        self.cumulative_length = self.keys.shape[-2]
        self.positions = self.positions[:, : self.cumulative_length]

    def _rows(self, select) -> None:
        if self.keys is not None:
            self.keys, self.values = select(self.keys), select(self.values)
            self.positions = select(self.positions)
            self.offsets = None if self.offsets is None else select(self.offsets)

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        self._rows(lambda t: t.index_select(0, beam_idx.to(t.device)))

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        self._rows(lambda t: t[indices, ...])

    def batch_repeat_interleave(self, repeats: int) -> None:
        self._rows(lambda t: t.repeat_interleave(repeats, dim=0))


def take_layer(state: Any, key: torch.Tensor) -> WindowCacheLayer | None:
    """The window cache layer that produced ``key`` for this attention call, or ``None`` (no window cache).

    Raises:
        RuntimeError: a layer that dropped keys left itself for this module but the call received other keys
            (the keys were changed between the cache and the attention function): computing with them would
            silently use wrong positions.
    """
    layer, state.cache_layer = getattr(state, "cache_layer", None), None
    if layer is None or layer.produced(key):
        return layer
    if layer.evicted:
        raise RuntimeError(f"hf_sparse: module {state.module_name} received keys its window KV cache did not "
                           "return; pass cache=hf_sparse.decoding.FullCache() to keep the full cache")
    return None


def windowed_attention(
    layer: WindowCacheLayer, call: AttentionCall
) -> tuple[torch.Tensor, torch.Tensor | None, str]:
    """``call`` (keys from ``layer``, which dropped some) computed over the kept keys: the pattern and the
    model's full-width mask are evaluated at the keys' absolute positions, with each row's positions counted
    from its first real token. Returns ``(out [B, Hq, Lq, Dv], weights or None, kernel)``."""
    q_len, seen = call.ctx.q_len, layer.cumulative_length
    positions, offsets = layer.positions, layer.offsets
    ctx = MaskContext(q_len=q_len, kv_len=seen, q_offset=seen - q_len, causal=call.ctx.causal)
    mod = bound_mask_mod(call.pattern, ctx)
    q = (torch.arange(seen - q_len, seen, device=positions.device)[None, :] - offsets[:, None])[:, None, :, None]
    k = (positions - offsets[:, None])[:, None, None, :]
    zero = torch.zeros((), dtype=torch.long, device=positions.device)
    allowed = mod(zero, zero, q.clamp(min=0), k.clamp(min=0)) & (q >= 0) & (k >= 0)      # [B, 1, Lq, Lk]
    mask = call.attention_mask
    if mask is not None:
        if mask.shape[-1] != seen:
            raise RuntimeError(f"hf_sparse: expected the model's mask over {seen} keys, got {tuple(mask.shape)}")
        mask = mask if mask.dtype == torch.bool else mask > torch.finfo(mask.dtype).min
        mask = mask.expand(positions.shape[0], mask.shape[1], q_len, seen)
        index = positions.clamp(min=0)[:, None, None, :].expand(*mask.shape[:3], positions.shape[1])
        allowed = allowed & mask.gather(-1, index)
    if call.position_bias is not None:
        raise ValueError("hf_sparse: a window KV cache cannot carry a position_bias; pass "
                         "cache=hf_sparse.decoding.FullCache() to keep every key")
    kept = AttentionCall(
        query=call.query, key=call.key, value=call.value, pattern=Dense(),
        ctx=MaskContext(q_len, call.ctx.kv_len, call.ctx.kv_len - q_len), attention_mask=allowed,
        scale=call.scale, dropout_p=call.dropout_p, need_weights=call.need_weights,
    )
    return run_attention(kept, "reference" if call.need_weights else "masked_sdpa")


StatesFn = Callable[[torch.nn.Module], Iterable[tuple[str, Any]]]


def _window_modules(model: torch.nn.Module, states: StatesFn) -> dict[int, tuple[int, int, Any]]:
    """``{layer_idx: (window, num_global, state)}`` of the model's causal patched modules with a window pattern."""
    found = {}
    modules = dict(model.named_modules())
    for name, state in states(model):
        module = modules[name]
        keep = cache_window(state.config.pattern)
        idx = getattr(module, "layer_idx", None)
        if keep is not None and isinstance(idx, int) and getattr(module, "is_causal", False):
            found[idx] = (*keep, state)
    return found


def cache_hook(model: torch.nn.Module, args: tuple, kwargs: dict | None = None, *, states: StatesFn
               ) -> tuple[tuple, dict] | None:
    """Forward pre-hook of a patched model (``functools.partial`` with ``states``: ``model -> (name, module
    state)`` of its patched modules): a forward that caches gets window layers for its window modules.

    The cache passed in (``generate`` passes its own) is converted while it is still empty; without one, a
    forward that will cache (``use_cache``, else ``config.use_cache``; not in training) gets a new
    ``DynamicCache`` with them. A non-empty cache, a :class:`FullCache`, an encoder-decoder model, or a cache
    passed positionally is left alone (full cache). Called without ``kwargs`` (PyTorch does that when the hook
    was removed during this very call, e.g. by the switch hook unpatching the model) it does nothing."""
    config = getattr(model, "config", None)
    if kwargs is None or config is None or getattr(config, "is_encoder_decoder", False) or len(args) > 1:
        return None
    name = next((n for n in _CACHE_KWARGS if kwargs.get(n) is not None), None)
    if name is None:
        use = kwargs.get("use_cache")
        if model.training or not (use if use is not None else getattr(config, "use_cache", False)):
            return None
        params = inspect.signature(model.forward).parameters
        name = next((n for n in _CACHE_KWARGS if n in params), None)
        if name is None:
            return None
        kwargs[name] = DynamicCache(config=config)
    cache = kwargs[name]
    if type(cache) is not DynamicCache or cache.get_seq_length() != 0:
        return None
    windows = _window_modules(model, states)
    if not windows:
        return None
    while len(cache.layers) <= max(windows):
        cache.layers.append(DynamicLayer())
    for idx, (window, num_global, state) in windows.items():
        if type(cache.layers[idx]) is DynamicLayer and not cache.layers[idx].is_initialized:
            cache.layers[idx] = WindowCacheLayer(window, num_global, state)
    return args, kwargs


def held_bytes(cache: Any) -> int:
    """Bytes of the key/value tensors a cache holds (each tensor's storage counted once)."""
    seen: dict[int, int] = {}
    for layer in getattr(cache, "layers", []):
        for tensor in (getattr(layer, "keys", None), getattr(layer, "values", None)):
            if isinstance(tensor, torch.Tensor) and tensor.numel():
                storage = tensor.untyped_storage()
                seen[storage.data_ptr()] = storage.nbytes()
    return sum(seen.values())
