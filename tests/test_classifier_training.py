"""The scoring classifier's network and its training procedure."""

import numpy as np
import tensorflow as tf

from testcase import TestCase
from vim_tf.models.classifier import ImageClassifier
from vim_tf.training import optimizers
from vim_tf.training.classifier import ClassifierTraining

NETWORK = dict(image_size=8, num_classes=3, channels=(4,), feature_dim=5)


def make_procedure(max_shift=2, learning_rate=1e-2):
    model = ClassifierTraining(ImageClassifier(**NETWORK), max_shift=max_shift)
    model.build_all()
    model.compile_optimizers({"classifier": optimizers.make_optimizer(learning_rate=learning_rate)})
    model.build_optimizers()
    return model


def batch():
    rng = np.random.default_rng(0)
    labels = np.arange(12) % 3
    images = np.zeros((12, 8, 8, 3), np.float32)
    images[np.arange(12), :, :, labels] = 1.0  # the class is the colour
    images += rng.uniform(0, 0.1, images.shape).astype(np.float32)
    return {"image": tf.constant(images), "label": tf.constant(labels, tf.int32)}


class ClassifierTrainingTest(TestCase):
    def test_train_step_learns_and_reports_accuracy(self):
        model = make_procedure(max_shift=0)
        step = tf.function(model.train_step)
        first = float(step(batch())["loss"])
        for _ in range(30):
            out = step(batch())
        self.assertLess(float(out["loss"]), first)
        logits = model.network(batch()["image"])
        acc = np.mean(np.argmax(logits, -1) == np.arange(12) % 3)
        self.assertEqual(acc, 1.0)
        self.assertEqual(int(model.step), 31)

    def test_augment_shifts_within_max_shift(self):
        model = make_procedure(max_shift=1)
        image = np.zeros((1, 8, 8, 3), np.float32)
        image[0, 4, 4] = 1.0
        # One offset per call; the pixel lands within max_shift of where it was.
        positions = set()
        for _ in range(40):
            rows, cols = np.nonzero(model.augment(tf.constant(image)).numpy()[0, :, :, 0])
            positions.add((int(rows[0]), int(cols[0])))
        self.assertLessEqual(positions, {(r, c) for r in (3, 4, 5) for c in (3, 4, 5)})
        self.assertGreater(len(positions), 4)
        self.assertIs(make_procedure(max_shift=0).augment(image), image)

    def test_checkpoint_and_compile(self):
        model = make_procedure()
        model.train_step(batch())
        items = model.checkpoint_items()
        self.assertEqual(set(items), {"model", "classifier_optimizer", "shift_seed"})
        self.assertIs(items["model"], model.network)
        self.assertIs(items["classifier_optimizer"], model.optimizer)
        path = tf.train.Checkpoint(**items).save(f"{self.get_temp_dir()}/ckpt")
        keys = [k for k, _ in tf.train.list_variables(path)]
        self.assertFalse([k for k in keys if "rmsprop" in k.lower()])
        network = ImageClassifier.from_config(model.network_config())
        network.build()
        status = tf.train.Checkpoint(model=network).restore(path)
        status.expect_partial()
        status.assert_existing_objects_matched()
        images = batch()["image"]
        self.assertAllClose(network(images), model.network(images))
        self.assertEqual(model.model_info()["kind"], "classifier")

    def test_network_config_round_trip(self):
        network = ImageClassifier(**NETWORK, dropout=0.3)
        config = network.get_config()
        self.assertEqual(ImageClassifier.from_config(config).get_config(), config)
        network.build()
        self.assert_checkpoint_covers(network)

    def test_errors(self):
        with self.assertRaisesRegex(ValueError, r"ClassifierTraining\.max_shift must be"):
            ClassifierTraining(ImageClassifier(**NETWORK), max_shift=-1)
        with self.assertRaisesRegex(ValueError, r"ImageClassifier\.num_classes must be"):
            ImageClassifier(**dict(NETWORK, num_classes=1))


if __name__ == "__main__":
    tf.test.main()
