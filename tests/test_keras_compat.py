"""Pins every private Keras / TensorFlow attribute that `tfkd._keras` reads.

An upgrade that renames one fails here, by name, rather than somewhere deep
in a training step.
"""

import numpy as np
import tensorflow as tf
from conftest import make_mlp
from conftest import sparse_ce

from tfkd import _keras
from tfkd._keras import IS_LEGACY
from tfkd._keras import keras


def test_compiled_state_and_metrics():
    model = make_mlp(4)
    assert not _keras.is_compiled(model)
    model.compile("sgd", loss=sparse_ce(), metrics=["accuracy"])
    assert _keras.is_compiled(model)
    x = np.zeros((4, 8), "float32")
    model.evaluate(x, np.zeros(4, "int32"), verbose=0)
    metrics = _keras.compiled_metrics(model)
    assert metrics, "compiled metrics not found"
    if IS_LEGACY:
        assert hasattr(model, "_is_compiled")
        assert hasattr(model, "compiled_metrics")
    else:
        assert hasattr(model, "_compile_metrics")
        assert model._compile_metrics.built


def test_loss_from_logits():
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    assert _keras.loss_from_logits(loss) is True
    loss = keras.losses.CategoricalCrossentropy()
    assert _keras.loss_from_logits(loss) is False
    if not IS_LEGACY:
        assert "from_logits" in loss._fn_kwargs


def test_producing_layer_of_a_symbolic_output():
    model = make_mlp(4)
    layer = _keras.producing_layer(model.outputs[0])
    assert layer is model.get_layer("logits")
    assert _keras.producing_layer(tf.zeros(1)) is None


def test_graph_network_detection():
    assert _keras.is_graph_network(make_mlp(4))
    assert _keras.is_graph_network(keras.Sequential([keras.Input((2,))]))

    class Subclassed(keras.Model):
        def call(self, x):
            return x

    assert not _keras.is_graph_network(Subclassed())


def test_strategy_internals():
    from tensorflow.python.distribute import collective_all_reduce_strategy

    assert not _keras.in_multi_worker_mode()
    assert hasattr(
        collective_all_reduce_strategy.CollectiveAllReduceExtended,
        "_in_multi_worker_mode",
    )
    model = make_mlp(4)
    model.compile("sgd", loss=sparse_ce())
    if not IS_LEGACY:
        assert hasattr(model, "_distribute_strategy")
        assert hasattr(keras.Model, "_maybe_symbolic_build")
    assert hasattr(tf.distribute.MirroredStrategy, "_collective_key_base")


def test_graph_steps_of_a_functional_model():
    if IS_LEGACY:
        return  # Keras 3's rewrite only (tf_keras uses TFMOT).
    inputs = keras.Input((4,))
    a = keras.layers.Dense(3, name="a")(inputs)
    b = keras.layers.Dense(3, name="b")(inputs)
    added = keras.layers.Add(name="add")([a, b])
    model = keras.Model(inputs, added)
    assert hasattr(model, "_nodes_by_depth")
    steps = _keras.graph_steps(model)
    assert [layer.name for layer, *_ in steps][-1] == "add"
    assert {layer.name for layer, *_ in steps} == {"a", "b", "add"}
    layer, args, kwargs, outputs = steps[-1]
    assert args[0][0] is a and args[0][1] is b and kwargs == {}
    assert outputs == [added]


def test_tfmot_quantized_weights():
    if not IS_LEGACY:
        assert _keras.tfmot_quantized_weights(keras.layers.Dense(2)) == []
        return
    import tensorflow_model_optimization as tfmot

    model = tfmot.quantization.keras.quantize_model(make_mlp(4))
    dense = [layer for layer in model.layers if hasattr(layer, "_weight_vars")]
    assert dense, "TFMOT's quantize wrappers have no `_weight_vars`"
    weights = _keras.tfmot_quantized_weights(dense[0])
    assert weights and all("kernel" in w.name for w in weights)
