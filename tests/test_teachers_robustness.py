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


def _never_called(*args, **kwargs):
    raise AssertionError("the teacher ran")


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


def test_cache_dir_with_square_brackets_is_refused_first(tmp_path):
    # tf.data.Dataset.load read 0 batches from it: an empty cache, silently.
    path = str(tmp_path / "cache[v2]")
    with pytest.raises(
        ValueError, match=r"square bracket.*0 batches.*without `\[` or `\]`"
    ) as error:
        _cache_to(make_mlp(4), _unreadable(_data()), path)
    assert path in str(error.value)


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
    # Two 64-bit sums of per-example hashes; a random id of this cache.
    assert len(fingerprint.pop("data")) == 32
    assert len(fingerprint.pop("cache_id")) == 32
    assert fingerprint == {
        "tfkd_version": tfkd.__version__,
        "teacher_taps": [],
        "top_k": 2,
        "tail_samples": 0,
        "element_spec": str(data.element_spec),
        "batches": 3,
        "examples": 40,
        "batch_size": 16,
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
    distiller.teacher_outputs = _never_called  # the data is read, once
    reused = _cache_to(distiller, data, cache_dir)
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


# Issue 22: caches that trained silently wrong.


def _fit_counting(distiller, data, epochs, callback=None):
    """Fits; returns the number of steps of each epoch that ended."""
    steps = []

    class Count(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            steps.append(0)

        def on_train_batch_end(self, batch, logs=None):
            steps[-1] += 1

    callbacks = [Count()] + ([callback] if callback else [])
    distiller.fit(data, epochs=epochs, verbose=0, callbacks=callbacks)
    return steps


class _AfterFirstEpoch(keras.callbacks.Callback):
    def __init__(self, action):
        super().__init__()
        self.action = action

    def on_epoch_end(self, epoch, logs=None):
        if epoch == 0:
            self.action()


@pytest.mark.parametrize(
    "change, message",
    [
        ("delete", r"was deleted or replaced after it was loaded"),
        ("rebuild", r"was deleted or replaced after it was loaded"),
        ("empty_shard", r"held 3 batches when it was loaded.*fewer or more"),
    ],
)
def test_a_cache_dir_changed_during_fit_raises_instead_of_zero_steps(
    tmp_path, change, message
):
    teacher = make_mlp(16, name="t", seed=1)
    cache_dir = str(tmp_path / "cache")
    cached = _cache_to(teacher, _data(), cache_dir)
    distiller = tfkd.Distiller(teacher, make_mlp(4, seed=2), alpha=0.5)
    distiller.compile("sgd", loss=sparse_ce())

    def act():
        if change == "empty_shard":
            (shard,) = glob.glob(os.path.join(cache_dir, "*", "*.shard", "*"))
            open(shard, "wb").close()
            return
        import shutil

        shutil.rmtree(cache_dir)
        if change == "rebuild":  # the same shapes, other values
            x, y = toy_classification(n=40, seed=3)
            other = tf.data.Dataset.from_tensor_slices((x, y)).batch(16)
            _cache_to(teacher, other, cache_dir)

    with pytest.raises(tf.errors.OpError, match=message) as error:
        _fit_counting(distiller, cached, 3, _AfterFirstEpoch(act))
    assert cache_dir in str(error.value)
    # Untouched, the cache trains every epoch in full.
    fresh = _cache_to(teacher, _data(), str(tmp_path / "fresh"))
    assert _fit_counting(distiller, fresh, 2) == [3, 3]


def _distiller_of(teacher, method=None, student=None):
    classes = int(teacher.outputs[0].shape[-1])
    student = student or make_mlp(4, classes=classes, seed=2)
    distiller = tfkd.Distiller(teacher, student, method, alpha=0.5)
    distiller.compile("sgd", loss=sparse_ce())
    return distiller


@pytest.mark.parametrize("storage", ["memory", "cache_dir"])
@pytest.mark.parametrize("change", ["weights", "architecture"])
def test_a_cache_of_another_teacher_is_refused_by_the_distiller(
    tmp_path, storage, change
):
    teacher = make_mlp(16, name="cached_teacher", seed=1)
    # Compiled: its config then holds the optimizer's variables.
    teacher.compile("adam", sparse_ce())
    cache_dir = None if storage == "memory" else str(tmp_path / "cache")
    cached = tfkd.cache_teacher_outputs(
        teacher, _data(), cache_dir=cache_dir, verbose=0
    )
    if change == "weights":
        other = make_mlp(16, name="other_teacher", seed=5)
    else:  # the same weights, another activation
        config = teacher.get_config()
        for layer in config["layers"]:
            if layer["class_name"] == "Dense":
                layer["config"]["activation"] = "tanh"
        other = keras.Model.from_config(config)
        other.set_weights(teacher.get_weights())
    distiller = _distiller_of(other)
    expected = (
        r"cached from teacher 'cached_teacher', but this Distiller's "
        rf"teacher '{other.name}' differs from it in its {change}.*"
        r"tfkd\.cache_teacher_outputs\(distiller, dataset\)"
    )
    with pytest.raises(ValueError, match=expected):
        distiller.fit(cached, epochs=1, verbose=0)
    with pytest.raises(ValueError, match=expected):
        distiller.evaluate(cached, verbose=0)
    # Through `unbatch`, `shuffle` and `batch` too.
    reshuffled = cached.unbatch().shuffle(40, seed=0).batch(8)
    with pytest.raises(ValueError, match=expected):
        _distiller_of(other).fit(reshuffled, epochs=1, verbose=0)
    # Its own teacher trains on it (and reads none of the teacher's outputs).
    own = _distiller_of(teacher)
    own.teacher_outputs = _never_called
    assert _fit_counting(own, reshuffled, 1) == [5]


def test_run_eagerly_checks_a_cache_once_per_fit(monkeypatch):
    from tfkd import _fingerprint

    teacher = make_mlp(16, name="t", seed=1)
    cached = tfkd.cache_teacher_outputs(teacher, _data(), verbose=0)
    distiller = tfkd.Distiller(teacher, make_mlp(4, seed=2), alpha=0.5)
    distiller.compile("sgd", loss=sparse_ce(), run_eagerly=True)
    hashed = []
    original = _fingerprint.teacher_fingerprint

    def counted(model):
        hashed.append(model.name)
        return original(model)

    monkeypatch.setattr(_fingerprint, "teacher_fingerprint", counted)
    assert _fit_counting(distiller, cached, 2) == [3, 3]
    assert hashed == ["t"]  # once per fit, not once per step
    other = _distiller_of(make_mlp(16, name="other", seed=5))
    other.compile("sgd", loss=sparse_ce(), run_eagerly=True)
    with pytest.raises(ValueError, match="differs from it in its weights"):
        other.evaluate(cached, verbose=0)


def test_a_cache_without_the_tapped_features_is_refused():
    images, labels = toy_images(n=16, size=8)
    data = tf.data.Dataset.from_tensor_slices((images, labels)).batch(8)
    teacher = make_cnn(8, name="t", seed=1)
    cached = tfkd.cache_teacher_outputs(teacher, data, verbose=0)  # logits
    distiller = _distiller_of(
        teacher,
        [tfkd.losses.KD(), (tfkd.losses.FitNets("features", "features"), 1)],
        student=make_cnn(4, seed=2),
    )
    with pytest.raises(
        ValueError,
        match=r"read the teacher layers \['features'\].*holds? the features "
        r"of \[\] only \(missing: \['features'\]\).*cache_teacher_outputs\("
        r"distiller, dataset\)",
    ):
        distiller.fit(cached, epochs=1, verbose=0)
    # The fix: cache the Distiller, which stores the tapped features.
    cached = tfkd.cache_teacher_outputs(distiller, data, verbose=0)
    assert _fit_counting(distiller, cached, 1) == [2]


def test_cache_dir_reused_with_other_values_is_refused(tmp_path):
    teacher = make_mlp(16, name="t", seed=1)
    cache_dir = str(tmp_path / "cache")
    x, y = toy_classification(n=40)
    data = tf.data.Dataset.from_tensor_slices((x, y)).batch(16)
    _cache_to(teacher, data, cache_dir)

    def refused(x, y, data=None):
        data = data or tf.data.Dataset.from_tensor_slices((x, y)).batch(16)
        with pytest.raises(ValueError) as error:
            _cache_to(teacher, data, cache_dir)
        return str(error.value)

    # The same shapes, sizes and dtypes: other inputs, or other labels.
    other_x = refused(toy_classification(n=40, seed=3)[0], y)
    assert "data set values (inputs, labels or weights) differ" in other_x
    assert "Delete that folder to rebuild" in other_x
    relabelled = refused(x, (y + 1) % 3)
    assert "data set values (inputs, labels or weights) differ" in relabelled
    one_value = x.copy()
    one_value[39, 7] += 1e-3
    assert "values" in refused(one_value, y)
    # Another batch size that the spec and cardinality do not show.
    unknown = data.unbatch().batch(8).filter(lambda *e: True)
    batching = refused(x, y, unknown)
    assert "number of batches: cached 3, received 5" in batching
    assert "size of the first batch: cached 16, received 8" in batching
    assert "values" not in batching
    # A random augmentation in the data set: each pass gives other values.
    noisy = data.map(lambda x, y: (x + tf.random.normal(tf.shape(x)), y))
    augmented = refused(x, y, noisy)
    assert "values (inputs, labels or weights) differ" in augmented
    assert "random augmentation" in augmented
    assert "augment=" in augmented
    # The same examples reshuffled: the cache (in its order) is reused.
    order = np.random.default_rng(1).permutation(40)
    shuffled = tf.data.Dataset.from_tensor_slices((x[order], y[order]))
    reused = _cache_to(teacher, shuffled.batch(16), cache_dir)
    inputs, logits, labels = _arrays(reused)
    np.testing.assert_array_equal(inputs, x)
    np.testing.assert_array_equal(labels, y)
    np.testing.assert_allclose(logits, teacher(x), rtol=1e-6, atol=1e-6)


def _logit_matching():
    return tfkd.losses.FitNets()


class _CustomLogitLoss(tfkd.losses.DistillationLoss):
    """A user's method that does not declare `needs_all_logits`."""

    def compute(self, teacher, student, labels=None):
        return tf.reduce_mean(tf.square(teacher - student), axis=-1)


@pytest.mark.parametrize(
    "method, label",
    [
        (lambda: tfkd.losses.KD(standardize=True), r"KD\(standardize=True\)"),
        (
            lambda: tfkd.losses.KD(activation="sigmoid"),
            r"KD\(activation='sigmoid'\)",
        ),
        (_logit_matching, r"FitNets\(\) 'fitnets'"),
        (lambda: _CustomLogitLoss(name="custom"), r"_CustomLogitLoss\(\)"),
    ],
    ids=["kd_standardize", "kd_sigmoid", "logit_matching", "custom"],
)
def test_top_k_caches_are_refused_for_methods_that_read_every_logit(
    method, label
):
    x, y = toy_classification(n=32, classes=6)
    data = tf.data.Dataset.from_tensor_slices((x, y)).batch(16)
    teacher = make_mlp(16, classes=6, name="t", seed=1)
    top_2 = tfkd.cache_teacher_outputs(teacher, data, top_k=2, verbose=0)
    distiller = _distiller_of(teacher, method())
    with pytest.raises(
        ValueError,
        match=rf"top_k=2 largest of the teacher's 6 logits.*method {label}.*"
        r"reads every teacher logit.*Cache without `top_k`",
    ):
        distiller.fit(top_2, epochs=1, verbose=0)
    # Every logit kept: exact, so accepted, with the live teacher's loss.
    top_6 = tfkd.cache_teacher_outputs(teacher, data, top_k=6, verbose=0)
    cached = distiller.evaluate(top_6, verbose=0, return_dict=True)
    live = distiller.evaluate(data, verbose=0, return_dict=True)
    np.testing.assert_allclose(
        cached["distillation_loss"], live["distillation_loss"], rtol=1e-6
    )


def test_top_k_caches_serve_softmax_methods_but_not_a_multi_label_head():
    x, y = toy_classification(n=32, classes=6)
    data = tf.data.Dataset.from_tensor_slices((x, y)).batch(16)
    teacher = make_mlp(16, classes=6, name="t", seed=1)
    top_2 = tfkd.cache_teacher_outputs(teacher, data, top_k=2, verbose=0)
    for method in (tfkd.losses.KD(), tfkd.losses.DKD(), tfkd.losses.DIST()):
        distiller = _distiller_of(teacher, method)
        assert _fit_counting(distiller, top_2, 1) == [2]
    # A multi-label head (binary cross-entropy): the default is a sigmoid KD.
    multi_label = (np.eye(6)[y] + np.eye(6)[(y + 1) % 6]).astype("float32")
    labelled = tf.data.Dataset.from_tensor_slices((x, multi_label)).batch(16)
    top_2 = tfkd.cache_teacher_outputs(teacher, labelled, top_k=2, verbose=0)
    distiller = tfkd.Distiller(teacher, make_mlp(4, classes=6), alpha=0.5)
    distiller.compile("sgd", loss="binary_crossentropy")
    with pytest.raises(ValueError, match=r"KD\(activation='sigmoid'\)"):
        distiller.fit(top_2, epochs=1, verbose=0)


def _sequential(seed):
    keras.utils.set_random_seed(seed)
    return keras.Sequential(
        [
            keras.Input((8,)),
            keras.layers.Dense(16, activation="relu"),
            keras.layers.Dense(3),
        ]
    )


@pytest.mark.parametrize("nested", [False, True])
def test_an_identical_teacher_rebuilt_in_the_same_process_is_accepted(
    tmp_path, nested
):
    def build(seed):
        model = _sequential(seed)
        if not nested:
            return model
        inputs = keras.Input((8,))
        return keras.Model(inputs, model(inputs))

    teacher = build(1)
    cache_dir = str(tmp_path / "cache")
    cached = _cache_to(teacher, _data(), cache_dir)
    rebuilt = build(2)  # other auto-generated names, other weights
    assert rebuilt.name != teacher.name
    rebuilt.set_weights(teacher.get_weights())
    distiller = _distiller_of(rebuilt)
    distiller.teacher_outputs = _never_called
    reused = _cache_to(distiller, _data(), cache_dir)
    for got, want in zip(_arrays(reused), _arrays(cached)):
        np.testing.assert_array_equal(got, want)
    assert _fit_counting(distiller, cached, 1) == [3]


@pytest.fixture
def mixed_float16():
    keras.mixed_precision.set_global_policy("mixed_float16")
    yield
    keras.mixed_precision.set_global_policy("float32")


def test_top_k_cache_of_a_float16_teacher_gives_the_float32_loss(
    mixed_float16,
):
    x, y = toy_classification(n=32, classes=6)
    data = tf.data.Dataset.from_tensor_slices((x, y)).batch(16)
    teacher = make_mlp(16, classes=6, name="t", seed=1)  # float16 logits
    student = make_mlp(4, classes=6, seed=2)
    distiller = tfkd.Distiller(teacher, student, tfkd.losses.KD(), alpha=0.0)
    distiller.compile("sgd")
    top_3 = tfkd.cache_teacher_outputs(teacher, data, top_k=3, verbose=0)
    got = distiller.evaluate(top_3, verbose=0, return_dict=True)
    t = teacher.predict(x, verbose=0).astype("float64") / 4.0
    s = student.predict(x, verbose=0).astype("float64") / 4.0
    kept = np.argsort(-t, axis=1)[:, :3]
    p = np.zeros_like(t)
    for row, columns in enumerate(kept):
        e = np.exp(t[row, columns] - t[row, columns].max())
        p[row, columns] = e / e.sum()
    log_q = s - np.log(np.exp(s).sum(1, keepdims=True))
    terms = np.where(p > 0, p * (np.log(np.where(p > 0, p, 1)) - log_q), 0)
    np.testing.assert_allclose(
        got["distillation_loss"], 16 * terms.sum(1).mean(), rtol=2e-3
    )
