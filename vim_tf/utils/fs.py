"""File access for model dirs, exports, token shards and outputs, local or remote.

A path with a `scheme://` prefix (`gs://bucket/run`, `s3://...`, or `ram://...` in tests) goes
through `tf.io.gfile`, as checkpoints and TensorBoard events do, so a model dir may live on any
file system TensorFlow reads and writes. A local path goes through the standard library (`open`,
`os`, `shutil`): the same files as TensorFlow would write, and no TensorFlow import, so the tools
check a local model dir and fail in a fraction of a second. TensorFlow's errors for a missing,
forbidden or existing remote path come back as the matching `OSError` subclass
(`FileNotFoundError`, `PermissionError`, `FileExistsError`, ...), as they would locally.

Writes are atomic where the file system allows it: a file is written under a temporary name
beside its destination and renamed into place, so a crash never leaves half a file under the
real name (on object stores the rename is a copy, which is all-or-nothing per file too).

Example:

    fs.write_json("gs://bucket/run/metrics.json", {"fid": 3.2})
    fs.read_json("gs://bucket/run/metrics.json")  # {"fid": 3.2}
    fs.glob("gs://bucket/run", "ckpt-*.index")  # full paths, sorted
"""

import builtins
import contextlib
import fnmatch
import functools
import io
import json
import os
import posixpath
import re
import shutil
import sys
import uuid


def _gfile():
    import tensorflow as tf

    return tf.io.gfile


def _os_error(e, path):
    """A TensorFlow file error as the OSError subclass open()/os.* raise for the same failure,
    with a message naming `path`."""
    import tensorflow as tf

    os_cls, text = OSError, "file system error"
    for tf_cls, cls, default in (
        (tf.errors.NotFoundError, FileNotFoundError, "No such file or directory"),
        (tf.errors.PermissionDeniedError, PermissionError, "Permission denied"),
        (tf.errors.AlreadyExistsError, FileExistsError, "File exists"),
    ):
        if isinstance(e, tf_cls):
            os_cls, text = cls, default
            break
    text = (e.message or "").strip() or text
    return os_cls(text if path and path in text else f"{text}: {path!r}")


def _remote_errors_as_os_errors(fn):
    @functools.wraps(fn)
    def wrapped(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except OSError:
            raise
        except Exception as e:
            # Only a loaded TensorFlow can have raised one of its errors.
            tf = sys.modules.get("tensorflow")
            if tf is not None and isinstance(e, tf.errors.OpError):
                raise _os_error(e, os.fspath(args[0]) if args else None) from e
            raise

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
    """Joins path components: with '/' for remote paths, `os.path.join` locally."""
    path = os.fspath(path)
    if is_remote(path):
        return posixpath.join(path, *parts)
    return os.path.join(path, *parts)


def dirname(path):
    """The parent of `path` (of its absolute form when local)."""
    path = abspath(path)
    return posixpath.dirname(path.rstrip("/")) if is_remote(path) else os.path.dirname(path)


def basename(path):
    """The last component of `path` (a file or dir name)."""
    path = os.fspath(path).rstrip("/")
    return posixpath.basename(path) if is_remote(path) else os.path.basename(path)


@_remote_errors_as_os_errors
def exists(path):
    path = os.fspath(path)
    return _gfile().exists(path) if is_remote(path) else os.path.exists(path)


@_remote_errors_as_os_errors
def isdir(path):
    path = os.fspath(path)
    return _gfile().isdir(path) if is_remote(path) else os.path.isdir(path)


@_remote_errors_as_os_errors
def makedirs(path):
    """Creates `path` and its parents; no error when it already is a directory."""
    path = os.fspath(path)
    if is_remote(path):
        _gfile().makedirs(path)
    else:
        os.makedirs(path, exist_ok=True)


@_remote_errors_as_os_errors
def listdir(path):
    """Entry names of a directory (no trailing '/', which object stores add to subdirs)."""
    path = os.fspath(path)
    if not is_remote(path):
        return os.listdir(path)
    return [name.rstrip("/") for name in _gfile().listdir(path)]


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


@_remote_errors_as_os_errors
def mtime(path):
    """Modification time in seconds since the epoch (0 where the file system keeps none)."""
    path = os.fspath(path)
    if not is_remote(path):
        return os.path.getmtime(path)
    return _gfile().stat(path).mtime_nsec / 1e9


@_remote_errors_as_os_errors
def remove(path):
    path = os.fspath(path)
    if is_remote(path):
        _gfile().remove(path)
    else:
        os.remove(path)


def rmtree(path, ignore_errors=False):
    """Deletes a directory and everything under it."""
    path = os.fspath(path)
    if not is_remote(path):
        shutil.rmtree(path, ignore_errors=ignore_errors)
        return
    try:
        _remote_errors_as_os_errors(_gfile().rmtree)(path)
    except OSError:
        if not ignore_errors:
            raise


@_remote_errors_as_os_errors
def rename(src, dst, overwrite=False):
    """Renames a file (atomically on local disks); `overwrite` replaces an existing `dst`."""
    src, dst = os.fspath(src), os.fspath(dst)
    if is_remote(src) or is_remote(dst):
        _gfile().rename(src, dst, overwrite=overwrite)
    elif overwrite:
        os.replace(src, dst)
    elif os.path.exists(dst):
        raise FileExistsError(f"{dst} exists")
    else:
        os.rename(src, dst)


@_remote_errors_as_os_errors
def move_dir(src, dst):
    """Moves directory `src` to `dst`, which must not exist.

    Local: one rename (atomic). Elsewhere directories are name prefixes of objects, so the tree
    is copied file by file and then `src` is deleted (a crash midway leaves `src` behind).
    """
    src, dst = os.fspath(src), os.fspath(dst)
    if exists(dst):
        raise FileExistsError(f"{dst} exists")
    if not is_remote(src):
        os.replace(src, dst)
        return
    gfile = _gfile()
    src_root = src.rstrip("/")
    for dirpath, _, filenames in gfile.walk(src_root):
        rel = dirpath.rstrip("/")[len(src_root) :].lstrip("/")
        target = posixpath.join(dst, rel) if rel else dst
        gfile.makedirs(target)
        for name in filenames:
            gfile.copy(posixpath.join(dirpath, name), posixpath.join(target, name))
    gfile.rmtree(src)


def open(path, mode="r"):  # noqa: A001 - the file-system twin of the builtin
    """A file object for `path`: the builtin `open` locally, a `tf.io.gfile.GFile` otherwise."""
    path = os.fspath(path)
    return _gfile().GFile(path, mode) if is_remote(path) else builtins.open(path, mode)


@_remote_errors_as_os_errors
def read_bytes(path):
    with open(path, "rb") as f:
        return f.read()


@_remote_errors_as_os_errors
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
        with contextlib.suppress(Exception):
            if exists(tmp):
                remove(tmp)
        raise


@_remote_errors_as_os_errors
def write_bytes(path, data):
    """Writes bytes atomically (temp file + rename), creating the parent dirs."""
    with _atomic(path, "wb") as f:
        f.write(data)


@_remote_errors_as_os_errors
def write_text(path, text):
    """Writes text atomically (temp file + rename), creating the parent dirs."""
    with _atomic(path, "w") as f:
        f.write(text)


def write_json(path, obj):
    """Writes `obj` as indented JSON with sorted keys, atomically."""
    write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


@_remote_errors_as_os_errors
def append_text(path, text):
    """Appends to a text file (created if missing; not atomic)."""
    makedirs(dirname(path))
    with open(path, "a") as f:
        f.write(text)


# A fixed member timestamp: the same arrays always give the same .npz bytes (numpy's own
# writer stamps the current time), so a resumed run's files equal an uninterrupted run's.
_ZIP_TIME = (1980, 1, 1, 0, 0, 0)


def save_npz(path, **arrays):
    """Compressed .npz (what `np.savez_compressed` writes, minus the timestamps) to any file
    system, atomically. The bytes depend only on the arrays."""
    buf = io.BytesIO()
    with NpzStreamWriter(buf) as npz:
        for name, value in arrays.items():
            npz.add_array(name, value)
    write_bytes(path, buf.getvalue())


class NpzStreamWriter:
    """Writes an .npz member by member to a write-only stream, each member from row chunks, so
    arrays larger than memory can be saved: `add_array(name, array)` or `begin(name, dtype,
    shape)` then `write(rows)` until `shape[0]` rows are written. Deflate-compressed; the
    bytes depend only on the data.

    Args:
      fileobj: a binary file object open for writing (may be unseekable, e.g. a GFile).
    """

    def __init__(self, fileobj):
        import zipfile

        self._sink = _WriteOnly(fileobj)
        self._zip = zipfile.ZipFile(self._sink, "w", zipfile.ZIP_DEFLATED)
        self._member, self._rows_left = None, 0

    def add_array(self, name, value):
        import numpy as np

        value = np.asanyarray(value)
        self.begin(name, value.dtype, value.shape)
        if value.ndim == 0:
            self._member.write(np.ascontiguousarray(value).tobytes())
        elif len(value):
            self.write(value)
        self._end()

    def begin(self, name, dtype, shape):
        """Starts member `name`.npy of an array of `dtype` and `shape` (C order)."""
        import zipfile

        import numpy as np

        self._end()
        info = zipfile.ZipInfo(f"{name}.npy", date_time=_ZIP_TIME)
        info.compress_type = zipfile.ZIP_DEFLATED
        self._member = self._zip.open(info, "w", force_zip64=True)
        header = {"descr": np.lib.format.dtype_to_descr(np.dtype(dtype)), "fortran_order": False}
        np.lib.format.write_array_header_2_0(self._member, dict(header, shape=tuple(shape)))
        self._rows_left = shape[0] if shape else 0
        self._dtype = np.dtype(dtype)

    def write(self, rows):
        """Appends rows [n, ...] (cast to the member's dtype) to the open member."""
        import numpy as np

        rows = np.ascontiguousarray(rows, dtype=self._dtype)
        if len(rows) > self._rows_left:
            raise ValueError(f"{len(rows)} rows written, {self._rows_left} left in the member")
        self._member.write(rows.tobytes())
        self._rows_left -= len(rows)

    def _end(self):
        if self._member is None:
            return
        if self._rows_left:
            raise ValueError(f"npz member closed with {self._rows_left} rows missing")
        self._member.close()
        self._member = None

    def close(self):
        self._end()
        self._zip.close()

    def __enter__(self):
        return self

    def __exit__(self, exc_type, *unused):
        if exc_type is None:
            self.close()
            return
        # Abandoned: the zip's closing writes go nowhere (the file is discarded by the caller).
        self._sink.discard = True
        self._rows_left = 0
        with contextlib.suppress(Exception):
            self.close()


class _WriteOnly:
    """A write-only view of a file object that counts its bytes (zipfile then writes data
    descriptors instead of seeking back, which GFile writers cannot)."""

    def __init__(self, fileobj):
        self._f, self._pos = fileobj, 0
        self.discard = False

    def write(self, data):
        if not self.discard:
            self._f.write(data)
        self._pos += len(data)
        return len(data)

    def tell(self):
        return self._pos

    def seekable(self):
        return False

    def flush(self):
        if not self.discard:
            self._f.flush()


@contextlib.contextmanager
def write_npz_stream(path):
    """An `NpzStreamWriter` on `path` (any file system), renamed into place when the block
    ends without an error."""
    with _atomic(path, "wb") as f:
        with NpzStreamWriter(f) as npz:
            yield npz


def load_npz(path):
    """The arrays of an .npz file as a dict (read fully into memory)."""
    import numpy as np

    with np.load(io.BytesIO(read_bytes(path))) as data:
        return {k: data[k] for k in data.files}


@contextlib.contextmanager
def local_copy(path):
    """A local file path for `path`, for readers that only open local files (h5py, Keras's
    legacy weights loader): a remote file is copied to a temporary dir, deleted afterwards."""
    if not is_remote(path):
        yield path
        return
    import tempfile

    tmp = tempfile.mkdtemp(prefix="vim_tf_copy_")
    try:
        local = os.path.join(tmp, posixpath.basename(path))
        _gfile().copy(path, local)
        yield local
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
