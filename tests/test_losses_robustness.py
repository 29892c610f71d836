"""No silent wrong results from `tfkd.losses` (issue 11).

Binary and multi-label heads (sigmoid KD), every label format, the KL at any
temperature, batches too small for relations, inputs of the wrong shape, and
half-precision inputs. References are NumPy float64 transcriptions, or exact
(50-digit `decimal`) values where float64 itself cancels.
"""

import decimal
import functools
import re

import numpy as np
import pytest
import tensorflow as tf
from test_losses import _np_dist
from test_losses import _np_dkd
from test_losses import _np_kd
from test_losses import _np_pkt
from test_losses import _np_rkd
from test_losses import _np_sp
from test_losses import _softmax

import tfkd

L = tfkd.losses


def _logits(shape, scale=1.0, seed=0, classes=None):
    rng = np.random.default_rng(seed)
    t = (rng.normal(size=shape) * scale).astype("float32")
    s = (rng.normal(size=shape) * scale).astype("float32")
    y = rng.integers(0, classes or shape[-1], size=shape[:-1])
    return t, s, y


def _gradient(loss, student):
    student = tf.constant(student)
    with tf.GradientTape() as tape:
        tape.watch(student)
        value = tf.reduce_sum(loss(student))
    return value, tape.gradient(value, student)


# Sigmoid KD (binary and multi-label heads) and sequence logits.


def _np_log_sigmoid(z):
    return -np.logaddexp(0.0, -z)


def _np_sigmoid_kd(t, s, temperature):
    """Per-example tempered Bernoulli KL, float64, mean over the logits."""
    t, s = t.astype("float64") / temperature, s.astype("float64") / temperature
    log_p, log_p_other = _np_log_sigmoid(t), _np_log_sigmoid(-t)
    log_q, log_q_other = _np_log_sigmoid(s), _np_log_sigmoid(-s)
    kl = np.exp(log_p) * (log_p - log_q) + np.exp(log_p_other) * (
        log_p_other - log_q_other
    )
    return temperature**2 * kl.mean(axis=-1)


@pytest.mark.parametrize("shape", [(6, 1), (6, 5), (3, 4, 7)])
@pytest.mark.parametrize("temperature", [1.0, 4.0])
def test_sigmoid_kd_matches_numpy(shape, temperature):
    t, s, _ = _logits(shape, scale=3.0, seed=len(shape))
    per_example = L._logits.kd_loss_per_example(
        t, s, temperature=temperature, activation="sigmoid"
    )
    assert tuple(per_example.shape) == shape[:-1]
    expected = _np_sigmoid_kd(t, s, temperature)
    np.testing.assert_allclose(per_example, expected, rtol=1e-5)
    np.testing.assert_allclose(
        L.kd_loss(t, s, temperature=temperature, activation="sigmoid"),
        expected.mean(),
        rtol=1e-5,
    )
    # A one-logit head is not silently 0 any more.
    assert np.all(per_example.numpy() > 0)


def test_sigmoid_kd_is_stable_for_saturated_logits():
    t = np.array([[1e4, -1e4, 30.0, -200.0]], "float32")
    s = np.array([[-1e4, -9e3, 31.0, 200.0]], "float32")
    value, gradient = _gradient(
        lambda s: L.kd_loss(t, s, temperature=1.0, activation="sigmoid"), s
    )
    np.testing.assert_allclose(value, _np_sigmoid_kd(t, s, 1.0), rtol=1e-5)
    assert np.all(np.isfinite(gradient.numpy()))


@pytest.mark.parametrize("temperature", [1.0, 4.0])
def test_softmax_kd_on_sequences_matches_numpy(temperature):
    t, s, _ = _logits((3, 5, 11), scale=2.0, seed=5)
    per_example = L._logits.kd_loss_per_example(t, s, temperature=temperature)
    assert tuple(per_example.shape) == (3, 5)
    flat_t = t.reshape(-1, 11).astype("float64") / temperature
    flat_s = s.reshape(-1, 11).astype("float64") / temperature
    p = _softmax(flat_t)
    log_ratio = np.log(p) - np.log(_softmax(flat_s))
    expected = temperature**2 * (p * log_ratio).sum(axis=1)
    np.testing.assert_allclose(
        per_example, expected.reshape(3, 5), rtol=1e-5, atol=1e-7
    )
    np.testing.assert_allclose(
        L.kd_loss(t, s, temperature=temperature, standardize=True),
        _np_kd(
            t.reshape(-1, 11).astype("float64"),
            s.reshape(-1, 11).astype("float64"),
            temperature,
            standardize=True,
        ),
        rtol=1e-5,
    )


ONE_LOGIT = np.array([[0.5], [-2.0], [3.0]], "float32")
SOFTMAX_ON_ONE_LOGIT = {
    "kd_loss": lambda t, s: L.kd_loss(t, s),
    "kd_loss_standardized": lambda t, s: L.kd_loss(t, s, standardize=True),
    "dkd_loss": lambda t, s: L.dkd_loss(t, s, [0, 0, 0]),
    "dist_loss": lambda t, s: L.dist_loss(t, s),
    "KD": lambda t, s: L.KD().compute(t, s),
    "DKD": lambda t, s: L.DKD().compute(t, s, [0, 0, 0]),
    "DIST": lambda t, s: L.DIST().compute(t, s),
}


@pytest.mark.parametrize("name", sorted(SOFTMAX_ON_ONE_LOGIT))
def test_softmax_on_one_logit_says_to_use_sigmoid(name):
    with pytest.raises(
        ValueError, match=r"size 1.*KD\(activation=\"sigmoid\"\)"
    ):
        SOFTMAX_ON_ONE_LOGIT[name](ONE_LOGIT, 2.0 * ONE_LOGIT)


def test_kd_activation_is_validated_and_assignable():
    with pytest.raises(ValueError, match=r"activation.*'softmax', 'sigmoid'"):
        L.KD(activation="tanh")
    with pytest.raises(ValueError, match=r"activation.*'softmax', 'sigmoid'"):
        L.kd_loss(ONE_LOGIT, ONE_LOGIT, activation="Sigmoid")
    with pytest.raises(ValueError, match="standardize"):
        L.KD(standardize=True, activation="sigmoid")
    with pytest.raises(ValueError, match="standardize"):
        L.kd_loss(ONE_LOGIT, ONE_LOGIT, standardize=True, activation="sigmoid")
    loss = L.KD(temperature=2.0)
    with pytest.raises(ValueError, match=r"activation.*'softmax', 'sigmoid'"):
        loss.activation = "relu"
    assert loss.activation == "softmax"
    # Set before the step is traced (as the Distiller does for binary heads).
    loss.activation = "sigmoid"
    assert isinstance(loss.activation, str)
    assert loss.get_config()["activation"] == "sigmoid"
    student = -ONE_LOGIT
    traced = tf.function(lambda t, s: loss.compute(t, s))
    np.testing.assert_allclose(
        traced(ONE_LOGIT, student),
        _np_sigmoid_kd(ONE_LOGIT, student, 2.0),
        rtol=1e-5,
    )
    clone = L.KD.from_config(loss.get_config())
    assert clone.activation == "sigmoid"


# Labels: sparse `(batch,)` / `(batch, 1)` and one-hot / probabilities.


@pytest.mark.parametrize("batch", [1, 2, 7])
def test_dkd_one_hot_labels_equal_sparse_labels(batch):
    t, s, y = _logits((batch, 6), scale=2.0, seed=batch)
    one_hot = np.eye(6, dtype="float32")[y]
    # Soft labels (label smoothing) whose argmax is the class.
    soft = 0.9 * one_hot + 0.1 / 6
    expected = _np_dkd(t.astype("float64"), s.astype("float64"), y, 1, 8, 4)
    for labels in (y, y[:, None], one_hot, soft, y.astype("float32")):
        np.testing.assert_allclose(
            L.dkd_loss(t, s, labels), expected, rtol=1e-5, atol=1e-7
        )
        np.testing.assert_allclose(
            np.mean(L.DKD().compute(t, s, labels)), expected, rtol=1e-5
        )


def test_dkd_sequence_labels():
    t, s, y = _logits((3, 4, 6), scale=2.0, seed=9)
    flat = _np_dkd(
        t.reshape(-1, 6).astype("float64"),
        s.reshape(-1, 6).astype("float64"),
        y.reshape(-1),
        1.0,
        8.0,
        4.0,
    )
    one_hot = np.eye(6, dtype="float32")[y]
    for labels in (y, y[..., None], one_hot):
        per_example = L.DKD().compute(t, s, labels)
        assert tuple(per_example.shape) == (3, 4)
        np.testing.assert_allclose(np.mean(per_example), flat, rtol=1e-5)


@pytest.mark.parametrize(
    "labels_shape",
    [(4, 7), (4, 2, 3), (5,), (4, 3, 1), (3, 6)],
)
def test_dkd_rejects_labels_of_the_wrong_shape(labels_shape):
    t, s, _ = _logits((4, 6), seed=1)
    labels = np.zeros(labels_shape, "float32")
    message = f"labels.shape={labels_shape}, logits.shape=(4, 6)"
    with pytest.raises(ValueError, match=re.escape(message)):
        L.dkd_loss(t, s, labels)


# The KL at any temperature, against exact values.

decimal.getcontext().prec = 50


def _dec(x):
    return decimal.Decimal(repr(float(x)))


def _exact_softmax(row, temperature):
    z = [_dec(v) / temperature for v in row]
    top = max(z)
    e = [(v - top).exp() for v in z]
    total = sum(e)
    return [v / total for v in e]


def _exact_kl(p, q):
    return sum(a * (a / b).ln() for a, b in zip(p, q) if a > 0)


def _exact_kd(t, s, temperature):
    temperature = _dec(temperature)
    return np.array(
        [
            float(
                temperature**2
                * _exact_kl(
                    _exact_softmax(a, temperature),
                    _exact_softmax(b, temperature),
                )
            )
            for a, b in zip(t, s)
        ]
    )


def _exact_sigmoid_kd(t, s, temperature):
    temperature = _dec(temperature)

    def bernoulli(z):
        p = 1 / (1 + (-_dec(z) / temperature).exp())
        return [p, 1 - p]

    rows = []
    for a, b in zip(t, s):
        kl = sum(_exact_kl(bernoulli(x), bernoulli(y)) for x, y in zip(a, b))
        rows.append(float(temperature**2 * kl / len(a)))
    return np.array(rows)


def _exact_dkd(t, s, y, temperature, alpha=1, beta=8):
    """Per-example DKD with the target class excluded exactly."""
    temperature = _dec(temperature)
    rows = []
    for a, b, target in zip(t, s, y):
        p = _exact_softmax(a, temperature)
        q = _exact_softmax(b, temperature)
        p_other = sum(v for c, v in enumerate(p) if c != target)
        q_other = sum(v for c, v in enumerate(q) if c != target)
        tckd = _exact_kl([p[target], p_other], [q[target], q_other])
        nckd = _exact_kl(
            [v / p_other for c, v in enumerate(p) if c != target],
            [v / q_other for c, v in enumerate(q) if c != target],
        )
        rows.append(float(temperature**2 * (alpha * tckd + beta * nckd)))
    return np.array(rows)


TEMPERATURES = [1.0, 4.0, 20.0, 1e3, 1e6]
SCALES = [0.01, 0.1, 1.0, 5.0, 20.0, 50.0]


def _accuracy_cases(t, s, y, temperature):
    """(per-example loss of the student logits, exact values) pairs."""
    return [
        (
            lambda student: L._logits.kd_loss_per_example(
                t, student, temperature=temperature
            ),
            _exact_kd(t, s, temperature),
        ),
        (
            lambda student: L._logits.kd_loss_per_example(
                t, student, temperature=temperature, activation="sigmoid"
            ),
            _exact_sigmoid_kd(t, s, temperature),
        ),
        (
            lambda student: L.DKD(temperature=temperature).compute(
                t, student, y
            ),
            _exact_dkd(t, s, y, temperature),
        ),
    ]


@pytest.mark.parametrize("temperature", TEMPERATURES)
def test_kl_is_accurate_at_any_temperature(temperature):
    # The sums form was off by 0.5x the value at T=20 and 1e8x at T=1e6,
    # down to negative values (a KL!). Now within 1e-5 everywhere here.
    for index, scale in enumerate(SCALES):
        t, s, y = _logits((8, 10), scale, seed=index)
        for loss, exact in _accuracy_cases(t, s, y, temperature):
            value = loss(s).numpy()
            _, gradient = _gradient(loss, s)
            assert np.all(value >= 0), (scale, value)
            np.testing.assert_allclose(value, exact, rtol=1e-4)
            assert np.all(np.isfinite(gradient.numpy())), scale


def test_kd_gradient_is_accurate_at_high_temperature():
    # d/ds of T^2 KL is T (q - p): exact where the two are nearly equal.
    temperature = 1e3
    t, s, _ = _logits((4, 10), 5.0, seed=3)
    _, gradient = _gradient(
        lambda s: L._logits.kd_loss_per_example(t, s, temperature=temperature),
        s,
    )
    temperature_d = _dec(temperature)
    exact = [
        [
            float(temperature_d * (b - a))
            for a, b in zip(
                _exact_softmax(t_row, temperature_d),
                _exact_softmax(s_row, temperature_d),
            )
        ]
        for t_row, s_row in zip(t, s)
    ]
    np.testing.assert_allclose(gradient, exact, rtol=1e-4, atol=1e-9)


def test_kl_stays_finite_beyond_the_square_of_float32():
    # T^2 overflows float32 above 1.8e19; T^2 KL tends to Var_p(t - s) / 2.
    t, s, _ = _logits((4, 10), 1.0, seed=4)
    d = (t - s).astype("float64")
    limit = 0.5 * ((d - d.mean(1, keepdims=True)) ** 2).mean(1)
    for temperature in (1e12, 1e20, 1e30):
        loss = functools.partial(
            L._logits.kd_loss_per_example, t, temperature=temperature
        )
        np.testing.assert_allclose(loss(s), limit, rtol=1e-5)
        _, gradient = _gradient(loss, s)
        assert np.all(np.isfinite(gradient.numpy()))


def test_extreme_temperature_under_xla():
    t, s, y = _logits((8, 10), 1.0, seed=2)

    @tf.function(jit_compile=True)
    def losses(t, s):
        return (
            L.kd_loss(t, s, temperature=1e6),
            L.kd_loss(t, s, temperature=1e6, activation="sigmoid"),
            L.dkd_loss(t, s, np.eye(10, dtype="float32")[y], temperature=1e6),
        )

    expected = [
        _exact_kd(t, s, 1e6).mean(),
        _exact_sigmoid_kd(t, s, 1e6).mean(),
        _exact_dkd(t, s, y, 1e6).mean(),
    ]
    np.testing.assert_allclose(losses(t, s), expected, rtol=1e-4)


# Batch-relational methods on batches of one and two.

RELATIONAL = {
    "dist": (
        lambda t, s: L.dist_loss(t, s, temperature=2.0),
        lambda t, s: _np_dist(t, s, 1.0, 1.0, 2.0),
    ),
    "similarity_preserving": (L.similarity_preserving_loss, _np_sp),
    "rkd": (L.rkd_loss, _np_rkd),
    "pkt": (L.pkt_loss, _np_pkt),
}


@pytest.mark.parametrize("name", sorted(RELATIONAL))
@pytest.mark.parametrize("batch", [1, 2])
def test_batch_relational_methods_on_tiny_batches(name, batch):
    loss, reference = RELATIONAL[name]
    t, s, _ = _logits((batch, 5), 2.0, seed=batch)
    value, gradient = _gradient(lambda s: loss(t, s), s)
    assert np.isfinite(value.numpy())
    assert np.all(np.isfinite(gradient.numpy()))
    t64, s64 = t.astype("float64"), s.astype("float64")
    if batch == 2:
        expected = reference(t64, s64)
    elif name == "dist":
        # No correlation over one example: only the inter-class term.
        y_t, y_s = _softmax(t64 / 2.0), _softmax(s64 / 2.0)
        a, b = y_s[0] - y_s[0].mean(), y_t[0] - y_t[0].mean()
        pearson = a @ b / (np.linalg.norm(a) * np.linalg.norm(b) + 1e-8)
        expected = 4.0 * (1.0 - pearson)
    else:
        expected = 0.0  # no pair to relate
    np.testing.assert_allclose(value, expected, rtol=1e-5, atol=1e-7)


# Inputs of the wrong shape.

T4 = np.ones((4, 6), "float32")
MAPS = np.ones((4, 3, 3, 2), "float32")
MISMATCHED = {
    "hint_list": (
        lambda: L.hint_loss(T4, [T4, T4]),
        r"hint_loss.*\(4, 6\).*\(2, 4, 6\)",
    ),
    "hint_width": (
        lambda: L.hint_loss(T4, np.ones((4, 5))),
        r"hint_loss.*\(4, 6\).*\(4, 5\).*FitNets",
    ),
    "fitnets_logits": (
        lambda: L.FitNets().compute(T4, [T4, T4]),
        r"hint_loss.*\(4, 6\).*\(2, 4, 6\)",
    ),
    "kd_classes": (
        lambda: L.kd_loss(T4, np.ones((4, 5))),
        r"kd_loss.*\(4, 6\).*\(4, 5\)",
    ),
    "kd_rank_one": (
        lambda: L.kd_loss(T4[0], T4[0]),
        r"kd_loss.*\(batch, \.\.\., classes\).*\(6,\)",
    ),
    "kd_sigmoid_list": (
        lambda: L.kd_loss(T4, [T4, T4], activation="sigmoid"),
        r"kd_loss.*\(4, 6\).*\(2, 4, 6\)",
    ),
    "dkd_classes": (
        lambda: L.dkd_loss(T4, np.ones((4, 5)), [0, 1, 2, 3]),
        r"dkd_loss.*\(4, 6\).*\(4, 5\)",
    ),
    "dist_list": (
        lambda: L.DIST().compute(T4, [T4, T4]),
        r"dist_loss.*\(4, 6\).*\(2, 4, 6\)",
    ),
    "attention_rank": (
        lambda: L.attention_transfer_loss(T4, T4),
        r"attention_transfer_loss needs NHWC.*\(4, 6\)",
    ),
    "attention_batch": (
        lambda: L.attention_transfer_loss(MAPS, MAPS[:2]),
        r"attention_transfer_loss.*batch.*\(4, 3, 3, 2\).*\(2, 3, 3, 2\)",
    ),
    "attention_unknown_size": (
        lambda: tf.function(
            L.attention_transfer_loss,
            input_signature=[
                tf.TensorSpec((None, None, None, 2)),
                tf.TensorSpec((None, 3, 3, 2)),
            ],
        ).get_concrete_function(),
        r"attention_transfer_loss needs static spatial sizes",
    ),
    "similarity_list": (
        lambda: L.similarity_preserving_loss(T4, [T4, T4]),
        r"similarity_preserving_loss.*batch.*\(4, 6\).*\(2, 4, 6\)",
    ),
    "rkd_batch": (
        lambda: L.RKD("t", "s").compute(T4, T4[:3]),
        r"rkd_loss.*batch.*\(4, 6\).*\(3, 6\)",
    ),
    "pkt_list": (
        lambda: L.pkt_loss(T4, [T4, T4]),
        r"pkt_loss.*batch.*\(4, 6\).*\(2, 4, 6\)",
    ),
}


@pytest.mark.parametrize("name", sorted(MISMATCHED))
def test_mismatched_shapes_raise(name):
    call, message = MISMATCHED[name]
    with pytest.raises(ValueError, match=message):
        call()


# Half-precision inputs compute in float32.


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_half_precision_inputs_compute_in_float32(dtype):
    t, s, y = _logits((4, 3, 6), 50.0, seed=7)
    one_hot = np.eye(6, dtype="float32")[y]
    t_half, s_half = tf.constant(t, dtype), tf.constant(s, dtype)
    labels_half = tf.constant(one_hot, dtype)
    t_32, s_32 = tf.cast(t_half, tf.float32), tf.cast(s_half, tf.float32)
    losses = [
        lambda t, s, y: L.KD(temperature=20.0, activation="sigmoid").compute(
            t, s
        ),
        lambda t, s, y: L.DKD(temperature=20.0).compute(t, s, y),
        lambda t, s, y: L._logits.kd_loss_per_example(t, s, temperature=20.0),
    ]
    for loss in losses:
        value, gradient = _gradient(
            functools.partial(loss, t_half, y=labels_half), s_half
        )
        assert value.dtype == tf.float32 and np.isfinite(value.numpy())
        assert np.all(np.isfinite(tf.cast(gradient, tf.float32).numpy()))
        np.testing.assert_allclose(
            loss(t_half, s_half, labels_half),
            loss(t_32, s_32, one_hot),
            rtol=1e-6,
        )


def test_kd_with_classes_far_below_the_others_matches_float64():
    # A top-k cache rebuilds dropped classes at min(top-k) - 1e6: the
    # student's probability of them must not be lost to cancellation.
    t = np.array([[-1e6, -1e6, 0.439, 0.230, 0.785, -1e6]], "float32")
    s = np.array([[0.5, -1.0, 0.2, 1.3, -0.4, 0.9]], "float32")
    t64, s64 = t.astype("float64") / 4.0, s.astype("float64") / 4.0
    log_p = t64 - np.log(np.exp(t64 - t64.max()).sum()) - t64.max()
    log_q = s64 - np.log(np.exp(s64 - s64.max()).sum()) - s64.max()
    expected = 16.0 * (np.exp(log_p) * (log_p - log_q)).sum()
    got = float(tfkd.losses.kd_loss(t, s, temperature=4.0))
    np.testing.assert_allclose(got, expected, rtol=1e-5)
    dkd = tfkd.losses.dkd_loss(t, s, np.array([4]), temperature=4.0)
    assert np.isfinite(float(dkd))


@pytest.mark.parametrize(
    "loss",
    [
        lambda t, s: tfkd.losses.kd_loss(t, s, standardize=True),
        lambda t, s: tfkd.losses.dist_loss(t, s),
    ],
    ids=["kd_standardized", "dist"],
)
def test_constant_student_logits_give_bounded_gradients(loss):
    # A zero input through a zero-bias head gives equal logits: dividing by
    # eps instead of their (zero) spread gave gradients of ~1e6.
    t = tf.constant(np.random.default_rng(0).normal(size=(8, 5)), tf.float32)
    s = tf.Variable(
        np.concatenate(
            [np.zeros((1, 5)), np.random.default_rng(1).normal(size=(7, 5))]
        ).astype("float32")
    )
    with tf.GradientTape() as tape:
        value = loss(t, s)
    gradient = tape.gradient(value, s)
    assert np.isfinite(float(value))
    assert float(tf.reduce_max(tf.abs(gradient))) < 10.0


# Issue 22: a NaN in the inputs surfaces as a NaN loss.

_METHOD_CLASSES = sorted(
    name
    for name in L.__all__
    if isinstance(getattr(L, name), type)
    and issubclass(getattr(L, name), L.DistillationLoss)
    and getattr(L, name) is not L.DistillationLoss
)
_LOSS_FUNCTIONS = sorted(
    name
    for name in L.__all__
    if not isinstance(getattr(L, name), type) and name.endswith("_loss")
)


def _any_method(cls):
    """An instance of `cls`: logit methods take no layer names, feature
    methods need them (any names: `compute` is called directly)."""
    try:
        return cls()
    except (TypeError, ValueError):
        return cls("teacher_layer", "student_layer")


def _nan_inputs(method, side, value):
    """Teacher and student tensors (logits, or NHWC maps of one shape for
    feature methods), with `value` in example 0 on `side`, and labels."""
    rng = np.random.default_rng(0)
    shape = (6, 5) if method.teacher_layer is None else (6, 4, 4, 3)
    tensors = [rng.normal(size=shape).astype("float32") for _ in range(2)]
    tensors["ts".index(side)][(0,) * len(shape)] = value
    labels = np.array([0, 1, 2, 3, 4, 0])
    return tensors[0], tensors[1], labels


def test_nan_tests_cover_every_method_and_function():
    # Derived from `tfkd.losses.__all__`: a new method is covered as added.
    assert {"KD", "DKD", "DIST", "FitNets", "PKT"} <= set(_METHOD_CLASSES)
    assert {"dist_loss", "kd_loss", "pkt_loss"} <= set(_LOSS_FUNCTIONS)


@pytest.mark.parametrize("side", ["t", "s"])
@pytest.mark.parametrize("name", _METHOD_CLASSES)
def test_every_method_returns_nan_for_a_nan_input(name, side):
    # DIST returned a finite 1.91 for a NaN student logit (its gradients
    # NaN): `safe_sqrt`'s zero for a NaN norm made the row's Pearson
    # correlation 0. Then `TerminateOnNaN` never stops such a student.
    method = _any_method(getattr(L, name))
    teacher, student, labels = _nan_inputs(method, side, np.nan)
    value = method.compute(teacher, student, labels).numpy()
    if side == "t" and not getattr(method, "requires_teacher", True):
        # A teacher-free method (TeacherFreeKD) never reads the teacher.
        assert np.isfinite(value).all()
        return
    if method.batch_relational:
        assert value.shape == () and np.isnan(value)
    else:  # The NaN example's loss, the others' stay finite.
        assert np.isnan(value[0]) and np.isfinite(value[1:]).all()
    if method.accepts_sample_weight:
        weights = np.ones(6, "float32")
        weighted = method.compute(teacher, student, sample_weight=weights)
        assert np.isnan(weighted.numpy())
    # As a standalone Keras loss too (DKD needs its labels there).
    if not method.requires_labels:
        assert np.isnan(method(teacher, student).numpy())


@pytest.mark.parametrize("side", ["t", "s"])
@pytest.mark.parametrize("name", ["kd_standardized", "dist", "pkt"])
def test_an_inf_input_gives_a_non_finite_loss(name, side):
    # The methods through `safe_sqrt` (a norm, a standard deviation) gave a
    # finite loss for an inf logit or feature too.
    method = {
        "kd_standardized": L.KD(standardize=True),
        "dist": L.DIST(),
        "pkt": L.PKT("t", "s"),
    }[name]
    teacher, student, labels = _nan_inputs(method, side, np.inf)
    assert not np.isfinite(method.compute(teacher, student).numpy()).all()


@pytest.mark.parametrize("side", ["t", "s"])
@pytest.mark.parametrize("name", _LOSS_FUNCTIONS)
def test_every_loss_function_returns_nan_for_a_nan_input(name, side):
    function = getattr(L, name)
    labelled = ("dkd_loss", "pskd_loss")
    logits = name in ("kd_loss", "dist_loss", "teacher_free_loss", *labelled)
    rng = np.random.default_rng(1)
    shape = (6, 5) if logits else (6, 4, 4, 3)
    tensors = [rng.normal(size=shape).astype("float32") for _ in range(2)]
    tensors["ts".index(side)][-1, ...] = np.nan  # One whole example.
    args = tensors + ([np.arange(6) % 5] if name in labelled else [])
    if name == "teacher_free_loss":  # labels first, no teacher
        if side == "t":
            pytest.skip("teacher_free_loss reads labels, not a teacher")
        args = [np.arange(6) % 5, tensors[1]]
    assert np.isnan(function(*args).numpy())


def test_nan_free_numerics_hold_next_to_nan_propagation():
    # What `safe_sqrt`'s zero is for: constant student logits still give
    # finite values and gradients.
    constant = np.zeros((4, 5), "float32")
    teacher = np.random.default_rng(2).normal(size=(4, 5)).astype("float32")
    for loss in (
        lambda s: L.dist_loss(teacher, s),
        lambda s: L.kd_loss(teacher, s, standardize=True),
        lambda s: L.pkt_loss(teacher, s),
    ):
        value, gradient = _gradient(loss, constant)
        assert np.isfinite(value) and np.isfinite(gradient).all()
