"""The autoregressive loop: tokens from a VIM prior network, one raster position at a time.

`sample_tokens` runs inside a `tf.function` with static shapes (XLA-compilable). With the
key/value cache (the default) each step runs the network on one new position through its
cached-inference primitives (`init_cache`, `first_input`, `call_with_cache`, `next_input`,
`join_cache`), one `tf.while_loop` per chunk of positions so each step attends over the filled
prefix only; without it, each step recomputes the whole prefix with the network's `call` (the
reference the cache is tested against). Both draw the same tokens: the draws are counter-based
(`vim_tf.sampling.logits.draw`), a pure function of (seed, position).
"""

import tensorflow as tf

from vim_tf.sampling import logits as logits_lib
from vim_tf.sampling.settings import SamplingSettings


def guided_classes(prior, class_ids, guided):
    """The class ids the network sees: class_ids int [B], followed by B null classes (the
    unconditional half) when `guided` -> int32 [B] or [2B]."""
    class_ids = tf.cast(class_ids, tf.int32)
    if not guided:
        return class_ids
    if prior.num_classes == 0:
        raise ValueError("classifier-free guidance needs a class-conditional prior")
    return tf.concat([class_ids, tf.fill(tf.shape(class_ids), prior.null_class)], 0)


def choose(logits, settings, seed, position, guided, row_offset=0):
    """One token per sample from the logits of one position.

    Args:
      logits: [B, K] float32, or [2B, K] when `guided` (conditional rows, then unconditional).
      settings: `SamplingSettings` or `SettingTensors`.
      seed: the batch's draw seed (see `vim_tf.sampling.seeds.batch_seed`).
      position: int scalar, the sequence position.
      guided: Python bool, mix the two halves with classifier-free guidance.
      row_offset: int scalar, the batch row of the first sample (a replica's share of a batch).

    Returns:
      int32 [B].
    """
    if guided:
        cond, uncond = tf.split(logits, 2, axis=0)
        logits = logits_lib.guide(cond, uncond, settings.cfg_scale)
    logits = logits_lib.process_logits(logits, settings.temperature, settings.top_k, settings.top_p)
    return logits_lib.draw(logits, seed, position, row_offset)


def chunk_bounds(steps, num_chunks):
    """[(start, end)]: positions [0, steps) in `num_chunks` consecutive chunks of nearly equal
    length (fewer when steps < num_chunks)."""
    num_chunks = max(1, min(int(num_chunks), steps))
    edges = [round(steps * c / num_chunks) for c in range(num_chunks + 1)]
    return list(zip(edges[:-1], edges[1:]))


def default_chunks(seq_len):
    """How many cache chunks the cached loop uses for a sequence of `seq_len` positions."""
    return max(1, min(DEFAULT_CHUNK_LIMIT, seq_len // DEFAULT_CHUNK_LENGTH))


DEFAULT_CHUNK_LENGTH = 64
DEFAULT_CHUNK_LIMIT = 8


def sample_tokens(
    prior,
    class_ids,
    seed,
    settings=None,
    guided=None,
    use_cache=True,
    num_steps=None,
    num_chunks=None,
    row_offset=0,
):
    """Autoregressive sampling from a VIM prior network (call inside tf.function).

    Args:
      prior: a built `vim_tf.models.vim.VIM`.
      class_ids: int [B] (ignored by unconditional priors, but sets the batch size).
      seed: int scalar (tensor allowed), the draw seed; the same seed and settings give the
        same tokens, with or without the cache and XLA.
      settings: `SamplingSettings` (default: the paper's) or `SettingTensors` (one graph for
        every setting); the logit filters that are off in Python values are not traced.
      guided: Python bool, classifier-free guidance (doubles the batch); default
        `settings.guided` (required with `SettingTensors`).
      use_cache: Python bool; False recomputes the whole prefix at every step (reference).
      num_steps: Python int, stop after this many positions (benchmarks; default: all).
      num_chunks: Python int, the cached loop's chunks of positions (default:
        `default_chunks(seq_len)`): the positions of chunk c attend over the cache of
        positions up to the end of chunk c only. Any count gives the same tokens.
      row_offset: int scalar (tensor allowed), the batch row of class_ids[0]: a replica that
        samples rows [o, o + B) of a batch passes o and draws the tokens one device sampling
        the whole batch draws for those rows.

    Returns:
      int32 [B, grid_size, grid_size].
    """
    settings = SamplingSettings() if settings is None else settings
    if guided is None:
        if not isinstance(settings, SamplingSettings):
            raise ValueError("sample_tokens needs guided=True/False when settings are tensors")
        guided = settings.guided
    steps = prior.seq_len if num_steps is None else int(num_steps)
    batch = tf.shape(class_ids)[0]
    classes = guided_classes(prior, class_ids, guided)

    def choose_at(logits, pos):
        return choose(logits, settings, seed, pos, guided, row_offset)

    if use_cache:
        chunks = chunk_bounds(steps, num_chunks or default_chunks(prior.seq_len))
        tokens = _cached_loop(prior, classes, batch, chunks, guided, choose_at)
    else:
        tokens = _recomputing_loop(prior, classes, batch, steps, guided, choose_at)
    return tf.reshape(tokens, [batch, prior.grid_size, prior.grid_size])


def _cached_loop(prior, classes, batch, chunks, guided, choose_at):
    """The positions of `chunks` with the key/value cache -> tokens int32 [B, N].

    One `tf.while_loop` per chunk; chunk c's steps attend over the filled chunks before it
    (read only) and its own chunk (written in place), so a step's attention costs the length of
    the prefix up to the end of its chunk, not of the whole sequence.
    """
    # Position-major while sampling: each step writes one contiguous row.
    tokens = tf.zeros([prior.seq_len, batch], tf.int32)
    rows = tf.shape(classes)[0]
    x = prior.first_input(classes)
    past = None
    for start, end in chunks:

        def body(pos, x, tokens, cache, start=start, past=past):
            logits, cache = prior.call_with_cache(x, pos, cache, start, past)
            t = choose_at(logits, pos)
            t_rows = tf.concat([t, t], 0) if guided else t
            nxt = tf.ensure_shape(prior.next_input(t_rows, pos), x.shape)
            return pos + 1, nxt, tf.tensor_scatter_nd_update(tokens, [[pos]], t[None]), cache

        _, x, tokens, cache = tf.while_loop(
            lambda pos, *_, end=end: pos < end,
            body,
            (tf.constant(start), x, tokens, prior.init_cache(rows, end - start)),
            maximum_iterations=end - start,
        )
        past = prior.join_cache(past, cache)
    return tf.transpose(tokens)


def _put(tokens, pos, t):
    """tokens [B, N] with column pos set to t [B]."""
    return tf.transpose(tf.tensor_scatter_nd_update(tf.transpose(tokens), [[pos]], t[None]))


def _recomputing_loop(prior, classes, batch, steps, guided, choose_at):
    """`steps` positions, each recomputing the whole prefix -> tokens int32 [B, N]."""
    tokens = tf.zeros([batch, prior.seq_len], tf.int32)

    def body(pos, tokens):
        t_rows = tf.concat([tokens, tokens], 0) if guided else tokens
        logits = tf.gather(prior(t_rows, classes, training=False), pos, axis=1)
        return pos + 1, _put(tokens, pos, choose_at(logits, pos))

    _, tokens = tf.while_loop(
        lambda pos, *_: pos < steps, body, (tf.constant(0), tokens), maximum_iterations=steps
    )
    return tokens
