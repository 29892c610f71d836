"""The command line of the example scripts: shared flags, checks and data.

A flag that several scripts take is defined once, in `_SHARED`: each script
calls `define` with the names it takes (and its own defaults), which also
registers their parse-time checks. absl runs the checks when `app.run`
parses the command line, before `main`: a bad value stops the script with one
line that names the flag and the rule, e.g. "FATAL Flags parsing error: flag
--temperature=0.0: must be a finite number > 0", and exit status 1. An unset
flag (`None`) passes: required flags cover those.
"""

import json
import math
import os

from absl import flags

from examples import data
from examples import methods
from examples import training

FLAGS = flags.FLAGS
# The flags `define` defines belong to the script that calls it (its
# --helpshort, `get_flags_for_module`), not to this module.
flags.disclaim_key_flags()


def _enum(default, values, help_):
    return flags.DEFINE_enum, default, help_, dict(enum_values=sorted(values))


def _string(help_):
    return flags.DEFINE_string, None, help_, {}


def _float(default, help_):
    return flags.DEFINE_float, default, help_, {}


def _integer(default, help_, lower=1, upper=None):
    bounds = dict(lower_bound=lower, upper_bound=upper)
    return flags.DEFINE_integer, default, help_, bounds


_SHARED = {  # name: (DEFINE_* function, default, help, its other arguments)
    "dataset": _enum("mnist_5k", data.DATASETS, "TFDS data set."),
    "data_dir": _string("TFDS data folder. Default: ~/tensorflow_datasets."),
    "source_dir": _string(
        "Folder of local source files for fashion_mnist (idx .gz) or cifar10 "
        "(npz), or of their sub-folders fashion-mnist/ and cifar10/. "
        "Default: $TFKD_SOURCE_DIR, else TFDS downloads."
    ),
    "teacher": _string("The teacher: a .keras file (examples.train_teacher)."),
    "method": _enum("kd", methods.METHODS, "Distillation method."),
    "temperature": _float(8.0, "Temperature of the logit (KD) term."),
    "alpha": _float(0.1, "Weight of the hard-label loss, in [0, 1]."),
    "epochs": _integer(None, "Training epochs."),
    "batch_size": _integer(
        64, "Batch size (GLOBAL: split over the replicas of a distributed run)."
    ),
    "learning_rate": _float(1e-3, "Adam step size."),
    "seed": _integer(0, "Seed of weights and shuffling.", 0, 2**32 - 1),
    "seeds": _integer(3, "Runs per row, seeds 0..N-1: mean and std."),
    "train_examples": _integer(None, "Use only the first N training examples."),
    "test_examples": _integer(None, "Use only the first N test examples."),
    "calibration_examples": _integer(
        512, "Training examples that calibrate int8."
    ),
    "verbose": _integer(
        1,
        "Keras verbosity: 0 silent, 1 a progress bar per batch, 2 one line "
        "per epoch.",
        0,
        2,
    ),
    "output_dir": _string("Where to write."),
}
# Every script takes these.
COMMON = (
    "dataset data_dir source_dir batch_size learning_rate train_examples "
    "test_examples verbose output_dir"
).split()


def define(*names, common=COMMON, flag_values=FLAGS, **defaults):
    """Defines the flags `common` and `names` of `_SHARED`, with checks.

    Args:
        *names: the other shared flags the script takes.
        common: the flags every example script takes (`COMMON`); the
            benchmarks pick their own.
        flag_values: the `flags.FlagValues` to define them in; tests pass
            a new one to parse a script's command line in-process.
        **defaults: the script's default of a flag, or `(default, help)`.
            `output_dir` is required unless given a default.
    """
    names = (*common, *names)
    for name in names:
        function, default, help_, kwargs = _SHARED[name]
        default = defaults.get(name, default)
        if isinstance(default, tuple):
            default, help_ = default
        function(
            name=name,
            default=default,
            help=help_,
            flag_values=flag_values,
            **kwargs,
        )
    if "output_dir" in names and flag_values["output_dir"].default is None:
        flags.mark_flag_as_required("output_dir", flag_values=flag_values)
    check_positive(
        *[n for n in ("temperature", "learning_rate") if n in names],
        flag_values=flag_values,
    )
    if "alpha" in names:
        check_fraction("alpha", flag_values=flag_values)
    if "teacher" in names:
        check_model_files("teacher", flag_values=flag_values)
    check_output_dirs(
        *[n for n in ("output_dir", "data_dir") if n in names],
        flag_values=flag_values,
    )
    if "source_dir" in names:
        check_flag(
            "source_dir",
            os.path.isdir,
            "an existing folder",
            flag_values=flag_values,
        )
    if "source_dir" in names and "dataset" in names:
        _check_source_dir(flag_values)


def _check_source_dir(flag_values):
    """`--source_dir` must hold the source files of `--dataset`."""
    flags.register_multi_flags_validator(
        ["dataset", "source_dir"],
        lambda values: (
            values["source_dir"] is None
            or values["dataset"] in data.SOURCE_FOLDERS
        ),
        message="--source_dir is only for --dataset in "
        f"{sorted(data.SOURCE_FOLDERS)} (local source files)",
        flag_values=flag_values,
    )
    flags.register_multi_flags_validator(
        ["dataset", "source_dir"],
        lambda values: (
            values["source_dir"] is None
            or values["dataset"] not in data.SOURCE_FOLDERS
            or data.find_source_dir(values["dataset"], values["source_dir"])
        ),
        message="--source_dir holds no source files of --dataset "
        "(fashion_mnist: its four idx .gz files; cifar10: "
        "cifar10_jpeg_bytes.npz), in it or in a sub-folder fashion-mnist/ or "
        "cifar10/",
        flag_values=flag_values,
    )


def check_flag(name, predicate, rule, *, flag_values=FLAGS):
    """Registers `predicate(value)` as the rule of flag `name`.

    `rule` completes the error message "must be ..."; `predicate` may also
    raise `flags.ValidationError` with a message of its own.
    """
    flags.register_validator(
        name,
        lambda value: value is None or predicate(value),
        message=f"must be {rule}",
        flag_values=flag_values,
    )


def check_positive(*names, flag_values=FLAGS):
    """Each float flag must be finite and > 0 (temperatures, step sizes)."""
    for name in names:
        check_flag(
            name,
            lambda value: math.isfinite(value) and value > 0,
            "a finite number > 0",
            flag_values=flag_values,
        )


def check_fraction(name, *, include_one=True, flag_values=FLAGS):
    """The float flag must be in [0, 1] (or [0, 1) without `include_one`)."""
    if include_one:
        rule, check = "in [0, 1]", lambda value: 0 <= value <= 1
    else:
        rule, check = "in [0, 1)", lambda value: 0 <= value < 1
    check_flag(name, check, rule, flag_values=flag_values)


def _folder_to_write(path):
    """Catches an `--output_dir` (or `--data_dir`) that is a file, or inside
    one, which would otherwise fail after training."""
    if not path:
        raise flags.ValidationError("must be a folder to write to, not empty")
    blocker = os.path.abspath(path)  # The nearest existing parent.
    while not os.path.exists(blocker) and os.path.dirname(blocker) != blocker:
        blocker = os.path.dirname(blocker)
    if os.path.exists(blocker) and not os.path.isdir(blocker):
        raise flags.ValidationError(
            f"must be a folder to write to, but {blocker} is an existing file"
        )
    return True


def check_output_dirs(*names, flag_values=FLAGS):
    """Each path flag must name a folder, existing or not, and no file."""
    for name in names:
        check_flag(
            name,
            _folder_to_write,
            "a folder to write to",
            flag_values=flag_values,
        )


def _model_file(path):
    if not path.endswith(".keras"):
        raise flags.ValidationError("must be a path ending in .keras")
    spec = path[: -len(".keras")] + ".json"
    if not (os.path.isfile(path) or os.path.isfile(spec)):
        raise flags.ValidationError("must be an existing file")
    return True


def check_model_files(*names, flag_values=FLAGS):
    """Each flag must name a saved model: a `.keras` path that exists (or
    the `.json` spec of `training.save_model` next to it)."""
    for name in names:
        check_flag(name, _model_file, "a saved model", flag_values=flag_values)


def load(split, **kwargs):
    """`data.load` of `--dataset` with `--data_dir`, `--source_dir` and
    `--batch_size`."""
    return data.load(
        FLAGS.dataset,
        split,
        data_dir=FLAGS.data_dir,
        source_dir=FLAGS.source_dir,
        batch_size=FLAGS.batch_size,
        **kwargs,
    )


def train_set(seed, shuffle=True, **kwargs):
    """The first `--train_examples` training examples, shuffled by `seed`."""
    return load(
        "train",
        shuffle=shuffle,
        seed=seed,
        num_examples=FLAGS.train_examples,
        **kwargs,
    )


def test_set(**kwargs):
    """The first `--test_examples` test examples, in order."""
    return load("test", num_examples=FLAGS.test_examples, **kwargs)


def calibration_set():
    """The first `--calibration_examples` training examples, in order."""
    return load("train", num_examples=FLAGS.calibration_examples)


def make_distiller(teacher, student, **kwargs):
    """`training.make_distiller` with `--method`, `--temperature`, `--alpha`
    and `--learning_rate`."""
    return training.make_distiller(
        teacher,
        student,
        FLAGS.method,
        temperature=FLAGS.temperature,
        alpha=FLAGS.alpha,
        learning_rate=FLAGS.learning_rate,
        **kwargs,
    )


def save_model(model, path, name, **facts):
    """`training.save_model` with the spec of model `name` on `--dataset`."""
    input_shape, num_classes = data.info(FLAGS.dataset)
    spec = dict(
        model=name,
        dataset=FLAGS.dataset,
        input_shape=list(input_shape),
        num_classes=num_classes,
        **facts,
    )
    training.save_model(model, path, spec)
    return spec


def write_json(path, value, **kwargs):
    with open(path, "w") as f:
        json.dump(value, f, **kwargs)


def define_names(name, default, known, help_, *, flag_values=FLAGS):
    """A list flag whose items must be some of `known` (at least one)."""
    flags.DEFINE_list(
        name,
        default,
        f"{help_} Of {sorted(known)}.",
        flag_values=flag_values,
    )

    def check(names):
        unknown = sorted(set(names) - set(known))
        if not names or unknown:
            raise flags.ValidationError(
                f"must name some of {sorted(known)}, not {unknown or names}"
            )
        return True

    flags.register_validator(name, check, flag_values=flag_values)
