r"""Test accuracy of distilled students on real images, over seeds.

For each data set: trains the teacher (`teacher_cnn` of
`examples/models.py`) once (seed 0), then the student (`student_cnn`) with
each method of `--methods`, once per seed:

- `alone`: the student alone (hard labels);
- `kd`, `dkd`, `dist`: logit methods, on `tfkd.cache_teacher_outputs` data
  (the teacher runs once per data set, not once per epoch and seed);
- `attention`, `fitnets`, ...: any feature method of `examples/methods.py`
  (combined with KD there), distilled live: caching its teacher feature maps
  would take 1.9 GB on Fashion-MNIST.

Every student sees the same examples in the same order for a given seed
(reshuffled every epoch, from the seed): the cached data is reshuffled with
the recipe `cached.unbatch().shuffle(n, seed).batch(b)`. No augmentation, so
caching is exact (see `tfkd.cache_teacher_outputs`). Hard-label weight 0.1,
T=4, Adam 1e-3, the methods' own weights (`examples/methods.py`), no DKD
warm-up. `dkd@0.5` is DKD with hard-label weight 0.5: the paper's
`CE + DKD` (1:1; the overall factor 0.5 hardly matters to Adam), where the
uniform 0.1 gives the cross-entropy a tenth of DKD's weight.

    python -m benchmarks.accuracy                    # ~13 min on 2 cores
    python -m benchmarks.accuracy --datasets=cifar10 --seeds=3 \
        --methods=alone,kd,dist,attention --output_name=accuracy_cifar10
    python -m benchmarks.accuracy --datasets=mnist_5k --seeds=1 \
        --student_epochs=2 --teacher_epochs=1        # quick

Writes `benchmarks/results/accuracy.md`, `accuracy.json` and
`accuracy.png` (`--output_name` renames them).
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import json  # noqa: E402
import platform  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from absl import app  # noqa: E402
from absl import flags  # noqa: E402

import tfkd  # noqa: E402
from examples import data  # noqa: E402
from examples import methods  # noqa: E402
from examples import models  # noqa: E402
from tfkd import _keras  # noqa: E402
from tfkd._keras import keras  # noqa: E402

_RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
# Per data set: (teacher epochs, student epochs, batch size), the defaults.
SETTINGS = {
    "mnist_5k": (15, 20, 64),
    "fashion_mnist": (6, 5, 128),
    "cifar10": (10, 10, 128),
}
LOGIT_METHODS = ("kd", "dkd", "dist")

_DATASETS = flags.DEFINE_list(
    "datasets",
    ["mnist_5k", "fashion_mnist"],
    f"Data sets, of {sorted(SETTINGS)} (cifar10: about 8 more minutes).",
)
_METHODS = flags.DEFINE_list(
    "methods",
    ["alone", "kd", "dkd", "dkd@0.5", "dist", "attention"],
    "`alone` and names of examples/methods.py "
    f"({sorted(methods.METHODS)}), optionally with `@weight`: that "
    "method's hard-label weight instead of --alpha.",
)
_SEEDS = flags.DEFINE_integer("seeds", 5, "Seeds per method (0, 1, ...).")
_TEACHER_EPOCHS = flags.DEFINE_integer(
    "teacher_epochs", None, "Teacher epochs (default: per data set)."
)
_STUDENT_EPOCHS = flags.DEFINE_integer(
    "student_epochs", None, "Student epochs (default: per data set)."
)
_TEMPERATURE = flags.DEFINE_float("temperature", 4.0, "Temperature.")
_ALPHA = flags.DEFINE_float("alpha", 0.1, "Weight of the hard-label loss.")
_TRAIN_EXAMPLES = flags.DEFINE_integer(
    "train_examples", None, "Training examples to keep (default: all)."
)
_DATA_DIR = flags.DEFINE_string("data_dir", None, "TFDS data folder.")
_OUTPUT_DIR = flags.DEFINE_string("output_dir", _RESULTS, "Results folder.")
_OUTPUT_NAME = flags.DEFINE_string(
    "output_name",
    "accuracy",
    "Results file names, without extension (`.md`, `.json`, `.png`).",
)


def _hard_loss():
    return keras.losses.SparseCategoricalCrossentropy(from_logits=True)


def _arrays(name, split, num_examples=None):
    """A split (or its first examples) as `(images, labels)` tensors, in TFDS
    order."""
    batches = list(
        data.load(
            name,
            split,
            data_dir=_DATA_DIR.value,
            batch_size=1024,
            num_examples=num_examples,
        )
    )
    return (
        tf.concat([x for x, _ in batches], axis=0),
        tf.concat([y for _, y in batches], axis=0),
    )


def _accuracy(model, test):
    x, y = test
    predictions = model.predict(x, batch_size=1024, verbose=0).argmax(-1)
    return float(np.mean(predictions == y.numpy()))


def _shuffled(dataset, size, batch_size, seed):
    """Reshuffled every epoch from `seed`: the same order for any element
    structure, so cached and live runs of a seed see the same batches."""
    return (
        dataset.shuffle(size, seed=seed, reshuffle_each_iteration=True)
        .batch(batch_size)
        .prefetch(tf.data.AUTOTUNE)
    )


def _train_teacher(name, train, test, epochs, batch_size):
    keras.utils.set_random_seed(0)
    input_shape, num_classes = data.info(name)
    teacher = models.build_model("teacher_cnn", input_shape, num_classes)
    teacher.compile(keras.optimizers.Adam(1e-3), _hard_loss())
    size = int(train[0].shape[0])
    teacher.fit(
        _shuffled(
            tf.data.Dataset.from_tensor_slices(train), size, batch_size, 0
        ),
        epochs=epochs,
        verbose=0,
    )
    return teacher, _accuracy(teacher, test)


def _parse(method):
    """`"dkd@0.5"` -> `("dkd", 0.5)`; `"kd"` -> `("kd", --alpha)`."""
    name, _, weight = method.partition("@")
    return name, float(weight) if weight else _ALPHA.value


def _train_student(name, method, teacher, train, cached, seed, settings):
    """Test accuracy of a student trained with `method` from `seed`."""
    _, epochs, batch_size = settings
    method, alpha = _parse(method)
    input_shape, num_classes = data.info(name)
    keras.utils.set_random_seed(seed)
    student = models.build_model("student_cnn", input_shape, num_classes)
    size = int(train[0].shape[0])
    if method == "alone":
        model = student
        model.compile(keras.optimizers.Adam(1e-3), _hard_loss())
        source = tf.data.Dataset.from_tensor_slices(train)
    else:
        model = tfkd.Distiller(
            teacher,
            student,
            methods.build(method, _TEMPERATURE.value),
            alpha=alpha,
        )
        model.compile(keras.optimizers.Adam(1e-3), _hard_loss())
        if method in LOGIT_METHODS:
            source = cached.unbatch()
        else:
            source = tf.data.Dataset.from_tensor_slices(train)
    model.fit(
        _shuffled(source, size, batch_size, seed), epochs=epochs, verbose=0
    )
    return student


def _run_dataset(name):
    teacher_epochs, student_epochs, batch_size = SETTINGS[name]
    settings = (
        _TEACHER_EPOCHS.value or teacher_epochs,
        _STUDENT_EPOCHS.value or student_epochs,
        batch_size,
    )
    began = time.time()
    train = _arrays(name, "train", _TRAIN_EXAMPLES.value)
    test = _arrays(name, "test")
    teacher, teacher_accuracy = _train_teacher(
        name, train, test, settings[0], batch_size
    )
    print(f"{name}: teacher {100 * teacher_accuracy:.2f}%", flush=True)
    cached = None
    if any(_parse(method)[0] in LOGIT_METHODS for method in _METHODS.value):
        cached = tfkd.cache_teacher_outputs(
            teacher,
            tf.data.Dataset.from_tensor_slices(train).batch(1024),
            verbose=0,
        )
    accuracies = {method: [] for method in _METHODS.value}
    for seed in range(_SEEDS.value):
        for method in _METHODS.value:
            student = _train_student(
                name, method, teacher, train, cached, seed, settings
            )
            accuracies[method].append(_accuracy(student, test))
            print(
                f"{name} seed {seed} {method}: "
                f"{100 * accuracies[method][-1]:.2f}%",
                flush=True,
            )
    return {
        "train_examples": int(train[0].shape[0]),
        "test_examples": int(test[0].shape[0]),
        "teacher_epochs": settings[0],
        "student_epochs": settings[1],
        "batch_size": batch_size,
        "teacher_accuracy": teacher_accuracy,
        "accuracies": accuracies,
        "seconds": time.time() - began,
    }


def _markdown(results, command, seconds):
    lines = [
        "# Student accuracy by distillation method",
        "",
        f"Command: `{command}`",
        "",
        "Teacher `teacher_cnn`, student `student_cnn` (examples/models.py); "
        f"hard-label weight {_ALPHA.value:g} (`method@w`: w), "
        f"T={_TEMPERATURE.value:g}, "
        "Adam 1e-3; logit methods on cached teacher outputs, feature methods "
        "live; test accuracy %, mean ± std (population) over "
        f"{_SEEDS.value} seeds.",
        "",
    ]
    header = "| data set | teacher | " + " | ".join(_METHODS.value) + " |"
    lines += [header, "|---" * (len(_METHODS.value) + 2) + "|"]
    for name, result in results.items():
        cells = []
        for method in _METHODS.value:
            values = 100 * np.array(result["accuracies"][method])
            cells.append(f"{values.mean():.2f} ± {values.std():.2f}")
        lines.append(
            f"| {name} | {100 * result['teacher_accuracy']:.2f} | "
            + " | ".join(cells)
            + " |"
        )
    lines.append("")
    for name, result in results.items():
        lines.append(
            f"- {name}: {result['train_examples']:,} train / "
            f"{result['test_examples']:,} test; teacher "
            f"{result['teacher_epochs']} epochs (seed 0), students "
            f"{result['student_epochs']} epochs, batch "
            f"{result['batch_size']}; {result['seconds']:.0f} s."
        )
    lines += [
        "",
        f"Machine: {platform.machine()}, {os.cpu_count()} CPU cores, no GPU "
        "(shared with other jobs); "
        f"Python {platform.python_version()}, tensorflow {tf.__version__}, "
        f"{_keras.KERAS_NAME} {keras.__version__}. Run time {seconds:.0f} s.",
        "",
    ]
    return lines


def _plot(results, path):
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot

    figure, axes = pyplot.subplots(
        1, len(results), figsize=(4.5 * len(results), 3.6), squeeze=False
    )
    for axis, (name, result) in zip(axes[0], results.items()):
        values = [
            100 * np.array(result["accuracies"][m]) for m in _METHODS.value
        ]
        means = [v.mean() for v in values]
        axis.bar(
            range(len(values)),
            means,
            yerr=[v.std() for v in values],
            capsize=4,
            color=["0.6"] + ["C0"] * (len(values) - 1),
        )
        teacher = 100 * result["teacher_accuracy"]
        axis.axhline(teacher, color="C3", linestyle="--", label="teacher")
        low = min(min(means), teacher)
        high = max(max(means), teacher)
        axis.set_ylim(low - 2.0, high + 1.0)
        axis.set_xticks(range(len(values)), _METHODS.value, rotation=30)
        axis.set_title(name)
        axis.set_ylabel("test accuracy %")
        axis.legend(loc="lower right")
    figure.tight_layout()
    figure.savefig(path, dpi=120)


def main(argv):
    del argv
    tf.get_logger().setLevel("ERROR")  # Retracing notes of new models.
    for name in _DATASETS.value:
        if name not in SETTINGS:
            raise app.UsageError(
                f"Unknown data set. Expected one of {sorted(SETTINGS)}. "
                f"Received: datasets={_DATASETS.value}"
            )
    for method in _METHODS.value:
        name = _parse(method)[0]
        if name != "alone" and name not in methods.METHODS:
            raise app.UsageError(
                f"Unknown method {method!r}. Expected `alone` or one of "
                f"{sorted(methods.METHODS)}."
            )
    start = time.time()
    results = {name: _run_dataset(name) for name in _DATASETS.value}
    command = "python -m benchmarks.accuracy " + " ".join(sys.argv[1:])
    lines = _markdown(results, command.strip(), time.time() - start)
    print("\n".join(lines))
    os.makedirs(_OUTPUT_DIR.value, exist_ok=True)
    with open(
        os.path.join(_OUTPUT_DIR.value, _OUTPUT_NAME.value + ".md"), "w"
    ) as f:
        f.write("\n".join(lines))
    with open(
        os.path.join(_OUTPUT_DIR.value, _OUTPUT_NAME.value + ".json"), "w"
    ) as f:
        json.dump({"command": command.strip(), "results": results}, f, indent=1)
    _plot(results, os.path.join(_OUTPUT_DIR.value, _OUTPUT_NAME.value + ".png"))


if __name__ == "__main__":
    app.run(main)
