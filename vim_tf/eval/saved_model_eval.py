"""Scores an exported SavedModel (what TF Serving serves) with the same metrics as a model dir.

The SavedModel is called only through its signatures; the dataset comes from the config of the
model dir it was exported from (recorded in its export_info.json).
"""

import numpy as np
import tensorflow as tf

from vim_tf.config import gin_utils
from vim_tf.eval import prior_eval, quantizer_eval
from vim_tf.utils import fs


def read_export_info(path):
    info_path = fs.join(path, "export_info.json")
    if not fs.exists(info_path):
        raise ValueError(
            f"{path!r} holds no export_info.json: not a vim_tf export version dir "
            "(point at OUT/<version>/ written by tools/export.py)"
        )
    return fs.read_json(info_path)


class ServedQuantizer:
    """`encode` / `decode` of a quantizer export, with the model's float-image interface."""

    def __init__(self, loaded, info):
        self._encode = loaded.signatures["encode"]
        self._decode = loaded.signatures["decode"]
        self.codebook_size = info["codebook_size"]

    def encode(self, images):
        u8 = tf.cast(tf.clip_by_value(tf.round(images * 255.0), 0, 255), tf.uint8)
        return self._encode(images=u8)["tokens"]

    def decode(self, tokens):
        return tf.cast(self._decode(tokens=tf.cast(tokens, tf.int32))["images"], tf.float32) / 255.0


class ServedSampler:
    """`Sampler.sample` through a prior export's `generate` signature (same seeds per batch)."""

    def __init__(self, loaded, info):
        self._generate = loaded.signatures["generate"]
        self.conditional = info.get("num_classes", 0) > 0

    def sample(
        self, class_ids, seed=0, temperature=1.0, top_k=0, top_p=1.0, cfg_scale=1.0, batch_size=100
    ):
        batches = list(
            self.sample_batches(class_ids, seed, temperature, top_k, top_p, cfg_scale, batch_size)
        )
        return np.concatenate([t for _, t, _ in batches]), np.concatenate([i for *_, i in batches])

    def sample_batches(
        self, class_ids, seed=0, temperature=1.0, top_k=0, top_p=1.0, cfg_scale=1.0, batch_size=100
    ):
        """Yields (class_ids [B], tokens [B, h, w], images float32 [B, H, W, 3] in [0, 1]) one
        batch at a time, as `vim_tf.eval.generate.Sampler.sample_batches`."""
        for b, start in enumerate(range(0, len(class_ids), batch_size)):
            ids = np.asarray(class_ids[start : start + batch_size], np.int32)
            first = (
                {"class_ids": tf.constant(ids)}
                if self.conditional
                else {"num_images": tf.constant(len(ids), tf.int32)}
            )
            # Same per-batch seed as vim_tf.eval.generate.Sampler (int32 wrap-around included).
            batch_seed = np.array(seed * 1_000_003 + b, np.int64).astype(np.int32)
            out = self._generate(
                **first,
                temperature=tf.constant(temperature, tf.float32),
                top_k=tf.constant(top_k, tf.int32),
                top_p=tf.constant(top_p, tf.float32),
                cfg_scale=tf.constant(cfg_scale, tf.float32),
                seed=tf.constant(batch_seed),
            )
            yield ids, out["tokens"].numpy(), out["images"].numpy().astype(np.float32) / 255.0


def evaluate_saved_model(path, network=None, num_samples=1000, acceptance_rate=1.0, sampling=None):
    """Metrics of an export: quantizer (psnr, ssim, l1, l2, usage, perplexity, rfid) or prior
    (fid, inception_score, kid, class_accuracy of samples from `generate`). A prior export has
    no likelihood signature, so its metrics have no NLL."""
    info = read_export_info(path)
    gin_utils.load_model_dir_config(info["source"]["model_dir"])
    loaded = tf.saved_model.load(path)
    if info["kind"] == "quantizer":
        metrics = quantizer_eval.evaluate_quantizer(ServedQuantizer(loaded, info), network=network)
        metrics.pop("examples")
    elif info["kind"] == "prior":
        if network is None:
            raise ValueError("scoring a prior export needs --classifier")
        sampler = ServedSampler(loaded, info)
        metrics = prior_eval.score_prior_samples(
            _PlanOnly(info.get("num_classes", 0)),
            network,
            num_samples,
            acceptance_rate,
            sampler=sampler,
            **prior_eval.split_sampling(sampling),
        )
    else:
        raise ValueError(
            f"{path!r} is a {info['kind']!r} export; --saved_model scores quantizer "
            "and prior exports"
        )
    metrics.update(kind=info["kind"], saved_model=fs.abspath(path), step=info["source"]["step"])
    return metrics


class _PlanOnly:
    """What `score_prior_samples` reads from a prior besides its sampler."""

    def __init__(self, num_classes):
        self.num_classes = num_classes
