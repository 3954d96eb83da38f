"""The factorized, l2-normalized codebook of ViT-VQGAN (the paper, Sec. 3.1)."""

import keras
import tensorflow as tf
from keras import ops


def l2_normalize(x, axis=-1, eps=1e-6):
    """x / max(||x||, eps) along `axis`."""
    norm = ops.sqrt(ops.sum(ops.square(x), axis=axis, keepdims=True))
    return x / ops.maximum(norm, eps)


def nearest_codes(z, codebook, normalized):
    """Index of the nearest codebook row for every row of `z`.

    One [N, d] x [d, K] matmul instead of an [N, K, d] difference tensor, so memory is N*K, not
    N*K*d; with unit vectors the nearest code by Euclidean distance is the one with the largest dot
    product, because ||z - e||^2 = 2 - 2 z.e.

    Args:
      z: [N, d] float32 lookup vectors.
      codebook: [K, d] float32 codes.
      normalized: both z and codebook rows are unit vectors.

    Returns:
      int32 [N] indices.
    """
    dots = ops.matmul(z, ops.transpose(codebook))
    # tf.argmax/argmin directly: Keras's versions first rewrite -0.0 entries (five extra
    # elementwise passes over the [N, K] scores) to break +0/-0 ties, which never matter here.
    if normalized:
        return tf.argmax(dots, axis=-1, output_type=tf.int32)
    dist = (
        ops.sum(ops.square(z), axis=-1, keepdims=True)
        - 2.0 * dots
        + ops.sum(ops.square(codebook), axis=-1)[None]
    )
    return tf.argmin(dist, axis=-1, output_type=tf.int32)


def code_counts(indices, codebook_size):
    """float32 [codebook_size]: how often each code occurs in `indices` (int, any shape)."""
    flat = tf.reshape(indices, [-1])
    return tf.math.unsorted_segment_sum(tf.ones_like(flat, tf.float32), flat, codebook_size)


def code_statistics(counts):
    """Codebook usage and perplexity from code counts.

    Args:
      counts: [K] float counts of how often each code was chosen.

    Returns:
      (usage, perplexity): the fraction of codes used at least once, and exp(entropy) of the
      empirical code distribution (K when all codes are equally used, 1 when one code is).
    """
    counts = ops.cast(counts, "float32")
    usage = ops.mean(ops.cast(counts > 0, "float32"))
    probs = counts / ops.maximum(ops.sum(counts), 1.0)
    entropy = -ops.sum(ops.where(probs > 0, probs * ops.log(ops.maximum(probs, 1e-30)), 0.0))
    return usage, ops.exp(entropy)


@keras.saving.register_keras_serializable(package="vim_tf")
class VectorQuantizer(keras.layers.Layer):
    """Factorized codes with l2-normalized lookup, trained by the VQ loss (no EMA).

    The encoder output (hidden_dim) is linearly projected to a low-dimensional lookup space
    (code_dim, 32 in the paper), l2-normalized, and matched against l2-normalized codebook vectors
    (initialized from a standard normal). The matched code passes to the decoder with a
    straight-through gradient and is projected back up to `output_dim`.

    VQ loss (the paper, Sec. 3.1): ||sg[z] - e||^2 + beta * ||z - sg[e]||^2, squared Euclidean norms over the
    code dimension, averaged over tokens.

    Args:
      codebook_size: number of codes K (8192 in the paper).
      code_dim: lookup dimension d (32 in the paper; 8 also studied).
      output_dim: width of the decoder input the matched code is projected to.
      beta: commitment weight (0.25).
      l2_normalize: normalize inputs and codes (the paper's choice; False is the ablation).
      restart_dead_codes: not in the paper. Codes whose moving-average use falls below
        `dead_code_threshold` uses per step are re-initialized to randomly chosen encoder outputs
        of the current (global) batch (as in Jukebox). Short runs on small data need it: codes
        the encoder's outputs never come near get no gradient and stay dead.
      dead_code_decay: decay of the per-code use moving average.
      dead_code_threshold: uses per step below which a code counts as dead.

    Call: `z: [B, N, hidden] -> dict` with `codes` [B, N, output_dim] (straight-through, projected
    up), `indices` int32 [B, N], `vq_loss` scalar, `codebook_loss`, `commitment_loss`, `counts`
    [K] float32 code counts of this batch.
    """

    def __init__(
        self,
        codebook_size,
        code_dim,
        output_dim,
        beta=0.25,
        l2_normalize=True,
        restart_dead_codes=False,
        dead_code_decay=0.99,
        dead_code_threshold=0.03,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if int(codebook_size) < 1:
            raise ValueError(f"codebook_size must be >= 1, got {codebook_size}")
        if int(code_dim) < 1:
            raise ValueError(f"code_dim must be >= 1, got {code_dim}")
        if beta < 0:
            raise ValueError(f"beta must be >= 0, got {beta}")
        self.codebook_size = int(codebook_size)
        self.code_dim = int(code_dim)
        self.output_dim = int(output_dim)
        self.beta = float(beta)
        self.l2_normalize = bool(l2_normalize)
        if not 0.0 <= dead_code_decay < 1.0:
            raise ValueError(f"dead_code_decay must be in [0, 1), got {dead_code_decay}")
        self.restart_dead_codes = bool(restart_dead_codes)
        self.dead_code_decay = float(dead_code_decay)
        self.dead_code_threshold = float(dead_code_threshold)
        self.in_proj = keras.layers.Dense(self.code_dim, name="in_proj")
        self.out_proj = keras.layers.Dense(self.output_dim, name="out_proj")

    def build(self, input_shape):
        self.in_proj.build(input_shape)
        self.out_proj.build(tuple(input_shape[:-1]) + (self.code_dim,))
        # The codebook stays float32 under mixed precision: distances between nearly-equal unit
        # vectors lose their ordering in bfloat16. autocast=False: reads inside `call` must not
        # be cast to the bfloat16/float16 compute dtype.
        self.codebook = self.add_weight(
            name="codebook",
            shape=(self.codebook_size, self.code_dim),
            initializer=keras.initializers.RandomNormal(stddev=1.0),
            dtype="float32",
            autocast=False,
            # Restarts assign it inside the replica context (every replica computes the same
            # value from the gathered global batch); the first replica's write is kept.
            aggregation="only_first_replica",
        )
        # Moving average of how often each code is chosen per step (restart bookkeeping; starts
        # at 0 so the first restart seeds every unused code from data).
        self.usage_ema = self.add_weight(
            name="usage_ema",
            shape=(self.codebook_size,),
            initializer="zeros",
            trainable=False,
            dtype="float32",
            autocast=False,
            aggregation="only_first_replica",
        )

    def normalized_codebook(self):
        cb = ops.convert_to_tensor(self.codebook)
        return l2_normalize(cb) if self.l2_normalize else cb

    def lookup(self, z):
        """Project and match. z: [B, N, hidden] -> (z_lookup [B,N,d] float32, indices [B,N])."""
        z = ops.cast(self.in_proj(z), "float32")
        if self.l2_normalize:
            z = l2_normalize(z)
        n = ops.shape(z)[1]
        idx = nearest_codes(
            ops.reshape(z, (-1, self.code_dim)), self.normalized_codebook(), self.l2_normalize
        )
        return z, ops.reshape(idx, (-1, n))

    def embed(self, indices):
        """Token ids [B, N] int -> decoder input [B, N, output_dim] (no gradient path to z)."""
        e = ops.take(self.normalized_codebook(), indices, axis=0)
        return self.out_proj(ops.cast(e, self.compute_dtype))

    def call(self, z):
        z_lookup, indices = self.lookup(z)
        e = ops.take(self.normalized_codebook(), indices, axis=0)
        codebook_loss = ops.mean(ops.sum(ops.square(ops.stop_gradient(z_lookup) - e), axis=-1))
        commitment_loss = ops.mean(ops.sum(ops.square(z_lookup - ops.stop_gradient(e)), axis=-1))
        # Straight-through: forward pass uses e, the gradient flows to z unchanged.
        quantized = z_lookup + ops.stop_gradient(e - z_lookup)
        counts = code_counts(indices, self.codebook_size)
        return {
            "z": z_lookup,
            "codes": self.out_proj(ops.cast(quantized, self.compute_dtype)),
            "indices": indices,
            "vq_loss": codebook_loss + self.beta * commitment_loss,
            "codebook_loss": codebook_loss,
            "commitment_loss": commitment_loss,
            "counts": counts,
        }

    def restart(self, z, counts, step, enabled=True):
        """Updates the use average and re-seeds dead codes from this batch's lookup vectors.

        Under a multi-replica strategy every replica gathers the global batch and draws the same
        random choice (seeded by `step`), so the mirrored codebook stays identical everywhere.

        Args:
          z: [B, N, d] float32 lookup vectors of this replica's batch.
          counts: [K] code counts of this replica's batch.
          step: int scalar, the training step (random seed).
          enabled: bool (tensor): False leaves the codebook and the use average unchanged (a
            skipped step). A flag rather than a `tf.cond` around the call: the cross-replica
            gather may not sit inside a conditional branch.

        Returns:
          number of codes re-seeded (float32 scalar).
        """
        ctx = tf.distribute.get_replica_context()
        z = tf.reshape(tf.cast(z, tf.float32), [-1, self.code_dim])
        if ctx is not None and ctx.num_replicas_in_sync > 1:
            z = ctx.all_gather(z, axis=0)
            counts = ctx.all_reduce(tf.distribute.ReduceOp.SUM, counts)
        ema = self.dead_code_decay * self.usage_ema + (1.0 - self.dead_code_decay) * counts
        enabled = tf.convert_to_tensor(enabled, tf.bool)
        dead = tf.logical_and(ema < self.dead_code_threshold, enabled)
        seed = tf.stack([tf.cast(step, tf.int32), tf.constant(7, tf.int32)])
        pick = tf.random.stateless_uniform(
            [self.codebook_size], seed, maxval=tf.shape(z)[0], dtype=tf.int32
        )
        self.codebook.assign(tf.where(dead[:, None], tf.gather(z, pick), self.codebook))
        # A re-seeded code gets a grace period of one use per step before it can die again.
        self.usage_ema.assign(tf.where(dead, 1.0, tf.where(enabled, ema, self.usage_ema)))
        return tf.reduce_sum(tf.cast(dead, tf.float32))

    def get_config(self):
        config = super().get_config()
        config.update(
            codebook_size=self.codebook_size,
            code_dim=self.code_dim,
            output_dim=self.output_dim,
            beta=self.beta,
            l2_normalize=self.l2_normalize,
            restart_dead_codes=self.restart_dead_codes,
            dead_code_decay=self.dead_code_decay,
            dead_code_threshold=self.dead_code_threshold,
        )
        return config
