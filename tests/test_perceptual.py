"""Tests for vim_tf.losses.perceptual, with a randomly initialized VGG16 saved to a temp file."""

import os
import shutil
import tempfile

import h5py
import keras
import numpy as np
import tensorflow as tf

from testcase import TestCase
from vim_tf.losses.perceptual import DEFAULT_FEATURE_LAYERS, PerceptualLoss


def _write_legacy_notop_h5(model, path):
    """Writes `model`'s weights in the layout of the Keras 2 applications notop .h5 files."""
    with h5py.File(path, "w") as f:
        f.attrs["layer_names"] = [layer.name.encode("utf8") for layer in model.layers]
        f.attrs["backend"] = b"tensorflow"
        f.attrs["keras_version"] = b"2.2.4"
        for layer in model.layers:
            group = f.create_group(layer.name)
            names = [
                f"{layer.name}_{'W' if i == 0 else 'b'}_1:0" for i in range(len(layer.weights))
            ]
            group.attrs["weight_names"] = [n.encode("utf8") for n in names]
            for name, value in zip(names, layer.get_weights(), strict=True):
                group.create_dataset(name, data=value)


def _reference_distance(vgg, x, y, layers=DEFAULT_FEATURE_LAYERS):
    """LPIPS-baseline distance from VGG intermediate outputs, normalization and sums in numpy."""
    extractor = keras.Model(vgg.input, [vgg.get_layer(n).output for n in layers])

    def feats(images):
        pre = keras.applications.vgg16.preprocess_input(np.asarray(images, np.float32) * 255.0)
        return [np.asarray(f, np.float64) for f in extractor.predict(pre, verbose=0)]

    total = 0.0
    for fx, fy in zip(feats(x), feats(y), strict=True):
        nx = fx / (np.sqrt(np.sum(fx**2, axis=-1, keepdims=True)) + 1e-10)
        ny = fy / (np.sqrt(np.sum(fy**2, axis=-1, keepdims=True)) + 1e-10)
        total = total + np.sum((nx - ny) ** 2, axis=-1).mean(axis=(1, 2))
    return total  # [B]


class PerceptualLossTest(TestCase):
    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        keras.utils.set_random_seed(0)
        cls.tmp = tempfile.mkdtemp()
        cls.vgg = keras.applications.VGG16(
            include_top=False, weights=None, input_shape=(None, None, 3)
        )
        cls.keras3_path = os.path.join(cls.tmp, "vgg16_notop.weights.h5")
        cls.vgg.save_weights(cls.keras3_path)
        cls.legacy_path = os.path.join(cls.tmp, "vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5")
        _write_legacy_notop_h5(cls.vgg, cls.legacy_path)
        cls.loss_fn = PerceptualLoss(weights_path=cls.keras3_path)
        rng = np.random.default_rng(0)
        cls.x = rng.uniform(size=(2, 32, 32, 3)).astype(np.float32)
        cls.y = np.clip(cls.x + rng.normal(0, 0.2, cls.x.shape), 0, 1).astype(np.float32)

    @classmethod
    def tearDownClass(cls):
        shutil.rmtree(cls.tmp, ignore_errors=True)
        super().tearDownClass()

    def _assert_same_weights_as_source(self, layer):
        got = layer.features.get_weights()
        want = self.vgg.get_weights()  # both lists are VGG16's 13 convs up to block5_conv3
        self.assertLen(got, 26)
        for g, w in zip(got, want, strict=True):
            self.assertAllEqual(g, w)

    def test_loads_keras3_weights_file(self):
        self._assert_same_weights_as_source(self.loss_fn)

    def test_loads_legacy_applications_h5_file(self):
        layer = PerceptualLoss(weights_path=self.legacy_path)
        self._assert_same_weights_as_source(layer)
        self.assertAllClose(layer(self.x, self.y), self.loss_fn(self.x, self.y))

    def test_identical_images_give_zero(self):
        self.assertAllClose(self.loss_fn(self.x, self.x), 0.0, atol=1e-7)

    def test_symmetric_and_positive(self):
        d_xy = float(self.loss_fn(self.x, self.y))
        d_yx = float(self.loss_fn(self.y, self.x))
        self.assertGreater(d_xy, 1e-3)
        self.assertAllClose(d_xy, d_yx, rtol=1e-6)

    def test_matches_explicit_computation(self):
        expected = _reference_distance(self.vgg, self.x, self.y)
        self.assertAllClose(self.loss_fn.per_example(self.x, self.y), expected, rtol=1e-4)
        self.assertAllClose(self.loss_fn(self.x, self.y), expected.mean(), rtol=1e-4)

    def test_small_images_upsampled_to_32(self):
        small_x, small_y = self.x[:, ::2, ::2], self.y[:, ::2, ::2]  # 16x16
        up_x = tf.image.resize(small_x, (32, 32), method="bilinear").numpy()
        up_y = tf.image.resize(small_y, (32, 32), method="bilinear").numpy()
        expected = _reference_distance(self.vgg, up_x, up_y).mean()
        self.assertAllClose(self.loss_fn(small_x, small_y), expected, rtol=1e-4)

    def test_frozen_but_differentiable_in_the_images(self):
        self.assertFalse(self.loss_fn.trainable)
        self.assertEmpty(self.loss_fn.trainable_weights)
        self.assertLen(self.loss_fn.non_trainable_weights, 26)
        y = tf.Variable(self.y)
        with tf.GradientTape() as tape:
            loss = self.loss_fn(self.x, y)
        grad = tape.gradient(loss, y)
        self.assertGreater(float(tf.reduce_max(tf.abs(grad))), 0.0)

    def test_custom_feature_layers(self):
        layers = ("block1_conv1", "block3_conv1")
        layer = PerceptualLoss(weights_path=self.keras3_path, feature_layers=layers)
        expected = _reference_distance(self.vgg, self.x, self.y, layers).mean()
        self.assertAllClose(layer(self.x, self.y), expected, rtol=1e-4)

    def test_unknown_feature_layer(self):
        with self.assertRaisesRegex(ValueError, r"\['block9_conv1'\] are not VGG16 layers"):
            PerceptualLoss(weights_path=self.keras3_path, feature_layers=["block9_conv1"])

    def test_no_weights_path_explains(self):
        with self.assertRaisesRegex(ValueError, "needs local VGG16.*notop.h5.*weight to 0"):
            PerceptualLoss(weights_path=None)

    def test_missing_weights_file_explains(self):
        missing = os.path.join(self.tmp, "nope.h5")
        with self.assertRaisesRegex(ValueError, "nope.h5' does not exist.*notop.h5.*weight to 0"):
            PerceptualLoss(weights_path=missing)

    def test_get_config(self):
        config = self.loss_fn.get_config()
        self.assertEqual(config["weights_path"], self.keras3_path)
        self.assertEqual(config["feature_layers"], list(DEFAULT_FEATURE_LAYERS))
        self.assertEqual(config["min_size"], 32)


if __name__ == "__main__":
    tf.test.main()
