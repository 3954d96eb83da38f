"""A small convolutional image classifier: the scoring network for FID/IS/class accuracy on
datasets without a pretrained Inception (the embedded digits)."""

import gin
import keras
import tensorflow as tf
from keras import ops

from vim_tf.config import checks
from vim_tf.models import randomness
from vim_tf.training import guard
from vim_tf.training.procedure import TrainingProcedure


@gin.register
class ImageClassifier(TrainingProcedure):
    """Conv blocks (conv-BN-ReLU x2, then 2x2 max-pool), global average pool, dense features,
    softmax logits.

    Args:
      image_size: square input size.
      num_classes: output classes.
      channels: width of each conv block (each halves the resolution).
      feature_dim: width of the pooled feature layer (the "pool" features for FID).
      dropout: before the logits.
      max_shift: training augmentation, random translations of up to this many pixels.

    Call: `images: [B, H, W, 3] in [0, 1] -> logits [B, num_classes]`;
    `features(images) -> [B, feature_dim]`.
    """

    kind = "classifier"
    optimizer_names = ("classifier",)

    def __init__(
        self,
        image_size,
        num_classes,
        channels=(32, 64, 128),
        feature_dim=128,
        dropout=0.2,
        max_shift=2,
        **kwargs,
    ):
        super().__init__(**kwargs)
        owner = "ImageClassifier"
        checks.check_int(owner, "num_classes", num_classes, minimum=2)
        if isinstance(channels, (str, bytes)) or not hasattr(channels, "__len__") or not channels:
            raise ValueError(
                f"{owner}.channels must be a non-empty tuple of ints, got {channels!r}"
            )
        for i, c in enumerate(channels):
            checks.check_int(owner, f"channels[{i}]", c)
        # Each conv block halves the resolution: fewer pixels than that pool away to nothing.
        checks.check_int(
            owner,
            "image_size",
            image_size,
            minimum=2 ** len(channels),
            hint=f" ({len(channels)} conv blocks each halve the resolution)",
        )
        checks.check_int(owner, "feature_dim", feature_dim)
        checks.check_float(owner, "dropout", dropout, 0.0, 1.0, high_open=True)
        checks.check_int(owner, "max_shift", max_shift, minimum=0)
        self.image_size = int(image_size)
        self.num_classes = int(num_classes)
        self.channels = tuple(int(c) for c in channels)
        self.feature_dim = int(feature_dim)
        self.dropout = float(dropout)
        self.max_shift = int(max_shift)
        for i, c in enumerate(self.channels):
            for j in range(2):
                setattr(
                    self, f"conv_{i}_{j}", keras.layers.Conv2D(c, 3, padding="same", use_bias=False)
                )
                setattr(self, f"bn_{i}_{j}", keras.layers.BatchNormalization())
        self.feature = keras.layers.Dense(self.feature_dim, name="feature")
        self.drop = randomness.ReplicaDropout(self.dropout)
        # The augmentation's random shifts, different on each replica.
        self.shift_seed = keras.random.SeedGenerator(name="shift_seed")
        # Output head in float32 under mixed precision (softmax cross-entropy on its logits).
        self.logits = keras.layers.Dense(self.num_classes, name="logits", dtype="float32")
        self._trackers = {n: keras.metrics.Mean(name=n) for n in ("loss", "accuracy")}

    def build(self, input_shape=None):
        # Sub-layers build themselves on this first call.
        self.built = True
        self(ops.zeros((1, self.image_size, self.image_size, 3)))

    def features(self, images, training=False):
        x = ops.cast(images, self.compute_dtype) * 2.0 - 1.0
        for i in range(len(self.channels)):
            for j in range(2):
                x = getattr(self, f"conv_{i}_{j}")(x)
                x = ops.relu(getattr(self, f"bn_{i}_{j}")(x, training=training))
            x = ops.max_pool(x, 2, 2)
        x = ops.mean(x, axis=(1, 2))
        return ops.relu(self.feature(x))

    def call(self, images, training=False):
        f = self.features(images, training=training)
        return ops.cast(self.logits(self.drop(f, training=training)), "float32")

    # Training protocol of vim_tf.training.trainer.
    def build_all(self):
        self.build()

    def compile(self, classifier=None, **kwargs):
        super().compile(**kwargs)
        self.classifier_optimizer = classifier

    def build_optimizers(self):
        self.classifier_optimizer.build(self.trainable_variables)

    def named_optimizers(self):
        return {"classifier": self.classifier_optimizer}

    def checkpoint_items(self):
        return {"model": self, "classifier_optimizer": self.classifier_optimizer}

    @property
    def step(self):
        return self.classifier_optimizer.iterations

    @property
    def metrics(self):
        return list(self._trackers.values())

    def augment(self, images):
        """Random translations (zero padding), so generated digits slightly off-center still
        score as they should."""
        s = self.max_shift
        if s == 0:
            return images
        size = self.image_size
        padded = tf.pad(images, [[0, 0], [s, s], [s, s], [0, 0]])
        return tf.image.stateless_random_crop(
            padded,
            tf.stack([tf.shape(images)[0], size, size, 3]),
            seed=randomness.replica_seed(self.shift_seed),
        )

    def train_step(self, data):
        images = self.augment(data["image"])
        labels = tf.cast(data["label"], tf.int32)
        replicas = tf.distribute.get_strategy().num_replicas_in_sync
        with tf.GradientTape() as tape:
            logits = self(images, training=True)
            loss = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(labels, logits))
            scaled = self.classifier_optimizer.scale_loss(loss / replicas)
        variables = self.trainable_variables
        ok = guard.apply_if_finite(
            self, self.classifier_optimizer, tape.gradient(scaled, variables), variables, loss
        )
        acc = tf.reduce_mean(
            tf.cast(tf.equal(tf.argmax(logits, -1, output_type=tf.int32), labels), tf.float32)
        )
        guard.track(self._trackers["loss"], loss, ok)
        guard.track(self._trackers["accuracy"], acc, ok)
        return {m.name: m.result() for m in self.metrics}

    def model_info(self):
        return {
            "kind": self.kind,
            "image_size": self.image_size,
            "num_classes": self.num_classes,
            "feature_dim": self.feature_dim,
        }

    def get_config(self):
        config = super().get_config()
        config.update(
            image_size=self.image_size,
            num_classes=self.num_classes,
            channels=list(self.channels),
            feature_dim=self.feature_dim,
            dropout=self.dropout,
            max_shift=self.max_shift,
        )
        return config
