"""Learning-rate schedules against hand values; optimizer construction from gin."""

import math

import gin
import keras
import numpy as np
import tensorflow as tf

from testcase import TestCase
from vim_tf.training import optimizers


class ScheduleTest(TestCase):
    def test_warmup_cosine(self):
        s = optimizers.WarmupCosine(peak=1e-4, warmup_steps=100, decay_steps=1100, final=5e-5)
        self.assertAllClose(s(0), 0.0)
        self.assertAllClose(s(50), 5e-5)
        self.assertAllClose(s(100), 1e-4)
        # Halfway through the cosine: the midpoint of peak and final.
        self.assertAllClose(s(600), 7.5e-5)
        self.assertAllClose(s(350), 5e-5 + 0.5 * 5e-5 * (1 + math.cos(math.pi * 0.25)))
        self.assertAllClose(s(1100), 5e-5)
        self.assertAllClose(s(5000), 5e-5)

    def test_warmup_hold_exponential(self):
        s = optimizers.WarmupHoldExponential(4.5e-4, 5000, 80000, 450000, 1e-5)
        self.assertAllClose(s(2500), 2.25e-4)
        self.assertAllClose(s(5000), 4.5e-4)
        self.assertAllClose(s(80000), 4.5e-4)
        mid = 80000 + (450000 - 80000) // 2
        self.assertAllClose(s(mid), 4.5e-4 * (1e-5 / 4.5e-4) ** 0.5, rtol=1e-5)
        self.assertAllClose(s(450000), 1e-5, rtol=1e-5)
        self.assertAllClose(s(900000), 1e-5, rtol=1e-5)

    def test_schedule_errors(self):
        with self.assertRaisesRegex(
            ValueError,
            r"warmup_steps <= decay_steps, got 10, 5: bind WarmupCosine.warmup_steps to at "
            r"most 5 or raise WarmupCosine.decay_steps \(TRAIN_STEPS",
        ):
            optimizers.WarmupCosine(1e-3, 10, 5)
        with self.assertRaisesRegex(ValueError, r"bind WarmupHoldExponential.warmup_steps"):
            optimizers.WarmupHoldExponential(1e-3, 5, 2, 3, 1e-4)
        with self.assertRaisesRegex(ValueError, "0 < final <= peak"):
            optimizers.WarmupHoldExponential(1e-3, 1, 2, 3, 0.0)

    def test_schedule_serialization(self):
        s = optimizers.WarmupCosine(2e-4, 10, 100, 1e-5)
        clone = optimizers.WarmupCosine.from_config(s.get_config())
        for step in (0, 5, 50, 200):
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
