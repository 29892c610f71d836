"""The files of a `cache_dir`: checks, atomic writes, checked loads.

A cache is a `tf.data.Dataset.save` folder plus `tfkd_fingerprint.json`
(what was cached: teacher, taps, top-k, data set; and how many examples).
It is written beside its final path and renamed, so a folder either holds a
complete cache or none; a load checks the fingerprint and the size.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid

import tensorflow as tf

from tfkd import _fingerprint

_SPEC_FILE = "dataset_spec.pb"
_FINGERPRINT_FILE = "tfkd_fingerprint.json"
_REBUILD = (
    "Delete that folder to rebuild the cache, or pass another `cache_dir`."
)


def batch_size(element):
    """The number of examples in a batched dataset element."""
    return int(tf.shape(tf.nest.flatten(element)[0])[0])


def holds_cache(cache_dir):
    """Whether `cache_dir` holds a saved dataset (a tfkd cache)."""
    return os.path.exists(os.path.join(cache_dir, _SPEC_FILE))


def check_cache_dir(cache_dir):
    if os.path.exists(cache_dir) and not os.path.isdir(cache_dir):
        raise ValueError(
            "`cache_dir` is a file, but it must be a folder (new, empty, or "
            f"a tfkd cache). Received: cache_dir={cache_dir!r}. Pass a "
            "folder path."
        )
    if (
        os.path.isdir(cache_dir)
        and os.listdir(cache_dir)
        and not os.path.exists(os.path.join(cache_dir, _SPEC_FILE))
    ):
        raise ValueError(
            f"`cache_dir` holds no tfkd cache (no {_SPEC_FILE}) but is "
            "not empty, and tfkd does not overwrite other files. Pass a "
            f"new or empty folder. Received: cache_dir={cache_dir!r}"
        )


def load(cache_dir, fingerprint):
    """Loads a cache after checking its fingerprint and its size."""
    try:
        with open(os.path.join(cache_dir, _FINGERPRINT_FILE)) as file:
            stored = json.load(file)
    except (OSError, ValueError) as error:
        raise ValueError(
            f"The cache in cache_dir={cache_dir!r} has no readable "
            f"{_FINGERPRINT_FILE} ({error}): it was made by an older tfkd or "
            f"damaged, and tfkd cannot tell what it holds. {_REBUILD}"
        ) from error
    differences = _fingerprint.differences(stored, fingerprint)
    if differences:
        raise ValueError(
            f"cache_dir={cache_dir!r} holds teacher outputs made with another "
            f"teacher, data set or settings: {'; '.join(differences)}. "
            f"{_REBUILD}"
        )
    dataset = tf.data.Dataset.load(cache_dir)
    sizes = dataset.map(
        lambda *element: tf.shape(tf.nest.flatten(element)[0], tf.int64)[0]
    )
    try:
        found = int(sizes.reduce(tf.constant(0, tf.int64), tf.add))
    except tf.errors.OpError as error:
        raise ValueError(
            f"The cache in cache_dir={cache_dir!r} cannot be read "
            f"({type(error).__name__}: {error.message}). {_REBUILD}"
        ) from error
    if found != stored.get("examples"):
        raise ValueError(
            f"The cache in cache_dir={cache_dir!r} is incomplete: it holds "
            f"{found} examples, but {stored.get('examples')} were cached (a "
            f"truncated or damaged file). {_REBUILD}"
        )
    return dataset


def save(batches, first, cache_dir, fingerprint):
    """Writes beside `cache_dir`, then renames: complete caches only."""
    target = os.path.abspath(cache_dir)
    parent, name = os.path.split(target)
    os.makedirs(parent, exist_ok=True)
    # Unique per process, and made with `os.mkdir` (unlike `mkdtemp`'s 0700,
    # the umask's permissions, so others can read the renamed cache).
    temporary = os.path.join(parent, f".{name}.tfkd-{uuid.uuid4().hex}")
    os.mkdir(temporary)
    counts = {"batches": 0, "examples": 0}

    def counted():
        for element in batches:
            counts["batches"] += 1
            counts["examples"] += batch_size(element)
            yield element

    signature = tf.nest.map_structure(
        lambda t: tf.TensorSpec([None] + t.shape[1:], t.dtype), first
    )
    renamed = False
    try:
        tf.data.Dataset.from_generator(
            counted, output_signature=signature
        ).save(temporary, shard_func=lambda *_: tf.constant(0, tf.int64))
        fingerprint = dict(fingerprint, **counts)
        with open(os.path.join(temporary, _FINGERPRINT_FILE), "w") as file:
            json.dump(fingerprint, file, indent=1)
        if os.path.isdir(target) and not os.listdir(target):
            try:  # Windows cannot rename onto an (empty) folder.
                os.rmdir(target)
            except OSError:  # Another process filled or removed it.
                pass
        try:
            os.rename(temporary, target)
            renamed = True
        except OSError:
            if not os.path.exists(os.path.join(target, _SPEC_FILE)):
                raise
    finally:
        if not renamed:
            shutil.rmtree(temporary, ignore_errors=True)
    if renamed:
        return tf.data.Dataset.load(target)
    # Another process renamed its cache first: use it if it is the same.
    return load(target, fingerprint)
