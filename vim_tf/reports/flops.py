"""Analytic matmul FLOP counts of the benchmark workloads (2 FLOPs per multiply-add).

Only matmuls are counted: layer norms, activations, softmax, losses and the optimizer update are
not (TF's graph profiler, `profiled_flops`, counts those too: a few percent more). The counts are
what the algorithm needs, so a step that does extra work (e.g. attending over a whole masked
cache) shows as a lower fraction of the matmul peak rather than as more FLOPs.
"""

import tensorflow as tf


def block_flops(tokens, dim, mlp_dim, attended=None):
    """Forward matmul FLOPs of one transformer block over `tokens` tokens of width `dim`.

    q/k/v and output projections 2*N*D*3D + 2*N*D*D = 8*N*D^2; attention logits q.k and the
    weighted sum of values 2 * 2*N*A*D = 4*N*A*D, where each token attends to A positions
    (default A = N: the full, masked, square attention of training); MLP 2 * 2*N*D*M = 4*N*D*M.
    """
    n, d, m = tokens, dim, mlp_dim
    a = n if attended is None else attended
    return 8 * n * d * d + 4 * n * a * d + 4 * n * d * m


def _stack_flops(n, stack):
    return stack["num_layers"] * block_flops(n, stack["hidden_dim"], stack["mlp_dim"])


def stage1_flops(
    image_size, patch_size, stack, codebook_size, code_dim, decoder=None, channels=3, out_channels=6
):
    """Matmul FLOPs per image of the stage-1 autoencoder.

    With N = (image_size / patch_size)^2 tokens, P = patch_size^2 * channels, encoder width D and
    MLP width M (decoder D', M'), L / L' blocks, K codes of dimension c:

      encode  = 2*N*P*D                       patch embedding
              + L * block(N, D, M)            encoder blocks (`block_flops`)
              + 2*N*D*M + 2*N*M*D             encoder tanh feed-forward
              + 2*N*D*c                       projection to the lookup space
              + 2*N*c*K                       code similarities (one [N,c]x[c,K] matmul)
      forward = encode
              + 2*N*c*D'                      projection back up
              + L' * block(N, D', M')         decoder blocks
              + 2*N*D'*M' + 2*N*M'*p^2*6      decoder feed-forward to the pixel head
      train   = 3 * forward                   (backward: gradients w.r.t. inputs and weights)
              - 2 * 2*N*c*K                   (the code choice is an argmax: no backward)
              - 2*N*P*D                       (no gradient w.r.t. the images)

    Args:
      stack, decoder: dicts with num_layers, hidden_dim, mlp_dim (decoder default: `stack`).

    Returns:
      dict(encode=..., forward=..., train=...) FLOPs per image.
    """
    dec = decoder or stack
    n = (image_size // patch_size) ** 2
    p = patch_size**2 * channels
    d, m = stack["hidden_dim"], stack["mlp_dim"]
    d2, m2 = dec["hidden_dim"], dec["mlp_dim"]
    patch = 2 * n * p * d
    codes = 2 * n * code_dim * codebook_size
    encode = patch + _stack_flops(n, stack) + 4 * n * d * m + 2 * n * d * code_dim + codes
    forward = (
        encode
        + 2 * n * code_dim * d2
        + _stack_flops(n, dec)
        + 2 * n * d2 * m2
        + 2 * n * m2 * patch_size**2 * out_channels
    )
    return {"encode": encode, "forward": forward, "train": 3 * forward - 2 * codes - patch}


def _conv_flops(size, kernel, cin, cout):
    """A 'same' convolution with a size x size output: 2 * size^2 * k^2 * cin * cout."""
    return 2 * size * size * kernel * kernel * cin * cout


def _res_block_flops(size, cin, cout):
    """Two 3x3 convolutions, and the 1x1 skip when the width changes (`ResBlock`)."""
    skip = _conv_flops(size, 1, cin, cout) if cin != cout else 0
    return _conv_flops(size, 3, cin, cout) + _conv_flops(size, 3, cout, cout) + skip


def _cnn_middle_flops(size, width, attention):
    """Residual block, attention over the size^2 positions (one head, no MLP), residual block."""
    attend = block_flops(size * size, width, 0) if attention else 0
    return 2 * _res_block_flops(size, width, width) + attend


def _cnn_encoder_flops(image_size, widths, num_res_blocks, attention, channels):
    size, cin = image_size, widths[0]
    total = _conv_flops(size, 3, channels, widths[0])  # conv_in
    for i, width in enumerate(widths):
        for _ in range(num_res_blocks):
            total += _res_block_flops(size, cin, width)
            cin = width
        if i < len(widths) - 1:
            size //= 2
            total += _conv_flops(size, 3, width, width)  # stride-2 convolution
    total += _cnn_middle_flops(size, widths[-1], attention)
    return total + _conv_flops(size, 3, widths[-1], widths[-1])  # conv_out


def _cnn_decoder_flops(grid_size, widths, num_res_blocks, attention, out_channels):
    size, cin = grid_size, widths[-1]
    total = _conv_flops(size, 3, widths[-1], widths[-1])  # conv_in
    total += _cnn_middle_flops(size, widths[-1], attention)
    for i in reversed(range(len(widths))):
        for _ in range(num_res_blocks + 1):
            total += _res_block_flops(size, cin, widths[i])
            cin = widths[i]
        if i > 0:
            size *= 2
            total += _conv_flops(size, 3, widths[i], widths[i])  # after the 2x upsampling
    return total + _conv_flops(size, 3, widths[0], out_channels)  # conv_out


def cnn_stage1_flops(
    image_size,
    channels,
    channel_multipliers,
    num_res_blocks,
    attention,
    codebook_size,
    code_dim,
    in_channels=3,
    out_channels=6,
):
    """Convolution and matmul FLOPs per image of the CNN VQGAN (`vim_tf.models.cnn_vqgan`).

    A 'same' k x k convolution from cin to cout channels with an s x s output costs
    2*s^2*k^2*cin*cout; level i runs at image_size / 2^i with width W_i = channels *
    channel_multipliers[i]; N = grid_size^2 tokens of the last width W:

      encode  = conv_in + per level: num_res_blocks residual blocks (two 3x3 convolutions, a 1x1
                skip where the width changes) and a stride-2 3x3 convolution (not after the
                last) + middle (two residual blocks, attention `block_flops(N, W, 0)` if on)
                + conv_out (3x3, W -> W) + 2*N*W*c (to the lookup space) + 2*N*c*K (similarities)
      forward = encode + 2*N*c*W (back up) + conv_in + middle + per level from the last:
                num_res_blocks + 1 residual blocks, then (not at level 0) a 2x upsampling and a
                3x3 convolution + conv_out (3x3, W_0 -> out_channels)
      train   = 3 * forward - 2 * 2*N*c*K (argmax: no backward) - the encoder's conv_in (no
                gradient w.r.t. the images)

    Returns:
      dict(encode=..., forward=..., train=...) FLOPs per image.
    """
    widths = [channels * m for m in channel_multipliers]
    grid = image_size // 2 ** (len(widths) - 1)
    n, w = grid * grid, widths[-1]
    codes = 2 * n * code_dim * codebook_size
    encode = _cnn_encoder_flops(image_size, widths, num_res_blocks, attention, in_channels)
    encode += 2 * n * w * code_dim + codes
    forward = (
        encode
        + 2 * n * code_dim * w
        + _cnn_decoder_flops(grid, widths, num_res_blocks, attention, out_channels)
    )
    stem = _conv_flops(image_size, 3, in_channels, widths[0])
    return {"encode": encode, "forward": forward, "train": 3 * forward - 2 * codes - stem}


def prior_flops(stack, grid_size, codebook_size):
    """Matmul FLOPs per sequence of the VIM prior.

    With N = grid_size^2 positions (the class token, then N - 1 image tokens), L blocks of width
    D and MLP width M, and K codes:

      forward = L * block(N, D, M) + 2*N*D*K  (causal attention computed as a masked square;
                                               the output head over the codebook)
      train   = 3 * forward                   (the embeddings are gathers, not matmuls; the
                                               first block's input still gets its gradient)
      sample  = sum over positions i = 0..N-1 of
                L * block(1, D, M, attended=i + 1) + 2*D*K
              = N * (L * (8*D^2 + 4*D*M) + 2*D*K) + 2*L*D*N*(N+1)
                                              (with the KV cache, position i attends to the
                                               i + 1 positions filled so far)

    Returns:
      dict(forward=..., train=..., sample=...) FLOPs per sequence.
    """
    n, k = grid_size**2, codebook_size
    layers, d, m = stack["num_layers"], stack["hidden_dim"], stack["mlp_dim"]
    forward = _stack_flops(n, stack) + 2 * n * d * k
    sample = sum(layers * block_flops(1, d, m, attended=i + 1) + 2 * d * k for i in range(n))
    return {"forward": forward, "train": 3 * forward, "sample": sample}


def workload_flops(kind, cfg):
    """Matmul FLOPs of one timed call of a benchmark workload (`workload_runner.WORKLOADS`):
    a train step, an encode or a sampled batch."""
    batch = cfg["batch"]
    if kind in ("stage1", "encode"):
        args = {k: v for k, v in cfg.items() if k != "batch"}
        return batch * stage1_flops(**args)["train" if kind == "stage1" else "encode"]
    counts = prior_flops(cfg["stack"], cfg["grid_size"], cfg["codebook_size"])
    if kind == "prior":
        return batch * counts["train"]
    if kind == "sampling":
        return batch * counts["sample"]
    raise ValueError(f"unknown workload kind {kind!r}; valid: stage1, encode, prior, sampling")


def workload_units(kind, cfg):
    """(count, unit) of the work of one timed call: images, or tokens for the prior."""
    if kind in ("stage1", "encode"):
        return cfg["batch"], "img/s"
    return cfg["batch"] * cfg["grid_size"] ** 2, "tokens/s"


def matmul_flops(n):
    """FLOPs of one dense n x n by n x n matmul."""
    return 2 * n**3


def profiled_flops(fn, *args):
    """FLOPs of the graph `tf.function(fn)` traces for `args`, counted by TF's graph profiler
    (every op with registered FLOP statistics: matmuls, convolutions and elementwise ops)."""
    from tensorflow.python.profiler import model_analyzer, option_builder

    graph = tf.function(fn).get_concrete_function(*args).graph
    opts = option_builder.ProfileOptionBuilder.float_operation()
    opts["output"] = "none"
    return int(model_analyzer.profile(graph, options=opts).total_float_ops)
