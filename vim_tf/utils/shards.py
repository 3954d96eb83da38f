"""Numbered output shards written as they are produced, with a manifest: runs that resume and
runs split over workers.

A `ShardSet` is N items (samples, images to encode) cut into shards of `shard_size` items;
shard i holds items [i * shard_size, min((i + 1) * shard_size, N)) and is the file
`<prefix>-<i:05d>-of-<num_shards:05d><suffix>` in the output dir, written to a temporary name
and renamed when complete, so a file under its final name is a finished shard. The manifest
`<prefix>_manifest.json` records the run's parameters and, once every shard exists, that the
set is complete.

Resuming: rerunning the same command finds the finished shards and writes only the others;
as each shard depends only on its items and the parameters, the result is the files an
uninterrupted run writes. A rerun with other parameters into the same dir is refused (mixing
two runs' shards would be silently wrong).

Workers: worker w of W writes shards w, w + W, ...; the chief then waits for every shard and
writes what is derived from all of them (merged files, scores, the complete manifest).
"""

import json
import time

from absl import logging

from vim_tf.utils import fs

MANIFEST_SUFFIX = "_manifest.json"


class ShardSet:
    """The shards of one output in `directory` (see the module docstring).

    Args:
      directory: the output dir (any file system).
      prefix, suffix: shard file names are `<prefix>-NNNNN-of-MMMMM<suffix>`.
      num_items: N, the items of the whole run.
      shard_size: items per shard.
      params: JSON-serializable dict of everything the shards' contents depend on; a rerun
        must pass the same.
      worker_index, num_workers: this worker's share (shards i with i % num_workers ==
        worker_index).
    """

    def __init__(
        self,
        directory,
        prefix,
        suffix,
        num_items,
        shard_size,
        params,
        worker_index=0,
        num_workers=1,
    ):
        if num_items < 1:
            raise ValueError(f"a shard set needs at least one item, got num_items={num_items}")
        if shard_size < 1:
            raise ValueError(f"shard_size must be >= 1, got {shard_size}")
        if not 0 <= worker_index < num_workers:
            raise ValueError(f"worker_index {worker_index} is not in [0, {num_workers})")
        self.directory = directory
        self.prefix, self.suffix = prefix, suffix
        self.num_items, self.shard_size = int(num_items), int(shard_size)
        self.num_shards = -(-self.num_items // self.shard_size)
        # As a reread manifest holds them (lists, not tuples), for comparing runs.
        self.params = json.loads(json.dumps(dict(params)))
        self.worker_index, self.num_workers = worker_index, num_workers

    @property
    def manifest_path(self):
        return fs.join(self.directory, f"{self.prefix}{MANIFEST_SUFFIX}")

    def name(self, index):
        return f"{self.prefix}-{index:05d}-of-{self.num_shards:05d}{self.suffix}"

    def path(self, index):
        return fs.join(self.directory, self.name(index))

    def bounds(self, index):
        """(first item, end item) of shard `index`."""
        start = index * self.shard_size
        return start, min(start + self.shard_size, self.num_items)

    def paths(self):
        return [self.path(i) for i in range(self.num_shards)]

    def _manifest(self, complete):
        return {
            "prefix": self.prefix,
            "num_items": self.num_items,
            "shard_size": self.shard_size,
            "num_shards": self.num_shards,
            "shards": [self.name(i) for i in range(self.num_shards)],
            "params": self.params,
            "complete": bool(complete),
        }

    def read_manifest(self):
        """The manifest dict, or None when the dir holds none."""
        if not fs.exists(self.manifest_path):
            return None
        return fs.read_json(self.manifest_path)

    def open(self, write_manifest=True, overwrite=False):
        """Checks that the dir holds nothing of another run, removes this worker's stale
        temporary files, writes the (incomplete) manifest when `write_manifest` (the chief)
        and none exists. Returns the number of this worker's shards already finished.

        `overwrite`: the shards of another run (other parameters) in the dir are deleted
        instead of refused (only by the chief: `write_manifest`).
        """
        fs.makedirs(self.directory)
        old = self.read_manifest()
        if old is not None and overwrite and write_manifest and self._differences(old):
            logging.warning(
                "deleting the %s shards of another run in %s", self.prefix, self.directory
            )
            self._remove_run(old)
            old = None
        if old is not None:
            self._check_same_run(old)
        if old is None and write_manifest:
            fs.write_json(self.manifest_path, self._manifest(complete=False))
        mine = self.my_shards()
        for i in mine:
            for stale in fs.glob(self.directory, f"{fs.escape(self.name(i))}.tmp-*"):
                fs.remove(stale)
        done = len(mine) - len(self.pending())
        if done:
            logging.info(
                "%s: %d of this worker's %d shards are finished; writing the others",
                self.manifest_path,
                done,
                len(mine),
            )
        return done

    def _remove_run(self, old):
        for name in old.get("shards", []):
            path = fs.join(self.directory, name)
            if fs.exists(path):
                fs.remove(path)
        fs.remove(self.manifest_path)

    def _check_same_run(self, old):
        diffs = self._differences(old)
        if diffs:
            raise ValueError(
                f"{self.directory!r} holds {self.prefix} shards of another run ("
                + "; ".join(diffs)
                + "): rerun with that run's settings to resume it, use a new output dir, or "
                "--overwrite to replace them"
            )

    def _differences(self, old):
        """What differs between the run of manifest `old` and this one: ["key: a there, b now"]."""
        mine = self._manifest(complete=False)
        diffs = []
        for key in ("num_items", "shard_size"):
            if old.get(key) != mine[key]:
                diffs.append(f"{key}: {old.get(key)!r} there, {mine[key]!r} now")
        old_params = old.get("params", {})
        for key in sorted(set(old_params) | set(self.params)):
            if old_params.get(key) != self.params.get(key):
                diffs.append(f"{key}: {old_params.get(key)!r} there, {self.params.get(key)!r} now")
        return diffs

    def my_shards(self):
        """This worker's shard indices."""
        return list(range(self.worker_index, self.num_shards, self.num_workers))

    def pending(self):
        """This worker's shard indices not yet finished."""
        return [i for i in self.my_shards() if not fs.exists(self.path(i))]

    def missing(self):
        """Every shard index not yet finished (any worker's)."""
        return [i for i in range(self.num_shards) if not fs.exists(self.path(i))]

    def write(self, index, write_fn):
        """Calls write_fn(temporary path) and renames the file to shard `index`'s name."""
        final = self.path(index)
        tmp = f"{final}.tmp-{self.worker_index}"
        try:
            write_fn(tmp)
            fs.rename(tmp, final, overwrite=True)
        except BaseException:
            if fs.exists(tmp):
                fs.remove(tmp)
            raise
        logging.info("wrote %s", final)

    def wait_for_all(self, timeout_seconds=None, poll_seconds=5.0):
        """Blocks until every shard exists (the other workers' too); raises TimeoutError naming
        the missing ones after `timeout_seconds` (None: no limit)."""
        start = time.monotonic()
        missing = self.missing()
        while missing:
            if timeout_seconds is not None and time.monotonic() - start > timeout_seconds:
                raise TimeoutError(
                    f"{len(missing)} {self.prefix} shards of {self.directory!r} were not written "
                    f"within {timeout_seconds} s (e.g. {self.name(missing[0])}): a worker may "
                    "have died; rerun the same command to write them"
                )
            logging.info("waiting for %d shards of the other workers", len(missing))
            time.sleep(poll_seconds)
            missing = self.missing()

    def finish(self, **extra):
        """Writes the complete manifest (with `extra` entries); every shard must exist."""
        missing = self.missing()
        if missing:
            raise ValueError(f"cannot finish {self.manifest_path}: shards {missing} are missing")
        fs.write_json(self.manifest_path, dict(self._manifest(complete=True), **extra))

    def is_complete(self):
        manifest = self.read_manifest()
        return bool(manifest and manifest.get("complete")) and not self.missing()
