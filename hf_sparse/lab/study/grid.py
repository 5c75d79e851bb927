"""The study config (a grid of fine-tuning runs) and its expansion into runs.

A study YAML (see configs/study/default.yaml)::

    name: default                      # results go to output_dir (null: a fresh results/<name>-<timestamp>)
    output_dir: null                   # an existing study folder resumes it: unchanged finished runs are skipped
    reference_dir: null                # committed results to compare with (null: results/reference/<name>)
    launcher: accelerate               # accelerate | python (a plain subprocess)
    accelerate_config: configs/accelerate/cpu_single.yaml
    timeout_s: 1800                    # per run; a run past it is killed and shown as failed
    tolerance: 0.01                    # "too sparse": the metric falls more than this fraction below dense
    common_overrides: {seed: 0, train: {num_threads: 2, epochs: 1}}
    task_overrides: {image: {model.config.patch_size: 2}}   # per task, after common_overrides
    entries:
      sentiment-window:                # entry name = run-name prefix
        task: sentiment
        config: configs/sentiment/sliding_window.yaml
        overrides: {data: {max_train_samples: 800}}
        sweep: {sparse.options.window: [2, 4, 8]}     # cartesian product over the listed keys
        role: sparse                   # dense | dense_truncated | sparse (null: dense if the config has sparse: null)
        prepare: {command: "python scripts/...", creates: path}   # optional, run once if `creates` is missing
        # prepare.needs: another {command, creates} step, run first (and only) when this one's path is missing;
        #   "{needs}" in a prepare command names what its needs step creates (e.g. the model it starts from)
        # "{study_dir}" in overrides or prepare names this study's folder (e.g. a model the prepare step trains)
        # "{prepared}" in overrides names what the entry's prepare step creates (e.g. model.name_or_path)
        enabled: true

Overrides and sweeps may be written nested (``{train: {epochs: 1}}``) or with dotted keys
(``{train.epochs: 1}``); both are stored nested, so every setting can be overridden on the command line as
``--common_overrides.train.epochs 1`` or ``--entries.sentiment-window.sweep.sparse.options.window "[2, 4]"``.
A run's config is: the entry's config file <- common_overrides <- task_overrides[task] <- the entry's overrides
<- its sweep values,
then ``run_name`` and ``output_dir`` set by the study.

Roles tell the report which rows are the speed baselines of a task: ``dense`` rows run full-length dense
attention (several are allowed, e.g. the model's default attention dropout and dropout 0; speed-ups divide
by the faster), the one ``dense_truncated`` row runs dense attention on inputs cut short (e.g. 512 tokens;
speed-ups against it are separate columns), ``sparse`` rows are the rest.
"""

from __future__ import annotations

import dataclasses
import itertools
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from hf_sparse.cli.settings import ConfigError, build_dataclass, load_settings, read_yaml_mapping

LAUNCHERS = ("accelerate", "python")
ROLES = ("dense", "dense_truncated", "sparse")


@dataclass
class PrepareConfig:
    """A command run once before an entry's runs when the path ``creates`` does not exist (e.g. training
    the gates a ``learned_gate`` config loads). ``python`` as the first word means this interpreter.
    ``needs``: a step this one builds on (e.g. the model its command starts from), with the same rules, run
    before it when this step runs; :data:`NEEDS` in ``command`` names the path that step creates."""

    command: str = ""
    creates: str = ""
    needs: PrepareConfig | None = None

    def __post_init__(self) -> None:
        if isinstance(self.needs, dict):  # a nested step given as a mapping (e.g. from dataclasses.asdict)
            self.needs = PrepareConfig(**self.needs)

    def resolved_command(self) -> str:
        """``command`` with :data:`NEEDS` replaced by what the ``needs`` step creates."""
        return self.command.replace(NEEDS, self.needs.creates) if self.needs is not None else self.command


@dataclass
class EntryConfig:
    """One config file, swept over the cartesian product of ``sweep`` (nested mapping whose leaves are
    lists of values; empty: a single run)."""

    task: str = ""
    config: str = ""
    overrides: dict[str, Any] = field(default_factory=dict)
    sweep: dict[str, Any] = field(default_factory=dict)
    prepare: PrepareConfig | None = None
    enabled: bool = True
    role: str | None = None  # one of ROLES; None: "dense" when the run has no sparse pattern, else "sparse"


@dataclass
class StudyConfig:
    name: str = "study"
    output_dir: str | None = None
    reference_dir: str | None = None
    launcher: str = "accelerate"
    accelerate_config: str = "configs/accelerate/cpu_single.yaml"
    timeout_s: int | None = 1800
    tolerance: float = 0.01
    common_overrides: dict[str, Any] = field(default_factory=dict)
    task_overrides: dict[str, Any] = field(default_factory=dict)
    entries: dict[str, EntryConfig] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not re.fullmatch(r"[\w.-]+", self.name or ""):
            raise ConfigError(f"study key 'name' must be a folder name (letters, digits, . _ -), got {self.name!r}")
        if self.launcher not in LAUNCHERS:
            raise ConfigError(f"study key 'launcher' must be one of {', '.join(LAUNCHERS)}, got {self.launcher!r}")
        if not 0 <= self.tolerance < 1:
            raise ConfigError(f"study key 'tolerance' must be a fraction in [0, 1), got {self.tolerance!r}")
        if self.timeout_s is not None and self.timeout_s <= 0:
            raise ConfigError(f"study key 'timeout_s' must be > 0 or null, got {self.timeout_s!r}")
        for task, value in self.task_overrides.items():
            if not isinstance(value, dict):
                raise ConfigError(f"study key 'task_overrides.{task}' must be a mapping of overrides, got {value!r}")
        for name, entry in self.entries.items():
            where = f"entries.{name}"
            if not re.fullmatch(r"[\w.-]+", name):
                raise ConfigError(f"study entry name {name!r} must be letters, digits, . _ - (it names runs)")
            if not entry.task or not entry.config:
                raise ConfigError(f"study key '{where}' needs both 'task' and 'config'")
            for key, values in flatten(entry.sweep).items():
                if not isinstance(values, list) or not values:
                    raise ConfigError(f"study key '{where}.sweep.{key}' must be a non-empty list of values, got {values!r}")
            step, key = entry.prepare, f"{where}.prepare"
            while step is not None:
                if not (step.command and step.creates):
                    raise ConfigError(f"study key '{key}' needs both 'command' and 'creates'")
                if NEEDS in step.command and step.needs is None:
                    raise ConfigError(f"study key '{key}.command' uses {NEEDS} but the step has no 'needs': add "
                                      "the step that creates it, or write the path")
                step, key = step.needs, f"{key}.needs"
            if entry.role is not None and entry.role not in ROLES:
                raise ConfigError(f"study key '{where}.role' must be one of {', '.join(ROLES)} (or null), "
                                  f"got {entry.role!r}")
        truncated: dict[str, str] = {}
        for name, entry in self.entries.items():
            if entry.role != "dense_truncated" or not entry.enabled:
                continue
            if entry.sweep:
                raise ConfigError(f"study key 'entries.{name}.sweep' must be empty for role dense_truncated "
                                  "(the report compares against one truncated row per task)")
            if entry.task in truncated:
                raise ConfigError(f"entries {truncated[entry.task]!r} and {name!r} are both role dense_truncated for "
                                  f"task {entry.task!r}; keep one (set the other's role to dense or sparse)")
            truncated[entry.task] = name

    @property
    def root(self) -> Path:
        """The study's folder: report, plots and ``runs/<run>/``. With ``output_dir: null`` a fresh folder
        ``results/<name>-<YYYYmmdd-HHMMSS>`` is chosen on first use and kept (``output_dir`` is set to it),
        so a new study never reuses runs; passing an existing study folder as ``output_dir`` resumes it."""
        if self.output_dir is None:
            self.output_dir = str(fresh_folder(Path("results"), self.name))
        return Path(self.output_dir)

    @property
    def reference(self) -> Path:
        """The committed results the report compares with (they may not exist yet)."""
        return Path(self.reference_dir or f"results/reference/{self.name}")

    # -- round trips --------------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    FILE_KIND = "study config file"  # for hf_sparse.cli.settings.load_settings

    @classmethod
    def normalize(cls, data: Any) -> Any:
        """Dotted override and sweep keys written nested (before command-line overrides land in them)."""
        return _normalize(data)

    @classmethod
    def from_dict(cls, data: Any) -> StudyConfig:
        return build_dataclass(cls, _normalize(data), kind="study")

    @classmethod
    def load(cls, path: str | Path, overrides: list[str] | None = None) -> StudyConfig:
        """Read the study YAML ``path`` and apply ``--a.b value`` ``overrides``."""
        return load_settings(cls, path, overrides)


# -- planned runs -----------------------------------------------------------------------------------------------


@dataclass
class PlannedRun:
    """One fine-tuning run of the study: its name, entry, task, config file and overrides (nested)."""

    name: str
    entry: str
    task: str
    config: str
    overrides: dict[str, Any]
    sweep: dict[str, Any]  # the dotted sweep keys and this run's values (for the report)
    prepare: PrepareConfig | None = None
    role: str | None = None  # the entry's role (None: from the run's pattern, see the module docstring)


def expand(study: StudyConfig) -> list[PlannedRun]:
    """The runs of ``study`` in order: entries as written, sweep values in their cartesian product."""
    runs: list[PlannedRun] = []
    for entry_name, entry in study.entries.items():
        if not entry.enabled:
            continue
        sweep = flatten(entry.sweep)
        keys = list(sweep)
        for values in itertools.product(*(sweep[k] for k in keys)):
            point = dict(zip(keys, values, strict=True))
            suffix = "-".join(f"{k.rsplit('.', 1)[-1]}{_slug(v)}" for k, v in point.items())
            name = f"{entry_name}-{suffix}" if suffix else entry_name
            overrides = _merge(study.common_overrides, study.task_overrides.get(entry.task) or {})
            overrides = _merge(_merge(overrides, entry.overrides), unflatten(point))
            prepare = entry.prepare and PrepareConfig(**fill_study_dir(dataclasses.asdict(entry.prepare), study))
            overrides = fill_prepared(fill_study_dir(overrides, study), prepare, f"study run {name!r}")
            runs.append(PlannedRun(name, entry_name, entry.task, entry.config, overrides, point, prepare, entry.role))
    seen: set[str] = set()
    for run in runs:
        if run.name in seen:
            raise ConfigError(f"two study runs are both named {run.name!r}; rename an entry")
        seen.add(run.name)
    return runs


#: Written in an override or a ``prepare`` setting, this names the study's folder (:attr:`StudyConfig.root`), so
#: a study can build what its runs start from inside itself (e.g. a stage-0 model) instead of reusing one.
STUDY_DIR = "{study_dir}"

#: Written in a ``prepare`` command, this names the path its ``needs`` step creates (:class:`PrepareConfig`).
NEEDS = "{needs}"


#: Written in an override (common, per task or per entry), this names the path the run's ``prepare`` step creates,
#: so a model that step trains has one home: its ``creates``.
PREPARED = "{prepared}"


def fill_prepared(tree: Any, prepare: PrepareConfig | None, where: str) -> Any:
    """``tree`` with :data:`PREPARED` in every string replaced by what ``prepare`` creates; raises
    :class:`ConfigError` naming ``where`` when a string uses it and there is no ``prepare`` step."""

    def change(text: str) -> str:
        if PREPARED not in text:
            return text
        if prepare is None:
            raise ConfigError(f"{where} uses {PREPARED} in an override but its entry has no 'prepare': add the step "
                              "that creates it, or write the path")
        return text.replace(PREPARED, prepare.creates)

    return _map_strings(tree, change)


def fill_study_dir(tree: Any, study: StudyConfig) -> Any:
    """``tree`` with :data:`STUDY_DIR` in every string replaced by the study's folder."""
    return _map_strings(tree, lambda text: text.replace(STUDY_DIR, str(study.root)))


def unfill_study_dir(tree: Any, root: str) -> Any:
    """``tree`` with every path string inside the study folder ``root`` written from :data:`STUDY_DIR` again: the
    configs of two studies in different folders compare equal when only their folders differ."""
    prefix = root.rstrip("/") + "/"
    return _map_strings(tree, lambda text: STUDY_DIR + text[len(root):] if text == root or text.startswith(prefix)
                        else text)


def _map_strings(tree: Any, change: Callable[[str], str]) -> Any:
    if isinstance(tree, dict):
        return {key: _map_strings(value, change) for key, value in tree.items()}
    if isinstance(tree, list):
        return [_map_strings(value, change) for value in tree]
    return change(tree) if isinstance(tree, str) else tree


def resolve(study: StudyConfig, run: PlannedRun) -> dict[str, Any]:
    """The full run config (a RunConfig mapping) of ``run``: validated; raises :class:`ConfigError`."""
    from ..finetune.config import RunConfig

    path = Path(run.config)
    data = _merge(read_yaml_mapping(path, context=f" (entry {run.entry!r})"), run.overrides)
    data.update(run_name=run.name, output_dir=str(study.root / "runs"))
    if data.get("task", run.task) != run.task:
        raise ConfigError(f"entry {run.entry!r} says task {run.task!r} but {path} is task {data.get('task')!r}")
    return RunConfig.from_dict(data).to_dict()


# -- helpers ------------------------------------------------------------------------------------------------------


def fresh_folder(parent: Path, name: str) -> Path:
    """``parent/<name>-<YYYYmmdd-HHMMSS>`` (with ``-2``, ``-3``... if that exists already)."""
    base = parent / f"{name}-{time.strftime('%Y%m%d-%H%M%S')}"
    folder, n = base, 1
    while folder.exists():
        n += 1
        folder = base.with_name(f"{base.name}-{n}")
    return folder


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{a: {b: 1}}`` -> ``{"a.b": 1}`` (lists and scalars are leaves; an empty mapping is a leaf too)."""
    out: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict) and value:
            out.update(flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def unflatten(flat: dict[str, Any]) -> dict[str, Any]:
    """``{"a.b": 1}`` -> ``{a: {b: 1}}``."""
    out: dict[str, Any] = {}
    for key, value in flat.items():
        node = out
        *parents, last = str(key).split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[last] = value
    return out


def _merge(base: Any, extra: dict[str, Any]) -> dict[str, Any]:
    """A deep copy of ``base`` with ``extra`` merged in (mappings recursively; ``None`` or a scalar replaces)."""
    out = yaml.safe_load(yaml.safe_dump(base, sort_keys=False)) or {}
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = yaml.safe_load(yaml.safe_dump(value, sort_keys=False))
    return out


def _slug(value: Any) -> str:
    text = value if isinstance(value, str) else yaml.safe_dump(value, default_flow_style=True).strip().removesuffix("...").strip()
    return re.sub(r"[^A-Za-z0-9.]+", "_", text).strip("_") or "x"


def _normalize(data: Any) -> Any:
    """Dotted keys of the override and sweep mappings written nested, so CLI overrides land in one place."""
    if not isinstance(data, dict):
        return data
    data = dict(data)
    if isinstance(data.get("common_overrides"), dict):
        data["common_overrides"] = _nest(data["common_overrides"])
    if isinstance(data.get("task_overrides"), dict):
        data["task_overrides"] = {k: _nest(v) if isinstance(v, dict) else v for k, v in data["task_overrides"].items()}
    if isinstance(data.get("entries"), dict):
        entries = {}
        for name, entry in data["entries"].items():
            if isinstance(entry, dict):
                entry = dict(entry)
                for key in ("overrides", "sweep"):
                    if isinstance(entry.get(key), dict):
                        entry[key] = _nest(entry[key])
            entries[name] = entry
        data["entries"] = entries
    return data


def _nest(tree: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in tree.items():
        nested = _nest(value) if isinstance(value, dict) else value
        out = _merge(out, unflatten({str(key): nested}))
    return out
