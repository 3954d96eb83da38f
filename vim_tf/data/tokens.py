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
    """Writes (tokens int [B, h, w], labels int [B]) batches as shards; returns the count.

    Shards are written to temporary names and renamed when complete, so a killed run leaves no
    shard that looks finished.
    """
    fs.makedirs(token_dir)
    paths, writer, in_shard, count = [], None, 0, 0

    def close():
        if writer is not None:
            writer.close()

    for tokens, labels in batches:
        tokens = np.asarray(tokens).reshape(len(tokens), -1)
        for t, y in zip(tokens, np.asarray(labels)):
            if writer is None or in_shard == examples_per_shard:
                close()
                paths.append(fs.join(token_dir, f".{split}-{len(paths):05d}.tmp"))
                writer = tf.io.TFRecordWriter(paths[-1])
                in_shard = 0
            feature = {
                "tokens": tf.train.Feature(int64_list=tf.train.Int64List(value=t.tolist())),
                "label": tf.train.Feature(int64_list=tf.train.Int64List(value=[int(y)])),
            }
            writer.write(
                tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString()
            )
            in_shard += 1
            count += 1
    close()
    for old in _shards(token_dir, split):
        fs.remove(old)
    for i, tmp in enumerate(paths):
        name = f"{split}-{i:05d}-of-{len(paths):05d}.tfrecord"
        fs.rename(tmp, fs.join(token_dir, name), overwrite=True)
    info_path = fs.join(token_dir, INFO_FILE)
    merged = read_token_info(token_dir) if fs.exists(info_path) else dict(info)
    merged.update({k: v for k, v in info.items() if k != "num_examples"})
    merged.setdefault("num_examples", {})[split] = count
    fs.write_json(info_path, merged)
    return count


def _shards(token_dir, split):
    """The finished shards of `split` (sorted paths)."""
    return fs.glob(token_dir, f"{fs.escape(split)}-*.tfrecord")


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


def encode_splits(quantizer_dir, output_dir, splits=("train", "test"), batch_size=256):
    """Encodes every image of `splits` (center crops, no augmentation) with a trained quantizer.

    The images come from the dataset the quantizer was trained on (its model dir's config).
    Returns {split: number of examples}.
    """
    from vim_tf.config import gin_utils
    from vim_tf.data import input_pipeline
    from vim_tf.models import vitvqgan
    from vim_tf.models.loading import load_tokenizer

    quantizer = load_tokenizer(quantizer_dir)
    gin_utils.load_model_dir_config(quantizer_dir)
    # Every experiment names its dataset through the DATASET macro.
    dataset = gin.query_parameter("%DATASET")
    encode = vitvqgan.compiled_encode(quantizer)
    info = {
        "quantizer_dir": fs.abspath(quantizer_dir),
        "grid_size": quantizer.grid_size,
        "codebook_size": quantizer.codebook_size,
        "dataset": dataset,
        "image_size": quantizer.image_size,
    }
    counts = {}
    for split in splits:
        ds = input_pipeline.make_dataset(
            split=split, training=False, batch_size=batch_size, cache=False
        )
        batches = ((encode(b["image"]).numpy(), b["label"].numpy()) for b in ds)
        counts[split] = write_token_shards(output_dir, split, batches, info)
        logging.info("encoded %d %s images into %s", counts[split], split, output_dir)
    return counts


def check_token_dir(token_dir, quantizer_info):
    """Token shards must come from a quantizer with the prior's grid and codebook."""
    info = read_token_info(token_dir)
    for key in ("grid_size", "codebook_size"):
        if info[key] != quantizer_info[key]:
            raise ValueError(
                f"token shards in {token_dir!r} have {key} {info[key]} (quantizer "
                f"{info['quantizer_dir']!r}) but the prior's quantizer has {quantizer_info[key]}"
            )
