"""The sampling settings as one value: temperature, top-k, top-p and classifier-free guidance."""

import dataclasses
from typing import NamedTuple

import tensorflow as tf

# The settings' names, in the order of `SamplingSettings` and of the `generate` signature.
KEYS = ("temperature", "top_k", "top_p", "cfg_scale")
# Whether the sampling loop is XLA-compiled when the caller does not say (tools, evaluation,
# the main job and `Sampler` read this one value). XLA draws the same tokens as graph mode.
DEFAULT_JIT_COMPILE = True


@dataclasses.dataclass(frozen=True)
class SamplingSettings:
    """How tokens are drawn from the prior's logits (the defaults are the paper's: temperature 1,
    no top-k, top-p or guidance).

    Attributes:
      temperature: > 0; the logits are divided by it.
      top_k: int >= 0; keep the k most likely tokens (0: off).
      top_p: in (0, 1]; keep the smallest set of tokens whose probability reaches it (1: off).
      cfg_scale: >= 0; classifier-free guidance, uncond + cfg_scale * (cond - uncond) (1: off).

    Raises:
      ValueError: at construction, naming the bad value and what is valid.

    Example:
      settings = SamplingSettings(temperature=0.9, top_k=50, cfg_scale=2.0)
      settings.guided  # True
    """

    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    cfg_scale: float = 1.0

    def __post_init__(self):
        if not self.temperature > 0:  # NaN fails too
            raise ValueError(f"temperature must be > 0, got {self.temperature}")
        if isinstance(self.top_k, bool) or int(self.top_k) != self.top_k or self.top_k < 0:
            raise ValueError(f"top_k must be an int >= 0 (0 = off), got {self.top_k}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1] (1 = off), got {self.top_p}")
        if not self.cfg_scale >= 0:
            raise ValueError(f"cfg_scale must be >= 0 (1 = no guidance), got {self.cfg_scale}")
        object.__setattr__(self, "top_k", int(self.top_k))

    @property
    def guided(self):
        """True when classifier-free guidance is on (cfg_scale != 1)."""
        return self.cfg_scale != 1.0

    def as_dict(self):
        """{temperature, top_k, top_p, cfg_scale} (what an evaluation records)."""
        return dataclasses.asdict(self)

    def tensors(self):
        """The settings as scalar tensors (one traced sampling graph serves every setting)."""
        return SettingTensors(
            tf.constant(self.temperature, tf.float32),
            tf.constant(self.top_k, tf.int32),
            tf.constant(self.top_p, tf.float32),
            tf.constant(self.cfg_scale, tf.float32),
        )

    def traced(self):
        """`tensors()` with the knobs that are off (temperature 1, top_k 0, top_p 1, cfg_scale 1)
        as Python numbers: a traced sampler skips those filters, and one trace serves every
        setting with the same filters on."""
        off = dataclasses.asdict(SamplingSettings())
        return SettingTensors(
            *(
                off[k] if getattr(self, k) == off[k] else value
                for k, value in zip(KEYS, self.tensors())
            )
        )


class SettingTensors(NamedTuple):
    """The fields of `SamplingSettings` as scalar tensors, unchecked (inside a traced graph,
    e.g. a serving signature that checks them in-graph itself); a field may also be a Python
    number (`SamplingSettings.traced`)."""

    temperature: tf.Tensor
    top_k: tf.Tensor
    top_p: tf.Tensor
    cfg_scale: tf.Tensor


def split_seed(mapping):
    """{temperature, top_k, top_p, cfg_scale, seed} (any subset, or None) -> (SamplingSettings,
    seed int); missing entries take their defaults (seed 0).

    Raises:
      ValueError: an unknown key (listing the valid ones) or a bad value.
    """
    mapping = dict(mapping or {})
    unknown = sorted(set(mapping) - set(KEYS) - {"seed"})
    if unknown:
        raise ValueError(f"unknown sampling settings {unknown}; valid: {list(KEYS) + ['seed']}")
    settings = SamplingSettings(**{k: mapping[k] for k in KEYS if k in mapping})
    return settings, int(mapping.get("seed", 0))
