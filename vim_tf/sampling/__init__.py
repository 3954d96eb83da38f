"""Sampling from a VIM prior: the one home of everything between logits and sample images.

Layer: above `models` (it takes the prior network as an argument), below training, eval and
export (which use it). Modules:
  settings   `SamplingSettings` (temperature, top_k, top_p, cfg_scale; validated)
  seeds      the batch-seed rule (batch b of seed s draws with s * SEED_STRIDE + b)
  logits     temperature, top-k, top-p, guidance mixing, counter-based draws
  decoding   the key/value-cached autoregressive loop (`sample_tokens`)
  sampler    class plans, guidance checks, the batched `Sampler`
  rejection  classifier rejection sampling
"""
