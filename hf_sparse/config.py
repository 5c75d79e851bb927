"""``SparseConfig``: the serializable description of how a model is made sparse.

The config object is the API; strings are shorthand. It round-trips through dicts, JSON and YAML::

    cfg = SparseConfig(pattern=SlidingWindow(window=128, num_global=1), backend="auto")
    assert SparseConfig.from_json(cfg.to_json()) == cfg

In YAML (e.g. a fine-tuning config) a pattern may be written either as a dict or as a name plus options::

    sparse:
      pattern: bigbird
      options: {block_size: 64, num_random_blocks: 2}
      backend: auto
      target_modules: null
      layers: [1, 2, 3, 4]
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any

import yaml

from .patterns import Pattern, as_pattern

CONFIG_VERSION = 1


@dataclass
class SparseConfig:
    """How to make attention sparse.

    Attributes:
        pattern: the pattern (any registered :class:`~hf_sparse.patterns.Pattern`).
        backend: ``"auto"`` or a kernel name from :data:`hf_sparse.kernels.BACKENDS`.
        kernel_block_size: tile size of block-sparse kernels; ``None`` uses the pattern's own
            ``block_size`` if it has one, else lets the kernel choose.
        target_modules: which attention modules to patch: a regex (``str``, full match on the module name)
            or a list of names / name suffixes; ``None`` = every self-attention module.
        layers: only patch modules in these layer indices (``module.layer_idx`` or the number in the
            module's name); ``None`` = all layers.
    """

    pattern: Pattern
    backend: str = "auto"
    kernel_block_size: int | None = None
    target_modules: str | list[str] | None = None
    layers: list[int] | None = None
    version: int = field(default=CONFIG_VERSION)

    def __post_init__(self) -> None:
        if not isinstance(self.pattern, Pattern):
            raise TypeError(f"SparseConfig.pattern must be a Pattern, got {self.pattern!r}; use SparseConfig.build")
        if not isinstance(self.backend, str):
            raise TypeError(f"SparseConfig.backend must be a string, got {self.backend!r}")
        if self.kernel_block_size is not None and (
            isinstance(self.kernel_block_size, bool) or not isinstance(self.kernel_block_size, int) or self.kernel_block_size <= 0
        ):
            raise ValueError(f"SparseConfig.kernel_block_size must be a positive int or None, got {self.kernel_block_size!r}")
        if self.target_modules is not None and not isinstance(self.target_modules, str):
            if not isinstance(self.target_modules, (list, tuple)) or not all(
                isinstance(t, str) for t in self.target_modules
            ):
                raise TypeError(
                    f"SparseConfig.target_modules must be a regex string or a list of names, got {self.target_modules!r}"
                )
            self.target_modules = list(self.target_modules)
        if self.layers is not None:
            if not isinstance(self.layers, (list, tuple)) or not all(
                isinstance(i, int) and not isinstance(i, bool) for i in self.layers
            ):
                raise TypeError(f"SparseConfig.layers must be a list of ints, got {self.layers!r}")
            self.layers = list(self.layers)

    @classmethod
    def build(cls, pattern: str | Pattern | dict[str, Any] = "sliding_window", **kwargs: Any) -> SparseConfig:
        """Build from a pattern plus keywords, as ``patch_model`` takes them: ``backend``,
        ``kernel_block_size``, ``target_modules`` and ``layers`` are config fields, every other keyword is an
        option of the pattern named by ``pattern`` (no pattern option may take a field's name, see
        :data:`~hf_sparse.patterns.registry.RESERVED_OPTION_NAMES`). ``version`` is not settable.

        Raises:
            TypeError: ``version`` given, an option the pattern does not take, or options given with a
                pattern object or dict.
        """
        if "version" in kwargs:
            raise TypeError("version= is neither a setting nor a pattern option (hf_sparse sets the config version); drop it")
        fields = {f.name for f in dataclasses.fields(cls)} - {"pattern", "version"}
        config_kwargs = {k: v for k, v in kwargs.items() if k in fields}
        pattern_options = {k: v for k, v in kwargs.items() if k not in fields}
        return cls(pattern=as_pattern(pattern, **pattern_options), **config_kwargs)

    # -- serialization ------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "pattern": self.pattern.to_dict(),
            "backend": self.backend,
            "kernel_block_size": self.kernel_block_size,
            "target_modules": self.target_modules,
            "layers": self.layers,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SparseConfig:
        """Inverse of :meth:`to_dict`; also accepts ``pattern: <name>`` with an ``options`` mapping."""
        if not isinstance(data, dict):
            raise TypeError(f"a sparse config must be a mapping, got {type(data).__name__}: {data!r}")
        data = dict(data)
        version = data.pop("version", CONFIG_VERSION)
        if version != CONFIG_VERSION:
            raise ValueError(f"sparse config version {version!r} is not supported (this is version {CONFIG_VERSION})")
        if "pattern" not in data:
            raise ValueError(f"a sparse config needs a 'pattern' key, got keys {sorted(data)}")
        pattern = data.pop("pattern")
        options = data.pop("options", None) or {}
        known = {f.name for f in dataclasses.fields(cls)} - {"pattern", "version"}
        unknown = sorted(set(data) - known)
        if unknown:
            raise TypeError(
                f"unknown sparse config key(s) {', '.join(unknown)}; valid keys: pattern, options, {', '.join(sorted(known))}"
            )
        return cls(pattern=as_pattern(pattern, **options), **data)

    def to_json(self, **kwargs: Any) -> str:
        return json.dumps(self.to_dict(), **kwargs)

    @classmethod
    def from_json(cls, text: str) -> SparseConfig:
        return cls.from_dict(json.loads(text))

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    @classmethod
    def from_yaml(cls, text: str) -> SparseConfig:
        return cls.from_dict(yaml.safe_load(text))
