"""The training procedure of the scoring classifier: cross-entropy on shifted images."""

import gin
import keras
import tensorflow as tf

from vim_tf.config import checks
from vim_tf.models import randomness
from vim_tf.training.procedure import TrainingProcedure, make_network


@gin.register
class ClassifierTraining(TrainingProcedure):
    """Trains an `ImageClassifier` with softmax cross-entropy on randomly shifted images.

    Args:
      network: the `ImageClassifier`, or a callable that makes it (gin:
        `ClassifierTraining.network = @ImageClassifier`).
      max_shift: augmentation, random translations (zero padding) of up to this many pixels, so
        generated digits slightly off-center still score as they should.

    Compile: `compile(optimizer=...)` (the gin scope 'classifier' of `make_optimizer`).
    """

    kind = "classifier"
    optimizer_names = ("classifier",)

    def __init__(self, network=gin.REQUIRED, max_shift=2, **kwargs):
        super().__init__(**kwargs)
        checks.check_int("ClassifierTraining", "max_shift", max_shift, minimum=0)
        self.max_shift = int(max_shift)
        self.network = make_network(network, "ClassifierTraining")
        # The augmentation's random shifts, different on each replica.
        self.shift_seed = keras.random.SeedGenerator(name="shift_seed")
        self._trackers = {n: keras.metrics.Mean(name=n) for n in ("loss", "accuracy")}

    def checkpoint_items(self):
        """The network under "model", the optimizer, and the augmentation's random state (so a
        resumed run draws what an uninterrupted one would)."""
        return dict(super().checkpoint_items(), shift_seed=self.shift_seed.state)

    def augment(self, images):
        """Random translation of images [B, H, W, 3] (zero padding): one offset per call, drawn
        from the procedure's seed generator (different on each replica)."""
        s = self.max_shift
        if s == 0:
            return images
        size = self.network.image_size
        padded = tf.pad(images, [[0, 0], [s, s], [s, s], [0, 0]])
        return tf.image.stateless_random_crop(
            padded,
            tf.stack([tf.shape(images)[0], size, size, 3]),
            seed=randomness.replica_seed(self.shift_seed),
        )

    def train_step(self, data, summarize=True):
        """One step; `summarize`: also track the accuracy (on the last step of each loop)."""
        images = self.augment(data["image"])
        labels = tf.cast(data["label"], tf.int32)
        replicas = tf.distribute.get_strategy().num_replicas_in_sync
        with tf.GradientTape() as tape:
            logits = self.network(images, training=True)
            loss = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(labels, logits))
            scaled = self.optimizer.scale_loss(loss / replicas)
        ok = self.minimize(tape, scaled, loss)
        self.track(ok, loss=loss)
        if summarize:
            acc = tf.reduce_mean(
                tf.cast(tf.equal(tf.argmax(logits, -1, output_type=tf.int32), labels), tf.float32)
            )
            self.track(ok, accuracy=acc)
        return {m.name: m.result() for m in self.metrics}

    def model_info(self):
        return dict(self.network.model_info(), kind=self.kind)

    def get_config(self):
        config = super().get_config()
        config.update(max_shift=self.max_shift)
        return config
