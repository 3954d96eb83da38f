"""Trained inference networks from their model dirs (no gin, nothing of training).

A model dir written by the trainer holds `model_info.json` (the kind and what a later stage
needs), `model_config.json` (the inference network's Keras config) and checkpoints whose key
"model" is the network. A loader checks the dir, rebuilds the network from its config and
restores the newest (or a named) checkpoint into it; discriminators, perceptual networks and
optimizer state in the checkpoint are left alone.
"""

import dataclasses
from typing import Optional

from absl import logging

from vim_tf.models.classifier import ImageClassifier
from vim_tf.models.cnn_vqgan import CNNVQGAN
from vim_tf.models.tokenizer import Tokenizer
from vim_tf.models.vim import VIM, tokens_from_batch
from vim_tf.models.vitvqgan import ViTVQGAN
from vim_tf.utils import model_dir as model_dir_lib

NETWORK_CLASSES = {"quantizer": ViTVQGAN, "prior": VIM, "classifier": ImageClassifier}
# A quantizer's class, by the name its model_info.json records under "network"; a dir that
# records none was written before the CNN tokenizer existed and holds a ViTVQGAN.
QUANTIZER_CLASSES = {"ViTVQGAN": ViTVQGAN, "CNNVQGAN": CNNVQGAN}


@dataclasses.dataclass(frozen=True)
class TrainedPrior:
    """A trained prior: its `VIM` network and the frozen tokenizer it models the tokens of.

    Attributes:
      network: the restored `VIM`.
      tokenizer: the restored tokenizer (`ViTVQGAN` or `CNNVQGAN`) of the prior's
        quantizer_dir, or None when the prior
        was trained from token shards without one.
      quantizer_dir: where the tokenizer came from (None without one).
      class_dropout: the training probability of the null class (> 0: the prior supports
        classifier-free guidance).
    """

    network: VIM
    tokenizer: Optional[Tokenizer]
    quantizer_dir: Optional[str] = None
    class_dropout: float = 0.0

    @property
    def num_classes(self):
        """The network's class count (0: unconditional): what sample plans need."""
        return self.network.num_classes

    def tokenize(self, batch):
        """Token ids int32 [B, N] of a batch: its `tokens`, or its `image`s through the
        tokenizer."""
        return tokens_from_batch(batch, self.tokenizer, self.network.seq_len)

    def decode(self, tokens):
        """tokens [B, h, w] -> images float32 [B, H, W, 3] in [0, 1] through the tokenizer."""
        if self.tokenizer is None:
            raise ValueError("decoding tokens to images needs the prior's quantizer")
        return self.tokenizer.decode(tokens)


def _restore(network, model_dir, checkpoint=None):
    """Builds `network` and restores checkpoint key "model" into it; returns the checkpoint path.

    Every variable of the network must be in the checkpoint (training-only objects there are
    ignored).
    """
    network.build()
    return model_dir_lib.restore_latest(network, model_dir, checkpoint)


def network_class(model_dir, info):
    """The class of the network in `model_dir`, from its model_info dict `info`.

    Raises:
      ValueError: a quantizer of a class this version does not know (named in the message).
    """
    kind = info.get("kind")
    if kind != "quantizer":
        return NETWORK_CLASSES[kind]
    name = info.get("network", "ViTVQGAN")
    if name not in QUANTIZER_CLASSES:
        raise ValueError(
            f"{model_dir!r} holds a quantizer of class {name!r}: valid quantizer classes are "
            f"{list(QUANTIZER_CLASSES)}"
        )
    return QUANTIZER_CLASSES[name]


def _rebuild(model_dir, info, checkpoint=None):
    config = model_dir_lib.read_model_config(model_dir)
    network = network_class(model_dir, info).from_config(config)
    return network, _restore(network, model_dir, checkpoint)


def load_tokenizer(quantizer_dir, checkpoint=None):
    """A trained tokenizer (`ViTVQGAN` or `CNNVQGAN`, as the dir records), frozen
    (`trainable = False`).

    Raises:
      ValueError: the dir is missing, not a quantizer or has no checkpoint (named in the message).
    """
    info = model_dir_lib.check_model_dir(
        quantizer_dir,
        ("quantizer",),
        "a prior's quantizer is a trained stage-1 ViT-VQGAN dir",
        need_checkpoint=checkpoint is None,
    )
    network, _ = _rebuild(quantizer_dir, info, checkpoint)
    network.trainable = False
    return network


def load_classifier(classifier_dir, checkpoint=None):
    """A trained `ImageClassifier` (the scoring network of FID/IS on small datasets)."""
    info = model_dir_lib.check_model_dir(
        classifier_dir,
        ("classifier",),
        "the scoring network must be a classifier model dir",
        need_checkpoint=checkpoint is None,
    )
    network, _ = _rebuild(classifier_dir, info, checkpoint)
    return network


def load_prior(prior_dir, checkpoint=None):
    """A trained prior (`TrainedPrior`: the VIM network and its tokenizer)."""
    info = model_dir_lib.check_model_dir(
        prior_dir, ("prior",), "a VIM model dir", need_checkpoint=checkpoint is None
    )
    return _prior(prior_dir, info, checkpoint)[0]


def _prior(prior_dir, info, checkpoint):
    quantizer_dir = info.get("quantizer_dir")
    tokenizer = load_tokenizer(quantizer_dir) if quantizer_dir else None
    network, path = _rebuild(prior_dir, info, checkpoint)
    prior = TrainedPrior(
        network=network,
        tokenizer=tokenizer,
        quantizer_dir=quantizer_dir,
        class_dropout=float(info.get("class_dropout", 0.0)),
    )
    return prior, path


def load_network(model_dir, kinds=model_dir_lib.KINDS, purpose=None, checkpoint=None):
    """The trained network of any kind, restored for inference.

    Args:
      model_dir: a trained model dir.
      kinds, purpose: accepted model kinds, checked (with the dir itself and its checkpoint)
        before anything is built; see `model_dir.check_model_dir`.
      checkpoint: a checkpoint path (default: the newest of the dir).

    Returns:
      (network, model_info dict, checkpoint path): a `ViTVQGAN` or `CNNVQGAN` for a quantizer, a
      `TrainedPrior` for a prior, an `ImageClassifier` for a classifier.
    """
    info = model_dir_lib.check_model_dir(
        model_dir, kinds, purpose, need_checkpoint=checkpoint is None
    )
    kind = info.get("kind")
    if kind not in NETWORK_CLASSES:
        raise ValueError(
            f"{model_dir!r} holds a {kind!r} model: valid kinds are {list(NETWORK_CLASSES)}"
        )
    if kind == "prior":
        network, path = _prior(model_dir, info, checkpoint)
    else:
        network, path = _rebuild(model_dir, info, checkpoint)
        if kind == "quantizer":
            network.trainable = False
    logging.info("restored %s (%s)", path, kind)
    return network, info, path
