"""The training procedure of the VIM prior: next-token NLL with class dropout (the paper,
Sec. 4), on token shards or on images tokenized on the fly by a frozen tokenizer."""

import math

import gin
import keras
import tensorflow as tf
from keras import ops

from vim_tf.config import checks
from vim_tf.models import loading, randomness
from vim_tf.models.vim import tokens_from_batch
from vim_tf.sampling import decoding
from vim_tf.training.procedure import TrainingProcedure
from vim_tf.utils import fs
from vim_tf.utils import model_dir as model_dir_lib


@gin.register
class PriorTraining(TrainingProcedure):
    """Trains a `VIM` on the tokens of a frozen ViT-VQGAN tokenizer.

    Args:
      network: a callable making the `VIM` (gin: `PriorTraining.network = @VIM`); it is called
        with the tokenizer's grid_size and codebook_size when there is a tokenizer. A built
        `VIM` instance is accepted too (it must match the tokenizer).
      quantizer_dir: the trained stage-1 model dir. Its frozen tokenizer tokenizes training
        images on the fly and decodes the summary samples.
      tokenizer: a tokenizer (`ViTVQGAN` or `CNNVQGAN`) instead of `quantizer_dir` (tests,
        `fit` from Python).
      class_dropout: training probability of replacing the class with the null class (enables
        classifier-free guidance; not in the paper, 0 there).

    Compile: `compile(optimizer=...)` (the gin scope 'prior' of `make_optimizer`).
    """

    kind = "prior"
    optimizer_names = ("prior",)

    def __init__(
        self,
        network=gin.REQUIRED,
        quantizer_dir=None,
        tokenizer=None,
        class_dropout=0.0,
        **kwargs,
    ):
        super().__init__(**kwargs)
        checks.check_float(
            "PriorTraining", "class_dropout", class_dropout, 0.0, 1.0, high_open=True
        )
        self.quantizer_dir = quantizer_dir
        if quantizer_dir and tokenizer is None:
            # Checked before anything is restored: a wrong dir fails fast.
            model_dir_lib.check_model_dir(
                quantizer_dir,
                ("quantizer",),
                "a prior's quantizer is a trained stage-1 ViT-VQGAN dir",
            )
        self.network = self._make_network(network, tokenizer, quantizer_dir)
        if class_dropout > 0 and self.network.num_classes == 0:
            raise ValueError(
                "PriorTraining.class_dropout needs a class-conditional prior (VIM.num_classes > 0)"
            )
        if quantizer_dir and tokenizer is None:
            tokenizer = loading.load_tokenizer(quantizer_dir)
        self.tokenizer = tokenizer
        if tokenizer is not None:
            tokenizer.trainable = False
        self.class_dropout = float(class_dropout)
        # Class dropout's draws: seeded like the layers' dropout, different on each replica.
        self.class_dropout_seed = keras.random.SeedGenerator(name="class_dropout_seed")
        self._trackers = {
            n: keras.metrics.Mean(name=n) for n in ("loss", "bits_per_token", "accuracy")
        }

    @staticmethod
    def _make_network(network, tokenizer, quantizer_dir):
        """The VIM, with the token grid and vocabulary of the tokenizer (if any)."""
        if tokenizer is not None:
            grid = {"grid_size": tokenizer.grid_size, "codebook_size": tokenizer.codebook_size}
        elif quantizer_dir:
            info = model_dir_lib.read_model_info(quantizer_dir, kind="quantizer")
            grid = {k: info[k] for k in ("grid_size", "codebook_size")}
        else:
            grid = {}
        if isinstance(network, keras.Model):
            for name, value in grid.items():
                if getattr(network, name) != value:
                    raise ValueError(
                        f"VIM.{name} is {getattr(network, name)} but the quantizer has {name} "
                        f"{value}: a prior must use its quantizer's token grid and codebook"
                    )
            return network
        if network is None or not callable(network):
            raise ValueError(
                "PriorTraining.network must be a VIM class or instance (e.g. "
                f"PriorTraining.network = @VIM in gin), got {network!r}"
            )
        return network(**grid)

    def checkpoint_items(self):
        """The network under "model", the optimizer, and the class dropout's random state (so a
        resumed run draws what an uninterrupted one would)."""
        return dict(super().checkpoint_items(), class_dropout_seed=self.class_dropout_seed.state)

    def nll(self, tokens, class_ids, training=False, accuracy=True):
        """Mean next-token cross-entropy in nats, and the argmax accuracy (None when
        `accuracy` is False)."""
        logits = self.network(tokens, class_ids, training=training)
        ce = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=tokens, logits=logits)
        acc = None
        if accuracy:
            predicted = tf.argmax(logits, -1, output_type=tf.int32)
            acc = ops.mean(ops.cast(ops.equal(predicted, ops.cast(tokens, "int32")), "float32"))
        return ops.mean(ce), acc

    def tokenize(self, data):
        """Token ids [B, N] from a batch: its `tokens`, or its `image`s through the tokenizer."""
        return tokens_from_batch(data, self.tokenizer, self.network.seq_len)

    def drop_classes(self, class_ids):
        """Training's class dropout: each id becomes the null class with probability
        `class_dropout` (a different draw on each replica). class_ids: int32 [B]."""
        if self.class_dropout == 0:
            return class_ids
        drop = randomness.uniform(self.class_dropout_seed, tf.shape(class_ids)) < self.class_dropout
        return tf.where(drop, self.network.null_class, class_ids)

    def train_step(self, data, summarize=True):
        """One step on `data` ({'tokens' or 'image', 'label'}); `summarize`: also track the
        accuracy (the trainer asks for it on the last step of each loop only)."""
        tokens = self.tokenize(data)
        class_ids = ops.cast(
            data.get("label", ops.zeros((ops.shape(tokens)[0],), "int32")), "int32"
        )
        class_ids = self.drop_classes(class_ids)
        replicas = tf.distribute.get_strategy().num_replicas_in_sync
        with tf.GradientTape() as tape:
            loss, acc = self.nll(tokens, class_ids, training=True, accuracy=summarize)
            scaled = self.optimizer.scale_loss(loss / replicas)
        ok = self.minimize(tape, scaled, loss)
        self.track(ok, loss=loss, bits_per_token=loss / math.log(2.0))
        if summarize:
            self.track(ok, accuracy=acc)
        return {m.name: m.result() for m in self.metrics}

    def summary_images(self, batch, per_class=4):
        """Traceable image summaries: {'samples': ([classes * per_class, H, W, 3], classes)}.

        One row per class (up to 10), `per_class` samples each, with a fixed seed so successive
        summaries show how the same draws evolve; {} without a tokenizer to decode them.
        """
        del batch  # samples do not depend on the data
        if self.tokenizer is None:
            return {}
        num_classes = self.network.num_classes
        classes = min(num_classes, 10) if num_classes else 1
        class_ids = tf.repeat(tf.range(classes, dtype=tf.int32), per_class)
        tokens = decoding.sample_tokens(self.network, class_ids, seed=0)
        return {"samples": (self.tokenizer.decode(tokens), classes)}

    def model_info(self):
        info = {
            "kind": self.kind,
            "grid_size": self.network.grid_size,
            "codebook_size": self.network.codebook_size,
            "num_classes": self.network.num_classes,
            "class_dropout": self.class_dropout,
            "quantizer_dir": fs.abspath(self.quantizer_dir) if self.quantizer_dir else None,
        }
        if self.tokenizer is not None:
            info["image_size"] = self.tokenizer.image_size
        return info

    def get_config(self):
        config = super().get_config()
        config.update(
            quantizer_dir=self.quantizer_dir,
            class_dropout=self.class_dropout,
        )
        return config
