"""Scale-out correctness: MirroredStrategy, mixed precision, crash recovery.

conftest.py splits the CPU into two logical devices, so two replicas of
MirroredStrategy run here. Every method must train on two replicas exactly as
on one device with the same global batch.
"""

import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf
from conftest import METHODS
from conftest import NO_ONEDNN
from conftest import make_cnn
from conftest import relative_difference
from conftest import run_script
from conftest import run_two_workers
from conftest import sparse_ce
from conftest import toy_images

import tfkd
from tfkd._keras import keras

TESTS_DIR = os.path.dirname(os.path.abspath(__file__))

GLOBAL_BATCH = 16
STEPS = 3


def _data(weighted):
    x, y = toy_images(n=GLOBAL_BATCH * STEPS, size=8)
    if weighted:
        w = np.random.default_rng(3).uniform(0.0, 2.0, len(x))
        w = w.astype("float32")
        return tf.data.Dataset.from_tensor_slices((x, y, w)).batch(GLOBAL_BATCH)
    return tf.data.Dataset.from_tensor_slices((x, y)).batch(GLOBAL_BATCH)


# Methods checked together, as the terms of one Distiller: a method whose
# term is wrong on two replicas moves the student away from the one-device
# run, whatever the other terms do. Grouped by what they read (the
# registry's `reads`): logits, feature maps, features of any rank (batch
# relations among them see the whole global batch).
METHOD_GROUPS = {
    group: [
        name
        for name, entry in tfkd.losses.METHODS.items()
        if entry.reads == reads
    ]
    for group, reads in (
        ("logits", "logits"),
        ("maps", "maps"),
        ("features", "features"),
    )
}
METHOD_GROUPS["maps"].append("kd+fitnets")


def test_method_groups_hold_every_method():
    grouped = [name for group in METHOD_GROUPS.values() for name in group]
    assert sorted(grouped) == sorted(METHODS)


def _terms(group):
    """The distillation terms of every method of `group`, in one list."""
    terms = []
    for name in METHOD_GROUPS[group]:
        entry = METHODS[name]()
        terms.extend(entry if isinstance(entry, list) else [entry])
    return terms


def _build(group, alpha):
    teacher = make_cnn(8, name="teacher", seed=1, batch_norm=True)
    student = make_cnn(4, name="student", seed=2)
    distiller = tfkd.Distiller(
        teacher, student, distillation_loss=_terms(group), alpha=alpha
    )
    distiller.compile(
        keras.optimizers.SGD(0.1, momentum=0.9),
        loss=sparse_ce(),
        metrics=["accuracy"],
    )
    return distiller


def _train(method, alpha, weighted, strategy, initial_weights=None):
    with strategy.scope():
        distiller = _build(method, alpha)
    if initial_weights is not None:
        distiller.set_weights(initial_weights)
    start = distiller.get_weights()
    start_student = distiller.student.get_weights()
    history = distiller.fit(_data(weighted), epochs=1, verbose=0)
    return distiller, start, start_student, history.history


def _mirrored():
    # TensorFlow caches collective instances by key for the whole process;
    # its own tests give each new strategy a fresh key range ("only set
    # this in tests"), or a step with other shapes reuses a stale instance.
    tf.distribute.MirroredStrategy._collective_key_base += 1000
    return tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])


@pytest.mark.parametrize("alpha,weighted", [(0.0, False), (0.5, True)])
@pytest.mark.parametrize("method", sorted(METHOD_GROUPS))
def test_two_replicas_train_like_one_device(method, alpha, weighted):
    one = tf.distribute.OneDeviceStrategy("/cpu:0")
    single, start, start_student, single_logs = _train(
        method, alpha, weighted, one
    )
    mirrored = _mirrored()
    assert mirrored.num_replicas_in_sync == 2
    replicated, _, _, mirrored_logs = _train(
        method, alpha, weighted, mirrored, initial_weights=start
    )
    trained = single.student.get_weights()
    assert relative_difference(trained, start_student) > 1e-4
    assert (
        relative_difference(replicated.student.get_weights(), trained) <= 1e-5
    )
    for adapter_a, adapter_b in zip(single.adapters, replicated.adapters):
        if adapter_a is not None:
            assert (
                relative_difference(
                    adapter_b.get_weights(), adapter_a.get_weights()
                )
                <= 1e-5
            )
    for key in ("loss", "student_loss", "distillation_loss", "accuracy"):
        np.testing.assert_allclose(
            mirrored_logs[key], single_logs[key], rtol=1e-4, atol=1e-5
        )


@pytest.mark.parametrize("dtype_policy", ["mixed_float16", "mixed_bfloat16"])
@pytest.mark.parametrize("method", sorted(METHOD_GROUPS))
def test_mixed_precision_trains_to_finite_losses(policy, dtype_policy, method):
    policy(dtype_policy)
    distiller = _build(method, alpha=0.5)
    if dtype_policy == "mixed_float16":
        assert "LossScale" in type(distiller.optimizer).__name__
    assert distiller.student.layers[-1].compute_dtype != "float32"
    history = distiller.fit(_data(weighted=True), epochs=2, verbose=0)
    for key in ("loss", "student_loss", "distillation_loss"):
        assert np.all(np.isfinite(history.history[key])), (key, history)


def test_high_temperature_and_large_logits_stay_finite(policy):
    policy("mixed_float16")
    x, y = toy_images(n=32, size=8)

    def scaled(model):  # the largest logit has magnitude 50
        peak = np.abs(np.array(model.predict(x, verbose=0))).max()
        out = keras.layers.Rescaling(50.0 / float(peak))(model.output)
        return keras.Model(model.input, out, name=model.name + "_x50")

    teacher = scaled(make_cnn(8, name="teacher", seed=1))
    student = scaled(make_cnn(4, name="student", seed=2))
    assert np.abs(np.array(teacher.predict(x, verbose=0))).max() > 45
    distiller = tfkd.Distiller(teacher, student, temperature=20.0)
    distiller.compile("adam", loss=sparse_ce())
    history = distiller.fit(x, y, epochs=2, batch_size=16, verbose=0)
    for key in ("loss", "student_loss", "distillation_loss"):
        assert np.all(np.isfinite(history.history[key]))
    grads_finite = [
        np.all(np.isfinite(w)) for w in distiller.student.get_weights()
    ]
    assert all(grads_finite)


def _resumable_run(output_dir, kill_at):
    env = dict(os.environ, PYTHONPATH=TESTS_DIR, TF_CPP_MIN_LOG_LEVEL="3")
    return subprocess.run(
        [
            sys.executable,
            os.path.join(TESTS_DIR, "_resumable_run.py"),
            str(output_dir),
            str(output_dir / "backup"),
            str(kill_at),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.mark.slow
def test_sigkill_mid_epoch_then_backup_and_restore_gives_same_student(
    tmp_path,
):
    reference_dir = tmp_path / "uninterrupted"
    crashed_dir = tmp_path / "crashed"
    reference_dir.mkdir()
    crashed_dir.mkdir()
    assert _resumable_run(reference_dir, -1).returncode == 0
    # 6 steps per epoch: step 9 is the middle of the second epoch.
    killed = _resumable_run(crashed_dir, 9)
    assert killed.returncode == -9, killed.stderr[-2000:]
    assert not (crashed_dir / "result.npz").exists()
    resumed = _resumable_run(crashed_dir, 9)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    expected = np.load(reference_dir / "result.npz")
    actual = np.load(crashed_dir / "result.npz")
    assert int(actual["iterations"]) == int(expected["iterations"]) == 18
    for key in expected.files:
        np.testing.assert_array_equal(actual[key], expected[key], err_msg=key)


@pytest.mark.slow
@pytest.mark.xdist_group("multi_process")
def test_two_workers_on_localhost_train_like_one_process(tmp_path):
    script = os.path.join(TESTS_DIR, "_multi_worker_run.py")
    env = dict(os.environ, PYTHONPATH=TESTS_DIR, TF_CPP_MIN_LOG_LEVEL="3")
    run_two_workers(
        lambda index: [
            sys.executable,
            script,
            str(tmp_path / f"worker{index}.npz"),
        ],
        env=env,
        timeout=240,
    )
    run_script(
        script,
        str(tmp_path / "single.npz"),
        env=dict(PYTHONPATH=TESTS_DIR, **NO_ONEDNN),
        timeout=240,
    )
    worker0, worker1, alone = (
        np.load(tmp_path / name)
        for name in ("worker0.npz", "worker1.npz", "single.npz")
    )
    keys = [key for key in alone.files if key.startswith("w")]
    for key in keys:
        np.testing.assert_array_equal(worker0[key], worker1[key])
    assert (
        relative_difference(
            [worker0[k] for k in keys], [alone[k] for k in keys]
        )
        <= 1e-5
    )
    for key in ("loss", "val_loss", "val_accuracy", "val_teacher_accuracy"):
        np.testing.assert_allclose(worker0[key], alone[key], rtol=1e-5)
    # The teacher's logs: evaluated once, repeated each epoch.
    assert alone["val_teacher_accuracy"].shape == (2,)
    assert alone["val_teacher_accuracy"][0] == alone["val_teacher_accuracy"][1]
