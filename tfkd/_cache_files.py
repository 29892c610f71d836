"""The files of a `cache_dir`: checks, atomic writes, checked loads.

A cache is a `tf.data.Dataset.save` folder plus `tfkd_fingerprint.json`
(what was cached: teacher, taps, top-k, data set; how many batches and
examples; a digest of the data's values; a random id of this cache). It is
written beside its final path and renamed, so a folder either holds a
complete cache or none; a load checks the fingerprint, the stored data
and the data set passed; every pass over the loaded data set checks that
the folder still holds that cache.
"""

from __future__ import annotations

import glob
import json
import os
import shutil
import uuid

import tensorflow as tf

from tfkd import _cache_format
from tfkd import _fingerprint

_SPEC_FILE = "dataset_spec.pb"
_FINGERPRINT_FILE = "tfkd_fingerprint.json"
_REBUILD = (
    "Delete that folder to rebuild the cache, or pass another `cache_dir`."
)
_OTHER_VALUES = (
    " (If `dataset` applies a random augmentation, each pass gives other "
    "values, and a cache would pair them with the teacher's outputs for "
    "the first pass: distil from the live teacher with "
    "`tfkd.Distiller(..., augment=...)` instead.)"
)


def batch_size(element):
    """The number of examples in a batched dataset element."""
    return int(tf.shape(tf.nest.flatten(element)[0])[0])


def holds_cache(cache_dir):
    """Whether `cache_dir` holds a saved dataset (a tfkd cache)."""
    return os.path.exists(os.path.join(cache_dir, _SPEC_FILE))


def check_cache_dir(cache_dir):
    full = os.path.abspath(cache_dir)
    if "[" in full or "]" in full:
        # TensorFlow 2.21 matches the snapshot's files as a glob pattern.
        raise ValueError(
            "`cache_dir` has a square bracket in its path, where "
            "`tf.data.Dataset.load` reads no file (it matches the cache's "
            "files as a pattern), so the cache would hold 0 batches. Pass "
            f"a path without `[` or `]`. Received: cache_dir={cache_dir!r}"
        )
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


def _stored_split(x, stored, *rest):
    """`(x, rest)` of a cached element: the source data, without outputs."""
    return x, rest


def load(cache_dir, fingerprint, data):
    """Loads a cache after checking its fingerprint and contents.

    `data`: the source data set (read once, without the teacher, to compare
    its values with the cache's) or, when this process has just read it,
    its digest (`_fingerprint.DataDigest.summary()`).
    """
    path = os.path.join(cache_dir, _FINGERPRINT_FILE)
    try:
        with open(path) as file:
            text = file.read()
        stored = json.loads(text)
    except (OSError, ValueError) as error:
        raise ValueError(
            f"The cache in cache_dir={cache_dir!r} has no readable "
            f"{_FINGERPRINT_FILE} ({error}): it was made by an older tfkd or "
            f"damaged, and tfkd cannot tell what it holds. {_REBUILD}"
        ) from error
    _refuse_differences(cache_dir, stored, fingerprint)
    if "data" not in stored:
        raise ValueError(
            f"The cache in cache_dir={cache_dir!r} was made by an older tfkd "
            "and has no digest of its data, so tfkd cannot tell which data "
            f"set it holds. {_REBUILD}"
        )
    dataset = tf.data.Dataset.load(cache_dir)
    try:  # One read of the folder, no teacher.
        found = _fingerprint.digest_of(dataset, _stored_split)
    except tf.errors.OpError as error:
        raise ValueError(
            f"The cache in cache_dir={cache_dir!r} cannot be read "
            f"({type(error).__name__}: {error.message}). {_REBUILD}"
        ) from error
    if found["examples"] != stored.get("examples"):
        raise ValueError(
            f"The cache in cache_dir={cache_dir!r} is incomplete: it holds "
            f"{found['examples']} examples, but {stored.get('examples')} "
            f"were cached (a truncated or damaged file). {_REBUILD}"
        )
    if found != {key: stored.get(key) for key in _fingerprint.DATA_KEYS}:
        raise ValueError(
            f"The cache in cache_dir={cache_dir!r} holds other data than "
            f"were cached (a replaced or damaged file). {_REBUILD}"
        )
    if isinstance(data, tf.data.Dataset):
        data = _fingerprint.digest_of(
            data, lambda *element: _cache_format.split_element(element)
        )
    _refuse_differences(cache_dir, stored, data, _OTHER_VALUES)
    return checked(dataset, cache_dir, text, stored["batches"])


def _refuse_differences(cache_dir, stored, fingerprint, hint=""):
    differences = _fingerprint.differences(stored, fingerprint)
    if differences:
        values = "data" in fingerprint and (
            stored.get("data") != fingerprint["data"]
        )
        raise ValueError(
            f"cache_dir={cache_dir!r} holds teacher outputs made with another "
            f"teacher, data set or settings: {'; '.join(differences)}. "
            f"{_REBUILD}" + (hint if values else "")
        )


def save(batches, first, cache_dir, fingerprint):
    """Writes beside `cache_dir`, then renames: complete caches only."""
    target = os.path.abspath(cache_dir)
    parent, name = os.path.split(target)
    os.makedirs(parent, exist_ok=True)
    # Unique per process, and made with `os.mkdir` (unlike `mkdtemp`'s 0700,
    # the umask's permissions, so others can read the renamed cache).
    temporary = os.path.join(parent, f".{name}.tfkd-{uuid.uuid4().hex}")
    os.mkdir(temporary)
    digest = _fingerprint.DataDigest()

    def digested():
        for element in batches:
            x, _, *rest = element
            digest.add(_fingerprint.example_hashes(x, tuple(rest)))
            yield element

    signature = tf.nest.map_structure(
        lambda t: tf.TensorSpec([None] + t.shape[1:], t.dtype), first
    )
    renamed = False
    try:
        tf.data.Dataset.from_generator(
            digested, output_signature=signature
        ).save(temporary, shard_func=lambda *_: tf.constant(0, tf.int64))
        fingerprint = dict(
            fingerprint, **digest.summary(), cache_id=uuid.uuid4().hex
        )
        text = json.dumps(fingerprint, indent=1)
        with open(os.path.join(temporary, _FINGERPRINT_FILE), "w") as file:
            file.write(text)
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
        return checked(
            tf.data.Dataset.load(target), target, text, digest.batches
        )
    # Another process renamed its cache first: use it if it is the same.
    return load(target, fingerprint, digest.summary())


def checked(dataset, cache_dir, text, batches):
    """`dataset`, which checks `cache_dir` on each pass over it.

    On its first element (or its end, if it has none), a pass checks that
    `cache_dir` still holds the fingerprint file read at load (`text`,
    which holds the cache's random id), and at its end that it read
    `batches` batches: a folder deleted, rebuilt or cut while training
    raises an error that says so, where `tf.data` would read zero or other
    batches silently.
    """
    fingerprint_path = os.path.join(cache_dir, _FINGERPRINT_FILE)
    gone = (
        f"The tfkd cache in cache_dir={cache_dir!r} was deleted or "
        "replaced after it was loaded (its tfkd_fingerprint.json is "
        "missing or changed), so the data set that "
        "`tfkd.cache_teacher_outputs` returned cannot be read any more. "
        "Keep the folder while you train on it, and call "
        "`tfkd.cache_teacher_outputs` again for its new contents."
    )
    short = (
        f"The tfkd cache in cache_dir={cache_dir!r} held {batches} batches "
        "when it was loaded, but this pass over it read fewer or more (a "
        "file deleted, cut or replaced while training). Call "
        "`tfkd.cache_teacher_outputs` again to check and reload it."
    )

    def check(index, element):
        def same_file():
            def same():
                return tf.equal(tf.io.read_file(fingerprint_path), text)

            if glob.has_magic(fingerprint_path):
                # Not a pattern to match: a missing file is then TF's
                # NotFoundError, which names it.
                return same()
            found = tf.size(tf.io.matching_files(fingerprint_path)) > 0
            return tf.cond(found, same, lambda: tf.constant(False))

        first = tf.equal(index, 0)
        present = tf.cond(first, same_file, lambda: tf.constant(True))
        complete = tf.logical_or(element.has_value(), tf.equal(index, batches))
        checks = [
            tf.debugging.Assert(present, [gone]),
            tf.debugging.Assert(complete, [short]),
        ]
        with tf.control_dependencies(checks):
            return tf.identity(element.has_value()), element

    def wrap(*element):
        return tf.experimental.Optional.from_value(element)

    def is_batch(has_value, element):
        return has_value

    def batch(has_value, element):
        return element.get_value()

    end = tf.data.Dataset.from_tensors(
        tf.experimental.Optional.empty(tuple(dataset.element_spec))
    )
    return (
        dataset.map(wrap)
        .concatenate(end)
        .enumerate()
        .map(check)
        .filter(is_batch)
        .map(batch)
        .apply(tf.data.experimental.assert_cardinality(batches))
    )
