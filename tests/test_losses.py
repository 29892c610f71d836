"""Loss values against NumPy transcriptions of the authors' official code.

Each `_np_*` reference follows the official PyTorch implementation step by
step (NCHW where the original is NCHW), in float64: mdistiller (KD, DKD),
the logit-standardization repository, DIST_KD, and RepDistiller (FitNets,
AT, SP, RKD, PKT).
"""

import os
import sys

import numpy as np
import pytest
import tensorflow as tf

import tfkd
from tfkd._keras import keras

L = tfkd.losses


def _softmax(z, axis=1):
    z = z - z.max(axis=axis, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=axis, keepdims=True)


def _log_softmax(z, axis=1):
    z = z - z.max(axis=axis, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=axis, keepdims=True))


def _kl_div_sum(log_q, p):  # F.kl_div(log_q, p, reduction="sum")
    with np.errstate(divide="ignore", invalid="ignore"):
        plogp = np.where(p > 0, p * np.log(np.where(p > 0, p, 1.0)), 0.0)
    return (plogp - p * log_q).sum()


def _np_kd(t, s, temperature, standardize=False):
    if standardize:  # logit-standardization repo: normalize(logit)
        t = (t - t.mean(-1, keepdims=True)) / (
            1e-7 + t.std(-1, ddof=1, keepdims=True)
        )
        s = (s - s.mean(-1, keepdims=True)) / (
            1e-7 + s.std(-1, ddof=1, keepdims=True)
        )
    log_s = _log_softmax(s / temperature)
    p_t = _softmax(t / temperature)
    per_example = (p_t * (np.log(p_t) - log_s)).sum(1)
    return per_example.mean() * temperature**2


def _np_dkd(t, s, y, alpha, beta, temperature):
    gt = np.zeros_like(s)
    gt[np.arange(len(y)), y] = 1.0
    other = 1.0 - gt

    def cat_mask(p):
        return np.stack([(p * gt).sum(1), (p * other).sum(1)], axis=1)

    pred_s = cat_mask(_softmax(s / temperature))
    pred_t = cat_mask(_softmax(t / temperature))
    tckd = _kl_div_sum(np.log(pred_s), pred_t) * temperature**2 / len(y)
    pred_t2 = _softmax(t / temperature - 1000.0 * gt)
    log_s2 = _log_softmax(s / temperature - 1000.0 * gt)
    nckd = _kl_div_sum(log_s2, pred_t2) * temperature**2 / len(y)
    return alpha * tckd + beta * nckd


def _np_pearson(a, b, eps=1e-8):
    a = a - a.mean(1, keepdims=True)
    b = b - b.mean(1, keepdims=True)
    cos = (a * b).sum(1)
    return cos / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1) + eps)


def _np_dist(t, s, beta, gamma, tau):
    y_s, y_t = _softmax(s / tau), _softmax(t / tau)
    inter = 1 - _np_pearson(y_s, y_t).mean()
    intra = 1 - _np_pearson(y_s.T, y_t.T).mean()
    return beta * tau**2 * inter + gamma * tau**2 * intra


def _nchw(f):
    return np.transpose(f, (0, 3, 1, 2))


def _normalize(x, axis=1, eps=1e-12):  # F.normalize
    norm = np.linalg.norm(x, axis=axis, keepdims=True)
    return x / np.maximum(norm, eps)


def _np_adaptive_avg_pool2d(f, size):  # ATen's start/end index rule
    n, c, h, w = f.shape
    out = np.zeros((n, c, size, size))
    for i in range(size):
        h0, h1 = (i * h) // size, -((-(i + 1) * h) // size)
        for j in range(size):
            w0, w1 = (j * w) // size, -((-(j + 1) * w) // size)
            out[:, :, i, j] = f[:, :, h0:h1, w0:w1].mean(axis=(2, 3))
    return out


def _np_at(f_t, f_s, p=2):
    f_s, f_t = _nchw(f_s), _nchw(f_t)
    s_h, t_h = f_s.shape[2], f_t.shape[2]
    if s_h > t_h:
        f_s = _np_adaptive_avg_pool2d(f_s, t_h)
    elif s_h < t_h:
        f_t = _np_adaptive_avg_pool2d(f_t, s_h)

    def at(f):
        return _normalize((f**p).mean(1).reshape(f.shape[0], -1))

    return ((at(f_s) - at(f_t)) ** 2).mean()


def _np_sp(f_t, f_s):
    bsz = f_s.shape[0]
    f_s = _nchw(f_s).reshape(bsz, -1) if f_s.ndim == 4 else f_s
    f_t = _nchw(f_t).reshape(bsz, -1) if f_t.ndim == 4 else f_t
    g_s = _normalize(f_s @ f_s.T)
    g_t = _normalize(f_t @ f_t.T)
    return ((g_t - g_s) ** 2).sum() / (bsz * bsz)


def _np_pdist(e, eps=1e-12):
    e_square = (e**2).sum(1)
    res = e_square[:, None] + e_square[None, :] - 2 * e @ e.T
    res = np.sqrt(np.maximum(res, eps))
    np.fill_diagonal(res, 0)
    return res


def _np_smooth_l1(a, b):
    d = np.abs(a - b)
    return np.where(d < 1, 0.5 * d**2, d - 0.5).mean()


def _np_rkd(f_t, f_s, w_d=25.0, w_a=50.0):
    student = f_s.reshape(len(f_s), -1)
    teacher = f_t.reshape(len(f_t), -1)
    t_d = _np_pdist(teacher)
    t_d = t_d / t_d[t_d > 0].mean()
    d = _np_pdist(student)
    d = d / d[d > 0].mean()
    loss_d = _np_smooth_l1(d, t_d)

    def angles(e):
        diff = e[None, :, :] - e[:, None, :]
        unit = _normalize(diff, axis=2)
        return np.einsum("ijk,ilk->ijl", unit, unit).reshape(-1)

    loss_a = _np_smooth_l1(angles(student), angles(teacher))
    return w_d * loss_d + w_a * loss_a


def _np_pkt(f_t, f_s, eps=1e-7):
    def kernel(f):
        f = f.reshape(len(f), -1)
        f = f / (np.sqrt((f**2).sum(1, keepdims=True)) + eps)
        sim = (f @ f.T + 1.0) / 2.0
        return sim / sim.sum(1, keepdims=True)

    p_s, p_t = kernel(f_s), kernel(f_t)
    return np.mean(p_t * np.log((p_t + eps) / (p_s + eps)))


def _logits(batch, classes, scale, seed):
    rng = np.random.default_rng(seed)
    t = rng.normal(size=(batch, classes)) * scale
    s = rng.normal(size=(batch, classes)) * scale
    y = rng.integers(0, classes, size=batch)
    return t.astype("float32"), s.astype("float32"), y


def _maps(batch, size, channels, seed):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(batch, size, size, channels)).astype("float32")


LOGIT_CASES = [(2, 2, 1.0), (8, 10, 1.0), (32, 100, 5.0), (5, 3, 20.0)]


@pytest.mark.mode_independent  # pure TF functions
@pytest.mark.parametrize("batch,classes,scale", LOGIT_CASES)
@pytest.mark.parametrize("temperature", [1.0, 4.0])
def test_logit_losses_match_official_code(batch, classes, scale, temperature):
    t, s, y = _logits(batch, classes, scale, seed=batch + classes)
    t64, s64 = t.astype("float64"), s.astype("float64")
    np.testing.assert_allclose(
        L.kd_loss(t, s, temperature=temperature),
        _np_kd(t64, s64, temperature),
        rtol=1e-4,
        atol=1e-7,
    )
    np.testing.assert_allclose(
        L.kd_loss(t, s, temperature=temperature, standardize=True),
        _np_kd(t64, s64, temperature, standardize=True),
        rtol=1e-4,
        atol=1e-7,
    )
    np.testing.assert_allclose(
        L.dkd_loss(t, s, y, alpha=1.0, beta=8.0, temperature=temperature),
        _np_dkd(t64, s64, y, 1.0, 8.0, temperature),
        rtol=1e-4,
        atol=1e-7,
    )
    if batch > 2:
        np.testing.assert_allclose(
            L.dist_loss(t, s, beta=1.0, gamma=2.0, temperature=temperature),
            _np_dist(t64, s64, 1.0, 2.0, temperature),
            rtol=1e-4,
            atol=1e-7,
        )


@pytest.mark.mode_independent  # pure TF functions
@pytest.mark.parametrize("classes", [10, 100, 1000])
def test_kl_stays_accurate_in_float32_at_high_temperature(classes):
    # At T=20 the softened distributions are close and the terms of the KL
    # cancel. Rounding each log(sum(exp(z))) on its own, as two log-softmaxes
    # do, left a median error of 4-7e-5 per example (more than PyTorch's
    # float32 official code); tfkd's KL keeps it near 2e-5.
    temperature = 20.0
    t, s, y = _logits(500, classes, 1.0, seed=classes)
    t64, s64 = (
        t.astype("float64") / temperature,
        s.astype("float64") / temperature,
    )
    kd64 = (_softmax(t64) * (_log_softmax(t64) - _log_softmax(s64))).sum(1)
    kd64 *= temperature**2
    kd32 = tfkd.losses._logits.kd_loss_per_example(
        t, s, temperature=temperature
    )
    errors = np.abs(kd32.numpy() - kd64) / kd64
    assert np.median(errors) < 3e-5, np.median(errors)
    assert errors.max() < 2.5e-4, errors.max()
    np.testing.assert_allclose(  # and DKD, which shares the KL
        L.dkd_loss(t, s, y, temperature=temperature),
        _np_dkd(
            t.astype("float64"), s.astype("float64"), y, 1.0, 8.0, temperature
        ),
        rtol=2e-5,
    )


@pytest.mark.mode_independent  # pure TF functions
@pytest.mark.parametrize(
    "batch,t_shape,s_shape",
    [
        (4, (8, 8), (8, 4)),
        (6, (4, 16), (8, 8)),
        (3, (8, 2), (4, 6)),
        (5, (6, 3), (4, 5)),  # 6 -> 4: overlapping adaptive-pooling bins
        (3, (3, 2), (7, 4)),
    ],
)
def test_feature_losses_match_official_code(batch, t_shape, s_shape):
    f_t = _maps(batch, t_shape[0], t_shape[1], seed=1)
    f_s = _maps(batch, s_shape[0], s_shape[1], seed=2)
    t64, s64 = f_t.astype("float64"), f_s.astype("float64")
    np.testing.assert_allclose(
        L.attention_transfer_loss(f_t, f_s), _np_at(t64, s64), rtol=1e-4
    )
    np.testing.assert_allclose(
        L.similarity_preserving_loss(f_t, f_s), _np_sp(t64, s64), rtol=1e-4
    )
    e_t, e_s = f_t.mean(axis=(1, 2)), f_s.mean(axis=(1, 2))
    np.testing.assert_allclose(
        L.rkd_loss(e_t, e_s),
        _np_rkd(e_t.astype("float64"), e_s.astype("float64")),
        rtol=1e-4,
    )
    np.testing.assert_allclose(
        L.pkt_loss(e_t, e_s),
        _np_pkt(e_t.astype("float64"), e_s.astype("float64")),
        rtol=1e-4,
    )
    if t_shape == s_shape or t_shape[0] == s_shape[0]:
        same = f_s[..., :1] * np.ones_like(f_t)
        np.testing.assert_allclose(
            L.hint_loss(f_t, same), ((same - f_t) ** 2).mean(), rtol=1e-5
        )


@pytest.mark.mode_independent  # pure TF functions
def test_hand_checked_values():
    # KD, T=1: p_t = [1/4, 3/4], p_s = [1/2, 1/2]:
    # 0.25 ln(0.5) + 0.75 ln(1.5) = 0.1308120...
    t = np.array([[0.0, np.log(3.0)]], "float32")
    s = np.zeros((1, 2), "float32")
    np.testing.assert_allclose(
        L.kd_loss(t, s, temperature=1.0), 0.130812, rtol=1e-5
    )
    # At T=2 the same probabilities come from doubled logits, times T^2 = 4.
    np.testing.assert_allclose(
        L.kd_loss(2 * t, s, temperature=2.0), 4 * 0.130812, rtol=1e-5
    )
    # DKD with two classes: the non-target part has one class, so NCKD = 0
    # and TCKD is the binary KL above, for label 1.
    np.testing.assert_allclose(
        L.dkd_loss(t, s, [1], alpha=1.0, beta=8.0, temperature=1.0),
        0.130812,
        rtol=1e-5,
    )
    # FitNets: mean of squared differences.
    np.testing.assert_allclose(
        L.hint_loss(np.ones((2, 3)), np.zeros((2, 3))), 1.0
    )
    # Identical teacher and student: every method gives 0.
    f = _maps(4, 4, 3, seed=0)
    e = f.mean(axis=(1, 2))
    logits, _, y = _logits(4, 5, 2.0, seed=0)
    zero = [
        L.kd_loss(logits, logits),
        L.dkd_loss(logits, logits, y),
        L.dist_loss(logits, logits),
        L.hint_loss(f, f),
        L.attention_transfer_loss(f, f),
        L.similarity_preserving_loss(f, f),
        L.rkd_loss(e, e),
        L.pkt_loss(e, e),
    ]
    np.testing.assert_allclose(zero, 0.0, atol=1e-6)


@pytest.mark.mode_independent  # pure TF functions
def test_degenerate_inputs_have_finite_gradients():
    # A zero-initialised head gives all-equal logits; dead ReLUs give an
    # all-zero embedding row. PyTorch's norm has a zero subgradient there.
    t, _, _ = _logits(6, 5, 2.0, seed=4)
    flat = tf.zeros((6, 5))
    e_t = _maps(6, 1, 4, seed=5)[:, 0, 0]
    e_s = _maps(6, 1, 4, seed=6)[:, 0, 0]
    e_s[2] = 0.0
    e_s = tf.constant(e_s)
    cases = [
        # Uniform predictions: every Pearson correlation is 0, so
        # inter = intra = 1 and the loss is T^2 * (1 + 1) = 2 at T = 1.
        (lambda s: L.dist_loss(t, s), flat, 2.0),
        (
            lambda s: L.kd_loss(t, s, standardize=True),
            flat,
            _np_kd(t.astype("float64"), np.zeros((6, 5)), 4.0, True),
        ),
        (
            lambda s: L.pkt_loss(e_t, s),
            e_s,
            _np_pkt(e_t.astype("float64"), e_s.numpy().astype("float64")),
        ),
    ]
    for loss, student, expected in cases:
        with tf.GradientTape() as tape:
            tape.watch(student)
            value = loss(student)
        np.testing.assert_allclose(value, expected, rtol=1e-4)
        assert np.all(np.isfinite(tape.gradient(value, student)))


_KINDS = {"logits": "logits", "maps": "maps", "features": "vectors"}


def _entry_factory(entry):
    layers = () if entry.reads == "logits" else ("t", "s")
    return lambda: entry.build(*layers)


# Every method of the registry (fed what it `reads`), and variants.
METHODS = {
    name: (_entry_factory(entry), _KINDS[entry.reads])
    for name, entry in L.METHODS.items()
}
METHODS.update(
    {
        "kd_sigmoid": (lambda: L.KD(activation="sigmoid"), "logits"),
        "fitnets_logits": (lambda: L.FitNets(), "logits"),
        "sp_maps": (lambda: L.SimilarityPreserving("t", "s"), "maps"),
        "output_matching_huber": (
            lambda: L.OutputMatching("huber", 2.0),
            "logits",
        ),
    }
)


def _inputs(kind, dtype="float32", scale=1.0):
    if kind == "logits":
        t, s, y = _logits(8, 10, scale, seed=3)
    elif kind == "maps":
        t, s, y = _maps(8, 4, 6, 3), _maps(8, 4, 6, 4), None
    else:
        t, s, y = _maps(8, 1, 6, 3)[:, 0, 0], _maps(8, 1, 6, 4)[:, 0, 0], None
    return tf.constant(t, dtype), tf.constant(s, dtype), y


@pytest.mark.parametrize("name", sorted(METHODS))
def test_wrappers_jit_gradients_and_extremes(name):
    factory, kind = METHODS[name]
    loss = factory()
    t, s, y = _inputs(kind)
    value = loss.compute(t, s, y)
    expected_shape = () if loss.batch_relational else (8,)
    assert tuple(value.shape) == expected_shape

    @tf.function(jit_compile=True)
    def jitted(t, s):
        return loss.compute(t, s, y)

    np.testing.assert_allclose(jitted(t, s), value, rtol=1e-5, atol=1e-7)
    with tf.GradientTape() as tape:
        tape.watch(s)
        total = tf.reduce_sum(loss.compute(t, s, y))
    assert np.all(np.isfinite(tape.gradient(total, s)))
    # Logits of magnitude 50 at temperature 20, in float16: finite.
    if hasattr(loss, "temperature"):
        loss.temperature.assign(20.0)
    t16, s16, y = _inputs(kind, dtype="float16", scale=50.0)
    with tf.GradientTape() as tape:
        tape.watch(s16)
        total = tf.reduce_sum(loss.compute(t16, s16, y))
    assert total.dtype == tf.float32 and np.isfinite(total.numpy())
    assert np.all(np.isfinite(tape.gradient(total, s16).numpy()))


@pytest.mark.parametrize("name", sorted(METHODS))
def test_get_config_round_trip(name):
    factory, _ = METHODS[name]
    loss = factory()
    config = loss.get_config()
    clone = type(loss).from_config(config)
    assert clone.get_config() == config
    restored = keras.saving.deserialize_keras_object(
        keras.saving.serialize_keras_object(loss)
    )
    assert type(restored) is type(loss)
    assert restored.get_config() == config


def _defined_method_classes():
    """Every public `DistillationLoss` subclass defined in tfkd.losses."""
    found, stack = set(), [L.DistillationLoss]
    while stack:
        for subclass in stack.pop().__subclasses__():
            stack.append(subclass)
            if subclass.__module__.startswith("tfkd.losses"):
                if not subclass.__name__.startswith("_"):
                    found.add(subclass)
    return found


def test_every_method_class_is_registered_and_exported():
    """A new method is a function, a class and a `METHODS` entry: forgetting
    the entry or the export fails here (the tests' matrices, the examples
    and the docs table all read `METHODS`)."""
    registered = {entry.cls for entry in L.METHODS.values()}
    defined = _defined_method_classes()
    assert defined - registered == set(), "not in tfkd.losses.METHODS"
    for name, entry in L.METHODS.items():
        assert entry.cls.__name__ in L.__all__, name
        assert entry.function.__name__ in L.__all__, name
        assert getattr(L, entry.function.__name__) is entry.function, name
        assert entry.reads in ("logits", "maps", "features"), name
        assert entry.paper, f"{name}: the paper, for docs/methods.md"
        method = entry.build(*(() if entry.reads == "logits" else ("a", "b")))
        assert isinstance(method, entry.cls), name
        if entry.reads != "logits":
            assert method.teacher_layer == "a", name


def test_the_docs_table_lists_every_method():
    """docs/methods.md's table: one row per registered class, with its
    function and paper."""
    import conftest

    with open(os.path.join(conftest.REPO_ROOT, "docs", "methods.md")) as f:
        rows = [line for line in f if line.startswith("| `")]
    for name, entry in L.METHODS.items():
        matching = [
            r for r in rows if r.startswith(f"| `{entry.cls.__name__}(")
        ]
        assert matching, f"docs/methods.md has no row for {name}"
        assert any(f"`{entry.function.__name__}`" in r for r in matching), name


def test_the_examples_offer_every_method():
    import conftest

    if conftest.REPO_ROOT not in sys.path:  # `examples`: a repository folder.
        sys.path.insert(0, conftest.REPO_ROOT)
    from examples import methods

    assert set(L.METHODS) <= set(methods.METHODS)
    for name in L.METHODS:
        built = methods.build(name, 4.0)
        built = built if isinstance(built, list) else [built]
        classes = {type(m[0] if isinstance(m, tuple) else m) for m in built}
        assert L.METHODS[name].cls in classes, name


@pytest.mark.parametrize("name", sorted(METHODS))
def test_hyperparameters_are_declared_once(name):
    # One declared list drives validation, the schedulable float32
    # variables and get_config, which keeps the configured values (not what
    # a schedule assigned since): a resumed schedule takes its base there.
    loss = METHODS[name][0]()
    config = loss.get_config()
    for key in type(loss)._hyperparameters:
        variable = getattr(loss, key)
        assert isinstance(variable, tf.Variable)
        assert variable.dtype == tf.float32 and not variable.trainable
        assert loss.base_value(key) == config[key] == variable.numpy()
        variable.assign(variable * 3.0 + 1.0)
    assert loss.get_config() == config
    clone = type(loss).from_config(loss.get_config())
    for key in type(loss)._hyperparameters:
        assert getattr(clone, key).numpy() == config[key]
        assert clone.base_value(key) == loss.base_value(key)
    with pytest.raises(ValueError, match="has no hyper-parameter 'tau'"):
        loss.base_value("tau")


def test_base_value_and_get_config_keep_the_configuration():
    loss = L.DKD(alpha=0.5, beta=0.0, temperature=2.0)
    loss.temperature.assign(9.0)
    assert loss.base_value("temperature") == 2.0
    assert loss.base_value("beta") == 0.0
    config = loss.get_config()
    assert (config["alpha"], config["beta"], config["temperature"]) == (
        0.5,
        0.0,
        2.0,
    )
    assert config["name"] == "dkd"


def test_constructors_forward_keyword_arguments():
    cases = [
        L.KD(name="soft", reduction="sum"),
        L.DKD(name="decoupled", reduction="sum"),
        L.DIST(name="relations", reduction="sum"),
        L.FitNets(name="hint", reduction="sum"),
        L.AttentionTransfer("t", "s", name="at", reduction="sum"),
        L.SimilarityPreserving("t", "s", name="sp", reduction="sum"),
        L.RKD("t", "s", name="relational", reduction="sum"),
        L.PKT("t", "s", name="probabilistic", reduction="sum"),
    ]
    for loss in cases:
        config = loss.get_config()
        assert config["reduction"] == "sum", type(loss).__name__
        clone = type(loss).from_config(config)
        assert clone.name == loss.name and clone.reduction == "sum"
    t, s, _ = _inputs("logits")
    # reduction="sum" adds the per-example values instead of averaging them.
    np.testing.assert_allclose(
        L.KD(reduction="sum")(t, s),
        8 * L.kd_loss(t, s, temperature=4.0),
        rtol=1e-6,
    )


def test_fitnets_without_layer_names_matches_the_logits():
    # Logit matching (Ba & Caruana 2014): FitNets on the final outputs.
    loss = L.FitNets()
    assert loss.teacher_layer is None and loss.student_layer is None
    t, s, _ = _inputs("logits")
    expected = ((s.numpy() - t.numpy()).astype("float64") ** 2).mean(axis=1)
    np.testing.assert_allclose(loss.compute(t, s), expected, rtol=1e-6)
    assert "teacher_layer" not in loss.get_config()
    assert L.FitNets.from_config(loss.get_config()).teacher_layer is None
    with pytest.raises(ValueError, match="or neither"):
        L.FitNets(None, "s")
    with pytest.raises(ValueError, match="or neither"):
        L.FitNets(teacher_layer="t")


def test_keras_loss_interface_for_standalone_use():
    t, s, _ = _inputs("logits")
    np.testing.assert_allclose(
        L.KD(temperature=4.0)(t, s),
        L.kd_loss(t, s, temperature=4.0),
        rtol=1e-6,
    )
    with pytest.raises(ValueError, match="DKD needs the labels"):
        L.DKD()(t, s)


@pytest.mark.parametrize(
    "make,argument",
    [
        (lambda: L.KD(temperature=0.0), "temperature"),
        (lambda: L.KD(temperature=float("inf")), "temperature"),
        (lambda: L.DKD(beta=-1.0), "beta"),
        (lambda: L.DIST(temperature=-2.0), "temperature"),
        (lambda: L.RKD("a", "b", angle_weight=float("nan")), "angle_weight"),
        (lambda: L.AttentionTransfer("a", "b", p=0), "p"),
        (lambda: L.FitNets("a", None), "student_layer"),
    ],
)
def test_invalid_hyperparameters_name_the_argument(make, argument):
    with pytest.raises(ValueError, match=argument):
        make()


# DIST with sample weights (Keras' sum-over-batch-size convention).


def _np_weighted_pearson(a, b, w, eps=1e-8):
    """Per-column Pearson correlation over the rows, weighted by `w`."""
    da = a - (w[:, None] * a).sum(0) / w.sum()
    db = b - (w[:, None] * b).sum(0) / w.sum()
    dot = (w[:, None] * da * db).sum(0)
    norms = np.sqrt(
        (w[:, None] * da * da).sum(0) * (w[:, None] * db * db).sum(0)
    )
    return dot / (norms + eps)


def _np_weighted_dist(t, s, w, tau=1.0):
    y_s, y_t = _softmax(s / tau), _softmax(t / tau)
    n = len(w)
    inter = (w * (1 - _np_pearson(y_s, y_t))).sum() / n
    intra = w.sum() / n * (1 - _np_weighted_pearson(y_s, y_t, w).mean())
    return tau**2 * (inter + intra)


def test_weighted_dist_matches_numpy_and_unit_weights_change_nothing():
    rng = np.random.default_rng(3)
    t = rng.normal(size=(12, 5)) * 3
    s = rng.normal(size=(12, 5))
    w = rng.uniform(0, 2, size=12)
    got = tfkd.losses.dist_loss(t, s, temperature=2.0, sample_weight=w)
    np.testing.assert_allclose(
        got, _np_weighted_dist(t, s, w, tau=2.0), rtol=1e-5
    )
    np.testing.assert_allclose(
        tfkd.losses.dist_loss(t, s, sample_weight=np.ones(12)),
        tfkd.losses.dist_loss(t, s),
        rtol=1e-6,
    )


def test_weighted_dist_zero_weights_drop_examples_and_padding():
    rng = np.random.default_rng(4)
    t = rng.normal(size=(4, 6, 5)) * 2  # (batch, time, classes)
    s = rng.normal(size=(4, 6, 5))
    mask = np.ones((4, 6))
    mask[:, 4:] = 0.0  # padding
    got = tfkd.losses.dist_loss(t, s, sample_weight=mask)
    kept = tfkd.losses.dist_loss(t[:, :4], s[:, :4])
    # The sum over the 24 positions divided by 24, of which 16 are kept.
    np.testing.assert_allclose(got, kept * 16 / 24, rtol=1e-5)
    # One weighted example: no correlation over the batch (intra is 0).
    one = tfkd.losses.dist_loss(t[0], s[0], sample_weight=[1, 0, 0, 0, 0, 0])
    inter = 1 - _np_pearson(_softmax(s[0, :1]), _softmax(t[0, :1]))[0]
    np.testing.assert_allclose(one, inter / 6, rtol=1e-5)
    with pytest.raises(ValueError, match="3 sample weights for 4 examples"):
        tfkd.losses.dist_loss(t[:, 0], s[:, 0], sample_weight=[1.0, 1.0, 1.0])
