"""A distillation that can kill itself mid-epoch; run by test_distribute.py.

Usage: python _resumable_run.py OUTPUT_DIR BACKUP_DIR|- KILL_AT_STEP|-1
Writes OUTPUT_DIR/result.npz with the student's and teacher's weights and the
optimizer's step count.
"""

import os
import signal
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from conftest import make_cnn  # noqa: E402
from conftest import sparse_ce  # noqa: E402
from conftest import toy_images  # noqa: E402

import tfkd  # noqa: E402
from tfkd._keras import keras  # noqa: E402


class _KillAt(keras.callbacks.Callback):
    """SIGKILLs this process after the given global step, once."""

    def __init__(self, step, marker):
        super().__init__()
        self.step, self.marker, self.seen = step, marker, 0

    def on_train_batch_end(self, batch, logs=None):
        self.seen += 1
        if self.seen == self.step and not os.path.exists(self.marker):
            open(self.marker, "w").close()
            os.kill(os.getpid(), signal.SIGKILL)


def main(output_dir, backup_dir, kill_at):
    keras.utils.set_random_seed(0)
    tf.config.experimental.enable_op_determinism()
    x, y = toy_images(n=96)
    data = tf.data.Dataset.from_tensor_slices((x, y)).batch(16)
    teacher = make_cnn(8, name="teacher", batch_norm=True, seed=1)
    student = make_cnn(4, name="student", batch_norm=True, seed=2)
    distiller = tfkd.Distiller(teacher, student, alpha=0.2)
    distiller.compile(keras.optimizers.Adam(0.01), loss=sparse_ce())
    callbacks = []
    if backup_dir != "-":
        callbacks.append(keras.callbacks.BackupAndRestore(backup_dir))
    if kill_at > 0:
        marker = os.path.join(output_dir, "killed")
        callbacks.append(_KillAt(kill_at, marker))
    distiller.fit(data, epochs=3, callbacks=callbacks, verbose=0)
    np.savez(
        os.path.join(output_dir, "result.npz"),
        iterations=int(distiller.optimizer.iterations.numpy()),
        **{f"student_{i}": w for i, w in enumerate(student.get_weights())},
        **{f"teacher_{i}": w for i, w in enumerate(teacher.get_weights())},
    )


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]))
