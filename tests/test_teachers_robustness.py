"""Issue 11, caches: misuse of `cache_teacher_outputs` fails early and clearly.

Each wrong call raises a `TypeError`/`ValueError` that names the problem and
the fix before the teacher runs (the data set is wrapped so that reading
any element fails), or gives the right result.
"""

import glob
import json
import os
import struct
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import tensorflow as tf
from conftest import REPO_ROOT
from conftest import make_cnn
from conftest import make_mlp
from conftest import sparse_ce
from conftest import toy_classification
from conftest import toy_images

import tfkd
from tfkd._keras import keras


def _data(n=40, batch=16, classes=3):
    x, y = toy_classification(n=n, classes=classes)
    return tf.data.Dataset.from_tensor_slices((x, y)).batch(batch)


def _unreadable(dataset):
    """`dataset` (same spec and cardinality) that fails when read."""

    def refuse(*element):
        read = tf.debugging.Assert(False, ["the teacher pass read the data"])
        with tf.control_dependencies([read]):
            element = tf.nest.map_structure(tf.identity, element)
        return element if len(element) > 1 else element[0]

    return dataset.map(refuse)


def _cache_to(teacher, data, cache_dir, **kwargs):
    return tfkd.cache_teacher_outputs(
        teacher, data, cache_dir=cache_dir, verbose=0, **kwargs
    )


def _arrays(dataset):
    """`(inputs, teacher logits, labels)` of a cached data set, concatenated."""
    parts = [
        (
            e[tfkd.teachers.INPUTS_KEY],
            e[tfkd.teachers.TEACHER_OUTPUTS_KEY][0],
            y,
        )
        for e, y in dataset
    ]
    return [np.concatenate(column) for column in zip(*parts)]


# Infinite, unbatched and non-Dataset inputs.


def test_infinite_dataset_is_refused_before_the_teacher_runs():
    with pytest.raises(
        ValueError, match=r"infinite.*`dataset\.take\(n\)`.*before `\.repeat"
    ):
        tfkd.cache_teacher_outputs(
            make_mlp(4), _unreadable(_data().repeat()), verbose=0
        )
    # The fix the message gives: cache first, then repeat the result.
    repeated = tfkd.cache_teacher_outputs(make_mlp(4), _data(), verbose=0)
    assert len(list(repeated.repeat().take(7))) == 7


@pytest.mark.parametrize("arrays", ["tuple", "array"])
def test_numpy_arrays_are_refused_with_the_dataset_to_build(arrays):
    x, y = toy_classification(n=8)
    data = (x, y) if arrays == "tuple" else x
    received = "a tuple of \\(ndarray, ndarray\\)" if arrays == "tuple" else ""
    with pytest.raises(
        TypeError,
        match=received + r".*from_tensor_slices\(\(x, y\)\)\.batch\(32\)",
    ):
        tfkd.cache_teacher_outputs(make_mlp(4), data, verbose=0)


def test_unbatched_elements_are_refused():
    x, y = toy_classification(n=8)
    labels = tf.data.Dataset.from_tensor_slices((x, y))  # rank-0 labels
    with pytest.raises(ValueError, match=r"unbatched.*dataset\.batch\(32\)"):
        tfkd.cache_teacher_outputs(make_mlp(4), _unreadable(labels), verbose=0)
    images, _ = toy_images(n=8, size=8)
    unlabelled = tf.data.Dataset.from_tensor_slices(images)  # (8, 8, 1) each
    with pytest.raises(
        ValueError, match=r"unbatched.*takes batches \[\(None, 8, 8, 1\)\]"
    ):
        tfkd.cache_teacher_outputs(
            make_cnn(4, size=8), _unreadable(unlabelled), verbose=0
        )


def test_top_k_is_checked_against_the_teachers_outputs():
    data = _unreadable(_data(classes=6))
    teacher = make_mlp(8, classes=6)
    with pytest.raises(
        ValueError, match=r"exceeds the teacher's 6 classes.*top_k <= 6"
    ):
        tfkd.cache_teacher_outputs(teacher, data, top_k=7, verbose=0)
    inputs = keras.Input((8,))
    two_heads = keras.Model(
        inputs, [keras.layers.Dense(6)(inputs), keras.layers.Dense(6)(inputs)]
    )
    with pytest.raises(ValueError, match="one logits output, but it has 2"):
        tfkd.cache_teacher_outputs(two_heads, data, top_k=2, verbose=0)


def _two_heads(width, seed):
    inputs = keras.Input((8,))
    hidden = keras.layers.Dense(
        width,
        activation="relu",
        kernel_initializer=keras.initializers.GlorotUniform(seed=seed),
    )(inputs)
    heads = [
        keras.layers.Dense(
            classes,
            kernel_initializer=keras.initializers.GlorotUniform(seed=seed + i),
        )(hidden)
        for i, classes in enumerate((3, 2), start=1)
    ]
    return keras.Model(inputs, heads)


def test_a_multi_output_teacher_keeps_its_outputs_apart(tmp_path):
    x, y = toy_classification(n=40)
    data = tf.data.Dataset.from_tensor_slices((x, (y, y % 2))).batch(16)
    teacher = _two_heads(16, seed=1)
    for cache_dir in (None, str(tmp_path / "cache")):
        cached = tfkd.cache_teacher_outputs(
            teacher, data, cache_dir=cache_dir, verbose=0
        )
        for element, _ in cached:
            outputs, features = element[tfkd.teachers.TEACHER_OUTPUTS_KEY]
            expected = teacher(element[tfkd.teachers.INPUTS_KEY])
            assert len(outputs) == 2 and features == {}
            for got, want in zip(outputs, expected):
                np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)
    students = []
    for train in (data, cached):
        distiller = tfkd.Distiller(teacher, _two_heads(4, seed=5), alpha=0.5)
        distiller.compile(keras.optimizers.SGD(0.1), loss=sparse_ce())
        distiller.fit(train, epochs=2, verbose=0)
        students.append(distiller.student.get_weights())
    for cached_weight, live_weight in zip(*students):
        np.testing.assert_allclose(cached_weight, live_weight, atol=1e-6)


def test_cache_dir_that_is_a_file_is_refused_first(tmp_path):
    path = tmp_path / "cache"
    path.write_text("not a folder")
    with pytest.raises(ValueError, match="`cache_dir` is a file"):
        _cache_to(make_mlp(4), _unreadable(_data()), str(path))


# The fingerprint.


def test_fingerprint_records_what_the_cache_depends_on(tmp_path):
    data = _data()  # 40 examples in batches of 16, 16 and 8
    cache_dir = tmp_path / "cache"  # a path object is accepted
    _cache_to(make_mlp(16, classes=3, seed=1), data, cache_dir, top_k=2)
    with open(cache_dir / "tfkd_fingerprint.json") as file:
        fingerprint = json.load(file)
    hashes = {
        key: fingerprint.pop(key)
        for key in ("teacher_architecture", "teacher_weights")
    }
    assert all(len(value) == 64 for value in hashes.values())  # SHA-256
    assert fingerprint == {
        "tfkd_version": tfkd.__version__,
        "teacher_taps": [],
        "top_k": 2,
        "element_spec": str(data.element_spec),
        "batches": 3,
        "examples": 40,
    }
    images, labels = toy_images(n=8, size=8)
    images = tf.data.Dataset.from_tensor_slices((images, labels)).batch(4)
    distiller = tfkd.Distiller(
        make_cnn(8, seed=1),
        make_cnn(4, seed=2),
        [tfkd.losses.KD(), (tfkd.losses.FitNets("features", "features"), 1)],
    )
    _cache_to(distiller, images, tmp_path / "taps")
    with open(tmp_path / "taps" / "tfkd_fingerprint.json") as file:
        assert json.load(file)["teacher_taps"] == ["features"]


def _relu_to_relu6(model):
    config = model.get_config()
    for layer in config["layers"]:
        if layer["class_name"] == "ReLU":
            layer["config"]["max_value"] = 6.0
    changed = keras.Model.from_config(config)
    changed.set_weights(model.get_weights())
    return changed


@pytest.mark.parametrize(
    "change, message",
    [
        ("weights", r"teacher weights differ"),
        ("architecture", r"teacher architecture \(config\) differ"),
        ("batches", r"number of batches: cached 3, received 5"),
        ("element_spec", r"data set element spec: cached .*int32.*int64"),
        ("taps", r"tapped teacher layers: cached \[\], received \['features'"),
    ],
)
def test_a_cache_made_otherwise_is_refused(tmp_path, change, message):
    images, labels = toy_images(n=40, size=8)
    data = tf.data.Dataset.from_tensor_slices((images, labels)).batch(16)
    teacher = make_cnn(8, name="t", seed=1)
    cache_dir = str(tmp_path / "cache")
    _cache_to(teacher, data, cache_dir)
    if change == "weights":
        teacher = make_cnn(8, name="t", seed=3)
    elif change == "architecture":
        teacher = _relu_to_relu6(teacher)
    elif change == "batches":
        data = tf.data.Dataset.from_tensor_slices((images, labels)).batch(8)
    elif change == "element_spec":
        data = data.map(lambda x, y: (x, tf.cast(y, tf.int64)))
    else:
        teacher = tfkd.Distiller(
            teacher,
            make_cnn(4, seed=2),
            [(tfkd.losses.FitNets("features", "features"), 1.0)],
        )
    with pytest.raises(ValueError, match=message) as error:
        _cache_to(teacher, _unreadable(data), cache_dir)
    assert "Delete that folder to rebuild" in str(error.value)
    assert cache_dir in str(error.value)
    if change == "weights":  # New layer names and initializer seeds.
        assert "architecture" not in str(error.value)


def test_the_same_teacher_rebuilt_reuses_the_cache(tmp_path):
    data = _data()
    teacher = make_mlp(16, name="t", seed=1)
    cache_dir = str(tmp_path / "cache")
    expected = _arrays(_cache_to(teacher, data, cache_dir))
    # Other layer and model names, compiled, frozen inside a Distiller:
    # nothing that changes its outputs.
    rebuilt = make_mlp(16, name="rebuilt", seed=7)
    rebuilt.set_weights(teacher.get_weights())
    rebuilt.compile("sgd", loss=sparse_ce())
    distiller = tfkd.Distiller(rebuilt, make_mlp(4), alpha=0.5)
    reused = _cache_to(distiller, _unreadable(data), cache_dir)
    for got, want in zip(_arrays(reused), expected):
        np.testing.assert_array_equal(got, want)


def test_a_cache_without_fingerprint_is_refused(tmp_path):
    cache_dir = str(tmp_path / "cache")
    _cache_to(make_mlp(4), _data(), cache_dir)
    os.remove(os.path.join(cache_dir, "tfkd_fingerprint.json"))
    with pytest.raises(ValueError, match="no readable tfkd_fingerprint.json"):
        _cache_to(make_mlp(4), _unreadable(_data()), cache_dir)


def _record_offsets(path):
    """Start of each record of a TFRecord-framed file (the snapshot format:
    an 8-byte length, a 4-byte CRC, the data, a 4-byte CRC)."""
    with open(path, "rb") as file:
        data = file.read()
    offsets, offset = [], 0
    while offset < len(data):
        offsets.append(offset)
        offset += 16 + struct.unpack("<Q", data[offset : offset + 8])[0]
    return offsets


@pytest.mark.parametrize(
    "cut, message",
    [
        ("batch", r"is incomplete: it holds 16 examples, but 40 were cached"),
        ("record", r"cannot be read \(DataLossError"),
    ],
)
def test_a_truncated_cache_is_refused(tmp_path, cut, message):
    cache_dir = str(tmp_path / "cache")
    _cache_to(make_mlp(4), _data(), cache_dir)  # 3 batches
    (shard,) = glob.glob(os.path.join(cache_dir, "*", "*.shard", "*"))
    offsets = _record_offsets(shard)
    # One record per tensor: (x, logits, y) per batch.
    per_batch = len(offsets) // 3
    assert len(offsets) == 3 * per_batch
    # "record": into the data of the next record, past its 12-byte header.
    size = offsets[per_batch] + (0 if cut == "batch" else 20)
    with open(shard, "r+b") as file:
        file.truncate(size)  # keeps the first batch, whole or not
    with pytest.raises(ValueError, match=message) as error:
        _cache_to(make_mlp(4), _unreadable(_data()), cache_dir)
    assert cache_dir in str(error.value)
    assert "Delete that folder to rebuild" in str(error.value)


# Two processes on one cache_dir.

_WORKER = textwrap.dedent(
    """
    import os
    import sys
    import time

    import numpy as np
    import tensorflow as tf

    import tfkd
    from tfkd._keras import keras

    model_path, cache_dir, barrier, name, out = sys.argv[1:]
    teacher = keras.models.load_model(model_path, compile=False)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(40, 8)).astype("float32")
    y = rng.integers(0, 3, size=40).astype("int32")
    read = []

    def batches():
        for start in range(0, 40, 8):
            time.sleep(0.2)  # both processes are in their teacher pass
            read.append(start)
            yield x[start : start + 8], y[start : start + 8]

    data = tf.data.Dataset.from_generator(
        batches,
        output_signature=(
            tf.TensorSpec((None, 8), tf.float32),
            tf.TensorSpec((None,), tf.int32),
        ),
    )
    open(os.path.join(barrier, name), "w").close()
    deadline = time.time() + 120
    while len(os.listdir(barrier)) < 2:  # start both calls together
        assert time.time() < deadline, "the other process never started"
        time.sleep(0.01)
    cached = tfkd.cache_teacher_outputs(
        teacher, data, cache_dir=cache_dir, verbose=0
    )
    parts = [
        (e["inputs"], e["tfkd_teacher_outputs"][0], labels)
        for e, labels in cached
    ]
    columns = [np.concatenate(column) for column in zip(*parts)]
    np.savez(out, x=columns[0], logits=columns[1], y=columns[2])
    print("batches read:", len(read))
    """
)


@pytest.mark.slow
def test_two_processes_on_one_cache_dir_both_succeed(tmp_path):
    teacher = make_mlp(16, name="t", seed=1)
    model_path = str(tmp_path / "teacher.keras")
    teacher.save(model_path)
    script = tmp_path / "worker.py"
    script.write_text(_WORKER)
    barrier = tmp_path / "barrier"
    barrier.mkdir()
    caches = tmp_path / "caches"
    caches.mkdir()
    cache_dir = str(caches / "shared")
    env = dict(
        os.environ,
        TF_CPP_MIN_LOG_LEVEL="3",
        PYTHONPATH=os.pathsep.join(
            [REPO_ROOT, os.environ.get("PYTHONPATH", "")]
        ),
    )
    processes = [
        subprocess.Popen(
            [
                sys.executable,
                str(script),
                model_path,
                cache_dir,
                str(barrier),
                name,
                str(tmp_path / f"{name}.npz"),
            ],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for name in ("a", "b")
    ]
    try:
        outputs = [p.communicate(timeout=300)[0] for p in processes]
    finally:
        for p in processes:
            p.kill()
    for p, output in zip(processes, outputs):
        assert p.returncode == 0, output[-3000:]
        # Both ran the teacher and wrote a cache: one rename lost the race.
        assert "batches read: 5" in output, output[-3000:]
    a, b = (np.load(tmp_path / f"{name}.npz") for name in ("a", "b"))
    for key in ("x", "logits", "y"):
        np.testing.assert_array_equal(a[key], b[key])
    np.testing.assert_allclose(
        a["logits"], teacher.predict(a["x"], verbose=0), rtol=1e-6, atol=1e-6
    )
    assert os.listdir(caches) == ["shared"]  # no temporary folder left
    with open(os.path.join(cache_dir, "tfkd_fingerprint.json")) as file:
        assert json.load(file)["examples"] == 40


def test_top_k_cache_of_sequence_logits_equals_the_full_cache():
    def model(name, seed):
        inputs = keras.Input((6, 4))
        outputs = keras.layers.Dense(
            5, kernel_initializer=keras.initializers.GlorotUniform(seed)
        )(inputs)
        return keras.Model(inputs, outputs, name=name)

    rng = np.random.default_rng(0)
    x = rng.normal(size=(4, 6, 4)).astype("float32")
    y = rng.integers(0, 5, size=(4, 6))
    teacher, student = model("t", 1), model("s", 2)
    distiller = tfkd.Distiller(teacher, student, alpha=0.0)
    distiller.compile("sgd")
    data = tf.data.Dataset.from_tensor_slices((x, y)).batch(2)
    live = distiller.evaluate(data, verbose=0, return_dict=True)
    cached = tfkd.cache_teacher_outputs(teacher, data, top_k=5, verbose=0)
    top_k = distiller.evaluate(cached, verbose=0, return_dict=True)
    np.testing.assert_allclose(
        top_k["distillation_loss"], live["distillation_loss"], rtol=1e-5
    )
