"""Token-level divergences (issue 25): NumPy references, masks, precision,
top-k buckets, and the masked per-token term through `tfkd.Distiller`."""

import numpy as np
import pytest
import tensorflow as tf
from conftest import mirrored_strategy
from conftest import relative_difference

import tfkd
from tfkd import losses as L
from tfkd._keras import keras

# NumPy references in float64: the papers' formulas, written out.


def _log_softmax(z):
    z = z - z.max(-1, keepdims=True)
    return z - np.log(np.exp(z).sum(-1, keepdims=True))


def _kl(p, q):
    return (p * (np.log(p) - np.log(q))).sum(-1)


def _np_forward_kl(t, s, temperature=1.0):
    p = np.exp(_log_softmax(t / temperature))
    q = np.exp(_log_softmax(s / temperature))
    return temperature**2 * _kl(p, q)


def _np_reverse_kl(t, s):
    p, q = np.exp(_log_softmax(t)), np.exp(_log_softmax(s))
    return _kl(q, p)


def _np_gjsd(t, s, beta=0.5, temperature=1.0):
    # TRL's GKDTrainer.generalized_jsd_loss (per token).
    p = np.exp(_log_softmax(t / temperature))
    q = np.exp(_log_softmax(s / temperature))
    if beta == 0:
        return _kl(p, q)
    if beta == 1:
        return _kl(q, p)
    m = beta * p + (1 - beta) * q
    return beta * _kl(p, m) + (1 - beta) * _kl(q, m)


def _np_skew_kl(t, s, alpha=0.1):
    # DistiLLM's skewed_forward_kl is -sum p log m: the KL minus H(p).
    p, q = np.exp(_log_softmax(t)), np.exp(_log_softmax(s))
    return _kl(p, alpha * p + (1 - alpha) * q)


def _np_skew_reverse_kl(t, s, alpha=0.1):
    p, q = np.exp(_log_softmax(t)), np.exp(_log_softmax(s))
    return _kl(q, (1 - alpha) * p + alpha * q)


def _np_tvd(t, s):
    p, q = np.exp(_log_softmax(t)), np.exp(_log_softmax(s))
    return 0.5 * np.abs(p - q).sum(-1)


# name: (function, NumPy reference, keyword arguments)
CASES = {
    "forward_kl": (L.forward_kl_loss, _np_forward_kl, {}),
    "forward_kl_t2": (L.forward_kl_loss, _np_forward_kl, {"temperature": 2.0}),
    "reverse_kl": (L.reverse_kl_loss, _np_reverse_kl, {}),
    "gjsd": (L.generalized_jsd_loss, _np_gjsd, {}),
    "gjsd_0.1_t2": (
        L.generalized_jsd_loss,
        _np_gjsd,
        {"beta": 0.1, "temperature": 2.0},
    ),
    "gjsd_0": (L.generalized_jsd_loss, _np_gjsd, {"beta": 0.0}),
    "gjsd_1": (L.generalized_jsd_loss, _np_gjsd, {"beta": 1.0}),
    "skew_kl": (L.skew_kl_loss, _np_skew_kl, {}),
    "skew_kl_0.5": (L.skew_kl_loss, _np_skew_kl, {"alpha": 0.5}),
    "skew_reverse_kl": (L.skew_reverse_kl_loss, _np_skew_reverse_kl, {}),
    "tvd": (L.tvd_loss, _np_tvd, {}),
}


def _logits(shape=(2, 3, 7), seed=0, scale=2.0):
    rng = np.random.default_rng(seed)
    return [
        (scale * rng.normal(size=shape)).astype("float32") for _ in range(2)
    ]


MASK = np.array([[1, 1, 0], [1, 0, 0]], "float32")


def _np_masked(reference, t, s, kwargs, mask=MASK):
    values = reference(t.astype("float64"), s.astype("float64"), **kwargs)
    return (values * mask).sum() / mask.sum()


def _np_gradient(reference, t, s, kwargs, mask=MASK, eps=1e-6):
    """Central differences of the float64 reference, w.r.t. the student."""
    s = s.astype("float64")
    gradient = np.zeros_like(s)
    for index in np.ndindex(s.shape):
        up, down = s.copy(), s.copy()
        up[index] += eps
        down[index] -= eps
        gradient[index] = (
            _np_masked(reference, t, up, kwargs, mask)
            - _np_masked(reference, t, down, kwargs, mask)
        ) / (2 * eps)
    return gradient


@pytest.mark.mode_independent
@pytest.mark.parametrize("case", sorted(CASES))
def test_token_divergence_matches_numpy_value_and_gradient(case):
    function, reference, kwargs = CASES[case]
    t, s = _logits()
    student = tf.constant(s)
    with tf.GradientTape() as tape:
        tape.watch(student)
        value = function(t, student, mask=MASK, **kwargs)
    gradient = tape.gradient(value, student).numpy()
    np.testing.assert_allclose(
        float(value), _np_masked(reference, t, s, kwargs), rtol=1e-5, atol=1e-6
    )
    np.testing.assert_allclose(
        gradient, _np_gradient(reference, t, s, kwargs), rtol=1e-3, atol=1e-6
    )
    # Padded positions: no gradient, whatever their logits.
    assert np.all(gradient[MASK == 0] == 0)


@pytest.mark.mode_independent
@pytest.mark.parametrize("temperature", [1.0, 2.5])
def test_forward_kl_gradient_wrt_the_teacher_matches_numpy(temperature):
    """The forward KL's gradients are written out (not autodiff): the
    teacher's too, for models that learn from each other's outputs."""
    t, s = _logits(seed=3)
    teacher = tf.constant(t)
    with tf.GradientTape() as tape:
        tape.watch(teacher)
        value = L.forward_kl_loss(
            teacher, s, temperature=temperature, mask=MASK
        )
    gradient = tape.gradient(value, teacher).numpy()
    t64, eps = t.astype("float64"), 1e-6
    expected = np.zeros_like(t64)
    kwargs = {"temperature": temperature}
    for index in np.ndindex(t.shape):
        up, down = t64.copy(), t64.copy()
        up[index] += eps
        down[index] -= eps
        expected[index] = (
            _np_masked(_np_forward_kl, up, s, kwargs)
            - _np_masked(_np_forward_kl, down, s, kwargs)
        ) / (2 * eps)
    np.testing.assert_allclose(gradient, expected, rtol=1e-3, atol=1e-6)


@pytest.mark.mode_independent
@pytest.mark.parametrize("case", sorted(CASES))
def test_padding_does_not_change_the_masked_mean(case):
    function, _, kwargs = CASES[case]
    t, s = _logits()
    t2, s2 = t.copy(), s.copy()
    t2[MASK == 0] = 50.0 * np.random.default_rng(1).normal(
        size=t2[MASK == 0].shape
    )
    s2[MASK == 0] = -30.0
    np.testing.assert_allclose(
        float(function(t, s, mask=MASK, **kwargs)),
        float(function(t2, s2, mask=MASK, **kwargs)),
        rtol=1e-6,
    )
    # All-padding batches give 0, not NaN; no mask is the plain mean.
    assert float(function(t, s, mask=np.zeros_like(MASK), **kwargs)) == 0.0
    np.testing.assert_allclose(
        float(function(t, s, **kwargs)),
        float(function(t, s, mask=np.ones_like(MASK), **kwargs)),
        rtol=1e-6,
    )


@pytest.mark.mode_independent
@pytest.mark.parametrize("case", sorted(CASES))
def test_float16_inputs_give_float32_maths(case):
    function, reference, kwargs = CASES[case]
    t, s = (x.astype("float16") for x in _logits())
    value = function(tf.constant(t), tf.constant(s), mask=MASK, **kwargs)
    assert value.dtype == tf.float32
    np.testing.assert_allclose(
        float(value),
        _np_masked(reference, t.astype("float32"), s, kwargs),
        rtol=1e-5,
        atol=1e-6,
    )


@pytest.mark.mode_independent
@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("scale", [1e4, 1e-4])
def test_large_and_tiny_logits_are_finite(case, scale):
    function, reference, kwargs = CASES[case]
    t, s = _logits(scale=scale)
    student = tf.constant(s)
    with tf.GradientTape() as tape:
        tape.watch(student)
        value = function(t, student, mask=MASK, **kwargs)
    gradient = tape.gradient(value, student)
    assert np.isfinite(float(value)) and float(value) >= -1e-6
    assert np.all(np.isfinite(gradient.numpy()))
    if scale < 1:  # Nearly uniform: the reference is accurate.
        np.testing.assert_allclose(
            float(value), _np_masked(reference, t, s, kwargs), atol=1e-6
        )


@pytest.mark.mode_independent
@pytest.mark.parametrize("temperature", [1e-3, 1e3])
def test_extreme_temperatures_are_finite(temperature):
    t, s = _logits(scale=10.0)
    for function in (L.forward_kl_loss, L.generalized_jsd_loss):
        value = function(t, s, temperature=temperature, mask=MASK)
        assert np.isfinite(float(value))


# Top-k teachers: k + 1 buckets.


def _top_k_teacher(t, k):
    values, indices = tf.math.top_k(t, k=k)
    return {
        "top_k_values": values,
        "top_k_indices": indices,
        "log_normalizer": tf.reduce_logsumexp(t, axis=-1),
    }


def _np_buckets(t, s, k, temperature=1.0):
    """Teacher and student distributions over the teacher's top-k ids and
    one tail bucket (T = 1: the teacher's exact top-k probabilities)."""
    order = np.argsort(-t, axis=-1)[..., :k]
    p = np.exp(_log_softmax(t / temperature))
    q = np.exp(_log_softmax(s / temperature))
    p_k = np.take_along_axis(p, order, -1)
    q_k = np.take_along_axis(q, order, -1)
    return (
        np.concatenate([p_k, 1 - p_k.sum(-1, keepdims=True)], -1),
        np.concatenate([q_k, 1 - q_k.sum(-1, keepdims=True)], -1),
    )


BUCKET_REFERENCES = {
    "forward_kl": (L.forward_kl_loss, lambda p, q: _kl(p, q), {}),
    "reverse_kl": (L.reverse_kl_loss, lambda p, q: _kl(q, p), {}),
    "gjsd": (
        L.generalized_jsd_loss,
        lambda p, q: 0.5 * _kl(p, (p + q) / 2) + 0.5 * _kl(q, (p + q) / 2),
        {},
    ),
    "skew_kl": (L.skew_kl_loss, lambda p, q: _kl(p, 0.1 * p + 0.9 * q), {}),
    "skew_reverse_kl": (
        L.skew_reverse_kl_loss,
        lambda p, q: _kl(q, 0.9 * p + 0.1 * q),
        {},
    ),
    "tvd": (L.tvd_loss, lambda p, q: 0.5 * np.abs(p - q).sum(-1), {}),
}


@pytest.mark.mode_independent
@pytest.mark.parametrize("case", sorted(BUCKET_REFERENCES))
def test_top_k_teacher_uses_k_plus_one_buckets(case):
    function, reference, kwargs = BUCKET_REFERENCES[case]
    t, s = _logits(shape=(2, 3, 11))
    p, q = _np_buckets(t.astype("float64"), s.astype("float64"), k=4)
    expected = (reference(p, q) * MASK).sum() / MASK.sum()
    value = function(_top_k_teacher(t, 4), s, mask=MASK, **kwargs)
    np.testing.assert_allclose(float(value), expected, rtol=1e-5, atol=1e-6)
    # k = vocab: no tail, exactly the dense divergence.
    dense = function(t, s, mask=MASK, **kwargs)
    full = function(_top_k_teacher(t, 11), s, mask=MASK, **kwargs)
    np.testing.assert_allclose(float(full), float(dense), rtol=1e-5, atol=1e-6)


@pytest.mark.mode_independent
def test_tail_samples_make_the_forward_kl_gradient_unbiased():
    """`tail_ids` drawn from the teacher's tail: the student's gradient is
    the full forward KL's in expectation (many samples: close), where the
    tail bucket alone leaves the tail's shape to the student."""
    t, s = _logits(shape=(2, 3, 11), seed=5)
    teacher = _top_k_teacher(t, 3)
    p = np.exp(_log_softmax(t.astype("float64")))
    tail = p.copy()
    np.put_along_axis(tail, teacher["top_k_indices"].numpy(), 0.0, axis=-1)
    tail /= tail.sum(-1, keepdims=True)
    rng = np.random.default_rng(0)
    ids = np.stack(
        [rng.choice(11, size=20000, p=row) for row in tail.reshape(-1, 11)]
    ).reshape(2, 3, 20000)

    def gradient(teacher):
        student = tf.constant(s)
        with tf.GradientTape() as tape:
            tape.watch(student)
            value = L.forward_kl_loss(teacher, student, mask=MASK)
        return value.numpy(), tape.gradient(value, student).numpy()

    _, full = gradient(t)
    bucket_value, bucket = gradient(teacher)
    sampled_value, sampled = gradient(
        {**teacher, "tail_ids": tf.constant(ids, tf.int32)}
    )
    np.testing.assert_allclose(sampled, full, atol=2e-3)
    assert np.abs(bucket - full).max() > 10 * np.abs(sampled - full).max()
    # The value stays the bucketed divergence; other temperatures ignore
    # the samples (drawn at T = 1).
    np.testing.assert_allclose(sampled_value, bucket_value, rtol=1e-6)
    hot = L.forward_kl_loss(
        {**teacher, "tail_ids": tf.constant(ids, tf.int32)},
        s,
        temperature=2.0,
        mask=MASK,
    )
    np.testing.assert_allclose(
        hot,
        L.forward_kl_loss(teacher, s, temperature=2.0, mask=MASK),
        rtol=1e-6,
    )


@pytest.mark.mode_independent
def test_top_k_teacher_missing_keys_raise():
    t, s = _logits()
    teacher = _top_k_teacher(t, 3)
    del teacher["log_normalizer"]
    with pytest.raises(ValueError, match="missing \\['log_normalizer'\\]"):
        L.forward_kl_loss(teacher, s)


# The wrappers.

WRAPPERS = {
    "ForwardKL": (L.ForwardKL, {"temperature": 2.0}, "forward_kl_t2"),
    "ReverseKL": (L.ReverseKL, {}, "reverse_kl"),
    "GeneralizedJSD": (
        L.GeneralizedJSD,
        {"beta": 0.1, "temperature": 2.0},
        "gjsd_0.1_t2",
    ),
    "SkewKL": (L.SkewKL, {"alpha": 0.5}, "skew_kl_0.5"),
    "SkewReverseKL": (L.SkewReverseKL, {}, "skew_reverse_kl"),
    "TVD": (L.TVD, {}, "tvd"),
}


@pytest.mark.parametrize("name", sorted(WRAPPERS))
def test_wrapper_returns_per_token_values_and_round_trips(name):
    cls, kwargs, case = WRAPPERS[name]
    _, reference, ref_kwargs = CASES[case]
    method = cls(**kwargs)
    t, s = _logits()
    values = method.compute(tf.constant(t), tf.constant(s))
    assert tuple(values.shape) == (2, 3)
    np.testing.assert_allclose(
        values.numpy(),
        reference(t.astype("float64"), s, **ref_kwargs),
        rtol=1e-5,
        atol=1e-6,
    )
    restored = cls.from_config(method.get_config())
    assert restored.get_config() == method.get_config()
    np.testing.assert_allclose(
        restored.compute(t, s).numpy(), values.numpy(), rtol=1e-6
    )
    assert not method.requires_labels and not method.batch_relational


@pytest.mark.parametrize(
    "make,error,message",
    [
        (lambda: L.GeneralizedJSD(beta=1.5), ValueError, "Received: beta=1.5"),
        (lambda: L.SkewKL(alpha=-0.1), ValueError, "Received: alpha=-0.1"),
        (lambda: L.SkewReverseKL(alpha="x"), TypeError, "alpha='x'"),
        (lambda: L.ForwardKL(temperature=0), ValueError, "temperature=0"),
    ],
)
def test_wrapper_arguments_are_validated(make, error, message):
    with pytest.raises(error, match=message):
        make()


# Through tfkd.Distiller: a padding mask as per-position sample weights.

VOCAB, SEQ, BATCH = 13, 5, 8


def _lm(width, name, seed):
    keras.utils.set_random_seed(seed)
    tokens = keras.Input((SEQ,), dtype="int32")
    normal = keras.initializers.RandomNormal(stddev=1.0, seed=seed)
    x = keras.layers.Embedding(VOCAB, width, embeddings_initializer=normal)(
        tokens
    )
    x = keras.layers.Dense(width, activation="tanh")(x)
    logits = keras.layers.Dense(VOCAB, kernel_initializer=normal)(x)
    return keras.Model(tokens, logits, name=name)


def _token_data(steps=3):
    rng = np.random.default_rng(0)
    x = rng.integers(1, VOCAB, size=(BATCH * steps, SEQ)).astype("int32")
    lengths = rng.integers(1, SEQ + 1, size=len(x))
    mask = (np.arange(SEQ)[None] < lengths[:, None]).astype("float32")
    y = np.roll(x, -1, axis=1) * mask.astype("int32")
    return x, y, mask


def _distiller(method, strategy=None, weights=None):
    def build():
        distiller = tfkd.Distiller(
            _lm(16, "teacher", 1),
            _lm(8, "student", 2),
            distillation_loss=method,
            alpha=0.0,
        )
        distiller.compile(keras.optimizers.SGD(0.5))
        return distiller

    if strategy is None:
        return build()
    with strategy.scope():
        distiller = build()
    if weights is not None:
        distiller.set_weights(weights)
    return distiller


@pytest.mark.parametrize("name", ["ForwardKL", "ReverseKL", "GeneralizedJSD"])
def test_distiller_term_is_the_masked_per_token_sum(name):
    cls, kwargs, case = WRAPPERS[name]
    _, reference, ref_kwargs = CASES[case]
    distiller = _distiller(cls(**kwargs))
    x, y, mask = _token_data(steps=1)
    logs = distiller.evaluate(
        x, y, sample_weight=mask, verbose=0, return_dict=True
    )
    t = distiller.teacher.predict(x, verbose=0).astype("float64")
    s = distiller.student.predict(x, verbose=0).astype("float64")
    values = reference(t, s, **ref_kwargs)
    # Keras' sum_over_batch_size: the sum over real tokens / all positions.
    np.testing.assert_allclose(
        logs["distillation_loss"],
        (values * mask).sum() / mask.size,
        rtol=1e-5,
    )


def test_two_replicas_train_like_one_device_with_a_padding_mask():
    x, y, mask = _token_data()
    data = tf.data.Dataset.from_tensor_slices((x, y, mask)).batch(BATCH)
    method = L.GeneralizedJSD
    one = _distiller(method(), tf.distribute.OneDeviceStrategy("/cpu:0"))
    start = one.get_weights()
    student_start = one.student.get_weights()
    one_logs = one.fit(data, verbose=0).history
    two = _distiller(method(), mirrored_strategy(), weights=start)
    two_logs = two.fit(data, verbose=0).history
    trained = one.student.get_weights()
    assert relative_difference(trained, student_start) > 1e-3
    assert relative_difference(two.student.get_weights(), trained) <= 1e-5
    np.testing.assert_allclose(
        two_logs["distillation_loss"],
        one_logs["distillation_loss"],
        rtol=1e-5,
    )


# Top-k teacher caches: the Distiller passes the token divergences the
# top-k values, ids and log-normalizer (k + 1 buckets).


def _cached(distiller, top_k):
    x, y, mask = _token_data(steps=1)
    data = tf.data.Dataset.from_tensor_slices((x, y, mask)).batch(BATCH)
    return tfkd.cache_teacher_outputs(distiller, data, top_k=top_k, verbose=0)


@pytest.mark.parametrize("name", ["ForwardKL", "ReverseKL", "GeneralizedJSD"])
def test_top_k_cache_gives_k_plus_one_buckets_through_the_distiller(name):
    cls, kwargs, _ = WRAPPERS[name]
    distiller = _distiller(cls(**kwargs))
    x, y, mask = _token_data(steps=1)
    cached = distiller.evaluate(
        _cached(distiller, 4), verbose=0, return_dict=True
    )
    # The same method on the top-k dict built by hand, per token, weighed
    # as the Distiller does (sum over real tokens / all positions).
    t = distiller.teacher.predict(x, verbose=0)
    s = distiller.student.predict(x, verbose=0)
    values = cls(**kwargs).compute(_top_k_teacher(t, 4), s).numpy()
    np.testing.assert_allclose(
        cached["distillation_loss"],
        (values * mask).sum() / mask.size,
        rtol=1e-5,
    )
    # All the vocabulary kept: exactly the live teacher's loss.
    live = distiller.evaluate(
        x, y, sample_weight=mask, verbose=0, return_dict=True
    )
    full = distiller.evaluate(
        _cached(distiller, VOCAB), verbose=0, return_dict=True
    )
    np.testing.assert_allclose(
        full["distillation_loss"], live["distillation_loss"], rtol=1e-5
    )
    assert cached["distillation_loss"] <= live["distillation_loss"] + 1e-6


@pytest.mark.parametrize("method, dense", [(L.ForwardKL, False), (L.KD, True)])
def test_top_k_caches_reach_the_step_compact(method, dense):
    """Memory in proportion to k: the data set carries `k` values and ids
    per position, and the step rebuilds `(batch, seq, vocab)` teacher logits
    only for a method that reads them (KD), not for the token divergences."""
    distiller = _distiller(method())
    cached = _cached(distiller, 3)
    outputs = cached.element_spec[0]["tfkd_teacher_outputs"][0]
    assert {k: v.shape.as_list() for k, v in outputs.items()} == {
        "top_k_values": [None, SEQ, 3],
        "top_k_indices": [None, SEQ, 3],
        "log_normalizer": [None, SEQ],
    }
    step = tf.function(distiller.train_step)
    graph = step.get_concrete_function(cached.element_spec).graph
    rebuilt = {op.type for op in graph.get_operations()}
    assert ("TensorScatterUpdate" in rebuilt) == dense


def test_tail_samples_are_cached_outside_the_top_k_and_reproducible(tmp_path):
    distiller = _distiller(L.ForwardKL())
    x, y, mask = _token_data(steps=1)
    data = tf.data.Dataset.from_tensor_slices((x, y, mask)).batch(BATCH)

    def cache(**kwargs):
        return tfkd.cache_teacher_outputs(
            distiller, data, top_k=3, tail_samples=5, verbose=0, **kwargs
        )

    first = cache()
    (element,) = first
    stored = element[0]["tfkd_teacher_outputs"][0]
    ids = stored["tail_ids"].numpy()
    assert ids.shape == (BATCH, SEQ, 5) and ids.dtype == np.int32
    top = stored["top_k_indices"].numpy()
    assert not (ids[..., :, None] == top[..., None, :]).any()
    ((again, *_),) = cache(cache_dir=tmp_path / "c")
    np.testing.assert_array_equal(
        again["tfkd_teacher_outputs"][0]["tail_ids"], ids
    )
    before = distiller.student.get_weights()
    distiller.fit(first, verbose=0)
    assert relative_difference(distiller.student.get_weights(), before) > 0
    # The samples are part of the cache's fingerprint.
    with pytest.raises(ValueError, match="tail_samples"):
        tfkd.cache_teacher_outputs(
            distiller, data, cache_dir=tmp_path / "c", top_k=3, verbose=0
        )
    for bad, message in (
        (dict(tail_samples=4), "pass `top_k` too"),
        (dict(top_k=VOCAB, tail_samples=4), "needs tokens outside the top-k"),
        (dict(top_k=3, tail_samples=-1), "non-negative integer"),
    ):
        with pytest.raises(ValueError, match=message):
            tfkd.cache_teacher_outputs(distiller, data, verbose=0, **bad)


def test_top_k_cache_stores_the_log_normalizer(tmp_path):
    distiller = _distiller(L.ForwardKL())
    x, y, mask = _token_data(steps=1)
    data = tf.data.Dataset.from_tensor_slices((x, y, mask)).batch(BATCH)
    tfkd.cache_teacher_outputs(
        distiller, data, cache_dir=tmp_path / "c", top_k=3, verbose=0
    )
    stored = tf.data.Dataset.load(str(tmp_path / "c")).element_spec[1]
    assert stored["log_normalizer"].shape.as_list() == [None, SEQ]
    assert stored["top_k_values"].shape.as_list() == [None, SEQ, 3]
    t = distiller.teacher.predict(x, verbose=0)
    (element,) = tf.data.Dataset.load(str(tmp_path / "c"))
    np.testing.assert_allclose(
        element[1]["log_normalizer"].numpy(),
        tf.reduce_logsumexp(t, axis=-1).numpy(),
        rtol=1e-6,
    )


def test_old_top_k_caches_without_the_tail_are_refused():
    from tfkd import _cache_format

    distiller = _distiller(L.ReverseKL())
    x, y, mask = _token_data(steps=1)
    t = distiller.teacher.predict(x, verbose=0)
    values, indices = tf.math.top_k(t, k=3)
    old = tf.data.Dataset.from_tensors(
        (
            x,
            {
                "top_k_values": values,
                "top_k_indices": indices,
                "num_classes": tf.fill([BATCH], VOCAB),
            },
            y,
            mask,
        )
    )
    described = _cache_format.description(distiller.teacher, [], 3)
    with pytest.raises(
        ValueError,
        match="ReverseKL\\(\\) 'reverse_kl' reads a top-k cache with the "
        "teacher's log-normalizer.*made by an older tfkd",
    ):
        distiller.evaluate(_cache_format.expand(old, described), verbose=0)


@pytest.mark.parametrize("name", ["ReverseKL", "GeneralizedJSD", "TVD"])
def test_mixed_precision_terms_are_float32_maths_of_the_logits(name):
    cls, kwargs, case = WRAPPERS[name]
    _, reference, ref_kwargs = CASES[case]
    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    try:
        distiller = _distiller(cls(**kwargs))
        x, y, mask = _token_data(steps=1)
        t = distiller.teacher(x)
        assert t.dtype == tf.bfloat16  # Logits in the compute dtype.
        logs = distiller.evaluate(
            x, y, sample_weight=mask, verbose=0, return_dict=True
        )
        values = reference(
            np.asarray(tf.cast(t, tf.float64)),
            np.asarray(tf.cast(distiller.student(x), tf.float64)),
            **ref_kwargs,
        )
    finally:
        keras.mixed_precision.set_global_policy("float32")
    assert np.isfinite(logs["distillation_loss"])
    np.testing.assert_allclose(
        logs["distillation_loss"], (values * mask).sum() / mask.size, rtol=1e-5
    )
