"""A small convolutional image classifier: the scoring network for FID/IS/class accuracy on
datasets without a pretrained Inception (the embedded digits).

The inference network only; its training procedure (augmentation, cross-entropy, optimizer) is
`vim_tf.training.classifier.ClassifierTraining`.
"""

import gin
import keras
from keras import ops

from vim_tf.config import checks
from vim_tf.models import randomness


@gin.register
@keras.saving.register_keras_serializable(package="vim_tf")
class ImageClassifier(keras.Model):
    """Conv blocks (conv-BN-ReLU x2, then 2x2 max-pool), global average pool, dense features,
    softmax logits.

    Args:
      image_size: square input size.
      num_classes: output classes.
      channels: width of each conv block (each halves the resolution).
      feature_dim: width of the pooled feature layer (the "pool" features for FID).
      dropout: before the logits.

    Call: `images: [B, H, W, 3] in [0, 1] -> logits [B, num_classes]`;
    `features(images) -> [B, feature_dim]`.
    """

    def __init__(
        self,
        image_size,
        num_classes,
        channels=(32, 64, 128),
        feature_dim=128,
        dropout=0.2,
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
        self.image_size = int(image_size)
        self.num_classes = int(num_classes)
        self.channels = tuple(int(c) for c in channels)
        self.feature_dim = int(feature_dim)
        self.dropout = float(dropout)
        for i, c in enumerate(self.channels):
            for j in range(2):
                setattr(
                    self, f"conv_{i}_{j}", keras.layers.Conv2D(c, 3, padding="same", use_bias=False)
                )
                setattr(self, f"bn_{i}_{j}", keras.layers.BatchNormalization())
        self.feature = keras.layers.Dense(self.feature_dim, name="feature")
        self.drop = randomness.ReplicaDropout(self.dropout)
        # Output head in float32 under mixed precision (softmax cross-entropy on its logits).
        self.logits = keras.layers.Dense(self.num_classes, name="logits", dtype="float32")

    def build(self, input_shape=None):
        # Sub-layers build themselves on this first call.
        self.built = True
        self(ops.zeros((1, self.image_size, self.image_size, 3)))

    def features(self, images, training=False):
        """images [B, H, W, 3] in [0, 1] -> pooled features [B, feature_dim]."""
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

    def model_info(self):
        """What a scoring network's user needs to know (written to the model dir)."""
        return {
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
        )
        return config
