"""Token shards: image tokens written once by `tools/encode.py`, read back by a prior.

A token dir holds `tokens_info.json` (the quantizer that wrote it, its grid and codebook size,
the dataset and the examples per split) and TFRecord shards `<split>-NNNNN-of-MMMMM.tfrecord`,
one example per image: `tokens` (int64 list of grid_size**2 ids, raster order) and `label`.
"""

import gin
import numpy as np
import tensorflow as tf
from absl import logging

from vim_tf.utils import fs

INFO_FILE = "tokens_info.json"


def write_token_shards(token_dir, split, batches, info, examples_per_shard=10_000):
    """Writes (tokens int [B, h, w], labels int [B]) batches of a split as shards in one go
    (what `encode_splits` writes for encoded images); returns the count.

    Shards are written to temporary names and renamed when complete, so a killed run leaves no
    shard that looks finished.
    """
    fs.makedirs(token_dir)
    rows = [
        (t, y)
        for tokens, labels in batches
        for t, y in zip(np.asarray(tokens).reshape(len(tokens), -1), np.asarray(labels))
    ]
    starts = range(0, len(rows), examples_per_shard)
    tmps = []
    for i, start in enumerate(starts):
        tmps.append(fs.join(token_dir, f".{split}-{i:05d}.tmp"))
        part = rows[start : start + examples_per_shard]
        _write_examples(tmps[-1], [(np.stack([t for t, _ in part]), [y for _, y in part])])
    for old in _shards(token_dir, split):
        fs.remove(old)
    for i, tmp in enumerate(tmps):
        name = f"{split}-{i:05d}-of-{len(tmps):05d}.tfrecord"
        fs.rename(tmp, fs.join(token_dir, name), overwrite=True)
    _update_info(token_dir, info, split, len(rows))
    return len(rows)


def _shards(token_dir, split):
    """The finished shards of `split` (sorted paths)."""
    return fs.glob(token_dir, f"{fs.escape(split)}-*.tfrecord")


def _check_complete(token_dir, split):
    """A split that `encode_splits` has not finished (a killed or running encode) is refused:
    training on part of it would silently see a subset of the data."""
    path = fs.join(token_dir, f"{split}_manifest.json")
    if not fs.exists(path):
        return  # written in one go by `write_token_shards`, or by an older version
    manifest = fs.read_json(path)
    if not manifest.get("complete"):
        done = sum(fs.exists(fs.join(token_dir, n)) for n in manifest.get("shards", []))
        raise ValueError(
            f"the {split!r} token shards in {token_dir!r} are incomplete ({done} of "
            f"{manifest.get('num_shards')} shards): rerun the same tools/encode.py command to "
            "finish them"
        )


def read_token_info(token_dir):
    path = fs.join(token_dir, INFO_FILE)
    if not fs.exists(path):
        raise ValueError(
            f"{token_dir!r} holds no {INFO_FILE}: write token shards first with "
            "tools/encode.py --quantizer_dir=... --output_dir=..."
        )
    return fs.read_json(path)


@gin.configurable
def make_token_dataset(
    token_dir=gin.REQUIRED,
    split="train",
    batch_size=gin.REQUIRED,
    training=True,
    seed=None,
    shuffle_buffer=10_000,
    input_context=None,
    drop_remainder=None,
    **unused,
):
    """Batches of {"tokens": int32 [b, N], "label": int32 [b]} from token shards.

    Same contract as `make_dataset` (global batch, per-replica split with an InputContext,
    training shuffles and repeats, evaluation makes one ordered pass).
    """
    if unused:
        logging.debug("make_token_dataset ignores %s", sorted(unused))
    info = read_token_info(token_dir)
    _check_complete(token_dir, split)
    files = _shards(token_dir, split)
    if not files:
        raise ValueError(
            f"no {split!r} shards in {token_dir!r}: encode that split first "
            f"(splits here: {sorted(info.get('num_examples', {}))})"
        )
    n = info["grid_size"] ** 2
    per_replica = batch_size
    pipelines = input_context.num_input_pipelines if input_context is not None else 1
    if input_context is not None:
        per_replica = input_context.get_per_replica_batch_size(batch_size)
    if pipelines > 1 and len(files) >= pipelines:
        # Each input pipeline (worker) reads only its own files.
        ds = tf.data.Dataset.from_tensor_slices(files)
        ds = ds.shard(pipelines, input_context.input_pipeline_id)
        ds = ds.interleave(tf.data.TFRecordDataset, cycle_length=1)
    else:
        ds = tf.data.TFRecordDataset(files)
        if pipelines > 1:  # fewer files than pipelines: every pipeline keeps every n-th record
            ds = ds.shard(pipelines, input_context.input_pipeline_id)
    spec = {
        "tokens": tf.io.FixedLenFeature([n], tf.int64),
        "label": tf.io.FixedLenFeature([], tf.int64),
    }

    def parse(record):
        ex = tf.io.parse_single_example(record, spec)
        return {"tokens": tf.cast(ex["tokens"], tf.int32), "label": tf.cast(ex["label"], tf.int32)}

    ds = ds.map(parse, num_parallel_calls=tf.data.AUTOTUNE)
    if training:
        ds = ds.cache().shuffle(shuffle_buffer, seed=seed).repeat()
    drop = training if drop_remainder is None else drop_remainder
    return ds.batch(per_replica, drop_remainder=drop).prefetch(tf.data.AUTOTUNE)


DEFAULT_EXAMPLES_PER_SHARD = 10_000


def encode_splits(
    quantizer_dir,
    output_dir,
    splits=("train", "test"),
    batch_size=256,
    strategy=None,
    examples_per_shard=DEFAULT_EXAMPLES_PER_SHARD,
    overwrite=False,
):
    """Encodes every image of `splits` (center crops, no augmentation) with a trained quantizer.

    The images come from the dataset the quantizer was trained on (its model dir's config).
    Each split is a `vim_tf.utils.shards.ShardSet` of `examples_per_shard` images per
    TFRecord shard, written as it is encoded: a killed run, rerun with the same command,
    encodes only the missing shards (and writes the same files as an uninterrupted run).

    Args:
      strategy: a `tf.distribute.Strategy` whose local replicas encode their share of each
        batch; under MultiWorkerMirroredStrategy the workers share the shards and the chief
        writes tokens_info.json and the manifests. None: the default device.
      overwrite: replace another quantizer's (or dataset's) shards in `output_dir` instead of
        refusing.

    Returns:
      {split: number of examples} on the chief; None on the other workers.
    """
    import contextlib

    from vim_tf.config import gin_utils
    from vim_tf.data import input_pipeline
    from vim_tf.models.loading import load_tokenizer
    from vim_tf.utils import replicas, shards

    scope = strategy.scope() if strategy is not None else contextlib.nullcontext()
    with scope:
        quantizer = load_tokenizer(quantizer_dir)
    gin_utils.load_model_dir_config(quantizer_dir)
    # Every experiment names its dataset through the DATASET macro.
    dataset = gin.query_parameter("%DATASET")
    data_dir = gin_utils.bound("make_dataset.data_dir")
    runner = replicas.ReplicaRunner(
        lambda images, offset: quantizer.encode(images), strategy, jit_compile=True
    )
    worker, workers = replicas.worker_share(strategy)
    info = {
        "quantizer_dir": fs.abspath(quantizer_dir),
        "grid_size": quantizer.grid_size,
        "codebook_size": quantizer.codebook_size,
        "dataset": dataset,
        "image_size": quantizer.image_size,
    }
    params = {
        "quantizer_dir": fs.abspath(quantizer_dir),
        "quantizer_checkpoint": fs.basename(tf.train.latest_checkpoint(quantizer_dir)),
        "dataset": dataset,
        "image_size": quantizer.image_size,
    }
    sets = {}
    for split in splits:
        total = input_pipeline.num_examples(dataset, split, data_dir)
        sets[split] = shards.ShardSet(
            output_dir, split, ".tfrecord", total, examples_per_shard, params, worker, workers
        )
        sets[split].open(write_manifest=worker == 0, overwrite=overwrite)
        _encode_pending(sets[split], runner, dataset, split, batch_size)
    if worker != 0:
        logging.info("worker %d of %d: wrote its token shards; the chief finishes", worker, workers)
        return None
    counts = {}
    for split, shard_set in sets.items():
        shard_set.wait_for_all()
        counts[split] = sum(_count_records(p) for p in shard_set.paths())
        _update_info(output_dir, info, split, counts[split])
        shard_set.finish(num_examples=counts[split])
        logging.info("encoded %d %s images into %s", counts[split], split, output_dir)
    return counts


def _encode_pending(shard_set, runner, dataset, split, batch_size):
    """Encodes and writes this worker's unfinished shards of `split` (float32 products: token
    files are data, see `vitvqgan.compiled_encode`)."""
    from vim_tf.models import matmuls

    for index in shard_set.pending():
        batches = _shard_batches(dataset, split, shard_set.bounds(index), batch_size)

        def write(path, batches=batches):
            with matmuls.use_matmul_dtype("float32"):
                encoded = (
                    (runner(b["image"].numpy(), pad_to=batch_size), b["label"].numpy())
                    for b in batches
                )
                _write_examples(path, encoded)

        shard_set.write(index, write)


def _shard_batches(dataset, split, bounds, batch_size):
    """Batches of the split's examples [start, end) (`bounds`), in the split's order."""
    from vim_tf.data import input_pipeline

    start, end = bounds
    if input_pipeline.check_dataset_name(dataset)[0] != "folder":
        # TFDS slicing reads only the files of the slice.
        return input_pipeline.make_dataset(
            split=f"{split}[{start}:{end}]", training=False, batch_size=batch_size, cache=False
        )
    # Folders have no slicing: one ordered pass, skipping (and decoding) the earlier examples.
    ds = input_pipeline.make_dataset(
        split=split, training=False, batch_size=batch_size, cache=False
    )
    return ds.unbatch().skip(start).take(end - start).batch(batch_size)


def _write_examples(path, batches):
    """Writes (tokens int [B, h, w], labels int [B]) batches to one TFRecord file."""
    with tf.io.TFRecordWriter(path) as writer:
        for tokens, labels in batches:
            tokens = np.asarray(tokens).reshape(len(tokens), -1)
            for t, y in zip(tokens, np.asarray(labels)):
                writer.write(_example(t, y))


def _example(tokens, label):
    feature = {
        "tokens": tf.train.Feature(int64_list=tf.train.Int64List(value=tokens.tolist())),
        "label": tf.train.Feature(int64_list=tf.train.Int64List(value=[int(label)])),
    }
    example = tf.train.Example(features=tf.train.Features(feature=feature))
    # Map fields (the feature dict) serialize in an order that may differ between processes;
    # deterministic serialization sorts them, so a resumed run writes the same bytes.
    return example.SerializeToString(deterministic=True)


def _count_records(path):
    return int(tf.data.TFRecordDataset(path).reduce(np.int64(0), lambda n, _: n + 1))


def _update_info(token_dir, info, split, count):
    """Merges `info` and the example count of `split` into the dir's tokens_info.json."""
    info_path = fs.join(token_dir, INFO_FILE)
    merged = read_token_info(token_dir) if fs.exists(info_path) else dict(info)
    merged.update({k: v for k, v in info.items() if k != "num_examples"})
    merged.setdefault("num_examples", {})[split] = count
    fs.write_json(info_path, merged)


def check_token_dir(token_dir, quantizer_info):
    """Token shards must come from a quantizer with the prior's grid and codebook."""
    info = read_token_info(token_dir)
    for key in ("grid_size", "codebook_size"):
        if info[key] != quantizer_info[key]:
            raise ValueError(
                f"token shards in {token_dir!r} have {key} {info[key]} (quantizer "
                f"{info['quantizer_dir']!r}) but the prior's quantizer has {quantizer_info[key]}"
            )
