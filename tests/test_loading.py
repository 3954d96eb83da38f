"""Loading trained inference networks from model dirs written by the training procedures."""

import os

import numpy as np
import tensorflow as tf

from testcase import TestCase
from vim_tf.models import loading
from vim_tf.models.classifier import ImageClassifier
from vim_tf.models.vim import VIM
from vim_tf.models.vitvqgan import ViTVQGAN
from vim_tf.training import optimizers
from vim_tf.training.classifier import ClassifierTraining
from vim_tf.training.prior import PriorTraining
from vim_tf.training.vqgan import VQGANTraining
from vim_tf.utils import model_dir as model_dir_lib

STACK = {"num_layers": 1, "num_heads": 2, "hidden_dim": 16, "mlp_dim": 32}
IMAGES = tf.random.uniform((4, 16, 16, 3), seed=2)


def save_model_dir(procedure, model_dir, steps=1, batch=None):
    """What the trainer writes: model_info, the network's config, checkpoints after each step."""
    names = procedure.active_optimizer_names()
    procedure.compile_optimizers({n: optimizers.make_optimizer(learning_rate=1e-2) for n in names})
    procedure.build_optimizers()
    model_dir_lib.write_model_info(model_dir, procedure.model_info())
    config_path = os.path.join(model_dir, model_dir_lib.MODEL_CONFIG_FILE)
    model_dir_lib.write_json(config_path, procedure.network_config())
    ckpt = tf.train.Checkpoint(**procedure.checkpoint_items())
    manager = tf.train.CheckpointManager(ckpt, model_dir, None, checkpoint_name="ckpt")
    paths = []
    for _ in range(steps):
        procedure.train_step(batch)
        paths.append(manager.save())
    return paths


def quantizer_dir(path, steps=1):
    network = ViTVQGAN(16, 4, encoder=STACK, decoder=STACK, codebook_size=16, code_dim=4)
    procedure = VQGANTraining(network, discriminator={"channel_base": 64, "channel_max": 8})
    procedure.build_all()
    paths = save_model_dir(procedure, path, steps, {"image": IMAGES})
    return procedure, paths


class LoadingTest(TestCase):
    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.q_dir = os.path.join(cls.class_temp_dir(), "q")
        cls.q_procedure, cls.q_paths = quantizer_dir(cls.q_dir, steps=2)

    def test_tokenizer_has_nothing_of_training(self):
        tokenizer = loading.load_tokenizer(self.q_dir)
        self.assertIsInstance(tokenizer, ViTVQGAN)
        self.assertFalse(tokenizer.trainable)
        self.assertIsNone(getattr(tokenizer, "discriminator", None))
        self.assertIsNone(getattr(tokenizer, "optimizer", None))
        paths = [w.path for w in tokenizer.weights]
        self.assertFalse([p for p in paths if "discriminator" in p or "perceptual" in p])
        # Every network variable came from the checkpoint: the restore reproduces the procedure's.
        self.assertEqual(len(tokenizer.weights), len(self.q_procedure.network.weights))
        for loaded, trained in zip(tokenizer.weights, self.q_procedure.network.weights):
            self.assertAllEqual(loaded.numpy(), trained.numpy())
        self.assertAllEqual(tokenizer.encode(IMAGES), self.q_procedure.network.encode(IMAGES))

    def test_named_checkpoint(self):
        newest, _, path = loading.load_network(self.q_dir)
        first, info, first_path = loading.load_network(self.q_dir, checkpoint=self.q_paths[0])
        self.assertEqual((path, first_path), (self.q_paths[1], self.q_paths[0]))
        self.assertEqual(info["kind"], "quantizer")
        differ = [
            not np.array_equal(a.numpy(), b.numpy()) for a, b in zip(newest.weights, first.weights)
        ]
        self.assertTrue(any(differ))

    def test_prior_comes_with_its_tokenizer(self):
        p_dir = os.path.join(self.get_temp_dir(), "prior")
        network = lambda **grid: VIM(1, 2, 16, 32, num_classes=3, **grid)  # noqa: E731
        procedure = PriorTraining(network, quantizer_dir=self.q_dir, class_dropout=0.2)
        procedure.build_all()
        save_model_dir(procedure, p_dir, 1, {"image": IMAGES, "label": tf.constant([0, 1, 2, 0])})
        prior, info, _ = loading.load_network(p_dir, kinds=("prior",))
        self.assertIsInstance(prior, loading.TrainedPrior)
        self.assertEqual((prior.class_dropout, prior.quantizer_dir), (0.2, self.q_dir))
        self.assertEqual(info["quantizer_dir"], os.path.abspath(self.q_dir))
        self.assertEqual((prior.network.grid_size, prior.network.codebook_size), (4, 16))
        for loaded, trained in zip(prior.network.weights, procedure.network.weights):
            self.assertAllEqual(loaded.numpy(), trained.numpy())
        tokens = prior.tokenize({"image": IMAGES})
        self.assertAllEqual(tokens, procedure.tokenize({"image": IMAGES}))
        self.assertEqual(prior.decode(tf.reshape(tokens, (4, 4, 4))).shape, (4, 16, 16, 3))
        self.assertEqual(loading.load_prior(p_dir).network.num_classes, 3)

    def test_classifier(self):
        c_dir = os.path.join(self.get_temp_dir(), "classifier")
        network = ImageClassifier(image_size=16, num_classes=3, channels=(4,), feature_dim=5)
        procedure = ClassifierTraining(network)
        procedure.build_all()
        save_model_dir(procedure, c_dir, 1, {"image": IMAGES, "label": tf.constant([0, 1, 2, 0])})
        classifier = loading.load_classifier(c_dir)
        self.assertIsInstance(classifier, ImageClassifier)
        self.assertAllClose(classifier(IMAGES), network(IMAGES))
        self.assertFalse([w.path for w in classifier.weights if "seed" in w.path])

    def test_wrong_dirs(self):
        with self.assertRaisesRegex(ValueError, r"holds a 'quantizer' model, not a 'classifier'"):
            loading.load_classifier(self.q_dir)
        with self.assertRaisesRegex(ValueError, r"holds a 'quantizer' model, not a 'prior'"):
            loading.load_network(self.q_dir, kinds=("prior",), purpose="a VIM model dir")
        with self.assertRaisesRegex(ValueError, "does not exist"):
            loading.load_tokenizer(os.path.join(self.get_temp_dir(), "nothing"))


if __name__ == "__main__":
    tf.test.main()
