"""The benchmark scripts end to end, on tiny settings (subprocesses).

The figures they write are the README's; these tests check that the scripts
run and that what they write holds what the README quotes, not the figures.
"""

import datetime
import importlib
import json
import os
import platform
import sys

import numpy as np
import pytest
import tensorflow as tf
from absl import flags
from conftest import REPO_ROOT
from conftest import run_module

from tfkd import _keras

BENCHMARKS = os.path.join(REPO_ROOT, "benchmarks")


def _run(script, *args):
    """Runs `python -m benchmarks.<script> args` from the repository root."""
    return run_module(f"benchmarks.{script.removesuffix('.py')}", *args)


SCRIPTS = (
    "defaults",
    "qat",
    "self_distillation",
    "step_cost",
    "train_teachers",
)


def _flag_values(script):
    """A new `flags.FlagValues` holding only `script`'s flags: its command
    line parses in this process (absl's global FLAGS is left alone)."""
    if REPO_ROOT not in sys.path:
        sys.path.insert(0, REPO_ROOT)
    module = importlib.import_module(f"benchmarks.{script}")
    flag_values = flags.FlagValues()
    module.define_flags(flag_values)
    return flag_values


def _parse(script, *args):
    flag_values = _flag_values(script)
    flag_values([script, *args])
    return flag_values


def _table_rows(path):
    with open(path) as f:
        return [line for line in f.read().splitlines() if line.startswith("| ")]


@pytest.mark.slow
@pytest.mark.skipif(
    _keras.IS_LEGACY,
    reason="the benchmarks run under Keras 3, where the README's figures "
    "come from (step_cost, qat and train_teachers are Keras 3 only)",
)
def test_defaults_benchmark_reads_two_schedules_and_accumulates(
    data_dir, tmp_path
):
    common = [
        "--seeds=1",
        "--teacher_epochs=1",
        "--epochs=2",
        "--short_epochs=1",
        "--train_examples=256",
        f"--data_dir={data_dir}",
        f"--output_dir={tmp_path}",
    ]
    run_module(
        "benchmarks.defaults",
        "--datasets=mnist_5k",
        "--recipes=alone",
        "--students=student_mlp",
        *common,
    )
    # A second run replaces the data set's results with its own: cached
    # (kd, dist) and live (attention taps, augmented views) teachers.
    recipes = ["alone", "kd_t4_a0.1", "dist_a0.1", "dist_a0.1_aug"]
    run_module(
        "benchmarks.defaults",
        "--datasets=mnist_5k",
        f"--recipes={','.join(recipes)},attention_t4_a0.1",
        "--students=student_mlp,student_cnn",
        *common,
    )
    with open(tmp_path / "defaults.json") as f:
        (result,) = json.load(f)["results"].values()
    by_student = result["accuracies"]
    # Attention transfer taps conv maps: the MLP student has none.
    assert sorted(by_student["student_mlp"]) == sorted(recipes)
    assert sorted(by_student["student_cnn"]) == sorted(
        [*recipes, "attention_t4_a0.1"]
    )
    for accuracies in by_student.values():
        for by_epochs in accuracies.values():
            assert sorted(by_epochs) == ["1", "2"]
            assert all(
                len(v) == 1 and 0 <= v[0] <= 1 for v in by_epochs.values()
            )
    rows = _table_rows(tmp_path / "defaults.md")
    # The README table, then the recipes' table: one row per schedule each.
    assert rows[1].startswith("| mnist_5k | student_mlp | ")
    assert rows[1].count("±") == 3
    mnist = [r for r in rows if r.startswith("| mnist_5k | student_mlp | ")]
    assert len(mnist) == 4
    (cnn_row,) = [
        r for r in rows if r.startswith("| mnist_5k | student_cnn | 2 |")
    ]
    assert cnn_row.count("±") == 5  # alone and the four recipes
    assert result["command"].startswith("python -m benchmarks.defaults ")
    with open(tmp_path / "defaults.md") as f:
        assert f" s on {result['machine']}; {result['date']}: `" in f.read()


@pytest.mark.mode_independent  # Markdown from the committed JSON
def test_readme_table_is_the_defaults_benchmarks_output(tmp_path):
    """The README's accuracy table is what benchmarks/defaults.py writes
    from the committed results, not a copy by hand."""
    with open(os.path.join(BENCHMARKS, "results", "defaults.json")) as f:
        committed = f.read()
    (tmp_path / "defaults.json").write_text(committed)
    run_module(
        "benchmarks.defaults", "--markdown_only", f"--output_dir={tmp_path}"
    )
    lines = (tmp_path / "defaults.md").read_text().splitlines()
    start = lines.index("Both schedules (the README's table):") + 2
    table = lines[start : lines.index("", start)]
    # header, rule, 3 data sets x 2 students x 2 schedules
    assert len(table) == 2 + 12
    with open(os.path.join(REPO_ROOT, "README.md")) as f:
        readme = f.read()
    for line in table:
        assert line in readme, line


@pytest.mark.mode_independent  # Markdown from the committed JSON
def test_readme_lm_table_is_the_lm_benchmarks_output():
    """The README's language-model rows are what benchmarks/lm.py writes
    from its committed results (also in lm.md)."""
    from benchmarks import lm

    with open(os.path.join(REPO_ROOT, "README.md")) as f:
        readme = f.read()
    # The main run, and the row with 64 tail samples (its own run settings).
    for folder, rows in (("", len(lm.README_ROWS)), ("lm_tail64", 1)):
        results = os.path.join(BENCHMARKS, "results", folder)
        with open(os.path.join(results, "lm.json")) as f:
            table = lm.readme_table(json.load(f))
        assert len(table) == 2 + rows
        with open(os.path.join(results, "lm.md")) as f:
            assert "\n".join(table) in f.read(), folder
        for line in table:
            assert line in readme, line


@pytest.mark.slow
@pytest.mark.skipif(_keras.IS_LEGACY, reason="keras.distillation: Keras 3")
def test_step_cost_benchmark_times_every_contender(data_dir, tmp_path):
    """The benchmark as users run it (about 65 s here, over the suite's
    60 s): seven processes, the timing run and one per contender for its
    peak memory, each importing TensorFlow."""
    _run(
        "step_cost.py",
        "--rounds=2",
        "--train_examples=256",
        f"--data_dir={data_dir}",
        f"--output_dir={tmp_path}",
    )
    rows = _table_rows(tmp_path / "step_cost.md")[1:]
    with open(tmp_path / "step_cost.json") as f:
        result = json.load(f)
    names = list(result["epoch_seconds"])
    command = "python -m benchmarks.step_cost --rounds=2 --train_examples=256"
    assert result["command"].startswith(command)
    with open(tmp_path / "step_cost.md") as f:
        lines = f.read().splitlines()
    assert lines[2].startswith(f"Command: `{command} ")
    machine = f"Machine: {result['machine']}; {result['date']}; "
    assert lines[4].startswith(machine) and lines[4].endswith(" s.")
    assert len(rows) == len(names) == 6
    assert "tfkd, cached teacher" in names and "keras.io example" in names
    assert result["steps_per_epoch"] == 4  # 256 / 64
    for name, times in result["epoch_seconds"].items():
        assert len(times["wall"]) == len(times["cpu"]) == 2
        assert all(t > 0 for t in times["wall"])
        memory = result["memory_kib"][name]
        assert memory["peak_kib"] >= memory["before_kib"] > 0


def _fake_cifar10(folder, train=128, test=64):
    """A CIFAR-10 npz (examples/datasets.py's source format) of random
    JPEGs: the script's plumbing, in seconds."""
    rng = np.random.default_rng(0)
    images = rng.integers(
        0, 256, size=(train + test, 32, 32, 3), dtype=np.uint8
    )
    jpegs = [tf.io.encode_jpeg(image).numpy() for image in images]
    os.makedirs(folder)
    np.savez(
        os.path.join(folder, "cifar10_jpeg_bytes.npz"),
        jpeg=np.frombuffer(b"".join(jpegs), np.uint8),
        offsets=np.cumsum([0] + [len(j) for j in jpegs]),
        y=rng.integers(0, 10, size=train + test).astype(np.uint8),
        is_test=np.arange(train + test) >= train,
        classes=np.array([str(c) for c in range(10)]),
    )


@pytest.mark.slow
@pytest.mark.skipif(
    _keras.IS_LEGACY, reason="the benchmark teachers are Keras 3 models"
)
def test_train_teachers_resumes_and_writes_a_loadable_teacher(tmp_path):
    pytest.importorskip("tensorflow_datasets")
    source = tmp_path / "source"
    _fake_cifar10(source)
    args = [
        "--dataset=cifar10",
        "--batch_size=32",
        "--train_examples=96",
        "--test_examples=48",
        f"--source_dir={source}",
        f"--data_dir={tmp_path / 'tfds'}",
        f"--output_dir={tmp_path / 'out'}",
        f"--backup_dir={tmp_path / 'backup'}",
    ]
    first = _run("train_teachers.py", *args, "--epochs=1")
    assert "epoch 1/1: " in first and " val_accuracy " in first
    # The same command with more epochs resumes: only the second one runs.
    second = _run("train_teachers.py", *args, "--epochs=2")
    assert "epoch 2/2: " in second and "epoch 1/2" not in second

    with open(tmp_path / "out" / "results" / "teachers.json") as f:
        row = json.load(f)["teachers"]["cifar10"]
    assert row["model"] == "resnet20" and row["params"] == 274_042
    assert row["epochs"] == 2 and [r["epoch"] for r in row["epoch_log"]] == [
        1,
        2,
    ]
    assert row["train_examples"] == 96 and row["test_examples"] == 48
    assert 0.0 <= row["test_accuracy"] <= 1.0 and row["train_seconds"] > 0
    assert row["command"] == " ".join(
        ["python -m benchmarks.train_teachers", *args, "--epochs=2"]
    )
    assert "| cifar10 | resnet20 | 274,042 | 2 |" in "\n".join(
        _table_rows(tmp_path / "out" / "results" / "teachers.md")
    )
    with open(tmp_path / "out" / "results" / "teachers.md") as f:
        assert " CPU cores, " in row["machine"]
        assert f". {row['machine']}; {row['date']}.\n" in f.read()
    weights = tmp_path / "out" / "teachers" / "cifar10_resnet20.weights.h5"
    assert os.path.getsize(weights) < 1_500_000  # No optimizer state.

    if REPO_ROOT not in sys.path:
        sys.path.insert(0, REPO_ROOT)
    from benchmarks import strong_teachers
    from examples import data
    from examples import training

    teacher = strong_teachers.load_teacher(
        "cifar10", weights_dir=tmp_path / "out" / "teachers"
    )
    images, labels = data.arrays(
        "cifar10",
        "test",
        data_dir=str(tmp_path / "tfds"),
        source_dir=str(source),
        num_examples=48,
    )
    # The recorded accuracy, to one example (float rounding near a tie).
    accuracy = training.accuracy(teacher, data.from_arrays(images, labels))
    assert accuracy == pytest.approx(row["test_accuracy"], abs=1.01 / 48)
    with pytest.raises(ValueError, match="benchmarks.train_teachers "):
        strong_teachers.load_teacher(
            "fashion_mnist", weights_dir=tmp_path / "out" / "teachers"
        )


@pytest.mark.slow
@pytest.mark.skipif(_keras.IS_LEGACY, reason="tfkd's Keras 3 QAT")
def test_qat_benchmark_compares_post_training_and_qat_int8(tmp_path):
    pytest.importorskip("tensorflow_datasets")
    pytest.importorskip("ai_edge_litert")
    source = tmp_path / "source"
    _fake_cifar10(source)
    run_module(
        "benchmarks.qat",
        "--epochs=1",
        "--qat_epochs=1",
        "--seeds=1",
        "--train_examples=96",
        "--test_examples=48",
        "--calibration_examples=16",
        "--batch_size=32",
        f"--source_dir={source}",
        f"--data_dir={tmp_path / 'tfds'}",
        f"--output_dir={tmp_path / 'out'}",
    )
    rows = _table_rows(tmp_path / "out" / "qat.md")
    names = [row.split("|")[1].strip() for row in rows[1:]]
    # The committed CIFAR-10 ResNet-20 teaches the distilled rows.
    assert names == [
        "float32",
        "post-training int8",
        "fine-tuned on labels, post-training int8",
        "QAT on labels, int8",
        "fine-tuned from resnet20, post-training int8",
        "QAT from resnet20, int8",
    ]
    with open(tmp_path / "out" / "qat.json") as f:
        written = json.load(f)
    (seed,) = written["seeds"]
    for row in seed.values():
        assert 0.0 <= row["litert"] <= 1.0 and 0.0 <= row["keras"] <= 1.0
    qat_size = seed["QAT on labels, int8"]["size_bytes"]
    assert qat_size < seed["float32"]["size_bytes"]
    assert written["steps"][0]["qat_ms"] > 0
    assert written["args"]["train_examples"] == 96
    assert written["args"]["teacher"] == "resnet20"
    header = written["args"]["header"]
    assert header["command"].startswith("python -m benchmarks.qat --epochs=1 ")
    with open(tmp_path / "out" / "qat.md") as f:
        lines = f.read().splitlines()
    assert lines[2] == f"Command: `{header['command']}`"
    assert lines[4].startswith(f"Machine: {header['machine']}; ")


# In-process: the command lines.


@pytest.mark.mode_independent
def test_benchmarks_define_their_flags_only_when_asked():
    """Importing every benchmark defines no flag (they import each other's
    parts, and tests parse them in-process); `define_flags` does."""
    before = set(flags.FLAGS)
    for script in SCRIPTS:
        _flag_values(script)
    assert set(flags.FLAGS) == before
    flag_values = _parse("defaults", "--datasets=mnist_5k", "--seeds=1")
    assert flag_values.datasets == ["mnist_5k"] and flag_values.seeds == 1
    defaults = importlib.import_module("benchmarks.defaults")
    assert flag_values.recipes == defaults.DEFAULT_RECIPES
    assert "alone" in defaults.DEFAULT_RECIPES
    assert _parse("qat").dataset == "cifar10"
    assert _parse("qat").qat_epochs == 3
    assert _parse("step_cost", "--rounds=3", "--nomemory").memory is False
    teachers = _parse("train_teachers", "--dataset=cifar10", "--epochs=2")
    assert teachers.dataset == ["cifar10"] and teachers.epochs == 2


# (script, bad flags, the error); the parse stops at the first bad flag.
_BAD_FLAGS = [
    (
        "defaults",
        ["--datasets=mnist_5k,svhn"],
        "flag --datasets=['mnist_5k', 'svhn']: must name some of "
        "['cifar10', 'fashion_mnist', 'mnist_5k'], not ['svhn']",
    ),
    (
        "defaults",
        ["--recipes=kd_t4_a0.1"],
        "flag --recipes=['kd_t4_a0.1']: must include `alone` (the baseline)",
    ),
    (
        "defaults",
        ["--students=student_rnn"],
        "flag --students=['student_rnn']: must name some of ['resnet20', "
        "'student_cnn', 'student_mlp', 'student_separable', 'teacher_cnn'], "
        "not ['student_rnn']",
    ),
    (
        "defaults",
        ["--epochs=2", "--short_epochs=5"],
        "flags short_epochs=5, epochs=2: --short_epochs must be <= --epochs",
    ),
    (
        "defaults",
        ["--short_epochs=0"],
        "flag --short_epochs=0: 0 is not a positive integer",
    ),
    (
        "qat",
        ["--qat_epochs=0"],
        "flag --qat_epochs=0: 0 is not a positive integer",
    ),
    (
        "step_cost",
        ["--memory_run=student"],
        "flag --memory_run=student: value should be one of <student alone|",
    ),
    (
        "train_teachers",
        ["--dataset=mnist_5k"],
        "flag --dataset=['mnist_5k']: must name some of ['cifar10', "
        "'fashion_mnist']",
    ),
]


@pytest.mark.mode_independent
@pytest.mark.parametrize(
    "script, bad_flags, error",
    _BAD_FLAGS,
    ids=[f"{script}-{flags[0][2:]}" for script, flags, _ in _BAD_FLAGS],
)
def test_bad_flags_stop_a_benchmark_before_any_work(script, bad_flags, error):
    with pytest.raises(flags.IllegalFlagValueError) as raised:
        _parse(script, *bad_flags)
    assert error in str(raised.value)


# In-process: the report header they share.


def test_report_header_names_command_machine_and_date():
    # In both modes: the Keras named is the one tfkd selected.
    from examples import report

    header = report.header("benchmarks.qat", ["--seeds=1", "--epochs=2"])
    assert sorted(header) == ["command", "date", "machine"]
    assert header["command"] == "python -m benchmarks.qat --seeds=1 --epochs=2"
    today = datetime.datetime.now(datetime.timezone.utc).date().isoformat()
    assert header["date"] == today
    gpus = len(tf.config.list_physical_devices("GPU"))
    cores = f"{platform.machine()}, {os.cpu_count()} CPU cores"
    versions = (
        f"Python {platform.python_version()}, tensorflow {tf.__version__}, "
        f"{_keras.KERAS_NAME} {_keras.keras.__version__}"
    )
    if gpus:  # "1 GPU (its name)"
        assert header["machine"].startswith(f"{cores}, {gpus} GPU (")
        assert header["machine"].endswith(f"); {versions}")
    else:
        assert header["machine"] == f"{cores}, no GPU; {versions}"
    assert report.describe(header, 65.4) == (
        f"{header['machine']}; {today}; 65 s"
    )
    # Results written before the date was recorded: the machine alone.
    assert report.describe({"machine": "x86_64, 2 CPU cores"}) == (
        "x86_64, 2 CPU cores"
    )
    assert report.markdown(header) == [
        "Command: `python -m benchmarks.qat --seeds=1 --epochs=2`",
        "",
        f"Machine: {header['machine']}; {today}.",
    ]


@pytest.mark.mode_independent
@pytest.mark.parametrize("script", SCRIPTS)
def test_benchmarks_write_the_shared_report_header(script):
    """No benchmark describes the machine or its command itself: each
    records `examples.report.header()`."""
    with open(os.path.join(BENCHMARKS, f"{script}.py")) as f:
        source = f.read()
    assert "report.header()" in source
    for own in ("platform.", "os.cpu_count", "tf.__version__", "sys.argv"):
        assert own not in source, own


@pytest.mark.mode_independent
def test_teachers_report_renders_the_committed_rows():
    """The committed teachers' rows hold the shared header, and the .md is
    what `train_teachers` renders from them."""
    train_teachers = importlib.import_module("benchmarks.train_teachers")
    results = os.path.join(BENCHMARKS, "results")
    with open(os.path.join(results, "teachers.json")) as f:
        rows = json.load(f)["teachers"]
    for row in rows.values():
        assert {"command", "machine", "date"} <= set(row)
    with open(os.path.join(results, "teachers.md")) as f:
        assert f.read() == "\n".join(train_teachers._markdown(rows))
