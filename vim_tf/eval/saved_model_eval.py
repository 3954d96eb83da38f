"""Scores an exported SavedModel (what TF Serving serves) with the same metrics as a model dir.

The SavedModel is called only through its signatures; the dataset comes from the config of the
model dir it was exported from (recorded in its export_info.json).
"""

import numpy as np
import tensorflow as tf

from vim_tf.config import gin_utils
from vim_tf.eval import prior_eval, quantizer_eval
from vim_tf.sampling import sampler as sampler_lib
from vim_tf.sampling import seeds
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


class ServedSampler(sampler_lib.BatchSampler):
    """`vim_tf.sampling.sampler.Sampler` through a prior export's `generate` signature: the same
    batches with the same seeds (each request asks for its batch's seed, `seeds.request_seed`)."""

    def __init__(self, loaded, info):
        self._generate = loaded.signatures["generate"]
        self.num_classes = info.get("num_classes", 0) or 0

    def check_guidance(self, cfg_scale):
        """Nothing here: the export refuses guidance in-graph where its prior cannot serve it."""
        del cfg_scale

    def draw_batch(self, class_ids, seed, batch_index, settings, pad_to=None):
        del pad_to  # the served signature takes any batch size
        first = (
            {"class_ids": tf.constant(class_ids)}
            if self.num_classes
            else {"num_images": tf.constant(len(class_ids), tf.int32)}
        )
        out = self._generate(
            **first,
            **settings.tensors()._asdict(),
            seed=tf.constant(seeds.request_seed(seed, batch_index), tf.int32),
        )
        return out["tokens"].numpy(), out["images"].numpy().astype(np.float32) / 255.0


def evaluate_saved_model(
    path, network=None, num_samples=1000, acceptance_rate=1.0, settings=None, seed=0
):
    """Metrics of an export: quantizer (psnr, ssim, l1, l2, usage, perplexity, rfid) or prior
    (fid, inception_score, kid, class_accuracy of samples from `generate`, drawn with
    `settings` (`SamplingSettings`) and `seed` as `evaluator.evaluate` draws them). A prior
    export has no likelihood signature, so its metrics have no NLL."""
    info = read_export_info(path)
    gin_utils.load_model_dir_config(info["source"]["model_dir"])
    loaded = tf.saved_model.load(path)
    if info["kind"] == "quantizer":
        metrics = quantizer_eval.evaluate_quantizer(ServedQuantizer(loaded, info), network=network)
        metrics.pop("examples")
    elif info["kind"] == "prior":
        if network is None:
            raise ValueError("scoring a prior export needs --classifier")
        metrics = prior_eval.score_prior_samples(
            ServedSampler(loaded, info), network, num_samples, acceptance_rate, seed, settings
        )
    else:
        raise ValueError(
            f"{path!r} is a {info['kind']!r} export; --saved_model scores quantizer "
            "and prior exports"
        )
    metrics.update(kind=info["kind"], saved_model=fs.abspath(path), step=info["source"]["step"])
    return metrics
