"""Training-time randomness that differs across replicas and is reproducible from the seed.

Keras 3 keeps a layer's random state in a seed-generator variable. Under a tf.distribute strategy
that variable is mirrored, so every replica would draw the same seed and, for the same shapes, the
same dropout mask: N replicas would drop the same units of their N shards. Here the replica's id
(`replica_id_in_sync_group`, global across workers) is folded into each drawn seed, so replicas
draw different masks while one run still follows from the initial seed state (which
`keras.utils.set_random_seed` fixes). Everything is stateless given the seed tensor, so it
compiles with XLA and runs inside `strategy.run` on TPU.
"""

import keras
import tensorflow as tf


def replica_id():
    """The replica's index in its sync group (int32 scalar; 0 outside a strategy)."""
    ctx = tf.distribute.get_replica_context()
    if ctx is None:  # cross-replica context: not inside strategy.run
        return tf.constant(0, tf.int32)
    return tf.cast(ctx.replica_id_in_sync_group, tf.int32)


def replica_seed(seed_generator):
    """Draws the next seed of `seed_generator` with this replica's id folded in: int64 [2]."""
    seed = tf.cast(seed_generator.next(), tf.int64)
    return tf.random.experimental.stateless_fold_in(seed, replica_id())


@keras.saving.register_keras_serializable(package="vim_tf")
class ReplicaDropout(keras.layers.Dropout):
    """`keras.layers.Dropout` whose mask differs across replicas (see the module docstring).

    Same arguments, config and inference behaviour as `keras.layers.Dropout`; in training the
    mask comes from `tf.nn.experimental.stateless_dropout` with a per-replica seed.

    Example:
      drop = ReplicaDropout(0.1)
      y = drop(x, training=True)  # a different mask on each replica of a strategy
    """

    def call(self, inputs, training=False):
        if not training or self.rate == 0:
            return inputs
        return tf.nn.experimental.stateless_dropout(
            inputs,
            rate=self.rate,
            seed=replica_seed(self.seed_generator),
            noise_shape=self._get_noise_shape(inputs),
        )

    def _get_noise_shape(self, inputs):
        if self.noise_shape is None:
            return None
        shape = tf.shape(inputs)
        return [shape[i] if d is None else d for i, d in enumerate(self.noise_shape)]


def uniform(seed_generator, shape):
    """Per-replica uniform floats in [0, 1) of `shape` from `seed_generator` (float32)."""
    return tf.random.stateless_uniform(shape, replica_seed(seed_generator), dtype=tf.float32)
