"""The matmul precision setting: bfloat16 products with float32 around, the hardware choice."""

import os

import keras
import numpy as np
import tensorflow as tf

from testcase import TestCase
from vim_tf.models import matmuls
from vim_tf.models.vit import Attention


def bf16_round(x):
    """float32 numpy -> the nearest bfloat16 values, as float64."""
    return tf.cast(tf.cast(tf.constant(x, tf.float32), tf.bfloat16), tf.float64).numpy()


class MatmulsTest(TestCase):
    def tearDown(self):
        matmuls.set_matmul_dtype("float32")
        super().tearDown()

    def test_bfloat16_product_is_bfloat16_inputs_multiplied_and_rounded(self):
        rng = np.random.default_rng(0)
        a = rng.normal(size=(8, 64)).astype(np.float32)
        b = rng.normal(size=(64, 16)).astype(np.float32)
        with matmuls.use_matmul_dtype("bfloat16"):
            got = matmuls.matmul(tf.constant(a), tf.constant(b))
        self.assertEqual(got.dtype, tf.float32)
        # Reference: the bfloat16-rounded inputs multiplied exactly (float64), then rounded to
        # bfloat16; the hardware accumulates in float32, so allow one bfloat16 step (2^-8).
        exact = bf16_round(a) @ bf16_round(b)
        scale = np.abs(bf16_round(a)) @ np.abs(bf16_round(b))
        self.assertAllLessEqual(
            np.abs(got.numpy() - exact) - (2.0**-8 * np.abs(exact) + 1e-5 * scale), 0.0
        )
        # It is not the float32 product: the inputs really were rounded.
        self.assertGreater(np.abs(got.numpy() - a.astype(np.float64) @ b).max(), 1e-3)
        # And within bfloat16 accuracy of it (relative to the sum of |products|).
        self.assertAllLessEqual(
            np.abs(got.numpy() - a.astype(np.float64) @ b) - 2.0**-6 * scale, 0.0
        )

    def test_float32_setting_is_bit_exact(self):
        x = tf.random.normal((3, 5, 12), seed=1)
        ours = matmuls.Dense(7, name="d")
        ref = keras.layers.Dense(7, name="d")
        ours.build(x.shape)
        ref.build(x.shape)
        ref.set_weights(ours.get_weights())
        self.assertAllEqual(ours(x), ref(x))
        self.assertAllEqual(matmuls.einsum("bqd,bkd->bqk", x, x), tf.einsum("bqd,bkd->bqk", x, x))

    def test_full_precision_dense_ignores_the_setting(self):
        x = tf.random.normal((4, 12), seed=2)
        head = matmuls.Dense(5, full_precision=True)
        body = matmuls.Dense(5)
        head.build(x.shape)
        body.build(x.shape)
        body.set_weights(head.get_weights())
        expected = head(x)
        with matmuls.use_matmul_dtype("bfloat16"):
            self.assertAllEqual(head(x), expected)
            self.assertNotAllClose(body(x), expected, atol=1e-6)
            self.assertAllClose(body(x), expected, atol=0.05)
        self.assertEqual(matmuls.Dense.from_config(head.get_config()).full_precision, True)

    def test_bfloat16_gradients_close_to_float32(self):
        layer = Attention(num_heads=2)
        x = tf.random.normal((2, 6, 16), seed=3)
        layer.build(x.shape)

        def grads(dtype):
            with matmuls.use_matmul_dtype(dtype), tf.GradientTape() as tape:
                tape.watch(x)
                loss = tf.reduce_sum(tf.square(layer(x)))
            return tape.gradient(loss, [x] + layer.trainable_variables)

        for g32, g16 in zip(grads("float32"), grads("bfloat16")):
            self.assertEqual(g16.dtype, tf.float32)
            self.assertAllClose(g16, g32, rtol=0.05, atol=0.05 * float(tf.reduce_max(abs(g32))))

    def test_mixed_policy_inputs_are_left_alone(self):
        a = tf.ones((2, 3), tf.bfloat16)
        with matmuls.use_matmul_dtype("bfloat16"):
            self.assertEqual(matmuls.matmul(a, tf.ones((3, 2), tf.bfloat16)).dtype, tf.bfloat16)

    def test_setting_is_checked_and_scoped(self):
        with self.assertRaisesRegex(ValueError, r"\['float32', 'bfloat16'\], got 'float16'"):
            matmuls.set_matmul_dtype("float16")
        with matmuls.use_matmul_dtype("bfloat16"):
            self.assertEqual(matmuls.matmul_dtype(), "bfloat16")
        self.assertEqual(matmuls.matmul_dtype(), "float32")

    def test_native_dtype_from_the_hardware(self):
        cpu = {"CPU"}
        self.assertEqual(matmuls.native_matmul_dtype({"avx2", "avx512_bf16"}, cpu)[0], "bfloat16")
        self.assertEqual(matmuls.native_matmul_dtype({"amx_bf16"}, cpu)[0], "bfloat16")
        dtype, reason = matmuls.native_matmul_dtype({"avx2", "avx512f"}, cpu)
        self.assertEqual(dtype, "float32")
        self.assertIn("none of avx512_bf16, amx_bf16", reason)
        self.assertEqual(matmuls.native_matmul_dtype({"avx512_bf16"}, {"CPU", "GPU"})[0], "float32")
        self.assertEqual(matmuls.native_matmul_dtype(set(), {"CPU", "TPU"})[0], "bfloat16")

    def test_cpu_flags_read_from_cpuinfo(self):
        path = os.path.join(self.get_temp_dir(), "cpuinfo")
        with open(path, "w") as f:
            f.write("processor\t: 0\nflags\t\t: fpu sse avx512_bf16 avx2\nbugs\t: x\n")
        self.assertEqual(matmuls.cpu_flags(path), {"fpu", "sse", "avx512_bf16", "avx2"})
        self.assertEqual(matmuls.cpu_flags(path + ".missing"), set())
