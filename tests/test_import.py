"""The package imports without its optional dependencies, and exports what
it lists."""

import importlib
import inspect
import os
import subprocess
import sys

import pytest

import tfkd

_BLOCK_OPTIONAL = """
import importlib.abc, sys
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {blocked!r}:
            raise ImportError("blocked for the test: " + name)
sys.meta_path.insert(0, Block())
import tfkd
print(sorted(tfkd.__all__))
print(sorted(m for m in {blocked!r} if m in sys.modules))
"""


def test_every_exported_name_resolves():
    for name in tfkd.__all__:
        assert getattr(tfkd, name) is not None, name
    for name in tfkd.losses.__all__:
        assert getattr(tfkd.losses, name) is not None, name


def test_imports_without_optional_dependencies():
    blocked = (
        "tensorflow_model_optimization",
        "ai_edge_litert",
        "tensorflow_datasets",
        "mlxtend",
    )
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    result = subprocess.run(
        [sys.executable, "-c", _BLOCK_OPTIONAL.format(blocked=set(blocked))],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    exported, imported = result.stdout.strip().splitlines()[-2:]
    assert exported == str(sorted(tfkd.__all__))
    assert imported == "[]"


@pytest.mark.mode_independent  # sets its own mode / reads a file
def test_import_does_not_switch_keras():
    env = {k: v for k, v in os.environ.items() if k != "TF_USE_LEGACY_KERAS"}
    env["TF_CPP_MIN_LOG_LEVEL"] = "3"
    code = (
        "import os, tfkd, tensorflow as tf; from tfkd import _keras;"
        "print(_keras.IS_LEGACY, os.environ.get('TF_USE_LEGACY_KERAS'))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.split()[-2:] == ["False", "None"]


def test_import_leaves_the_devices_configurable():
    # Users split or limit devices after importing libraries; an eager op
    # at import time would initialise TensorFlow first and make that fail
    # (and a two-replica MirroredStrategy then waits forever for cpu:1).
    code = (
        "import tfkd, tensorflow as tf\n"
        "cpu = tf.config.list_physical_devices('CPU')[0]\n"
        "tf.config.set_logical_device_configuration(\n"
        "    cpu, [tf.config.LogicalDeviceConfiguration()] * 2)\n"
        "print(len(tf.config.list_logical_devices('CPU')))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.split()[-1] == "2"


@pytest.mark.mode_independent  # sets its own mode / reads a file
def test_the_training_extras_install_tensorboard():
    # `keras.callbacks.TensorBoard` needs it; TensorFlow 2.21 does not
    # install it.
    import tomllib

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    with open(os.path.join(root, "pyproject.toml"), "rb") as f:
        extras = tomllib.load(f)["project"]["optional-dependencies"]
    assert any(r.startswith("tensorboard") for r in extras["examples"])
    assert "tfkd[qat,litert,examples,lm,test]" in extras["all"]


@pytest.mark.mode_independent  # reads a file
def test_the_lm_extra_pins_tensorflow_text_to_tensorflows_minor():
    # tensorflow-text X.Y pins tensorflow X.Y: unpinned, `.[all]` could
    # move TensorFlow to the newest tensorflow-text's minor.
    import tomllib

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    with open(os.path.join(root, "pyproject.toml"), "rb") as f:
        extras = tomllib.load(f)["project"]["optional-dependencies"]
    assert any(r.startswith("keras-hub>=0.32") for r in extras["lm"])
    (text,) = [r for r in extras["lm"] if r.startswith("tensorflow-text")]
    assert ">=2.21,<2.22" in text


PUBLIC_MODULES = (
    "callbacks",
    "export",
    "losses",
    "quantization",
    "self_distillation",
    "teachers",
)


@pytest.mark.mode_independent  # the same modules in either Keras
@pytest.mark.parametrize(
    "name", ("tfkd", *(f"tfkd.{m}" for m in PUBLIC_MODULES))
)
def test_public_modules_list_what_they_define(name):
    """Each public module has `__all__`; every public class and function
    it defines is listed there, and every listed name resolves."""
    module = importlib.import_module(name)
    assert hasattr(module, "__all__"), f"{name} has no __all__"
    for exported in module.__all__:
        assert getattr(module, exported) is not None, exported
    defined = [
        key
        for key, value in vars(module).items()
        if not key.startswith("_")
        and (inspect.isclass(value) or inspect.isfunction(value))
        and value.__module__ == name
    ]
    assert not set(defined) - set(module.__all__), name


@pytest.mark.mode_independent  # reads the source
def test_examples_and_benchmarks_use_only_public_names():
    """The scripts are what users copy: no `tfkd._*` module in them (the
    Keras that tfkd selected is `tfkd.keras`)."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(tfkd.__file__)))
    private = []
    for folder in ("examples", "benchmarks"):
        for name in sorted(os.listdir(os.path.join(root, folder))):
            if not name.endswith(".py"):
                continue
            with open(os.path.join(root, folder, name)) as f:
                text = f.read()
            for pattern in ("tfkd._", "from tfkd import _"):
                if pattern in text:
                    private.append(f"{folder}/{name}: {pattern}")
    assert not private


def test_keras_is_the_one_tfkd_selected():
    from tfkd import _keras

    assert tfkd.keras is _keras.keras
    assert tfkd.KERAS_NAME == ("tf_keras" if _keras.IS_LEGACY else "keras")


def _tfkd_imports(path, package, modules):
    """The tfkd modules that the file at `path` imports, wherever (module
    level or inside a function). `from a import b` imports module `a.b`
    where `b` is a module, else module `a`."""
    import ast

    with open(path) as f:
        tree = ast.parse(f.read())
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative
                parts = package.split(".")
                parts = parts[: len(parts) - node.level + 1]
                base = ".".join(parts + ([base] if base else []))
            names = [
                f"{base}.{alias.name}"
                if f"{base}.{alias.name}" in modules
                else base
                for alias in node.names
            ]
        else:
            continue
        for name in names:
            while name and name not in modules:
                name = name.rpartition(".")[0]
            if name:
                found.add(name)
    return found


@pytest.mark.mode_independent  # reads the source
def test_no_module_of_tfkd_is_in_an_import_cycle():
    """Nor through a function-level import: each module's imports (of
    modules, the names a `from` imports resolved to their modules) form a
    graph without cycles, so that the import order never matters."""
    root = os.path.dirname(tfkd.__file__)
    modules = {}
    for folder, _, files in os.walk(root):
        for file in files:
            if not file.endswith(".py"):
                continue
            path = os.path.join(folder, file)
            relative = os.path.relpath(path, os.path.dirname(root))[:-3]
            name = relative.replace(os.sep, ".")
            if name.endswith(".__init__"):
                name = name[: -len(".__init__")]
            modules[name] = path
    graph = {}
    for name, path in modules.items():
        if path.endswith("__init__.py"):
            package = name
        else:
            package = name.rpartition(".")[0]
        graph[name] = _tfkd_imports(path, package, modules) - {name}
    state, cycles = {}, []

    def visit(node, trail):
        state[node] = "open"
        for target in sorted(graph.get(node, ())):
            if state.get(target) == "open":
                cycles.append(trail[trail.index(target) :] + [target])
            elif target not in state:
                visit(target, trail + [target])
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])
    assert cycles == [], "import cycles: " + "; ".join(
        " -> ".join(cycle) for cycle in cycles
    )
