"""Shared base class for the test suite: clean gin state, fixed seeds, tiny shapes."""

import os
import tempfile

import gin
import keras
import numpy as np
import tensorflow as tf


class TestCase(tf.test.TestCase):
    """`tf.test.TestCase` that clears gin and seeds every RNG before each test and class."""

    # tf.test.TestCase's deprecated `test_session` context manager is not a test.
    test_session = None

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        # Class fixtures (models trained in setUpClass) are seeded too, so they are the same
        # models on every run.
        keras.utils.set_random_seed(0)
        np.random.seed(0)

    @classmethod
    def class_temp_dir(cls):
        """A new directory for one class's shared fixtures (model dirs of `setUpClass`).

        `tf.compat.v1.test.get_temp_dir()` is one directory per process: test classes that put
        model dirs of the same name there collide when pytest-xdist runs them in one worker
        (a second class would resume the first one's differently-sized checkpoint).
        """
        return tempfile.mkdtemp(prefix=f"{cls.__name__}_", dir=tf.compat.v1.test.get_temp_dir())

    @staticmethod
    def shared_data_dir():
        """The TFDS data dir every test of this process shares (prepared once)."""
        return os.path.join(tf.compat.v1.test.get_temp_dir(), "tfds")

    def setUp(self):
        super().setUp()
        gin.clear_config()
        keras.utils.set_random_seed(0)
        np.random.seed(0)

    def tearDown(self):
        gin.clear_config()
        super().tearDown()

    def assert_checkpoint_covers(self, layer):
        """Every weight of `layer` must come back from a `tf.train.Checkpoint` restore.

        Keras 3 keeps lists of sub-layers in containers that TF's object-graph checkpointing does
        not follow, so a list of blocks silently drops out of checkpoints. Layers in this project
        keep sub-layers as attributes; this check catches a regression: save, overwrite every
        weight, restore, compare.
        """
        original = [w.numpy().copy() for w in layer.weights]
        path = tf.train.Checkpoint(layer=layer).save(f"{self.get_temp_dir()}/cover")
        for w in layer.weights:
            w.assign(tf.fill(w.shape, tf.cast(7, w.dtype)))
        tf.train.Checkpoint(layer=layer).restore(path).assert_existing_objects_matched()
        lost = [w.path for w, v in zip(layer.weights, original) if not np.array_equal(w.numpy(), v)]
        self.assertEmpty(lost, msg=f"weights not restored from a checkpoint: {lost}")
