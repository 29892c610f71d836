"""The benchmarks' strong teachers: recipes, data, and `load_teacher`.

Flag-free, so that every benchmark script can import it. `train_teachers.py`
trains the teachers with `RECIPES` and writes their weights to
`benchmarks/teachers/<dataset>_<model>.weights.h5`; the distillation
benchmarks rebuild them with `load_teacher`.

Inputs: every teacher takes float32 NHWC images in [0, 1], as
`examples.data` batches them and as every model of `examples/models.py`
expects. Scaling happens in the input pipeline, not in the model: feed the
teacher and the student the same batches.

Example:
    >>> from benchmarks import strong_teachers
    >>> from examples import data, training
    >>> teacher = strong_teachers.load_teacher("cifar10")
    >>> test = data.from_arrays(*data.arrays("cifar10", "test"))
    >>> training.accuracy(teacher, test)
"""

import dataclasses
import os

from examples import data
from examples import models

BENCHMARKS_DIR = os.path.dirname(os.path.abspath(__file__))
WEIGHTS_DIR = os.path.join(BENCHMARKS_DIR, "teachers")
RESULTS_DIR = os.path.join(BENCHMARKS_DIR, "results")


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
