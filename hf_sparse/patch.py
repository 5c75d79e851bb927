"""``patch_model`` / ``unpatch_model``: per-instance, reversible, no class is monkeypatched.

Patching (1) stores a :class:`~hf_sparse.integration.ModuleSparseState` on each targeted self-attention
module, (2) switches the model's configs to the ``hf_sparse`` attention implementation (registered with
Transformers' ``AttentionInterface`` and ``AttentionMaskInterface``), remembering what each config used
before, and (3) records the settings in ``model.config.hf_sparse`` so ``save_pretrained`` keeps them:
``{"version": <hf_sparse version that wrote them>, "rules": [{"config": SparseConfig.to_dict(), "modules":
[names]}, ...]}``. Unpatching removes all three; the model then computes bit-identically to before.
"""

from __future__ import annotations

import copy
import functools
import re
import warnings
from collections.abc import Callable
from typing import Any

import torch
from transformers import PreTrainedConfig

from . import integration
from ._version import __version__
from .config import SparseConfig
from .decoding import cache_hook
from .integration import (
    IMPLEMENTATION_NAME,
    SAVED_KEY,
    STATE_ATTR,
    ModuleSparseState,
    attention_configs,
    get_state,
    implementation_snapshot,
    iter_states,
    restore_implementation,
    settle,
    switched_temporarily,
)
from .kernels import backend_names
from .learned.weights import restore_added_weights
from .models import AttentionSite, check_supported, image_layout, model_type, unwrap
from .patterns import Pattern
from .positions import plan_extension

_ORIGINALS_ATTR = "_hf_sparse_original_attn"
_HOOK_ATTR = "_hf_sparse_switch_hook"
_CACHE_HOOK_ATTR = "_hf_sparse_cache_hook"
#: Written next to the settings so that config.json names the implementation and Transformers loads the
#: checkpoint with it (``PreTrainedConfig`` reads an ``attn_implementation`` key back; it never writes one).
_IMPLEMENTATION_KEY = "attn_implementation"

FilterFn = Callable[[str, torch.nn.Module], bool]


def patch_model(
    model: torch.nn.Module,
    pattern: str | Pattern | dict[str, Any] | SparseConfig = "sliding_window",
    *,
    target_modules: str | list[str] | None = None,
    filter_fn: FilterFn | None = None,
    layers: list[int] | None = None,
    backend: str = "auto",
    kernel_block_size: int | None = None,
    max_positions: int | None = None,
    **pattern_options: Any,
) -> torch.nn.Module:
    """Make the self-attention of a Transformers model sparse, in place.

    Args:
        model: a ``PreTrainedModel`` whose attention dispatches through ``AttentionInterface``.
        pattern: a pattern name (options as keywords, e.g. ``window=64``), a
            :class:`~hf_sparse.patterns.Pattern`, or a full :class:`SparseConfig` (then no other option).
        target_modules: regex (full match) or list of module names / suffixes; default all self-attention.
        filter_fn: ``(name, module) -> bool`` further restricting the targets (not saved; the resolved
            module names are).
        layers: only these layer indices.
        backend: kernel, ``"auto"`` or one of :func:`hf_sparse.kernels.backend_names`.
        kernel_block_size: tile size of block-sparse kernels (``None``: the pattern's ``block_size``
            if it has one, else chosen by the kernel). ``block_size=`` is a pattern option.
        max_positions: also let the model take this many tokens (learned position tables are tiled, see
            :func:`hf_sparse.extend_positions`, which also updates a tokenizer); ``None`` leaves them.

    Keywords: the named ones above are settings; every other keyword is an option of the pattern named by
    ``pattern`` (``window=64``, ``block_size=32``, ``num_global=1``). The two never share a name:
    ``register_pattern`` refuses a pattern whose option is named like a setting
    (:data:`~hf_sparse.patterns.registry.RESERVED_OPTION_NAMES`), so the tile size of a kernel is always
    ``kernel_block_size=`` and a pattern's blocks ``block_size=``. ``TypeError`` names an option the pattern
    does not take, options given with a :class:`Pattern` object or dict, and settings or options given with
    a :class:`SparseConfig` (which carries them all; only ``filter_fn`` and ``max_positions`` may join it).

    Calling it again adds or overrides settings for the modules it targets. Cross-attention always stays
    dense. A wrapper (PEFT's ``PeftModel``, before or after patching) is patched through the Transformers
    model inside it (:func:`hf_sparse.models.unwrap`): module names are relative to that model, so the
    checkpoint of ``merge_and_unload()`` reloads with :func:`load_patched`. Returns ``model``.
    """
    if isinstance(pattern, SparseConfig):
        explicit = {"target_modules": target_modules, "layers": layers, "kernel_block_size": kernel_block_size}
        given = [k for k, v in explicit.items() if v is not None] + (["backend"] if backend != "auto" else [])
        if pattern_options or given:
            raise TypeError(
                f"patch_model got a SparseConfig and also {', '.join(sorted([*pattern_options, *given]))}; "
                "set them on the SparseConfig (dataclasses.replace(config, ...)) or pass a pattern instead"
            )
        config = pattern
    else:
        config = SparseConfig.build(
            pattern, backend=backend, kernel_block_size=kernel_block_size, target_modules=target_modules, layers=layers,
            **pattern_options,
        )
    target = unwrap(model)
    sites = check_supported(target)
    selected = select_sites(sites, config, filter_fn)
    extension = None
    if max_positions is not None:
        extension = plan_extension(target, max_positions)  # validated before anything changes
    _apply(target, config, selected)
    if extension is not None:
        extension.apply()
    return model


def select_sites(
    sites: list[AttentionSite], config: SparseConfig, filter_fn: FilterFn | None = None
) -> list[AttentionSite]:
    """The sites ``config`` (and ``filter_fn``) target; ``ValueError`` if the selection is invalid or empty."""
    self_sites = [s for s in sites if not s.cross]
    chosen = self_sites
    spec = config.target_modules
    if spec is not None:
        matched = [s for s in sites if _matches(spec, s.name)]
        cross = [s.name for s in matched if s.cross]
        if cross:
            raise ValueError(
                f"target_modules={spec!r} matches cross-attention module(s) {cross[:3]}; cross-attention stays "
                "dense in hf_sparse (target the encoder/decoder self-attention instead)"
            )
        if not matched:
            names = [s.name for s in self_sites]
            raise ValueError(
                f"target_modules={spec!r} matches no self-attention module; available: {_preview(names)}"
            )
        chosen = matched
    if filter_fn is not None:
        chosen = [s for s in chosen if filter_fn(s.name, s.module)]
    if config.layers is not None:
        known = sorted({s.layer for s in self_sites if s.layer is not None})
        unknown = sorted(set(config.layers) - set(known))
        if unknown:
            raise ValueError(f"layers={config.layers} names layer(s) {unknown} that do not exist; layers: {known}")
        chosen = [s for s in chosen if s.layer in set(config.layers)]
    if not chosen:
        raise ValueError("the target selection (target_modules / filter_fn / layers) selects no attention module")
    return chosen


def _matches(spec: str | list[str], name: str) -> bool:
    if isinstance(spec, str):
        return re.fullmatch(spec, name) is not None
    return any(name == target or name.endswith("." + target) for target in spec)


def _preview(names: list[str], limit: int = 6) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f", ... ({len(names)} in all)" if len(names) > limit else "")


def _apply(model: torch.nn.Module, config: SparseConfig, sites: list[AttentionSite]) -> None:
    if config.backend not in backend_names():
        raise ValueError(f"unknown backend {config.backend!r}; choose one of: {', '.join(backend_names())}")
    layout = image_layout(model)
    if config.pattern.needs_image_grid and layout is None:
        raise ValueError(
            f"pattern {config.pattern.name!r} needs an image model (a config with image_size and patch_size), but "
            f"{model_type(model)!r} ({type(model).__name__}) has none; pass grid=(rows, cols) to lay the sequence "
            "out as a grid explicitly"
        )
    grid, prefix = layout if layout is not None else (None, None)
    _switch_implementation(model)
    for site in sites:
        previous = get_state(site.module)
        if previous is not None:
            previous.config.pattern.detach(site.module)
        setattr(site.module, STATE_ATTR, ModuleSparseState(config, site.name, image_grid=grid, num_prefix=prefix))
        config.pattern.attach(site.module)
    _record(model, config, [s.name for s in sites])


def _own_configs(model: torch.nn.Module) -> None:
    """Give ``model`` its own copy of every config its modules refer to, before anything is written to them.

    Transformers keeps the config object it is given: two models built from one ``config`` (and their modules)
    share it, so switching one model's implementation or recording its settings would change the other, its
    checkpoint and what ``load_patched`` does with it. One shared memo keeps every module of ``model`` that
    referred to one config (or sub-config) referring to one copy. Unpatching keeps the copies (with the original
    implementation and no settings), so what changed in them while patched (``max_positions``) stays consistent.
    """
    memo: dict[int, Any] = {}
    for module in model.modules():
        cfg = vars(module).get("config")
        if isinstance(cfg, PreTrainedConfig):
            module.config = copy.deepcopy(cfg, memo)


def _switch_implementation(model: torch.nn.Module) -> None:
    if not hasattr(model, _ORIGINALS_ATTR):
        _own_configs(model)
        # A checkpoint of a patched model loads with the hf_sparse implementation: unpatching goes to the default.
        default = model.get_correct_attn_implementation(None) if hasattr(model, "get_correct_attn_implementation") \
            else "sdpa"
        setattr(model, _ORIGINALS_ATTR, [(cfg, default if name == IMPLEMENTATION_NAME else name)
                                         for cfg, name in implementation_snapshot(model)])
        setattr(model, _HOOK_ATTR, model.register_forward_pre_hook(_notice_switch))
        setattr(model, _CACHE_HOOK_ATTR, model.register_forward_pre_hook(
            functools.partial(cache_hook, states=iter_states), with_kwargs=True))
    model.set_attn_implementation(IMPLEMENTATION_NAME)
    for cfg in attention_configs(model):
        settle(cfg)
    stale = [
        site.name for site in check_supported(model)
        if getattr(getattr(site.module, "config", None), "_attn_implementation", None) != IMPLEMENTATION_NAME
    ]
    if stale:
        _restore_implementation(model)
        raise ValueError(
            f"{type(model).__name__} did not switch its attention implementation to {IMPLEMENTATION_NAME!r} for "
            f"{_preview(stale)}; it cannot be patched (its attention would silently stay dense)"
        )


def _restore_implementation(model: torch.nn.Module, *, restore: bool = True) -> None:
    if restore:
        restore_implementation(getattr(model, _ORIGINALS_ATTR, []))
    for attr in (_ORIGINALS_ATTR, _HOOK_ATTR, _CACHE_HOOK_ATTR):
        if attr != _ORIGINALS_ATTR and hasattr(model, attr):
            getattr(model, attr).remove()
        if hasattr(model, attr):
            delattr(model, attr)


def _switched_away(model: torch.nn.Module) -> str | None:
    """The implementation a patched ``model`` was switched to (``set_attn_implementation``) after patching, or
    ``None`` while every patched module still dispatches to hf_sparse."""
    for _, module in _patched(model):
        cfg = getattr(module, "config", None)
        name = getattr(cfg, "_attn_implementation", IMPLEMENTATION_NAME)
        if name != IMPLEMENTATION_NAME and not switched_temporarily(cfg):
            return name
    return None


def _patched(model: torch.nn.Module) -> list[tuple[str, torch.nn.Module]]:
    return [(name, module) for name, module in model.named_modules() if get_state(module) is not None]


def _sync(model: torch.nn.Module) -> None:
    """Unpatch ``model`` cleanly if it was switched to another attention implementation after patching (Transformers
    gives no way to refuse the switch): its states and settings go, the implementation it was switched to stays."""
    switched = _switched_away(model)
    if switched is None:
        return
    _unpatch(model, restore=False)
    warnings.warn(
        f"hf_sparse: {type(model).__name__} was switched to attn_implementation={switched!r} after patch_model, so "
        "it was unpatched (sparse settings removed); call hf_sparse.patch_model again to make it sparse",
        UserWarning,
        stacklevel=3,
    )


def _notice_switch(model: torch.nn.Module, args: Any) -> None:
    """Forward pre-hook of a patched model: a switch of implementation unpatches it before it computes."""
    if model.config._attn_implementation != IMPLEMENTATION_NAME and not switched_temporarily(model.config):
        _sync(model)


def _record(model: torch.nn.Module, config: SparseConfig, names: list[str]) -> None:
    saved = getattr(model.config, SAVED_KEY, None) or {"rules": []}
    saved["version"] = __version__
    saved["rules"].append({"config": config.to_dict(), "modules": names})
    setattr(model.config, SAVED_KEY, saved)
    setattr(model.config, _IMPLEMENTATION_KEY, IMPLEMENTATION_NAME)


def patched_modules(model: torch.nn.Module) -> dict[str, SparseConfig]:
    """``{module name: SparseConfig}`` for every patched module of ``model`` (names relative to the
    Transformers model inside a wrapper, as the saved settings name them)."""
    target = unwrap(model)
    _sync(target)
    return {name: state.config for name, state in iter_states(target)}


def last_backends(model: torch.nn.Module) -> dict[str, str | None]:
    """``{module name: kernel used by its latest call}`` (``None`` before the first call)."""
    target = unwrap(model)
    _sync(target)
    return {name: state.last_backend for name, state in iter_states(target)}


def unpatch_model(model: torch.nn.Module) -> torch.nn.Module:
    """Undo every ``patch_model`` on ``model``: module states, learned parameters, the attention
    implementation and the saved settings. Logits are then bit-identical to before patching. A wrapper
    (PEFT) is unpatched through the Transformers model inside it, whichever was patched."""
    _unpatch(unwrap(model), restore=True)
    return model


def _unpatch(target: torch.nn.Module, *, restore: bool) -> None:
    for module in target.modules():
        state = get_state(module)
        if state is not None:
            state.config.pattern.detach(module)
            delattr(module, STATE_ATTR)
    _restore_implementation(target, restore=restore)
    for key in (SAVED_KEY, _IMPLEMENTATION_KEY):
        if key in vars(target.config):
            delattr(target.config, key)


def apply_saved_patch(model: torch.nn.Module) -> torch.nn.Module:
    """Re-apply the settings a patched model saved in ``model.config.hf_sparse`` (after ``from_pretrained``).

    Settings written by any hf_sparse version load (older, newer, or without a recorded version); a
    ``UserWarning`` says so when the writer's major version differs from the installed one. Each rule's
    :class:`SparseConfig` still checks its own format version. A wrapper (PEFT) is patched through the
    Transformers model inside it.
    """
    wrapper, model = model, unwrap(model)
    saved = getattr(model.config, SAVED_KEY, None)
    if not saved or not saved.get("rules"):
        raise ValueError(
            f"{type(model).__name__}'s config has no hf_sparse settings: the checkpoint was not saved from a "
            "patched model; use patch_model instead"
        )
    _check_saved_version(saved.get("version"))
    delattr(model.config, SAVED_KEY)
    by_name = {s.name: s for s in check_supported(model)}
    prefix = getattr(model, "base_model_prefix", "") or ""
    for rule in saved["rules"]:
        # a base model's checkpoint loaded into its head model (or back) names modules with/without the prefix
        found = {n: next((c for c in (n, f"{prefix}.{n}", n.removeprefix(f"{prefix}.")) if c in by_name), None)
                 for n in rule["modules"]}
        missing = [n for n, site in found.items() if site is None]
        if missing:
            raise ValueError(f"saved hf_sparse settings name module(s) this model does not have: {_preview(missing)}")
        _apply(model, SparseConfig.from_dict(rule["config"]), [by_name[c] for c in found.values()])
    return wrapper


def _major(version: object) -> str | None:
    """The major component of a version string; ``None`` for anything else (missing, or the format number
    that settings saved before versions were recorded carry)."""
    return version.split(".", 1)[0] if isinstance(version, str) and version else None


def _check_saved_version(version: object) -> None:
    saved, installed = _major(version), _major(__version__)
    if saved is not None and saved != installed:
        warnings.warn(
            f"hf_sparse settings were saved by hf_sparse {version}, installed is {__version__} (another major "
            "version); they were applied, check the model's outputs",
            UserWarning,
            stacklevel=3,
        )


def load_patched(model_class: Any, path: str, **from_pretrained_kwargs: Any) -> torch.nn.Module:
    """``model_class.from_pretrained(path, ...)`` followed by :func:`apply_saved_patch`: reloads a patched
    model saved with ``save_pretrained`` with the same sparse settings, and with the saved values of any
    parameters the patterns add (``learned_gate``'s gates)."""
    model = model_class.from_pretrained(path, **from_pretrained_kwargs)
    before = set(model.state_dict())
    apply_saved_patch(model)
    # Parameters a pattern adds (learned gates) did not exist when from_pretrained loaded the weights.
    restore_added_weights(model, path, set(model.state_dict()) - before, **from_pretrained_kwargs)
    return model


def _apply_on_first_call(root: torch.nn.Module | None, module: torch.nn.Module) -> None:
    """Called by the attention function on the first call of a model loaded with saved settings but not patched
    (plain ``from_pretrained`` / ``from_config`` / ``pipeline`` after ``import hf_sparse``): apply them to ``root``,
    the model whose forward is running. Where that cannot be done faithfully, warn once and stay dense."""
    why = None
    if root is not None and next(iter(iter_states(root)), None) is not None:
        # A copy of a patched model (copy.deepcopy): its settings are live already; leave its states alone.
        for cfg in attention_configs(root):
            settle(cfg)
        return
    if root is None:
        why = f"the running model owning {type(module).__name__} was not found (a module called on its own, or compiled)"
    else:
        try:
            before = set(root.state_dict())
            apply_saved_patch(root)
            added = set(root.state_dict()) - before
            if added:
                path = getattr(root.config, "_name_or_path", "")
                restore_added_weights(root, path, added)
        except Exception as exc:  # noqa: BLE001  (any failure: stay dense and say so)
            why = str(exc)
            if root is not None and get_state(module) is not None:
                _unpatch(root, restore=True)
    if why is not None:
        warnings.warn(
            f"hf_sparse: this model's config carries saved sparse settings that were not applied ({why}); it computes "
            "DENSE attention. Load it with hf_sparse.load_patched(cls, path) or call hf_sparse.apply_saved_patch(model)",
            UserWarning,
            stacklevel=4,
        )


integration.apply_on_first_call = _apply_on_first_call
