"""`Distiller.save` that never leaves a broken file where a good one was.

Keras opens the target file first and writes the archive into it: a save
that fails half-way (an object that cannot be serialized, a full disk, an
interrupt) leaves a truncated file, 0 bytes for a configuration error, in
place of the good `.keras` file saved before. Here the archive is written
to a temporary file in the same folder, then renamed over the target with
`os.replace`, which is atomic on one file system: the target holds either
the old file or the new one, never a part.
"""

import os
import uuid

# Single-file formats: a folder (a tf_keras SavedModel, Keras 3's
# `zipped=False`) or a remote path (`gs://`, `hf://`) is saved by Keras as
# it is.
_FILE_SUFFIXES = (".keras", ".h5", ".hdf5")


def _local_file(filepath, kwargs):
    """`filepath` as a local path to save atomically, or None."""
    if not isinstance(filepath, (str, os.PathLike)):
        return None
    path = os.fspath(filepath)
    if not isinstance(path, str) or "://" in path:
        return None
    if not path.endswith(_FILE_SUFFIXES) or kwargs.get("zipped") is False:
        return None
    return path


def save_atomically(save, filepath, *args, **kwargs):
    """Calls `save(filepath, *args, **kwargs)` through a temporary file.

    `save` is a Keras `Model.save`; `args` and `kwargs` are passed as they
    are (`overwrite`, `zipped` or `save_format`, ...). Where the target
    exists and `overwrite` is false, Keras asks the user; that is left to
    it.
    """
    path = _local_file(filepath, kwargs)
    overwrite = kwargs.get("overwrite", args[0] if args else True)
    if path is None or (os.path.exists(path) and not overwrite):
        return save(filepath, *args, **kwargs)
    folder, name = os.path.split(os.path.abspath(path))
    stem, suffix = os.path.splitext(name)
    temporary = os.path.join(
        folder, f".{stem}.tmp-{uuid.uuid4().hex[:12]}{suffix}"
    )
    try:
        result = save(temporary, *args, **kwargs)
        os.replace(temporary, path)
    except BaseException:
        if os.path.exists(temporary):
            os.remove(temporary)
        raise
    return result
