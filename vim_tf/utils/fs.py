"""File access for model dirs, exports, token shards and outputs, local or remote.

Every path goes through `tf.io.gfile`, so a model dir may be a local folder or any file system
TensorFlow reads and writes (`gs://bucket/run`, `s3://...`, or `ram://...` in tests), the same
way checkpoints and TensorBoard events already are. TensorFlow's errors for a missing, forbidden
or existing path come back as the matching `OSError` subclass (`FileNotFoundError`,
`PermissionError`, `FileExistsError`, ...), so callers and `vim_tf.utils.cli` treat them as the
built-in file functions' errors.

Writes are atomic where the file system allows it: a file is written under a temporary name
beside its destination and renamed into place, so a crash never leaves half a file under the real
name (on object stores the rename is a copy, which is also all-or-nothing per file).

Example:

    fs.write_json("gs://bucket/run/metrics.json", {"fid": 3.2})
    fs.read_json("gs://bucket/run/metrics.json")  # {"fid": 3.2}
    fs.glob("gs://bucket/run", "ckpt-*.index")  # full paths, sorted
"""

import contextlib
import fnmatch
import functools
import io
import json
import os
import posixpath
import re
import uuid

import numpy as np
import tensorflow as tf

_GFILE = tf.io.gfile

# TensorFlow status -> the built-in exception open()/os.* raise for the same failure.
_OS_ERRORS = {
    tf.errors.NotFoundError: FileNotFoundError,
    tf.errors.PermissionDeniedError: PermissionError,
    tf.errors.AlreadyExistsError: FileExistsError,
}


def _as_os_error(fn):
    """Re-raises TensorFlow file errors as OSError subclasses naming the path."""

    @functools.wraps(fn)
    def wrapped(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except tf.errors.OpError as e:
            cls = next((v for k, v in _OS_ERRORS.items() if isinstance(e, k)), OSError)
            raise cls(e.message) from e

    return wrapped


def is_remote(path):
    """Whether `path` names a non-local file system (it has a `scheme://` prefix)."""
    return "://" in os.fspath(path)


def abspath(path):
    """`os.path.abspath` for local paths; a `scheme://` path is returned unchanged (abspath
    would glue the working directory in front of it)."""
    path = os.fspath(path)
    return path if is_remote(path) else os.path.abspath(path)


def join(path, *parts):
    """Joins path components with '/' for remote paths and os.path.join locally."""
    path = os.fspath(path)
    if is_remote(path):
        return posixpath.join(path, *parts)
    return os.path.join(path, *parts)


def dirname(path):
    """The parent of `path` (of its absolute form when local)."""
    path = abspath(path)
    return posixpath.dirname(path.rstrip("/")) if is_remote(path) else os.path.dirname(path)


@_as_os_error
def exists(path):
    return _GFILE.exists(os.fspath(path))


@_as_os_error
def isdir(path):
    return _GFILE.isdir(os.fspath(path))


@_as_os_error
def makedirs(path):
    """Creates `path` and its parents; no error when it already is a directory."""
    _GFILE.makedirs(os.fspath(path))


@_as_os_error
def listdir(path):
    """Entry names of a directory (no trailing '/', which object stores add to subdirs)."""
    return [name.rstrip("/") for name in _GFILE.listdir(os.fspath(path))]


def escape(name):
    """`name` as a `glob` pattern matching only itself (`*`, `?`, `[` bracketed)."""
    return re.sub(r"([*?[])", r"[\1]", name)


def glob(directory, pattern):
    """Sorted full paths of the entries of `directory` whose name matches `pattern`.

    `pattern` applies to names only (`*`, `?`, `[...]` as in fnmatch, case-sensitive) and
    `directory` is taken literally, so no escaping is needed for directory names holding glob
    characters. As with the shell, `*` does not match names starting with '.' unless the pattern
    does. A missing directory matches nothing.
    """
    directory = os.fspath(directory)
    if not isdir(directory):
        return []
    names = [
        name
        for name in listdir(directory)
        if fnmatch.fnmatchcase(name, pattern)
        and (not name.startswith(".") or pattern.startswith("."))
    ]
    return [join(directory, name) for name in sorted(names)]


@_as_os_error
def mtime(path):
    """Modification time in seconds since the epoch (0 where the file system keeps none)."""
    return _GFILE.stat(os.fspath(path)).mtime_nsec / 1e9


@_as_os_error
def remove(path):
    _GFILE.remove(os.fspath(path))


def rmtree(path, ignore_errors=False):
    """Deletes a directory and everything under it."""
    try:
        _as_os_error(_GFILE.rmtree)(os.fspath(path))
    except OSError:
        if not ignore_errors:
            raise


@_as_os_error
def rename(src, dst, overwrite=False):
    """Renames a file (atomically on local disks)."""
    _GFILE.rename(os.fspath(src), os.fspath(dst), overwrite=overwrite)


@_as_os_error
def move_dir(src, dst):
    """Moves directory `src` to `dst`, which must not exist.

    Local: one rename (atomic). Elsewhere directories are prefixes of object names, so the tree
    is copied file by file and then `src` is deleted; `dst` appears only once complete on
    stores where a directory exists through its files (a crash leaves `src` to clean up).
    """
    src, dst = os.fspath(src), os.fspath(dst)
    if not is_remote(src):
        _GFILE.rename(src, dst, overwrite=False)
        return
    if _GFILE.exists(dst):
        raise tf.errors.AlreadyExistsError(None, None, f"{dst} exists")
    src_root = src.rstrip("/")
    for dirpath, _, filenames in _GFILE.walk(src_root):
        rel = dirpath.rstrip("/")[len(src_root) :].lstrip("/")
        target = posixpath.join(dst, rel) if rel else dst
        _GFILE.makedirs(target)
        for name in filenames:
            _GFILE.copy(posixpath.join(dirpath, name), posixpath.join(target, name))
    _GFILE.rmtree(src)


def open(path, mode="r"):  # noqa: A001 - the file-system twin of the builtin
    """A `tf.io.gfile.GFile` (file object with read/write/iteration) for `path`."""
    return _GFILE.GFile(os.fspath(path), mode)


@_as_os_error
def read_bytes(path):
    with open(path, "rb") as f:
        return f.read()


@_as_os_error
def read_text(path):
    with open(path, "r") as f:
        return f.read()


def read_json(path):
    """Parsed JSON of a file (json.JSONDecodeError when it is not JSON)."""
    return json.loads(read_text(path))


@contextlib.contextmanager
def _atomic(path, mode):
    path = os.fspath(path)
    makedirs(dirname(path))
    tmp = f"{path}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        with open(tmp, mode) as f:
            yield f
        rename(tmp, path, overwrite=True)
    except BaseException:
        with contextlib.suppress(OSError, tf.errors.OpError):
            _GFILE.remove(tmp)
        raise


@_as_os_error
def write_bytes(path, data):
    """Writes bytes atomically (temp file + rename), creating the parent dirs."""
    with _atomic(path, "wb") as f:
        f.write(data)


@_as_os_error
def write_text(path, text):
    """Writes text atomically (temp file + rename), creating the parent dirs."""
    with _atomic(path, "w") as f:
        f.write(text)


def write_json(path, obj):
    """Writes `obj` as indented JSON with sorted keys, atomically."""
    write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


@_as_os_error
def append_text(path, text):
    """Appends to a text file (created if missing; not atomic)."""
    makedirs(dirname(path))
    with open(path, "a") as f:
        f.write(text)


def save_npz(path, **arrays):
    """`np.savez_compressed` to any file system, atomically."""
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    write_bytes(path, buf.getvalue())


def load_npz(path):
    """The arrays of an .npz file as a dict (read fully into memory)."""
    with np.load(io.BytesIO(read_bytes(path))) as data:
        return {k: data[k] for k in data.files}
