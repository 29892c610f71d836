"""The README's quickstart runs as written and prints what it promises."""

import os
import re
import subprocess
import sys

import pytest
from conftest import REPO_ROOT

from tfkd import _keras


def _python_block(heading):
    with open(os.path.join(REPO_ROOT, "README.md")) as f:
        text = f.read()
    section = text.split(heading, 1)[1]
    return re.search(r"```python\n(.*?)```", section, re.DOTALL).group(1)


@pytest.mark.skipif(
    _keras.IS_LEGACY, reason="the quickstart is written for Keras 3"
)
def test_quickstart_runs_and_distillation_beats_the_student_alone(tmp_path):
    pytest.importorskip("mlxtend")
    script = tmp_path / "quickstart.py"
    script.write_text(_python_block("## Quickstart"))
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    result = subprocess.run(
        [sys.executable, str(script)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    accuracy = dict(
        re.findall(r"^\s*([a-z ]+): ([\d.]+)%", result.stdout, re.MULTILINE)
    )
    assert set(accuracy) == {"teacher", "student alone", "distilled student"}
    accuracy = {name: float(value) for name, value in accuracy.items()}
    assert accuracy["teacher"] > 93.0
    assert accuracy["distilled student"] > accuracy["student alone"]
    assert (tmp_path / "student.keras").exists()


@pytest.mark.skipif(
    not _keras.IS_LEGACY, reason="the QAT walkthrough needs tf_keras"
)
def test_int8_walkthrough_runs_and_int8_keeps_the_accuracy(tmp_path):
    pytest.importorskip("mlxtend")
    pytest.importorskip("tensorflow_model_optimization")
    pytest.importorskip("ai_edge_litert")
    script = tmp_path / "walkthrough.py"
    script.write_text(_python_block("## From teacher to int8 TFLite"))
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", TF_USE_LEGACY_KERAS="1")
    result = subprocess.run(
        [sys.executable, str(script)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    rows = re.findall(
        r"^\s*(.+?): Keras ([\d.]+)%, LiteRT ([\d.]+)%, (\d+) KiB",
        result.stdout,
        re.MULTILINE,
    )
    sizes = {name: int(size) for name, _, _, size in rows}
    assert set(sizes) == {"float32", "post-training int8", "QAT int8"}
    for name, keras_accuracy, litert_accuracy, _ in rows:
        assert abs(float(keras_accuracy) - float(litert_accuracy)) <= 1.0
    assert sizes["QAT int8"] < sizes["float32"] / 2
    assert re.search(r"^pruned: 7[45]% zeros", result.stdout, re.MULTILINE)
    assert (tmp_path / "student_int8.tflite").exists()
