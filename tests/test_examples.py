"""The examples: shared modules in-process, scripts end to end as subprocesses.

Scripts run as subprocesses (absl flags are process-wide, and the QAT stages
re-run themselves under tf_keras) on tiny settings: one epoch, a few hundred
mnist_5k digits, prepared once in a temporary TFDS folder.
"""

import importlib
import importlib.util
import io
import json
import os
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf
from absl import app
from absl import flags
from conftest import NO_ONEDNN
from conftest import REPO_ROOT
from conftest import make_mlp
from conftest import run_two_workers
from conftest import toy_classification

from tfkd import _keras

if REPO_ROOT not in sys.path:  # `examples` is a folder of the repository.
    sys.path.insert(0, REPO_ROOT)

from examples import methods  # noqa: E402
from examples import models  # noqa: E402
from examples import progress  # noqa: E402
from examples import training  # noqa: E402

TINY = ["--train_examples=256", "--test_examples=128", "--verbose=2"]
# Flags the README and the docstrings mention, per script.
README_FLAGS = {
    "train_teacher": [
        "dataset",
        "data_dir",
        "source_dir",
        "model",
        "epochs",
        "batch_size",
        "output_dir",
        "train_examples",
    ],
    "distill": [
        "teacher",
        "student",
        "method",
        "temperature",
        "alpha",
        "strategy",
        "cpu_replicas",
        "mixed_precision",
        "jit_compile",
        "cache_teacher",
        "epochs",
        "steps_per_epoch",
        "seed",
        "shuffle",
        "output_dir",
        "dataset",
        "data_dir",
        "source_dir",
    ],
    "quantize": [
        "teacher",
        "student",
        "qat",
        "prune",
        "target_sparsity",
        "epochs",
        "output_dir",
        "dataset",
        "calibration_examples",
    ],
    "pipeline": [
        "dataset",
        "data_dir",
        "source_dir",
        "teacher_model",
        "student_model",
        "method",
        "temperature",
        "alpha",
        "seeds",
        "qat",
        "teacher_epochs",
        "student_epochs",
        "qat_epochs",
        "output_dir",
    ],
}


def _run_module(script, *args, timeout=300, env=None):
    """Runs `python -m examples.<script> args` from the repository root.

    `env`: variables added to this process's environment (None removes one).
    """
    environ = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", f"examples.{script}", *args],
        cwd=REPO_ROOT,
        env={k: v for k, v in environ.items() if v is not None},
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def _run(script, *args, returncode=0, **kwargs):
    """`_run_module`, asserting its exit status; returns its stdout."""
    result = _run_module(script, *args, **kwargs)
    output = (result.stdout + result.stderr)[-4000:]
    assert result.returncode == returncode, output
    return result.stdout


@pytest.fixture(scope="module")
def teacher_path(data_dir, tmp_path_factory):
    output_dir = tmp_path_factory.mktemp("teacher")
    stdout = _run(
        "train_teacher",
        f"--output_dir={output_dir}",
        f"--data_dir={data_dir}",
        "--epochs=1",
        *TINY,
    )
    assert "test accuracy" in stdout
    return str(output_dir / "teacher.keras")


# In-process: the shared modules.


@pytest.mark.parametrize("name", sorted(models.MODELS))
@pytest.mark.parametrize("shape", [(28, 28, 1), (32, 32, 3)])
def test_models_output_logits_and_name_their_taps(name, shape):
    model = models.build_model(name, shape, 10)
    x = np.random.default_rng(0).uniform(size=(3, *shape)).astype("float32")
    logits = model.predict(x, verbose=0)
    assert logits.shape == (3, 10) and logits.dtype == np.float32
    assert not np.allclose(logits.sum(axis=1), 1.0)  # no softmax
    assert model.name == name
    assert model.get_layer("logits").get_config()["activation"] == "linear"
    assert model.get_layer("embedding").output.shape[-1] in (32, 64, 128)

    def maps(m):
        return tuple(m.get_layer("features").output.shape[1:3])

    if name in ("resnet20", "student_separable"):  # Two stride-2 stages.
        assert maps(model) == (shape[0] // 4, shape[1] // 4)
    elif name != "student_mlp":
        teacher = models.build_model("teacher_cnn", shape, 10)
        assert maps(model) == maps(teacher)


@pytest.mark.parametrize("name", sorted(models.MODELS))
def test_models_can_be_made_quantization_aware(name):
    # In either mode: TFMOT (tf_keras) refuses some in-layer activations.
    import tfkd.quantization

    model = models.build_model(name, (28, 28, 1), 10)
    qat = tfkd.quantization.quantize_aware(model)
    x = np.random.default_rng(0).uniform(size=(2, 28, 28, 1)).astype("float32")
    assert qat.predict(x, verbose=0).shape == (2, 10)


def test_model_sizes_and_errors():
    mlp = models.build_model("student_mlp", (28, 28, 1), 10)
    assert mlp.count_params() == 784 * 32 + 32 + 32 * 10 + 10
    teacher = models.build_model("teacher_cnn", (28, 28, 1), 10)
    assert teacher.count_params() == 225_034  # the README's teacher
    separable = models.build_model("student_separable", (32, 32, 3), 10)
    assert separable.count_params() == 19_498  # benchmarks/results/qat.md
    with pytest.raises(ValueError, match=r"Received: name='resnet'"):
        models.build_model("resnet", (28, 28, 1), 10)
    with pytest.raises(ValueError, match=r"Received: input_shape=\(784,\)"):
        models.build_model("student_mlp", (784,), 10)


@pytest.mark.parametrize("method", sorted(methods.METHODS))
def test_every_method_distills_the_example_models(method):
    teacher = models.build_model("teacher_cnn", (28, 28, 1), 10)
    student = models.build_model("student_cnn", (28, 28, 1), 10)
    distiller = training.make_distiller(teacher, student, method)
    x = np.random.default_rng(0).uniform(size=(16, 28, 28, 1))
    y = np.arange(16) % 10
    logs = distiller.fit(x.astype("float32"), y, batch_size=8, verbose=0)
    assert np.isfinite(logs.history["loss"][0])
    assert logs.history["distillation_loss"][0] > 0


def test_method_errors():
    teacher = models.build_model("teacher_cnn", (28, 28, 1), 10)
    student = models.build_model("student_mlp", (28, 28, 1), 10)
    with pytest.raises(ValueError, match="--student=student_cnn"):
        training.make_distiller(teacher, student, "attention")
    with pytest.raises(ValueError, match=r"Received: method='kdd'"):
        methods.build("kdd")


def test_saved_model_loads_in_this_and_the_other_keras_mode(tmp_path):
    model = models.build_model("student_cnn", (28, 28, 1), 10)
    spec = {"model": "student_cnn", "input_shape": [28, 28, 1]}
    path = str(tmp_path / "student.keras")
    training.save_model(model, path, dict(spec, num_classes=10))
    x = np.random.default_rng(0).uniform(size=(4, 28, 28, 1))
    expected = model.predict(x.astype("float32"), verbose=0)
    np.save(tmp_path / "x.npy", x.astype("float32"))
    np.testing.assert_allclose(
        training.load_model(path).predict(x, verbose=0), expected, atol=1e-6
    )
    code = (
        "import sys, numpy as np; sys.path.insert(0, sys.argv[1]);"
        "from examples import training;"
        "m = training.load_model(sys.argv[2]);"
        "np.save(sys.argv[3], m.predict(np.load(sys.argv[4]), verbose=0))"
    )
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    env["TF_USE_LEGACY_KERAS"] = "0" if _keras.IS_LEGACY else "1"
    out = str(tmp_path / "other.npy")
    result = subprocess.run(
        [
            sys.executable,
            "-c",
            code,
            REPO_ROOT,
            path,
            out,
            str(tmp_path / "x.npy"),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    np.testing.assert_allclose(np.load(out), expected, atol=1e-5)
    with pytest.raises(ValueError, match="end in `.keras`"):
        training.load_model(str(tmp_path / "student.h5"))


def test_scalar_summaries_are_what_fit_logged(tmp_path):
    model = training.compile_model(
        models.build_model("student_mlp", (4, 4, 1), 3)
    )
    x = np.random.default_rng(0).uniform(size=(32, 4, 4, 1)).astype("float32")
    y = np.arange(32) % 3
    history = model.fit(
        x,
        y,
        validation_data=(x, y),
        epochs=2,
        verbose=0,
        callbacks=[training.ScalarSummaries(str(tmp_path))],
    ).history
    logged = {}
    for split in ("train", "validation"):
        (events,) = os.listdir(tmp_path / split)
        for event in tf.compat.v1.train.summary_iterator(
            str(tmp_path / split / events)
        ):
            for value in event.summary.value:
                assert value.metadata.plugin_data.plugin_name == "scalars"
                prefix = "val_" if split == "validation" else ""
                key = prefix + value.tag[len("epoch_") :]
                number = tf.make_ndarray(value.tensor)
                logged.setdefault(key, {})[event.step] = float(number)
    for key in ("loss", "accuracy", "val_loss", "val_accuracy"):
        np.testing.assert_allclose(
            [logged[key][epoch] for epoch in (0, 1)], history[key], rtol=1e-6
        )


class _Terminal(io.StringIO):
    def isatty(self):
        return True


def _fit_with_progress(model, stream, epochs=3, shown=None):
    """Fits `model` (compiled) on a toy problem with a `ProgressLine`;
    returns the line that its last epoch's logs make."""
    x, y = toy_classification(n=64)
    line = progress.ProgressLine("seed 0", shown=shown, stream=stream)
    history = training.fit(
        model,
        tf.data.Dataset.from_tensor_slices((x, y)).batch(16),
        tf.data.Dataset.from_tensor_slices((x, y)).batch(32),
        epochs=epochs,
        progress=line,
        verbose=1,  # Keras' output is replaced, whatever `verbose` says.
    )
    last = {key: values[-1] for key, values in history.items()}
    keys = ["loss", "accuracy", "val_loss", "val_accuracy"]
    keys += sorted(k for k in last if k not in keys and "teacher_" not in k)
    values = ", ".join(f"{key} {last[key]:.4g}" for key in keys)
    return f"seed 0: epoch {epochs}/{epochs}, {values}", last


def _student():
    keras = _keras.keras
    keras.utils.set_random_seed(0)
    return training.compile_model(make_mlp(8, name="student"))


def test_progress_line_in_a_log_is_the_runs_last_line(capsys):
    # Not a terminal: one line when the run ends, no `\r`, no Keras output.
    expected, _ = _fit_with_progress(_student(), stream=None)
    assert capsys.readouterr().out == expected + "\n"


def test_progress_line_on_a_terminal_is_rewritten_each_epoch(monkeypatch):
    monkeypatch.setenv("COLUMNS", "41")  # `shutil.get_terminal_size`
    terminal = _Terminal()
    expected, _ = _fit_with_progress(_student(), terminal)
    assert len(expected) > 40
    written = terminal.getvalue()
    # Each epoch rewrites the line, cut to fit; the end prints it in full.
    assert written.endswith("\r" + expected + "\n")
    epochs = written.split("\r")[1:-1]
    assert len(epochs) == 3
    assert [len(epoch) for epoch in epochs] == [40, 40, 40]
    assert epochs[-1] == expected[:40]
    assert [epoch[:15] for epoch in epochs] == [
        f"seed 0: epoch {k}" for k in (1, 2, 3)
    ]


def test_progress_lines_print_the_frozen_teachers_metrics_once(capsys):
    import tfkd

    keras = _keras.keras
    keras.utils.set_random_seed(0)
    teacher = make_mlp(16, name="teacher", seed=5)
    shown = set()
    lines, teacher_logs = [], None
    for _ in range(2):  # Two runs (seeds) share what was shown.
        distiller = training.compile_model(
            tfkd.Distiller(teacher, make_mlp(8, name="student"))
        )
        expected, last = _fit_with_progress(distiller, None, shown=shown)
        lines.append(expected)
        teacher_logs = teacher_logs or {
            k: v for k, v in last.items() if "teacher_" in k
        }
    assert teacher_logs  # e.g. val_teacher_accuracy, val_teacher_loss
    values = ", ".join(
        f"{k} {teacher_logs[k]:.4g}" for k in sorted(teacher_logs)
    )
    out = capsys.readouterr().out
    assert out == "\n".join([f"teacher (frozen): {values}", *lines, ""])
    assert shown == set(teacher_logs)


# Subprocesses: the scripts end to end.


def _flag_values(script):
    """A new `flags.FlagValues` holding only `script`'s flags: its command
    line parses in this process (absl's global FLAGS is left alone)."""
    module = importlib.import_module(f"examples.{script}")
    flag_values = flags.FlagValues()
    module.define_flags(flag_values)
    return flag_values


@pytest.mark.mode_independent
@pytest.mark.parametrize("script", sorted(README_FLAGS))
def test_help_documents_every_flag(script):
    # The text of `--helpfull` for the script's own flags.
    text = _flag_values(script).get_help()
    for flag in README_FLAGS[script]:
        # The flag's own help line, not a mention in the usage text.
        assert re.search(rf"^\s+--(\[no\])?{flag}:\s+\S", text, re.M), flag


@pytest.mark.slow
@pytest.mark.mode_independent
def test_helpfull_exits_with_the_help_text():
    """One real `--helpfull` run (a subprocess): absl prints, exits with 1."""
    stdout = _run("distill", "--helpfull", returncode=1)
    assert re.search(r"^\s+--teacher:\s+\S", stdout, re.M)


# Each script with cheap settings, so that a flag that wrongly passes fails
# fast; the bad flag comes last and overrides them.
_CHEAP = {
    "train_teacher": ["--epochs=1", "--train_examples=8", "--test_examples=8"],
    "distill": [
        "--teacher={tmp}/teacher.keras",
        "--epochs=1",
        "--train_examples=8",
        "--test_examples=8",
    ],
    "quantize": [
        "--teacher={tmp}/teacher.keras",
        "--student={tmp}/student.keras",
        "--noqat",
        "--calibration_examples=8",
        "--train_examples=8",
        "--test_examples=8",
    ],
    "pipeline": [
        "--noqat",
        "--seeds=1",
        "--teacher_epochs=1",
        "--student_epochs=1",
        "--train_examples=8",
        "--test_examples=8",
        "--calibration_examples=8",
    ],
}
# (script, bad flags, their errors); {tmp} is the test's folder, where
# teacher.keras and student.keras exist. A bound of `DEFINE_integer` stops
# the parsing at once; the validators report every bad flag, one line each.
_BAD_FLAGS = [
    (
        "train_teacher",
        ["--epochs=-3"],
        ["flag --epochs=-3: -3 is not a positive integer"],
    ),
    (
        "train_teacher",
        [
            "--learning_rate=0",
            "--output_dir={tmp}/teacher.keras",
            "--source_dir={tmp}",
        ],
        [
            "flag --learning_rate=0.0: must be a finite number > 0",
            "flag --output_dir={tmp}/teacher.keras: must be a folder to "
            "write to, but {tmp}/teacher.keras is an existing file",
            "flags dataset=mnist_5k, source_dir={tmp}: --source_dir is only "
            "for --dataset in ['cifar10', 'fashion_mnist'] (local source "
            "files)",
        ],
    ),
    (
        "train_teacher",
        ["--dataset=cifar10", "--source_dir={tmp}"],
        [
            "flags dataset=cifar10, source_dir={tmp}: --source_dir holds no "
            "source files of --dataset (fashion_mnist: its four idx .gz "
            "files; cifar10: cifar10_jpeg_bytes.npz), in it or in a "
            "sub-folder fashion-mnist/ or cifar10/",
        ],
    ),
    (
        "distill",
        ["--steps_per_epoch=0"],
        ["flag --steps_per_epoch=0: 0 is not a positive integer"],
    ),
    (
        "distill",
        [
            "--temperature=0",
            "--alpha=1.5",
            "--teacher={tmp}/missing.keras",
            "--cpu_replicas=2",
        ],
        [
            "flag --temperature=0.0: must be a finite number > 0",
            "flag --alpha=1.5: must be in [0, 1]",
            "flag --teacher={tmp}/missing.keras: must be an existing file",
            "flags strategy=default, cpu_replicas=2: --cpu_replicas > 1 "
            "needs --strategy=mirrored",
        ],
    ),
    (
        "quantize",
        ["--calibration_examples=0"],
        ["flag --calibration_examples=0: 0 is not a positive integer"],
    ),
    (
        "quantize",
        [
            "--temperature=nan",
            "--target_sparsity=1",
            "--student={tmp}/student.h5",
        ],
        [
            "flag --temperature=nan: must be a finite number > 0",
            "flag --target_sparsity=1.0: must be in [0, 1)",
            "flag --student={tmp}/student.h5: must be a path ending in .keras",
        ],
    ),
    (
        "pipeline",
        ["--seeds=0"],
        ["flag --seeds=0: 0 is not a positive integer"],
    ),
    (
        "pipeline",
        [
            "--alpha=-0.1",
            "--qat_learning_rate=-1",
            "--output_dir={tmp}/teacher.keras/run",
        ],
        [
            "flag --qat_learning_rate=-1.0: must be a finite number > 0",
            "flag --alpha=-0.1: must be in [0, 1]",
            "flag --output_dir={tmp}/teacher.keras/run: must be a folder to "
            "write to, but {tmp}/teacher.keras is an existing file",
        ],
    ),
]


def _bad_flags_case(script, bad_flags, errors, tmp_path):
    """The command line of a `_BAD_FLAGS` case, its report on stderr and
    the folders that it must not create."""
    tmp = str(tmp_path)
    for name in ("teacher.keras", "student.keras"):
        (tmp_path / name).write_text("")
    output_dir, data_dir = tmp_path / "output", tmp_path / "tfds"
    argv = [
        f"--output_dir={output_dir}",
        f"--data_dir={data_dir}",
        *[arg.format(tmp=tmp) for arg in _CHEAP[script] + bad_flags],
    ]
    # One line per bad flag: the flag, its value and the rule.
    errors = [error.format(tmp=tmp) for error in errors]
    if len(errors) == 1:
        report = f"FATAL Flags parsing error: {errors[0]}\n"
    else:
        report = "FATAL Flags parsing error:\n" + "".join(
            f"  {error}\n" for error in errors
        )
    hint = "Pass --helpshort or --helpfull to see help on flags.\n"
    return argv, report + hint, (output_dir, data_dir)


@pytest.mark.mode_independent
@pytest.mark.parametrize(
    "script, bad_flags, errors",
    _BAD_FLAGS,
    ids=[f"{script}-{len(flags)}" for script, flags, _ in _BAD_FLAGS],
)
def test_bad_flags_stop_the_script_before_any_work(
    script, bad_flags, errors, tmp_path, capsys, monkeypatch
):
    # In-process: absl's own parse-and-report of `app.run`, on the script's
    # flags only. A real run of one case: the test after this one.
    argv, report, folders = _bad_flags_case(script, bad_flags, errors, tmp_path)
    monkeypatch.setattr(app, "FLAGS", _flag_values(script))
    with pytest.raises(SystemExit) as exit_:
        app.parse_flags_with_usage([script, *argv])
    assert exit_.value.code == 1
    out, err = capsys.readouterr()
    assert err == report
    assert out == ""  # no stage, no epoch
    assert not any(folder.exists() for folder in folders)


@pytest.mark.slow
@pytest.mark.mode_independent
def test_bad_flags_stop_a_real_run_before_any_work(tmp_path):
    script, bad_flags, errors = _BAD_FLAGS[4]  # distill, four bad flags
    argv, report, folders = _bad_flags_case(script, bad_flags, errors, tmp_path)
    result = _run_module(script, *argv)
    assert result.returncode == 1, result.stdout + result.stderr[-3000:]
    assert report in result.stderr
    assert "Traceback" not in result.stderr
    assert result.stdout == ""  # no stage, no epoch
    assert not any(folder.exists() for folder in folders)


@pytest.mark.slow
@pytest.mark.xdist_group("multi_process")  # one worker trains teacher_path
def test_teacher_then_distill_then_quantize(teacher_path, data_dir, tmp_path):
    with open(teacher_path.replace(".keras", ".json")) as f:
        assert json.load(f)["model"] == "teacher_cnn"
    student_dir = tmp_path / "student"
    stdout = _run(
        "distill",
        f"--teacher={teacher_path}",
        f"--output_dir={student_dir}",
        f"--data_dir={data_dir}",
        "--epochs=2",
        "--steps_per_epoch=3",
        *TINY,
    )
    assert "distilled with kd on 1 replica(s)" in stdout
    with open(student_dir / "history.json") as f:
        assert len(json.load(f)["loss"]) == 2
    student = training.load_model(str(student_dir / "student.keras"))
    x = np.zeros((5, 28, 28, 1), "float32")
    assert student.predict(x, verbose=0).shape == (5, 10)
    assert os.listdir(student_dir / "logs" / "validation")

    # QAT runs in either mode (Keras 3: tfkd's own); pruning is TFMOT's.
    compress = ["--noqat", "--prune"] if _keras.IS_LEGACY else ["--qat"]
    stdout = _run(
        "quantize",
        f"--teacher={teacher_path}",
        f"--student={student_dir / 'student.keras'}",
        f"--output_dir={tmp_path / 'int8'}",
        f"--data_dir={data_dir}",
        "--epochs=1",
        "--calibration_examples=64",
        *compress,
        *TINY,
    )
    assert "re-running" not in stdout
    with open(tmp_path / "int8" / "results.json") as f:
        results = json.load(f)
    assert results["num_examples"] == 128
    assert abs(results["accuracy"] - results["keras_accuracy"]) < 0.1
    assert (
        os.path.getsize(tmp_path / "int8" / "student_int8.tflite")
        == (results["size_bytes"])
    )
    if _keras.IS_LEGACY:
        assert results["sparsity"] == pytest.approx(0.5, abs=0.02)
    else:
        assert "qat" in results["histories"]


@pytest.mark.slow
@pytest.mark.xdist_group("multi_process")  # one worker trains teacher_path
def test_distill_on_two_replicas_with_every_option(
    teacher_path, data_dir, tmp_path
):
    _run(
        "distill",
        f"--teacher={teacher_path}",
        f"--output_dir={tmp_path}",
        f"--data_dir={data_dir}",
        "--student=student_cnn",
        "--method=attention",
        "--strategy=mirrored",
        "--cpu_replicas=2",
        "--mixed_precision",
        "--cache_teacher",
        "--epochs=1",
        "--noshuffle",
        *TINY,
    )
    with open(tmp_path / "student.json") as f:
        spec = json.load(f)
    assert spec["replicas"] == 2 and spec["method"] == "attention"
    assert spec["policy"] == "mixed_bfloat16"
    student = training.load_model(str(tmp_path / "student.keras"))
    assert student.predict(np.zeros((2, 28, 28, 1)), verbose=0).shape == (2, 10)


@pytest.mark.slow
@pytest.mark.xdist_group("multi_process")
def test_distill_multi_worker_matches_one_process(
    teacher_path, data_dir, tmp_path
):
    """Two `--strategy=multi_worker` processes (TF_CONFIG on 127.0.0.1)
    train the student that one process trains with the same global batch."""
    args = [
        f"--teacher={teacher_path}",
        f"--data_dir={data_dir}",
        "--method=kd",
        "--epochs=2",
        "--noshuffle",
        "--batch_size=32",
        *TINY,
    ]
    workers_dir = tmp_path / "workers"
    outputs = run_two_workers(
        lambda index: [
            sys.executable,
            "-m",
            "examples.distill",
            "--strategy=multi_worker",
            f"--output_dir={workers_dir}",
            *args,
        ],
        env=dict(os.environ, PYTHONPATH=REPO_ROOT),
        cleanup=lambda: shutil.rmtree(workers_dir, ignore_errors=True),
    )
    assert "on 2 replica(s)" in outputs[0]  # the chief reports
    assert "replica(s)" not in outputs[1]
    _run(
        "distill",
        f"--output_dir={tmp_path / 'single'}",
        *args,
        env=NO_ONEDNN,
    )
    # Only the chief wrote to --output_dir.
    assert sorted(os.listdir(tmp_path / "workers")) == sorted(
        os.listdir(tmp_path / "single")
    )
    with open(tmp_path / "workers" / "student.json") as f:
        assert json.load(f)["replicas"] == 2
    together = training.load_model(str(tmp_path / "workers" / "student.keras"))
    alone = training.load_model(str(tmp_path / "single" / "student.keras"))
    for a, b in zip(together.get_weights(), alone.get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
    with open(tmp_path / "workers" / "history.json") as f:
        losses_together = json.load(f)["loss"]
    with open(tmp_path / "single" / "history.json") as f:
        losses_alone = json.load(f)["loss"]
    np.testing.assert_allclose(losses_together, losses_alone, rtol=1e-4)


TINY_PIPELINE = [
    "--teacher_epochs=1",
    "--student_epochs=2",
    "--qat_epochs=1",
    "--calibration_examples=64",
    "--qat",
    "--train_examples=256",
    "--test_examples=128",
]


@pytest.mark.slow
def test_pipeline_writes_the_four_row_table(data_dir, tmp_path):
    # QAT in the mode it was started in: no re-run under tf_keras. Run as a
    # user would, without TF_CPP_MIN_LOG_LEVEL: the examples quiet
    # TensorFlow's C++ logs themselves.
    result = _run_module(
        "pipeline",
        f"--output_dir={tmp_path}",
        f"--data_dir={data_dir}",
        *TINY_PIPELINE,
        "--seeds=2",
        env={"TF_CPP_MIN_LOG_LEVEL": None},
    )
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
    stdout = result.stdout
    assert "cpu_feature_guard" not in result.stderr
    assert "re-running" not in stdout
    # One line per run (its last epoch's: stdout is not a terminal), the
    # teacher's metrics once, no Keras output.
    runs = [line for line in stdout.splitlines() if ": epoch " in line]
    assert [line.split(", loss ")[0] for line in runs] == [
        "teacher: epoch 1/1",
        "student alone, seed 0: epoch 2/2",
        "student alone, seed 1: epoch 2/2",
        "distilled student, seed 0: epoch 2/2",
        "distilled student, seed 1: epoch 2/2",
        "QAT: epoch 1/1",
    ]
    assert all(" val_accuracy " in line for line in runs)
    assert "\r" not in stdout and "Epoch 1/" not in stdout
    lines = stdout.splitlines()
    (teacher,) = [line for line in lines if "_teacher_" in line]
    assert teacher.startswith("teacher (frozen): val_teacher_accuracy ")
    for stage in range(1, 5):
        assert f"[{stage}/4]" in stdout
    # Before the runs: stage headers and blank lines; after: the table.
    before_table = stdout[: stdout.index("| model |")].splitlines()
    assert len(before_table) <= 6 + 1 + 4 * 2 + 4
    with open(tmp_path / "results.md") as f:
        table = f.read()
    rows = [line for line in table.splitlines() if line.startswith("| ")]
    assert len(rows) == 5  # the header and four models
    assert "(2 seeds)" in rows[2] and "(2 seeds)" in rows[3]
    command = "Command: `python -m examples.pipeline --output_dir="
    assert table.startswith(command)
    with open(tmp_path / "results.json") as f:
        results = json.load(f)
    assert results["keras"] == _keras.KERAS_NAME
    assert results["machine"] in table and results["date"] in table
    teacher, alone, distilled, int8 = results["rows"]
    assert int8["tflite"] == "int8" and int8["parameters"] == 25_450
    assert int8["size_bytes"] < distilled["size_bytes"] / 3
    assert teacher["parameters"] > alone["parameters"]
    assert all(0 <= a <= 1 for a in distilled["accuracy"] + [int8["accuracy"]])
    assert os.path.getsize(tmp_path / "curves.png") > 10_000
    assert training.load_model(
        str(tmp_path / "student.keras")
    ).count_params() == (25_450)


@pytest.mark.slow
@pytest.mark.skipif(_keras.IS_LEGACY, reason="--tfmot re-runs from Keras 3")
def test_pipeline_tfmot_flag_reruns_under_tf_keras(data_dir, tmp_path):
    # Not imported here: importing TFMOT sets TF_USE_LEGACY_KERAS=1 in this
    # process, which the script would inherit.
    if importlib.util.find_spec("tensorflow_model_optimization") is None:
        pytest.skip("needs tensorflow-model-optimization")
    stdout = _run(
        "pipeline",
        f"--output_dir={tmp_path}",
        f"--data_dir={data_dir}",
        *TINY_PIPELINE,
        "--seeds=1",
        "--tfmot",
    )
    assert "re-running with TF_USE_LEGACY_KERAS=1" in stdout
    with open(tmp_path / "results.json") as f:
        results = json.load(f)
    assert results["keras"] == "tf_keras"
    assert results["rows"][-1]["tflite"] == "int8"
