"""VIM: the decoder-only Transformer prior over ViT-VQGAN tokens (the paper, Sec. 4).

Sequence layout: position 0 holds the class token (class-conditional) or a start token
(unconditional); position i > 0 holds image token i - 1; the output at position i predicts image
token i (raster order). Every input position also gets the learnable 2-D positional embedding of
the token it predicts.

This module holds the inference network only; its training procedure (class dropout, the frozen
tokenizer of image batches, the NLL loss) is `vim_tf.training.prior.PriorTraining`.
"""

import gin
import keras
import numpy as np
import tensorflow as tf
from keras import ops

from vim_tf.config import checks
from vim_tf.models import matmuls, randomness
from vim_tf.models.vit import LayerNorm, TransformerStack


def tokens_from_batch(batch, tokenizer, seq_len):
    """Token ids int32 [B, seq_len] of a batch: its `tokens`, or its `image`s through the
    (frozen) tokenizer, a `ViTVQGAN`, `CNNVQGAN` or None."""
    if "tokens" in batch:
        return ops.reshape(ops.cast(batch["tokens"], "int32"), (-1, seq_len))
    if tokenizer is None:
        raise ValueError("batches of images need the prior's quantizer (--quantizer_dir)")
    tokens = tf.stop_gradient(tokenizer.encode(batch["image"]))
    return ops.reshape(tokens, (-1, seq_len))


# Attention logit of a masked (future) position, as in `vim_tf.models.vit.Attention`.
_MASKED = -1e9


@gin.register
@keras.saving.register_keras_serializable(package="vim_tf")
class VIM(keras.Model):
    """Decoder-only Transformer over raster-ordered image tokens.

    Args:
      num_layers, num_heads, hidden_dim, mlp_dim: Transformer size (the paper, Table 1).
      grid_size: tokens per side (the tokenizer's grid; the sequence has grid_size**2 tokens).
      codebook_size: token vocabulary (the tokenizer's codebook size). `PriorTraining` passes
        both from its tokenizer.
      dropout: on residual branches, MLP activations and attention weights (0.1 in the paper).
      num_classes: 0 for an unconditional prior; otherwise a class-id token with its own
        embedding table is prepended, plus one "null" class (id `num_classes`) used for
        classifier-free guidance.

    Call: `tokens: int [B, N], class_ids: int [B] -> logits float32 [B, N, codebook_size]`.

    Example:
      >>> prior = VIM(2, 2, 16, 32, grid_size=4, codebook_size=16, num_classes=10)
      >>> logits = prior(tokens, class_ids)     # [B, 16, 16]
    """

    def __init__(
        self,
        num_layers,
        num_heads,
        hidden_dim,
        mlp_dim,
        grid_size=None,
        codebook_size=None,
        dropout=0.1,
        num_classes=0,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if grid_size is None or codebook_size is None:
            raise ValueError(
                "VIM needs its quantizer: pass --quantizer_dir=DIR (a trained stage-1 model dir) "
                "or set VIM.grid_size and VIM.codebook_size"
            )
        for name, value in (
            ("grid_size", grid_size),
            ("codebook_size", codebook_size),
            ("num_layers", num_layers),
            ("num_heads", num_heads),
            ("hidden_dim", hidden_dim),
            ("mlp_dim", mlp_dim),
        ):
            checks.check_int("VIM", name, value)
        checks.check_heads("VIM", num_heads, hidden_dim)
        checks.check_int("VIM", "num_classes", num_classes, minimum=0, hint=" (0: unconditional)")
        checks.check_float("VIM", "dropout", dropout, 0.0, 1.0, high_open=True)
        self.grid_size = grid_size
        self.seq_len = grid_size * grid_size
        self.codebook_size = codebook_size
        self.num_layers = num_layers
        self.num_heads = num_heads
        self.hidden_dim = hidden_dim
        self.mlp_dim = mlp_dim
        self.dropout = dropout
        self.num_classes = num_classes
        self.head_dim = hidden_dim // num_heads
        self.transformer = TransformerStack(
            num_layers, num_heads, mlp_dim, dropout, causal=True, name="transformer"
        )
        self.ln_final = LayerNorm(epsilon=1e-6, name="ln_final")
        # Output head in float32 under mixed precision: logits over the whole codebook feed the
        # softmax cross-entropy and sampling (its input is cast up to float32).
        self.head = matmuls.Dense(codebook_size, full_precision=True, name="head", dtype="float32")
        self.embed_dropout = randomness.ReplicaDropout(dropout)

    @property
    def null_class(self):
        return self.num_classes

    @property
    def num_class_slots(self):
        # Conditional: the classes plus the null class; unconditional: the start token.
        return self.num_classes + 1 if self.num_classes else 1

    def build(self, input_shape=None):
        init = keras.initializers.RandomNormal(stddev=0.02)
        d = self.hidden_dim
        # autocast=False: under mixed precision the embeddings are summed in float32 and cast
        # to the compute dtype afterwards, so their gradients (summed over the batch) are float32
        # sums too (a float16 sum of loss-scaled gradients overflows).
        self.token_embedding = self.add_weight(
            name="token_embedding",
            shape=(self.codebook_size, d),
            initializer=init,
            autocast=False,
        )
        self.class_embedding = self.add_weight(
            name="class_embedding",
            shape=(self.num_class_slots, d),
            initializer=init,
            autocast=False,
        )
        self.row_embedding = self.add_weight(
            name="row_posemb", shape=(self.grid_size, d), initializer=init, autocast=False
        )
        self.col_embedding = self.add_weight(
            name="col_posemb", shape=(self.grid_size, d), initializer=init, autocast=False
        )
        self.transformer.build((None, self.seq_len, d))
        self.ln_final.build((None, self.seq_len, d))
        self.head.build((None, self.seq_len, d))
        self.built = True

    def positional_embedding(self):
        """[N, D]: row embedding + column embedding of each raster position."""
        pos = self.row_embedding[:, None, :] + self.col_embedding[None, :, :]
        return ops.reshape(pos, (self.seq_len, self.hidden_dim))

    def class_slots(self, class_ids):
        """Maps user class ids to embedding rows (unconditional priors use the start token)."""
        if self.num_classes == 0:
            return ops.zeros_like(class_ids, dtype="int32")
        return ops.cast(class_ids, "int32")

    def embed_inputs(self, tokens, class_ids):
        """tokens [B, N] -> inputs [B, N, D] (class/start token, then tokens shifted right)."""
        first = ops.take(self.class_embedding, self.class_slots(class_ids), axis=0)[:, None]
        rest = ops.take(self.token_embedding, ops.cast(tokens[:, :-1], "int32"), axis=0)
        x = ops.concatenate([first, rest], axis=1) + self.positional_embedding()[None]
        return ops.cast(x, self.compute_dtype)

    def call(self, tokens, class_ids=None, training=None, return_hidden=False):
        if class_ids is None:
            class_ids = ops.zeros((ops.shape(tokens)[0],), "int32")
        x = self.embed_dropout(self.embed_inputs(tokens, class_ids), training=training)
        x, hidden = self.transformer(x, training=training, return_all=True)
        logits = ops.cast(self.head(self.ln_final(x)), "float32")
        return (logits, hidden) if return_hidden else logits

    def features(self, tokens, class_ids=None, layer=None):
        """Mean over tokens of block `layer`'s output (1-based; default: the middle block).

        The linear-probe features: [B, hidden_dim] float32.
        """
        layer = layer or max(1, self.num_layers // 2)
        if not 1 <= layer <= self.num_layers:
            raise ValueError(f"layer must be in [1, {self.num_layers}], got {layer}")
        _, hidden = self(tokens, class_ids, training=False, return_hidden=True)
        return ops.cast(ops.mean(hidden[layer - 1], axis=1), "float32")

    # ----------------------------------------------------------------- cached inference
    # One position at a time with a key/value cache: the primitives of the autoregressive loop
    # in `vim_tf.sampling.decoding` (graph-mode, static shapes, XLA-compilable). The cache is
    # batch-major, [rows, heads, positions, head_dim] per block, so attention reads it without
    # transposes, and it is held in chunks of positions: the loop fills one chunk while the
    # filled chunks before it (`past`) are read only, so each step attends over the filled
    # prefix of the sequence instead of all of it.
    def init_cache(self, rows, length=None):
        """An empty cache chunk of `length` positions (default: the whole sequence) for `rows`
        sequences: per block (keys, values), each [rows, H, length, hd] in the compute dtype."""
        length = self.seq_len if length is None else length
        shape = [rows, self.num_heads, length, self.head_dim]
        return [
            (tf.zeros(shape, self.compute_dtype), tf.zeros(shape, self.compute_dtype))
            for _ in range(self.num_layers)
        ]

    @staticmethod
    def join_cache(past, chunk):
        """The cache of the positions of `past` (None: none), then those of `chunk`."""
        if past is None:
            return chunk
        return [
            (tf.concat([pk, ck], axis=2), tf.concat([pv, cv], axis=2))
            for (pk, pv), (ck, cv) in zip(past, chunk)
        ]

    def position_embedding_at(self, pos):
        """[D]: the positional embedding of raster position `pos` (int scalar), one row of
        `positional_embedding()` read without building the table."""
        pos = tf.cast(pos, tf.int32)
        return tf.gather(self.row_embedding, pos // self.grid_size) + tf.gather(
            self.col_embedding, pos % self.grid_size
        )

    def first_input(self, class_ids):
        """Input at position 0 (class or start token, plus position 0's embedding).

        class_ids: int [B] -> [B, 1, D].
        """
        first = tf.gather(self.class_embedding, self.class_slots(class_ids))
        return tf.cast((first + self.position_embedding_at(0)[None])[:, None], self.compute_dtype)

    def next_input(self, tokens_t, pos):
        """Input at position pos + 1: the embedding of token pos (int [B]) -> [B, 1, D]."""
        nxt = tf.minimum(pos + 1, self.seq_len - 1)
        e = tf.gather(self.token_embedding, tokens_t) + self.position_embedding_at(nxt)[None]
        return tf.cast(e[:, None], self.compute_dtype)

    def call_with_cache(self, x, pos, cache, start=0, past=None):
        """Runs every block on the one position `pos`, attending over positions 0..pos.

        Args:
          x: [B, 1, D], the input at position `pos` (`first_input` / `next_input`).
          pos: int32 scalar, in [start, start + the chunk's length).
          cache: the chunk being filled (`init_cache`), holding positions from `start` on;
            position `pos` is written into it.
          start: Python int, the first position of `cache`.
          past: None when start is 0, else the filled cache of positions [0, start) (the
            chunks before, joined with `join_cache`); read only.

        Returns:
          (logits [B, codebook_size] float32 predicting token pos, the updated chunk).
        """
        length = cache[0][0].shape[2]
        # Keys of the chunk at positions after pos are not written yet.
        mask = (start + tf.range(length)) <= pos
        new = []
        for i in range(self.num_layers):
            prev = None if past is None else past[i]
            x, ck, cv = self._block_step(i, x, pos - start, cache[i], prev, mask)
            new.append((ck, cv))
        logits = tf.cast(self.head(self.ln_final(x))[:, 0], tf.float32)
        return logits, new

    def _block_step(self, i, x, index, chunk, past, mask):
        """One block on one new position with the key/value cache.

        x [B, 1, D]; index: the position's index in the chunk; chunk: this block's (keys,
        values) [B, H, n, hd] being filled; past: this block's filled (keys, values) of the
        earlier positions [B, H, m, hd] or None; mask [n] bool (chunk positions <= pos).
        """
        block = self.transformer.block(i)
        attn = block.attn
        q, k, v = attn.split_heads(attn.project_qkv(block.ln_1(x)))  # each [B, H, 1, hd]
        # In place under XLA (a dynamic-update-slice of the loop-carried chunk).
        at = [0, 0, index, 0]
        keys, values = ops.slice_update(chunk[0], at, k), ops.slice_update(chunk[1], at, v)
        q = q * tf.cast(1.0 / np.sqrt(self.head_dim), q.dtype)
        # Logits [B, H, 1, m + n] in float32 (as `vim_tf.models.vit.Attention.attend`).
        logits = tf.cast(tf.matmul(q, keys, transpose_b=True), tf.float32)
        logits = tf.where(mask, logits, _MASKED)
        if past is not None:
            past_logits = tf.cast(tf.matmul(q, past[0], transpose_b=True), tf.float32)
            logits = tf.concat([past_logits, logits], axis=-1)
        probs = tf.cast(tf.nn.softmax(logits, axis=-1), values.dtype)
        if past is None:
            heads = tf.matmul(probs, values)
        else:
            m = past[0].shape[2]
            heads = tf.matmul(probs[..., :m], past[1]) + tf.matmul(probs[..., m:], values)
        x = x + attn.project_out(heads)
        x = x + block.mlp(block.ln_2(x))
        return x, keys, values

    def get_config(self):
        config = super().get_config()
        config.update(
            grid_size=self.grid_size,
            codebook_size=self.codebook_size,
            num_layers=self.num_layers,
            num_heads=self.num_heads,
            hidden_dim=self.hidden_dim,
            mlp_dim=self.mlp_dim,
            dropout=self.dropout,
            num_classes=self.num_classes,
        )
        return config
