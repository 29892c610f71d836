"""Cached teacher outputs and teacher ensembles."""

import os

import numpy as np
import pytest
import tensorflow as tf
from conftest import make_cnn
from conftest import make_mlp
from conftest import relative_difference
from conftest import sparse_ce
from conftest import toy_classification
from conftest import toy_images

import tfkd
from tfkd._keras import keras


def _distiller(distillation_loss=None, images=False):
    if images:
        teacher, student = make_cnn(8, name="t", seed=1), make_cnn(4, seed=2)
    else:
        teacher, student = make_mlp(16, name="t", seed=1), make_mlp(4, seed=2)
    distiller = tfkd.Distiller(
        teacher, student, distillation_loss=distillation_loss, alpha=0.3
    )
    distiller.compile(
        keras.optimizers.SGD(0.1), loss=sparse_ce(), metrics=["accuracy"]
    )
    return distiller


def _never_called(*args, **kwargs):
    raise AssertionError("the teacher ran on cached data")


@pytest.mark.parametrize("features", [False, True])
def test_cached_distillation_equals_live(features):
    if features:
        x, y = toy_images(n=40, size=8)
        method = [
            tfkd.losses.KD(),
            (tfkd.losses.FitNets("features", "features"), 1.0),
        ]
    else:
        x, y = toy_classification(n=40)
        method = None
    w = np.linspace(0.5, 1.5, len(x)).astype("float32")
    data = tf.data.Dataset.from_tensor_slices((x, y, w)).batch(16)
    live = _distiller(method, images=features)
    cached_run = _distiller(method, images=features)
    cached_run.set_weights(live.get_weights())  # the same adapter init
    live_logs = live.fit(data, epochs=3, verbose=0).history
    cached = tfkd.cache_teacher_outputs(cached_run, data, verbose=0)
    cached_run.teacher_outputs = _never_called
    cached_logs = cached_run.fit(cached, epochs=3, verbose=0).history
    assert (
        relative_difference(
            cached_run.student.get_weights(), live.student.get_weights()
        )
        < 1e-6
    )
    for key in ("loss", "student_loss", "distillation_loss", "accuracy"):
        np.testing.assert_allclose(cached_logs[key], live_logs[key], rtol=1e-6)
    cached_eval = cached_run.evaluate(cached, return_dict=True, verbose=0)
    live_eval = live.evaluate(data, return_dict=True, verbose=0)
    assert set(cached_eval) == set(live_eval)
    for key, value in live_eval.items():
        np.testing.assert_allclose(cached_eval[key], value, rtol=1e-6)


def test_cache_dir_keeps_order_and_is_reused_without_the_teacher(tmp_path):
    x, y = toy_classification(n=40)
    # Batches of 16, 16 and 8: the disk cache keeps the source's batching.
    data = tf.data.Dataset.from_tensor_slices((x, y)).batch(16)
    live = _distiller()
    cached_run = _distiller()
    cached_run.set_weights(live.get_weights())
    cache_dir = str(tmp_path / "cache")
    first = tfkd.cache_teacher_outputs(
        cached_run, data, cache_dir=cache_dir, verbose=0
    )
    assert os.path.exists(os.path.join(cache_dir, "dataset_spec.pb"))
    cached_run.teacher_outputs = _never_called
    second = tfkd.cache_teacher_outputs(
        cached_run, data, cache_dir=cache_dir, verbose=0
    )
    for (a, ya), (b, yb), (xs, ys) in zip(first, second, data):
        np.testing.assert_array_equal(a["inputs"], xs)
        np.testing.assert_array_equal(ya, ys)
        tf.nest.map_structure(np.testing.assert_array_equal, a, b)
    live.fit(data, epochs=2, verbose=0)
    cached_run.fit(second, epochs=2, verbose=0)
    assert (
        relative_difference(
            cached_run.student.get_weights(), live.student.get_weights()
        )
        < 1e-6
    )


def test_top_k_is_stored_as_values_and_indices(tmp_path):
    x, y = toy_classification(n=32, classes=6)
    data = tf.data.Dataset.from_tensor_slices((x, y)).batch(16)
    teacher = make_mlp(16, classes=6, name="t", seed=1)
    cache_dir = str(tmp_path / "top2")
    tfkd.cache_teacher_outputs(
        teacher, data, cache_dir=cache_dir, top_k=2, verbose=0
    )
    stored = tf.data.Dataset.load(cache_dir).element_spec[1]
    assert stored["top_k_values"].shape.as_list() == [None, 2]
    assert stored["top_k_values"].dtype == tf.float32
    assert stored["top_k_indices"].shape.as_list() == [None, 2]
    assert stored["top_k_indices"].dtype == tf.int32
    with pytest.raises(ValueError, match="top_k: cached 2, received 3"):
        tfkd.cache_teacher_outputs(
            teacher, data, cache_dir=cache_dir, top_k=3, verbose=0
        )
    with pytest.raises(ValueError, match="top_k: cached 2, received None"):
        tfkd.cache_teacher_outputs(teacher, data, cache_dir=cache_dir)
    distiller = tfkd.Distiller(
        teacher,
        make_mlp(4, classes=6),
        tfkd.losses.KD(temperature=100.0),
        alpha=0.5,
    )
    distiller.compile("sgd", loss=sparse_ce())
    cached = tfkd.cache_teacher_outputs(
        teacher, data, cache_dir=cache_dir, top_k=2, verbose=0
    )
    history = distiller.fit(cached, epochs=2, verbose=0).history
    assert np.isfinite(history["distillation_loss"]).all()
    assert all(np.isfinite(w).all() for w in distiller.student.get_weights())


def test_cache_errors(tmp_path):
    x, y = toy_images(n=24, size=8)
    data = tf.data.Dataset.from_tensor_slices((x, y)).batch(8)
    with pytest.raises(TypeError, match="`teacher` must be"):
        tfkd.cache_teacher_outputs("teacher", data, verbose=0)
    with pytest.raises(ValueError, match="top_k=0"):
        tfkd.cache_teacher_outputs(make_cnn(4), data, top_k=0, verbose=0)
    with pytest.raises(ValueError, match="top_k=2.5"):
        tfkd.cache_teacher_outputs(make_cnn(4), data, top_k=2.5, verbose=0)
    with pytest.raises(ValueError, match="empty"):
        tfkd.cache_teacher_outputs(make_cnn(4), data.take(0), verbose=0)
    (tmp_path / "notes.txt").write_text("not a cache")
    with pytest.raises(ValueError, match="holds no tfkd cache"):
        tfkd.cache_teacher_outputs(
            make_cnn(4), data, cache_dir=str(tmp_path), verbose=0
        )
    uneven = data.unbatch().batch(4).take(1).concatenate(data)
    with pytest.raises(ValueError, match=r"batch sizes \[4, 8\]"):
        tfkd.cache_teacher_outputs(make_cnn(4), uneven, verbose=0)
    features = _distiller(
        [(tfkd.losses.FitNets("features", "features"), 1.0)], images=True
    )
    with pytest.raises(ValueError, match=r"tap teacher layers \['features'\]"):
        tfkd.cache_teacher_outputs(features, data, top_k=2, verbose=0)


def test_top_k_matches_numpy_and_full_k_is_exact():
    x, y = toy_classification(n=32, classes=6)
    data = tf.data.Dataset.from_tensor_slices((x, y)).batch(16)
    teacher = make_mlp(16, classes=6, name="t", seed=1)
    student = make_mlp(8, classes=6, name="s", seed=2)
    distiller = tfkd.Distiller(
        teacher, student, distillation_loss=tfkd.losses.KD(4.0), alpha=0.0
    )
    distiller.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    top3 = tfkd.cache_teacher_outputs(teacher, data, top_k=3, verbose=0)
    top6 = tfkd.cache_teacher_outputs(teacher, data, top_k=6, verbose=0)
    t_full = teacher.predict(x, verbose=0)
    # The data set carries the top-k values and ids, not dense logits.
    values = np.concatenate(
        [e["tfkd_teacher_outputs"][0]["top_k_values"] for e, _ in top3]
    )
    indices = np.concatenate(
        [e["tfkd_teacher_outputs"][0]["top_k_indices"] for e, _ in top3]
    )
    top = np.argsort(-t_full, axis=1)[:, :3]
    np.testing.assert_array_equal(indices, top)
    np.testing.assert_allclose(
        values, np.take_along_axis(t_full, top, 1), rtol=1e-6
    )

    def distillation_loss(data):
        logs = distiller.evaluate(data, verbose=0, return_dict=True)
        return logs["distillation_loss"]

    np.testing.assert_allclose(
        distillation_loss(top6), distillation_loss(data), rtol=1e-6
    )
    # NumPy: the teacher's top-3 renormalised against the full student.
    z = t_full / 4.0
    p = np.zeros_like(z)
    for i, idx in enumerate(top):
        e = np.exp(z[i, idx] - z[i, idx].max())
        p[i, idx] = e / e.sum()
    s = student.predict(x, verbose=0) / 4.0
    log_q = s - np.log(np.exp(s).sum(1, keepdims=True))
    safe = np.where(p > 0, p, 1.0)
    terms = np.where(p > 0, p * (np.log(safe) - log_q), 0.0)
    np.testing.assert_allclose(
        distillation_loss(top3), 16 * terms.sum(1).mean(), rtol=1e-5
    )


def test_distiller_with_a_list_of_teachers_averages_their_logits():
    x, y = toy_classification(n=32)
    a = make_mlp(16, name="a", seed=1)
    b = make_mlp(8, name="b", seed=5)
    averaged = tfkd.teachers.ensemble([a, b])
    np.testing.assert_allclose(
        averaged.predict(x, verbose=0),
        (a.predict(x, verbose=0) + b.predict(x, verbose=0)) / 2,
        rtol=1e-5,
        atol=1e-6,
    )
    weighted = tfkd.teachers.ensemble({a: 3.0, b: 1.0})
    np.testing.assert_allclose(
        weighted.predict(x, verbose=0),
        0.75 * a.predict(x, verbose=0) + 0.25 * b.predict(x, verbose=0),
        rtol=1e-5,
        atol=1e-6,
    )
    distiller = tfkd.Distiller([a, b], make_mlp(4), alpha=0.5)
    distiller.compile("sgd", loss=sparse_ce())
    teacher_ids = {id(v) for v in a.weights + b.weights}
    assert not teacher_ids & {id(v) for v in distiller.trainable_weights}
    result = distiller.evaluate(x, y, return_dict=True, verbose=0)
    reference = tfkd.Distiller(averaged, distiller.student, alpha=0.5)
    reference.compile("sgd", loss=sparse_ce())
    expected = reference.evaluate(x, y, return_dict=True, verbose=0)
    np.testing.assert_allclose(
        result["distillation_loss"], expected["distillation_loss"], rtol=1e-6
    )


def test_ensemble_errors():
    a = make_mlp(16, name="a")
    with pytest.raises(ValueError, match="empty"):
        tfkd.teachers.ensemble([])
    with pytest.raises(ValueError, match=">= 0"):
        tfkd.teachers.ensemble([(a, -1.0)])
    with pytest.raises(ValueError, match="all zero"):
        tfkd.teachers.ensemble([(a, 0.0)])
    other = make_mlp(16, classes=5, name="five_classes")
    with pytest.raises(ValueError, match="'five_classes' outputs shape"):
        tfkd.teachers.ensemble([a, other])
