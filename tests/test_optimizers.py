"""Learning-rate schedules against hand values; optimizer construction from gin."""

import math

import gin
import keras
import numpy as np
import tensorflow as tf
from absl.testing import parameterized

from testcase import TestCase
from vim_tf.training import optimizers


class ScheduleTest(TestCase, parameterized.TestCase):
    @parameterized.named_parameters(
        ("start", 0, 0.0),
        ("half_warmup", 50, 5e-5),
        ("peak", 100, 1e-4),
        # A quarter and half of the way through the cosine (half: the midpoint of peak and final).
        ("quarter_decay", 350, 5e-5 + 0.5 * 5e-5 * (1 + math.cos(math.pi * 0.25))),
        ("half_decay", 600, 7.5e-5),
        ("end", 1100, 5e-5),
        ("after_end", 5000, 5e-5),
    )
    def test_warmup_cosine(self, step, expected):
        s = optimizers.WarmupCosine(peak=1e-4, warmup_steps=100, decay_steps=1100, final=5e-5)
        self.assertAllClose(s(step), expected)

    @parameterized.named_parameters(
        ("half_warmup", 2500, 2.25e-4),
        ("peak", 5000, 4.5e-4),
        ("end_of_hold", 80000, 4.5e-4),
        ("half_decay", 80000 + (450000 - 80000) // 2, 4.5e-4 * (1e-5 / 4.5e-4) ** 0.5),
        ("end", 450000, 1e-5),
        ("after_end", 900000, 1e-5),
    )
    def test_warmup_hold_exponential(self, step, expected):
        s = optimizers.WarmupHoldExponential(4.5e-4, 5000, 80000, 450000, 1e-5)
        self.assertAllClose(s(step), expected, rtol=1e-5)

    @parameterized.named_parameters(
        (
            "cosine_warmup_after_decay",
            lambda: optimizers.WarmupCosine(1e-3, 10, 5),
            r"warmup_steps <= decay_steps, got 10, 5: bind WarmupCosine.warmup_steps to at "
            r"most 5 or raise WarmupCosine.decay_steps \(TRAIN_STEPS",
        ),
        (
            "hold_warmup_after_hold",
            lambda: optimizers.WarmupHoldExponential(1e-3, 5, 2, 3, 1e-4),
            r"bind WarmupHoldExponential.warmup_steps",
        ),
        (
            "hold_zero_final",
            lambda: optimizers.WarmupHoldExponential(1e-3, 1, 2, 3, 0.0),
            "0 < final <= peak",
        ),
    )
    def test_schedule_errors(self, make, message):
        with self.assertRaisesRegex(ValueError, message):
            make()

    @parameterized.parameters(0, 5, 50, 200)
    def test_schedule_serialization(self, step):
        s = optimizers.WarmupCosine(2e-4, 10, 100, 1e-5)
        clone = optimizers.WarmupCosine.from_config(s.get_config())
        self.assertAllClose(s(step), clone(step))

    def test_scoped_optimizers_from_gin(self):
        gin.parse_config(
            """
            make_optimizer.learning_rate = 1e-3
            make_optimizer.beta_2 = 0.99
            discriminator/make_optimizer.beta_2 = 0.9
            discriminator/make_optimizer.weight_decay = 0.0
            """
        )
        g = optimizers.make_scoped_optimizer("generator")
        d = optimizers.make_scoped_optimizer("discriminator")
        self.assertIsInstance(g, keras.optimizers.AdamW)
        self.assertAllClose(g.beta_2, 0.99)
        self.assertNotIsInstance(d, keras.optimizers.AdamW)
        self.assertAllClose(d.beta_2, 0.9)

    def test_decoupled_weight_decay_skips_codebook_and_bias(self):
        opt = optimizers.make_optimizer(learning_rate=0.1, weight_decay=0.5)
        kernel = keras.Variable(np.ones((2, 2), np.float32), name="kernel")
        codebook = keras.Variable(np.ones((2, 2), np.float32), name="codebook")
        opt.build([kernel, codebook])
        zero = tf.zeros((2, 2))
        opt.apply([zero, zero], [kernel, codebook])
        # Zero gradient: Adam's step is 0, only decoupled decay moves the kernel: w -= lr*wd*w.
        self.assertAllClose(kernel.numpy(), np.full((2, 2), 1 - 0.1 * 0.5))
        self.assertAllClose(codebook.numpy(), np.ones((2, 2)))


if __name__ == "__main__":
    tf.test.main()
