"""Longer inputs for pretrained models: extend learned position tables, or resize a ViT's patch grid.

Sparse attention pays on long inputs, but pretrained BERT stops at 512 positions, GPT-2 at 1,024 and
ViT-B/16 sees 197 tokens at 224 px. :func:`extend_positions` gets a model there::

    hf_sparse.extend_positions(bert, 4096, tokenizer=tok)    # BERT / RoBERTa / DistilBERT / GPT-2 (/ BART)
    hf_sparse.extend_positions(vit, image_size=448)          # ViT / DeiT: 28x28 patches instead of 14x14
    hf_sparse.patch_model(bert, "sliding_window", window=256, num_global=1, max_positions=4096)  # the same

What each family gets:

* **Learned absolute tables** (``nn.Embedding`` ``[table_size, hidden]``: BERT-like ``position_embeddings``,
  GPT-2 ``wpe``, BART-style tables with an ``offset``): the table grows to ``max_positions`` rows (plus the
  model's offset) by *tiling* the pretrained rows, as Longformer did for RoBERTa: row ``offset + i`` of the
  new table is row ``offset + i % (old_size - offset)`` of the old one, and the first ``offset`` rows (RoBERTa's
  padding rows ``0..padding_idx``, BART's two reserved rows) are copied once. The pretrained rows keep their
  values, so inputs up to the old length compute exactly as before. ``position_ids`` / ``token_type_ids``
  buffers, ``config.max_position_embeddings`` (``n_positions`` for GPT-2) and the tokenizer's
  ``model_max_length`` follow. ``max_positions`` counts *tokens*: RoBERTa at ``max_positions=4096`` gets a
  4,098-row table (``config.max_position_embeddings = 4098``), exactly as Longformer's checkpoint.
* **Image models** (ViT, DeiT: a ``position_embeddings`` parameter ``[1, prefix + rows*cols, hidden]``) have a
  2-D table. Either call the model with ``interpolate_pos_encoding=True`` at any larger square-grid image size
  (Transformers interpolates at every call; ``local_2d`` infers the new grid from the length, keeping the
  configured aspect ratio), or resize it once with ``extend_positions(model, image_size=...)``: the patch
  table is interpolated bicubically (the same arithmetic as Transformers' ``interpolate_pos_encoding``), and
  ``config.image_size`` is updated, so the model runs natively at that size, non-square sizes included, and
  ``local_2d`` reads the exact grid from the config.
* **Relative or rotary positions** (T5's relative bias, Llama's RoPE) need nothing: the model is returned
  unchanged (only the tokenizer's ``model_max_length`` is raised).

The change lives in the weights and ``config.json``: ``save_pretrained`` then ``from_pretrained`` (or
:func:`hf_sparse.load_patched`) rebuilds the larger table with no extra step. ``unpatch_model`` does not undo it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ._logging import logger
from .integration import attention_configs, iter_states
from .models import model_type

#: Attribute names of learned absolute position tables (``nn.Embedding``) on an embeddings module.
_TABLE_ATTRS = ("position_embeddings", "wpe", "embed_positions")


@dataclass(frozen=True)
class _Table:
    """One learned table: ``owner.<attr>`` is an ``nn.Embedding`` whose first ``offset`` rows are reserved."""

    name: str
    owner: nn.Module
    attr: str
    offset: int

    @property
    def embedding(self) -> nn.Embedding:
        return getattr(self.owner, self.attr)

    @property
    def positions(self) -> int:
        """Tokens the table covers now."""
        return self.embedding.num_embeddings - self.offset

    def config_value(self, positions: int) -> int:
        """``config.max_position_embeddings`` for a table of ``positions`` tokens: BART-style configs count
        positions, RoBERTa-style configs count rows (positions plus the padding offset)."""
        return positions if hasattr(self.embedding, "offset") else positions + self.offset


@dataclass
class Extension:
    """A validated, not yet applied, position extension (see :func:`plan_extension`)."""

    model: nn.Module
    describe: str
    _apply: Callable[[], None]

    def apply(self) -> nn.Module:
        self._apply()
        logger.info("hf_sparse: %s", self.describe)
        return self.model


def _check_size(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int number of positions, got {value!r} ({type(value).__name__})")
    if value < 1:
        raise ValueError(f"{name} must be >= 1, got {value}")
    return value


def _offset(owner: nn.Module, embedding: nn.Embedding) -> int:
    """Reserved rows before position 0: BART-style ``offset``, RoBERTa-style ``padding_idx + 1``."""
    offset = getattr(embedding, "offset", None)
    if isinstance(offset, int) and not isinstance(offset, bool):
        return offset
    if hasattr(owner, "create_position_ids_from_input_ids"):  # RoBERTa family: positions start at padding_idx+1
        return int(owner.padding_idx) + 1
    return 0


def _learned_tables(model: nn.Module) -> list[_Table]:
    """Every learned absolute table; sinusoidal ones (Marian, DistilBERT with ``sinusoidal_pos_embds``) are
    fixed functions of the position, not learned, and are left out."""
    if any(getattr(cfg, "sinusoidal_pos_embds", False) for cfg in attention_configs(model)):
        return []
    tables = []
    for name, module in model.named_modules():
        for attr in _TABLE_ATTRS:
            embedding = getattr(module, attr, None)
            if isinstance(embedding, nn.Embedding) and "Sinusoidal" not in type(embedding).__name__:
                tables.append(_Table(f"{name}.{attr}".lstrip("."), module, attr, _offset(module, embedding)))
    return tables


def _image_embeddings(model: nn.Module) -> nn.Module | None:
    for module in model.modules():
        table = getattr(module, "position_embeddings", None)
        patches = getattr(module, "patch_embeddings", None)
        if isinstance(table, nn.Parameter) and table.dim() == 3 and hasattr(patches, "patch_size"):
            return module
    return None


def _relative_positions(model: nn.Module) -> bool:
    return any(
        hasattr(m, "relative_attention_bias") or "Rotary" in type(m).__name__ for m in model.modules()
    )


def _pair(value: int | tuple[int, int] | list[int]) -> tuple[int, int]:
    return (value, value) if isinstance(value, int) else (int(value[0]), int(value[1]))


# -- learned 1-D tables -------------------------------------------------------------------------------------
def tile_table(weight: torch.Tensor, new_rows: int, offset: int = 0) -> torch.Tensor:
    """``[new_rows, hidden]``: the ``offset`` reserved rows of ``weight [old_rows, hidden]`` once, then its
    position rows ``weight[offset:]`` repeated until ``new_rows`` rows are filled (Longformer's copy)."""
    body = weight[offset:]
    repeats = -(-(new_rows - offset) // body.shape[0])
    return torch.cat([weight[:offset], body.repeat(repeats, 1)[: new_rows - offset]], dim=0)


def _extend_table(table: _Table, new_positions: int) -> None:
    old = table.embedding
    old_rows, rows = old.num_embeddings, new_positions + table.offset
    with torch.no_grad():
        weight = tile_table(old.weight.detach(), rows, table.offset)
    old.weight = nn.Parameter(weight, requires_grad=old.weight.requires_grad)
    old.num_embeddings = rows
    owner = table.owner
    for buffer, make in (("position_ids", _arange_like), ("token_type_ids", _zeros_like)):
        current = getattr(owner, buffer, None)
        if isinstance(current, torch.Tensor) and current.dim() == 2 and current.shape[-1] == old_rows:
            persistent = buffer not in owner._non_persistent_buffers_set
            owner.register_buffer(buffer, make(current, rows), persistent=persistent)


def _arange_like(current: torch.Tensor, rows: int) -> torch.Tensor:
    return torch.arange(rows, dtype=current.dtype, device=current.device).expand((1, -1))


def _zeros_like(current: torch.Tensor, rows: int) -> torch.Tensor:
    return torch.zeros((1, rows), dtype=current.dtype, device=current.device)


def _set_config_positions(model: nn.Module, changes: dict[int, int]) -> None:
    for cfg in attention_configs(model):
        current = getattr(cfg, "max_position_embeddings", None)
        if isinstance(current, int) and current in changes:
            cfg.max_position_embeddings = changes[current]  # GPT-2 maps this name onto n_positions


def _plan_learned(model: nn.Module, tables: list[_Table], max_positions: int) -> Extension:
    for table in tables:
        if max_positions < table.positions:
            raise ValueError(
                f"max_positions={max_positions} would shrink {table.name} ({table.positions} positions); "
                f"extend_positions only grows tables: pass max_positions >= {table.positions}"
            )
    grow = [t for t in tables if t.positions < max_positions]

    def apply() -> None:
        changes = {t.config_value(t.positions): t.config_value(max_positions) for t in grow}
        for table in grow:
            _extend_table(table, max_positions)
        _set_config_positions(model, changes)

    names = ", ".join(f"{t.name} {t.positions}->{max_positions}" for t in grow) or "nothing to do"
    return Extension(model, f"extended learned position tables by tiling: {names}", apply)


# -- 2-D image tables ---------------------------------------------------------------------------------------
def interpolate_grid(table: torch.Tensor, old_grid: tuple[int, int], new_grid: tuple[int, int]) -> torch.Tensor:
    """Resize the patch part of ``table [1, prefix + rows*cols, hidden]`` from ``old_grid`` to ``new_grid``
    bicubically (as Transformers' ``interpolate_pos_encoding``); the ``prefix`` rows are kept as they are."""
    (rows, cols), dim = old_grid, table.shape[-1]
    prefix = table.shape[1] - rows * cols
    patch = table[:, prefix:].reshape(1, rows, cols, dim).permute(0, 3, 1, 2)
    patch = nn.functional.interpolate(patch, size=new_grid, mode="bicubic", align_corners=False)
    return torch.cat([table[:, :prefix], patch.permute(0, 2, 3, 1).reshape(1, -1, dim)], dim=1)


def _plan_image(model: nn.Module, embeddings: nn.Module, image_size: Any) -> Extension:
    if isinstance(image_size, (tuple, list)) and len(image_size) == 2:
        for side in image_size:
            _check_size("image_size", side)
    else:
        _check_size("image_size", image_size)
    patches = embeddings.patch_embeddings
    patch, old_size, new_size = _pair(patches.patch_size), _pair(patches.image_size), _pair(image_size)
    if any(n % p for n, p in zip(new_size, patch, strict=True)):
        raise ValueError(f"image_size={image_size!r} is not a multiple of the patch size {patch}; round it to one")
    if any(n < o for n, o in zip(new_size, old_size, strict=True)):
        raise ValueError(
            f"image_size={image_size!r} would shrink the model's {old_size} patch grid; extend_positions only grows "
            "it (call the model with interpolate_pos_encoding=True for smaller images)"
        )
    old_grid = (old_size[0] // patch[0], old_size[1] // patch[1])
    new_grid = (new_size[0] // patch[0], new_size[1] // patch[1])

    def apply() -> None:
        with torch.no_grad():
            table = interpolate_grid(embeddings.position_embeddings.detach(), old_grid, new_grid)
        embeddings.position_embeddings = nn.Parameter(table)
        patches.image_size = new_size
        patches.num_patches = new_grid[0] * new_grid[1]
        if hasattr(embeddings, "image_size"):
            embeddings.image_size = new_size
        value = image_size if isinstance(image_size, int) else list(new_size)
        for cfg in attention_configs(model):
            if _pair(getattr(cfg, "image_size", 0) or 0) == old_size:
                cfg.image_size = value
        for _, state in iter_states(model):  # already patched: image patterns follow the new grid
            if state.image_grid == old_grid:
                state.image_grid = new_grid

    return Extension(model, f"resized the patch grid {old_grid} -> {new_grid} (image size {new_size})", apply)


# -- public API ---------------------------------------------------------------------------------------------
def plan_extension(model: nn.Module, max_positions: int | None = None, *, image_size: Any = None) -> Extension:
    """Validate an extension of ``model`` and return it unapplied (``.apply()`` runs it).

    Raises ``TypeError``/``ValueError`` (naming the value) before anything changes: non-int sizes, shrinking,
    ``max_positions`` on an image model, ``image_size`` on a text model, or a model with no learned table.
    """
    if (max_positions is None) == (image_size is None):
        raise TypeError("pass exactly one of max_positions= (text models) or image_size= (ViT-like image models)")
    embeddings = _image_embeddings(model)
    if image_size is not None:
        if embeddings is None:
            raise ValueError(
                f"image_size= needs an image model with a 2-D position table (ViT, DeiT); {model_type(model)!r} "
                f"({type(model).__name__}) has none: use max_positions= for text models"
            )
        return _plan_image(model, embeddings, image_size)
    max_positions = _check_size("max_positions", max_positions)
    if embeddings is not None:
        raise ValueError(
            f"{model_type(model)!r} has a 2-D patch position table, not a 1-D one: use image_size= (e.g. "
            "extend_positions(model, image_size=448)) or call the model with interpolate_pos_encoding=True"
        )
    tables = _learned_tables(model)
    if tables:
        return _plan_learned(model, tables, max_positions)
    if _relative_positions(model):
        return Extension(model, f"{model_type(model)!r} uses relative/rotary positions: nothing to extend", lambda: None)
    raise ValueError(
        f"{model_type(model)!r} ({type(model).__name__}) has no learned absolute position table that "
        "extend_positions knows (BERT-like position_embeddings, GPT-2 wpe, BART-style embed_positions); "
        "sinusoidal or unknown position schemes are not extended"
    )


def extend_positions(
    model: nn.Module,
    max_positions: int | None = None,
    tokenizer: Any = None,
    *,
    image_size: int | tuple[int, int] | None = None,
    image_processor: Any = None,
) -> nn.Module:
    """Let ``model`` take ``max_positions`` tokens (text) or ``image_size`` images (ViT-like), in place.

    Args:
        model: a Transformers model (see the module docstring for what each family gets).
        max_positions: tokens the model must accept; at least the current count (equal is a no-op).
        tokenizer: optional; its ``model_max_length`` becomes ``max_positions`` (so truncation and
            ``save_pretrained`` agree with the model).
        image_size: new image size (int or ``(height, width)``, multiples of the patch size, each side at
            least the current one) for ViT-like models; the patch grid becomes ``image_size // patch_size``.
        image_processor: optional; its ``size`` becomes ``{"height", "width"}`` of ``image_size``.

    Returns ``model``. Raises ``TypeError``/``ValueError`` naming the bad value; the model is unchanged then.
    """
    plan_extension(model, max_positions, image_size=image_size).apply()
    if tokenizer is not None and max_positions is not None:
        tokenizer.model_max_length = max_positions
        if isinstance(getattr(tokenizer, "init_kwargs", None), dict):
            tokenizer.init_kwargs["model_max_length"] = max_positions
    if image_processor is not None and image_size is not None:
        height, width = _pair(image_size)
        image_processor.size = {"height": height, "width": width}
    return model
