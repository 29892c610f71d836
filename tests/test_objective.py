"""The objective's functions alone, on tensors, without a Distiller."""

import warnings

import numpy as np
import pytest
import tensorflow as tf

import tfkd
from tfkd import _objective

# Functions of tensors: the same TensorFlow code under either Keras.
pytestmark = pytest.mark.mode_independent


def _scale(local=4, global_=8, replicas=2):
    return _objective.Scale(
        replicas, tf.constant(float(local)), tf.constant(float(global_))
    )


def test_weighted_average_is_keras_sum_over_batch_size():
    values = tf.constant([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
    mask = tf.constant([[1.0, 1.0, 0.0], [1.0, 0.0, 0.0]])
    term = _objective.weighted_average(values, mask, _scale(2, 2, 1))
    # sum(w * l) / number of entries.
    np.testing.assert_allclose(term.mean, (1 + 2 + 4) / 6)
    np.testing.assert_allclose(term.share, (1 + 2 + 4) / 6)


def test_share_is_the_global_mean_and_mean_the_local_one():
    values = tf.constant([1.0, 2.0, 3.0, 6.0])
    term = _objective.weighted_average(values, None, _scale(4, 8, 2))
    np.testing.assert_allclose(term.share, 12 / 8)
    np.testing.assert_allclose(term.mean, 12 / 4)


@pytest.mark.parametrize(
    "weights,expected",
    [
        ([1.0, 0.0], [[1, 1, 1], [0, 0, 0]]),  # per example: every position
        ([[1.0], [0.0]], [[1, 1, 1], [0, 0, 0]]),
        ([[1, 0, 1], [0, 1, 0]], [[1, 0, 1], [0, 1, 0]]),  # per position
    ],
)
def test_broadcast_weights(weights, expected):
    values = tf.zeros((2, 3))
    got = _objective.broadcast_weights(tf.constant(weights, tf.float32), values)
    np.testing.assert_array_equal(got, expected)


def test_position_weights_on_a_per_example_loss_average_to_examples():
    got = _objective.broadcast_weights(
        tf.constant([[1.0, 0.0], [1.0, 1.0]]), tf.zeros((2,))
    )
    np.testing.assert_allclose(got, [0.5, 1.0])


def test_weights_that_do_not_fit_are_a_clear_error():
    with pytest.raises(ValueError, match="do not fit a loss of shape"):
        _objective.broadcast_weights(tf.ones((3, 2)), tf.zeros((2, 5)))


def test_method_term_of_a_relational_method_is_divided_by_replicas():
    t = tf.random.stateless_normal((6, 4), seed=(1, 2))
    s = tf.random.stateless_normal((6, 4), seed=(3, 4))
    method = tfkd.losses.DIST()
    term = _objective.method_term(method, t, s, None, None, _scale(6, 6, 1))
    expected = float(tfkd.losses.dist_loss(t, s))
    np.testing.assert_allclose(term.mean, expected, rtol=1e-6)
    np.testing.assert_allclose(term.share, expected, rtol=1e-6)


def test_method_term_passes_sample_weights_to_dist_and_warns_for_others():
    t = tf.random.stateless_normal((6, 4), seed=(1, 2))
    s = tf.random.stateless_normal((6, 4), seed=(3, 4))
    weights = tf.constant([1.0, 0.5, 0.0, 2.0, 1.0, 1.0])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        term = _objective.method_term(
            tfkd.losses.DIST(), t, s, None, weights, _scale(6, 6, 1)
        )
    expected = float(tfkd.losses.dist_loss(t, s, sample_weight=weights))
    assert expected != pytest.approx(float(tfkd.losses.dist_loss(t, s)))
    np.testing.assert_allclose(term.mean, expected, rtol=1e-6)
    method = tfkd.losses.SimilarityPreserving("features", "features")
    with pytest.warns(UserWarning, match="ignores sample weights"):
        _objective.method_term(method, t, s, None, weights, _scale(6, 6, 1))


def test_hard_label_terms_sum_over_outputs_and_skip_none():
    logits = tf.constant([[2.0, 0.0], [0.0, 2.0]])
    labels = tf.constant([0, 0])
    loss = tf.keras.losses.sparse_categorical_crossentropy
    one = _objective.hard_label_term(
        lambda y, z: loss(y, z, from_logits=True),
        labels,
        logits,
        None,
        _scale(2, 2, 1),
    )
    both = _objective.hard_label_terms(
        [
            (lambda y, z: loss(y, z, from_logits=True), labels, logits, None),
            (None, labels, logits, None),
            (lambda y, z: loss(y, z, from_logits=True), labels, logits, None),
        ],
        _scale(2, 2, 1),
    )
    np.testing.assert_allclose(both.mean, 2 * float(one.mean), rtol=1e-6)


def test_total_weighs_the_terms():
    student = _objective.Term(tf.constant(1.0), tf.constant(2.0))
    distillation = _objective.Term(tf.constant(3.0), tf.constant(4.0))
    total = _objective.total(tf.constant(0.25), student, distillation)
    np.testing.assert_allclose(total.share, 0.25 * 1 + 0.75 * 3)
    np.testing.assert_allclose(total.mean, 0.25 * 2 + 0.75 * 4)
