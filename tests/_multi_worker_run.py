"""One worker of a MultiWorkerMirroredStrategy distillation (or one process
alone when TF_CONFIG is unset); run by test_distribute.py.

Usage: python _multi_worker_run.py OUTPUT.npz
"""

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

if os.environ.get("TF_CONFIG"):  # before any op, as TF requires
    strategy = tf.distribute.MultiWorkerMirroredStrategy()
else:
    strategy = tf.distribute.get_strategy()

from conftest import make_cnn  # noqa: E402
from conftest import sparse_ce  # noqa: E402
from conftest import toy_images  # noqa: E402

import tfkd  # noqa: E402
from tfkd._keras import keras  # noqa: E402


def main(output):
    keras.utils.set_random_seed(0)
    x, y = toy_images(n=64)
    weights = np.linspace(0.5, 1.5, len(x)).astype("float32")
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = (
        tf.data.experimental.AutoShardPolicy.DATA
    )
    data = tf.data.Dataset.from_tensor_slices((x, y, weights)).batch(16)
    data = data.with_options(options)
    with strategy.scope():
        distiller = tfkd.Distiller(
            make_cnn(8, name="teacher", seed=1),
            make_cnn(4, name="student", seed=2),
            distillation_loss=[
                tfkd.losses.KD(),
                (
                    tfkd.losses.SimilarityPreserving("features", "features"),
                    3000.0,
                ),
            ],
            alpha=0.5,
        )
        distiller.compile(
            keras.optimizers.SGD(0.1), loss=sparse_ce(), metrics=["accuracy"]
        )
    # Validation evaluates the student and, once, the teacher
    # (`val_teacher_*`) under the strategy.
    history = distiller.fit(
        data, validation_data=data, epochs=2, verbose=0
    ).history
    np.savez(
        output,
        loss=np.array(history["loss"]),
        val_loss=np.array(history["val_loss"]),
        val_accuracy=np.array(history["val_accuracy"]),
        val_teacher_accuracy=np.array(history["val_teacher_accuracy"]),
        **{f"w{i}": w for i, w in enumerate(distiller.student.get_weights())},
    )


if __name__ == "__main__":
    main(sys.argv[1])
