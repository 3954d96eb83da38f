"""Shared base class for the test suite: clean gin state, fixed seeds, tiny shapes."""

import gin
import keras
import numpy as np
import tensorflow as tf


class TestCase(tf.test.TestCase):
    """`tf.test.TestCase` that clears gin and seeds every RNG before each test."""

    # tf.test.TestCase's deprecated `test_session` context manager is not a test.
    test_session = None

    def setUp(self):
        super().setUp()
        gin.clear_config()
        keras.utils.set_random_seed(0)
        np.random.seed(0)

    def tearDown(self):
        gin.clear_config()
        super().tearDown()

    def assert_checkpoint_covers(self, layer):
        """Every weight of `layer` must be reachable by `tf.train.Checkpoint`.

        Keras 3 keeps lists of sub-layers in containers that TF's object-graph checkpointing does not
        follow, so a list of blocks silently drops out of checkpoints. Layers in this project keep
        sub-layers as attributes; this check catches a regression.
        """
        ckpt_dir = self.get_temp_dir()
        path = tf.train.Checkpoint(layer=layer).save(f"{ckpt_dir}/cover")
        saved = [n for n, _ in tf.train.list_variables(path) if n.startswith("layer/")]
        self.assertLen(
            saved,
            len(layer.weights),
            msg=f"checkpoint holds {len(saved)} of {len(layer.weights)} weights",
        )
