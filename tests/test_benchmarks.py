"""The benchmark scripts end to end, on tiny settings (subprocesses).

The figures they write are the README's; these tests check that the scripts
run and that what they write holds what the README quotes, not the figures.
"""

import json
import os

import pytest
from conftest import REPO_ROOT
from conftest import run_script

from tfkd import _keras

BENCHMARKS = os.path.join(REPO_ROOT, "benchmarks")


def _run(script, *args):
    return run_script(os.path.join(BENCHMARKS, script), *args, timeout=600)


def _table_rows(path):
    with open(path) as f:
        return [line for line in f.read().splitlines() if line.startswith("| ")]


@pytest.mark.slow
def test_accuracy_benchmark_writes_table_json_and_plot(data_dir, tmp_path):
    methods = ["alone", "kd", "dkd@0.5", "attention"]
    _run(
        "accuracy.py",
        "--datasets=mnist_5k",
        f"--methods={','.join(methods)}",
        "--seeds=2",
        "--teacher_epochs=2",
        "--student_epochs=1",
        "--train_examples=512",
        f"--data_dir={data_dir}",
        f"--output_dir={tmp_path}",
        "--output_name=tiny",
    )
    header, row = _table_rows(tmp_path / "tiny.md")
    assert [c.strip() for c in header.strip("| ").split("|")] == [
        "data set",
        "teacher",
        *methods,
    ]
    assert row.startswith("| mnist_5k |") and row.count("±") == len(methods)
    with open(tmp_path / "tiny.json") as f:
        result = json.load(f)["results"]["mnist_5k"]
    assert result["train_examples"] == 512
    assert result["test_examples"] == 1000
    assert sorted(result["accuracies"]) == sorted(methods)
    for values in result["accuracies"].values():
        assert len(values) == 2 and all(0.0 <= v <= 1.0 for v in values)
    # Two epochs on 512 digits beat chance (10%) by far.
    assert result["teacher_accuracy"] > 0.3
    assert os.path.getsize(tmp_path / "tiny.png") > 10_000


@pytest.mark.slow
@pytest.mark.skipif(_keras.IS_LEGACY, reason="keras.distillation: Keras 3")
def test_step_cost_benchmark_times_every_contender(data_dir, tmp_path):
    _run(
        "step_cost.py",
        "--rounds=2",
        "--num_examples=256",
        f"--data_dir={data_dir}",
        f"--output_dir={tmp_path}",
    )
    rows = _table_rows(tmp_path / "step_cost.md")[1:]
    with open(tmp_path / "step_cost.json") as f:
        result = json.load(f)
    names = list(result["epoch_seconds"])
    assert len(rows) == len(names) == 6
    assert "tfkd, cached teacher" in names and "keras.io example" in names
    assert result["steps_per_epoch"] == 4  # 256 / 64
    for name, times in result["epoch_seconds"].items():
        assert len(times["wall"]) == len(times["cpu"]) == 2
        assert all(t > 0 for t in times["wall"])
        memory = result["memory_kib"][name]
        assert memory["peak_kib"] >= memory["before_kib"] > 0
