"""VIM: the decoder-only Transformer prior over ViT-VQGAN tokens (PAPER.md, stage 2).

Sequence layout: position 0 holds the class token (class-conditional) or a start token
(unconditional); position i > 0 holds image token i - 1; the output at position i predicts image
token i (raster order). Every input position also gets the learnable 2-D positional embedding of
the token it predicts.
"""

import math

import gin
import keras
import numpy as np
import tensorflow as tf
from keras import ops

from vim_tf.config import checks
from vim_tf.models import randomness
from vim_tf.models.vit import TransformerStack
from vim_tf.models.vitvqgan import load_quantizer
from vim_tf.training import guard
from vim_tf.training.procedure import TrainingProcedure
from vim_tf.utils import fs
from vim_tf.utils import model_dir as model_dir_lib

# Attention logit of a masked (future) position, as in `vim_tf.models.vit.Attention`.
_MASKED = -1e9


@gin.register
class VIM(TrainingProcedure):
    """Decoder-only Transformer over raster-ordered image tokens.

    Args:
      grid_size: tokens per side (the quantizer's grid; the sequence has grid_size**2 tokens).
      codebook_size: token vocabulary (the quantizer's codebook size).
      num_layers, num_heads, hidden_dim, mlp_dim: Transformer size (PAPER.md table).
      dropout: on residual branches, MLP activations and attention weights (0.1 in the paper).
      num_classes: 0 for an unconditional prior; otherwise a class-id token with its own
        embedding table is prepended, plus one "null" class (id `num_classes`) used for
        classifier-free guidance.
      class_dropout: training probability of replacing the class with the null class (enables
        classifier-free guidance; not in the paper, 0 there).
      quantizer_dir: the trained stage-1 model dir. Its frozen encoder tokenizes training images
        on the fly and its decoder turns samples into images; grid_size and codebook_size default
        to the quantizer's and must match it when set.

    Call: `tokens: int [B, N], class_ids: int [B] -> logits float32 [B, N, codebook_size]`.
    """

    kind = "prior"
    optimizer_names = ("prior",)

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
        class_dropout=0.0,
        quantizer_dir=None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.quantizer_dir = quantizer_dir
        self.quantizer = None
        if quantizer_dir:
            info = model_dir_lib.read_model_info(quantizer_dir, kind="quantizer")
            for name, value in (("grid_size", grid_size), ("codebook_size", codebook_size)):
                if value is not None and value != info[name]:
                    raise ValueError(
                        f"VIM.{name} is {value} but the quantizer at {quantizer_dir!r} has "
                        f"{name} {info[name]}: a prior must use its quantizer's token grid and "
                        "codebook (leave VIM.grid_size / VIM.codebook_size unset to follow it)"
                    )
            grid_size, codebook_size = info["grid_size"], info["codebook_size"]
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
        checks.check_float("VIM", "class_dropout", class_dropout, 0.0, 1.0, high_open=True)
        if class_dropout > 0 and num_classes == 0:
            raise ValueError("VIM.class_dropout needs a class-conditional prior (num_classes > 0)")
        if quantizer_dir:
            # After the checks above: a bad setting fails before the quantizer is restored.
            self.quantizer = load_quantizer(quantizer_dir)
        self.grid_size = grid_size
        self.seq_len = grid_size * grid_size
        self.codebook_size = codebook_size
        self.num_layers = num_layers
        self.num_heads = num_heads
        self.hidden_dim = hidden_dim
        self.mlp_dim = mlp_dim
        self.dropout = dropout
        self.num_classes = num_classes
        self.class_dropout = class_dropout
        self.head_dim = hidden_dim // num_heads
        self.transformer = TransformerStack(
            num_layers, num_heads, mlp_dim, dropout, causal=True, name="transformer"
        )
        self.ln_final = keras.layers.LayerNormalization(epsilon=1e-6, name="ln_final")
        # Output head in float32 under mixed precision: logits over the whole codebook feed the
        # softmax cross-entropy and sampling (its input is cast up to float32).
        self.head = keras.layers.Dense(codebook_size, name="head", dtype="float32")
        self.embed_dropout = randomness.ReplicaDropout(dropout)
        # Class dropout's draws: seeded like the layers' dropout, different on each replica.
        self.class_dropout_seed = keras.random.SeedGenerator(name="class_dropout_seed")
        self._trackers = {
            n: keras.metrics.Mean(name=n) for n in ("loss", "bits_per_token", "accuracy")
        }

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

    # ----------------------------------------------------------------- training
    def build_all(self):
        self.build()

    def compile(self, prior=None, **kwargs):
        super().compile(**kwargs)
        self.prior_optimizer = prior

    def build_optimizers(self):
        self.prior_optimizer.build(self.trainable_variables)

    def named_optimizers(self):
        return {"prior": self.prior_optimizer}

    def checkpoint_items(self):
        return {"model": self, "prior_optimizer": self.prior_optimizer}

    @property
    def step(self):
        return self.prior_optimizer.iterations

    @property
    def metrics(self):
        return list(self._trackers.values())

    def nll(self, tokens, class_ids, training=False):
        """Mean next-token cross-entropy in nats, and the argmax accuracy."""
        logits = self(tokens, class_ids, training=training)
        ce = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=tokens, logits=logits)
        acc = ops.mean(ops.cast(ops.equal(ops.argmax(logits, -1), tokens), "float32"))
        return ops.mean(ce), acc

    def tokenize(self, data):
        """Token ids [B, N] from a batch: its `tokens`, or its `image`s through the quantizer."""
        if "tokens" in data:
            return ops.reshape(ops.cast(data["tokens"], "int32"), (-1, self.seq_len))
        if self.quantizer is None:
            raise ValueError("batches of images need the prior's quantizer (--quantizer_dir)")
        tokens = tf.stop_gradient(self.quantizer.encode(data["image"]))
        return ops.reshape(tokens, (-1, self.seq_len))

    def drop_classes(self, class_ids):
        """Training's class dropout: each id becomes the null class with probability
        `class_dropout` (a different draw on each replica). class_ids: int32 [B]."""
        if self.class_dropout == 0:
            return class_ids
        drop = randomness.uniform(self.class_dropout_seed, tf.shape(class_ids)) < self.class_dropout
        return tf.where(drop, self.null_class, class_ids)

    def train_step(self, data):
        tokens = self.tokenize(data)
        class_ids = ops.cast(
            data.get("label", ops.zeros((ops.shape(tokens)[0],), "int32")), "int32"
        )
        class_ids = self.drop_classes(class_ids)
        replicas = tf.distribute.get_strategy().num_replicas_in_sync
        with tf.GradientTape() as tape:
            loss, acc = self.nll(tokens, class_ids, training=True)
            scaled = self.prior_optimizer.scale_loss(loss / replicas)
        variables = self.trainable_variables
        ok = guard.apply_if_finite(
            self, self.prior_optimizer, tape.gradient(scaled, variables), variables, loss
        )
        guard.track(self._trackers["loss"], loss, ok)
        guard.track(self._trackers["bits_per_token"], loss / math.log(2.0), ok)
        guard.track(self._trackers["accuracy"], acc, ok)
        return {m.name: m.result() for m in self.metrics}

    # ----------------------------------------------------------------- cached inference
    # One position at a time with a key/value cache: the primitives of the autoregressive loop
    # in `vim_tf.sampling.decoding` (graph-mode, static shapes, XLA-compilable).
    def init_cache(self, rows):
        """An empty key/value cache for `rows` sequences: per block (keys, values), each
        [N, rows, H, hd] in the compute dtype."""
        shape = [self.seq_len, rows, self.num_heads, self.head_dim]
        return [
            (tf.zeros(shape, self.compute_dtype), tf.zeros(shape, self.compute_dtype))
            for _ in range(self.num_layers)
        ]

    def first_input(self, class_ids):
        """Input at position 0 (class or start token, plus position 0's embedding).

        class_ids: int [B] -> [B, 1, D].
        """
        first = tf.gather(self.class_embedding, self.class_slots(class_ids))
        return tf.cast((first + self.positional_embedding()[0][None])[:, None], self.compute_dtype)

    def next_input(self, tokens_t, pos):
        """Input at position pos + 1: the embedding of token pos (int [B]) -> [B, 1, D]."""
        nxt = tf.minimum(pos + 1, self.seq_len - 1)
        e = (
            tf.gather(self.token_embedding, tokens_t)
            + tf.gather(self.positional_embedding(), nxt)[None]
        )
        return tf.cast(e[:, None], self.compute_dtype)

    def call_with_cache(self, x, pos, cache):
        """Runs every block on the one position `pos` (x [B, 1, D], cache from `init_cache`).

        Returns:
          (logits [B, codebook_size] float32 predicting token pos, the updated cache).
        """
        mask = tf.range(self.seq_len) <= pos
        new = []
        for i in range(self.num_layers):
            x, ck, cv = self._block_step(i, x, pos, cache[i][0], cache[i][1], mask)
            new.append((ck, cv))
        logits = tf.cast(self.head(self.ln_final(x))[:, 0], tf.float32)
        return logits, new

    def _block_step(self, i, x, pos, cache_k, cache_v, mask):
        """One block on one new position with the key/value cache.

        x [B, 1, D]; cache_k/v [N, B, H, hd] of this block; mask [N] bool (positions <= pos).
        """
        block = self.transformer.block(i)
        attn = block.attn
        q, k, v = attn.split_heads(attn.project_qkv(block.ln_1(x)))  # each [B, H, 1, hd]
        cache_k = tf.tensor_scatter_nd_update(cache_k, [[pos]], tf.transpose(k, (2, 0, 1, 3)))
        cache_v = tf.tensor_scatter_nd_update(cache_v, [[pos]], tf.transpose(v, (2, 0, 1, 3)))
        scale = 1.0 / np.sqrt(self.head_dim)
        logits = tf.einsum(
            "bhd,nbhd->bhn", tf.cast(q[:, :, 0] * scale, tf.float32), tf.cast(cache_k, tf.float32)
        )
        logits = tf.where(mask[None, None, :], logits, _MASKED)
        probs = tf.cast(tf.nn.softmax(logits, axis=-1), cache_v.dtype)
        heads = tf.einsum("bhn,nbhd->bhd", probs, cache_v)[:, :, None]
        x = x + attn.project_out(heads)
        x = x + block.mlp(block.ln_2(x))
        return x, cache_k, cache_v

    # ----------------------------------------------------------------- summaries
    def decode(self, tokens):
        """tokens [B, h, w] -> images [B, H, W, 3] in [0, 1] through the quantizer."""
        if self.quantizer is None:
            raise ValueError("decoding tokens to images needs the prior's quantizer")
        return self.quantizer.decode(tokens)

    def summary_images(self, batch, per_class=4):
        """Traceable image summaries: {'samples': ([classes * per_class, H, W, 3], classes)}.

        One row per class (up to 10), `per_class` samples each, with a fixed seed so successive
        summaries show how the same draws evolve; {} without a quantizer to decode them.
        """
        del batch  # samples do not depend on the data
        if self.quantizer is None:
            return {}
        classes = min(self.num_classes, 10) if self.num_classes else 1
        class_ids = tf.repeat(tf.range(classes, dtype=tf.int32), per_class)
        # The procedure part of this class (it moves above the sampling layer).
        from vim_tf.sampling import decoding

        tokens = decoding.sample_tokens(self, class_ids, seed=0)
        return {"samples": (self.decode(tokens), classes)}

    def model_info(self):
        info = {
            "kind": self.kind,
            "grid_size": self.grid_size,
            "codebook_size": self.codebook_size,
            "num_classes": self.num_classes,
            "quantizer_dir": fs.abspath(self.quantizer_dir) if self.quantizer_dir else None,
        }
        if self.quantizer is not None:
            info["image_size"] = self.quantizer.image_size
        return info

    def get_config(self):
        config = super().get_config()
        config.update(
            quantizer_dir=self.quantizer_dir,
            grid_size=self.grid_size,
            codebook_size=self.codebook_size,
            num_layers=self.num_layers,
            num_heads=self.num_heads,
            hidden_dim=self.hidden_dim,
            mlp_dim=self.mlp_dim,
            dropout=self.dropout,
            num_classes=self.num_classes,
            class_dropout=self.class_dropout,
        )
        return config
