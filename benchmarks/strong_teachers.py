"""The benchmarks' strong teachers: recipes, data, and `load_teacher`.

Flag-free, so that every benchmark script can import it (absl flags are
defined at import: scripts cannot import each other). `train_teachers.py`
trains the teachers with `RECIPES` and writes their weights to
`benchmarks/teachers/<dataset>_<model>.weights.h5`; the distillation
benchmarks rebuild them with `load_teacher`.

Inputs: every teacher takes float32 NHWC images in [0, 1], as
`examples.data.load` gives them and as every model of `examples/models.py`
expects. Scaling happens in the input pipeline (`to_inputs`), not in the
model: feed the teacher and the student the same `to_inputs` batches.

Example:
    >>> from benchmarks import strong_teachers
    >>> teacher = strong_teachers.load_teacher("cifar10")
    >>> images, labels = strong_teachers.load_arrays("cifar10", "test")
    >>> strong_teachers.accuracy(teacher, images, labels)
"""

import dataclasses
import os

import numpy as np
import tensorflow as tf

from examples import data
from examples import models

BENCHMARKS_DIR = os.path.dirname(os.path.abspath(__file__))
WEIGHTS_DIR = os.path.join(BENCHMARKS_DIR, "teachers")
# The benchmarks (not the examples) also look for local source files here:
# `shared/data` next to the repository, where our machines keep them.
SHARED_DATA = os.path.join(
    os.path.dirname(os.path.dirname(BENCHMARKS_DIR)), "shared", "data"
)


@dataclasses.dataclass(frozen=True)
class Recipe:
    """How a teacher is trained.

    SGD with Nesterov momentum 0.9 and a one-cycle learning rate: linear
    warm-up from 0 to `peak_learning_rate` over `warmup_fraction` of the
    steps, then cosine decay to 0. Weight decay is decoupled
    (`keras.optimizers.SGD(weight_decay=...)`: each step multiplies the
    kernels by `1 - learning_rate * weight_decay`; BatchNorm and biases are
    not decayed), not a `kernel_regularizer`: a regularizer's loss would be
    added to every model that holds the teacher, a `tfkd.Distiller`
    included. PyTorch's `weight_decay=5e-4` is coupled: it goes through the
    momentum, which multiplies it by `1 / (1 - 0.9)`; decoupled `5e-3` decays
    as much. No label smoothing: it erases the information about similar
    classes that the teacher's soft outputs pass on (Mueller, Kornblith,
    Hinton 2019).

    Attributes:
        model: a name of `examples.models.MODELS`.
        epochs: training epochs (`train_teachers.py --epochs` overrides it).
        peak_learning_rate: the learning rate at the end of the warm-up.
        warmup_fraction: fraction of the steps of the linear warm-up.
        weight_decay: decoupled weight decay of the kernels.
        crop_padding: random crops of the image zero-padded by this many
            pixels on each side.
        flip: random horizontal flips.
    """

    model: str
    epochs: int
    peak_learning_rate: float
    warmup_fraction: float
    weight_decay: float
    crop_padding: int
    flip: bool = True


RECIPES = {
    "fashion_mnist": Recipe(
        model="resnet20",
        epochs=15,
        peak_learning_rate=0.1,
        warmup_fraction=0.15,
        weight_decay=5e-3,
        crop_padding=2,
    ),
    "cifar10": Recipe(
        model="resnet20",
        epochs=30,
        peak_learning_rate=0.1,
        warmup_fraction=0.15,
        weight_decay=5e-3,
        crop_padding=4,
    ),
}


def _check_dataset(dataset):
    if dataset not in RECIPES:
        raise ValueError(
            "No benchmark teacher for this data set. Expected one of "
            f"{sorted(RECIPES)}. Received: dataset={dataset!r}"
        )


def weights_path(dataset, weights_dir=WEIGHTS_DIR):
    """`<weights_dir>/<dataset>_<model>.weights.h5` of `dataset`'s teacher."""
    _check_dataset(dataset)
    name = f"{dataset}_{RECIPES[dataset].model}.weights.h5"
    return os.path.join(weights_dir, name)


def build_teacher(dataset):
    """`dataset`'s teacher model, freshly initialised (outputs logits)."""
    _check_dataset(dataset)
    input_shape, num_classes = data.info(dataset)
    return models.build_model(RECIPES[dataset].model, input_shape, num_classes)


def load_teacher(dataset, weights_dir=WEIGHTS_DIR):
    """Rebuilds `dataset`'s trained teacher and loads its weights.

    Args:
        dataset: `"cifar10"` or `"fashion_mnist"`.
        weights_dir: folder of the `.weights.h5` files. Defaults to
            `benchmarks/teachers`.

    Returns:
        An uncompiled Functional `keras.Model` that maps float32 NHWC images
        in [0, 1] to logits `(batch, 10)`.

    Raises:
        ValueError: if `dataset` has no teacher, or its weights are missing
            (the message says which command writes them).
    """
    path = weights_path(dataset, weights_dir)
    if not os.path.exists(path):
        output_dir = os.path.dirname(os.path.abspath(weights_dir))
        command = f"python -m benchmarks.train_teachers --dataset={dataset}"
        if os.path.abspath(weights_dir) != WEIGHTS_DIR:
            command += f" --output_dir={output_dir}"
        raise ValueError(
            f"No trained {dataset} teacher at {path}. Train it with "
            f"`{command}` (from the repository root)."
        )
    teacher = build_teacher(dataset)
    teacher.load_weights(path)
    return teacher


def load_arrays(
    dataset, split, *, data_dir=None, source_dir=None, num_examples=None
):
    """A split decoded once: uint8 images and int32 labels, in TFDS order.

    Goes through `examples.data.builder` (the local builders of
    `examples/datasets.py`), so `data_dir` and `source_dir` mean what they
    mean there.

    Args:
        dataset: a name of `examples.data.DATASETS`.
        split: `"train"` or `"test"`.
        data_dir: TFDS data folder. Defaults to `None` (TFDS's default).
        source_dir: folder of the local source files. Defaults to `None`:
            `$TFKD_SOURCE_DIR`, else `SHARED_DATA` where it holds them.
        num_examples: keep the first examples only. Defaults to `None` (all).

    Returns:
        `(images, labels)`: NumPy arrays `(n, h, w, c)` uint8 and `(n,)`
        int32.
    """
    if num_examples is not None:
        split = f"{split}[:{int(num_examples)}]"
    if source_dir is None and not os.environ.get(data.SOURCE_DIR_ENV):
        source_dir = data.find_source_dir(dataset, SHARED_DATA)
    prepared = data.builder(dataset, data_dir=data_dir, source_dir=source_dir)
    batches = prepared.as_dataset(
        split=split, as_supervised=True, shuffle_files=False
    ).batch(4096)
    images, labels = zip(*((x.numpy(), y.numpy()) for x, y in batches))
    return np.concatenate(images), np.concatenate(labels).astype(np.int32)


def to_inputs(images, labels):
    """uint8 images to the teachers' inputs: float32 in [0, 1]."""
    return tf.cast(images, tf.float32) / 255.0, tf.cast(labels, tf.int32)


def augment(image, label, *, crop_padding, flip=True):
    """A random crop of the zero-padded image, and a random flip.

    Args:
        image: one uint8 image `(h, w, c)`.
        label: its label, passed through.
        crop_padding: pixels of zeros added on each side before cropping
            back to `(h, w, c)`; 0 disables the crop.
        flip: flip left-right half of the time.

    Returns:
        `(image, label)`, the image still uint8 `(h, w, c)`.
    """
    if crop_padding:
        padding = [[crop_padding] * 2, [crop_padding] * 2, [0, 0]]
        image = tf.image.random_crop(tf.pad(image, padding), tf.shape(image))
    if flip:
        image = tf.image.random_flip_left_right(image)
    return image, label


def train_dataset(images, labels, recipe, *, batch_size, seed=0):
    """Reshuffled, augmented batches of `to_inputs` (every epoch anew)."""
    size = len(labels)
    dataset = tf.data.Dataset.from_tensor_slices((images, labels))
    dataset = dataset.shuffle(size, seed=seed, reshuffle_each_iteration=True)
    dataset = dataset.map(
        lambda x, y: augment(
            x, y, crop_padding=recipe.crop_padding, flip=recipe.flip
        ),
        num_parallel_calls=tf.data.AUTOTUNE,
    )
    dataset = dataset.batch(batch_size).map(to_inputs)
    return dataset.prefetch(tf.data.AUTOTUNE)


def eval_dataset(images, labels, *, batch_size=1000):
    """Batches of `to_inputs`, in order, no augmentation."""
    dataset = tf.data.Dataset.from_tensor_slices((images, labels))
    return dataset.batch(batch_size).map(to_inputs).prefetch(tf.data.AUTOTUNE)


def accuracy(model, images, labels, *, batch_size=1000):
    """Top-1 accuracy of a logits `model` on uint8 `images`."""
    correct = 0
    for x, y in eval_dataset(images, labels, batch_size=batch_size):
        predicted = np.argmax(model(x, training=False), axis=-1)
        correct += int(np.sum(predicted == y.numpy()))
    return correct / len(labels)
