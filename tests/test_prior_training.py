"""The VIM prior's training procedure: the train step, class dropout, the frozen tokenizer,
compile and checkpoints."""

import gin
import numpy as np
import tensorflow as tf

import xla_check
from testcase import TestCase
from vim_tf.config import gin_utils
from vim_tf.models.vim import VIM
from vim_tf.models.vitvqgan import ViTVQGAN
from vim_tf.training import optimizers
from vim_tf.training.prior import PriorTraining

STACK = {"num_layers": 1, "num_heads": 2, "hidden_dim": 16, "mlp_dim": 32}
PRIOR = dict(num_layers=2, num_heads=2, hidden_dim=16, mlp_dim=32, dropout=0.0)


def make_procedure(num_classes=3, class_dropout=0.0, tokenizer=None, learning_rate=1e-3):
    if tokenizer is None:
        network = VIM(**PRIOR, num_classes=num_classes, grid_size=3, codebook_size=11)
    else:  # a callable: the procedure passes the tokenizer's grid and vocabulary
        network = lambda **grid: VIM(**PRIOR, num_classes=num_classes, **grid)  # noqa: E731
    model = PriorTraining(network, tokenizer=tokenizer, class_dropout=class_dropout)
    model.build_all()
    opt = optimizers.make_optimizer(learning_rate=learning_rate, weight_decay=0.0)
    model.compile_optimizers({"prior": opt})
    model.build_optimizers()
    return model


def token_batch(seed=3):
    rng = np.random.default_rng(seed)
    return {
        "tokens": tf.constant(rng.integers(0, 11, (8, 9)), tf.int32),
        "label": tf.constant(rng.integers(0, 3, (8,)), tf.int32),
    }


def tiny_tokenizer():
    tokenizer = ViTVQGAN(
        image_size=12, patch_size=4, encoder=STACK, decoder=STACK, codebook_size=11, code_dim=4
    )
    tokenizer.build()
    return tokenizer


class PriorTrainingTest(TestCase):
    def test_train_step_learns_a_fixed_sequence(self):
        model = make_procedure(learning_rate=3e-3)
        tokens = np.tile(np.arange(9, dtype=np.int32) % 11, (8, 1))
        data = {"tokens": tf.constant(tokens), "label": tf.zeros([8], tf.int32)}
        step = tf.function(model.train_step)
        first = float(step(data)["bits_per_token"])
        for _ in range(60):
            out = step(data)
        self.assertLess(float(out["bits_per_token"]), 0.5 * first)
        # bits per token is the cross-entropy in nats / ln 2.
        ce = tf.nn.sparse_softmax_cross_entropy_with_logits(
            labels=tokens, logits=model.network(tokens, tf.zeros([8], tf.int32))
        )
        loss, _ = model.nll(tokens, tf.zeros([8], tf.int32))
        self.assertAllClose(loss, tf.reduce_mean(ce))

    def test_xla_train_step_equals_graph_step(self):
        # What train.jit_compile = True runs for the digits priors.
        xla_check.assert_same_updates(self, make_procedure(), token_batch())

    def test_class_dropout_replaces_ids_with_the_null_class(self):
        model = make_procedure(class_dropout=0.3)
        ids = tf.zeros([4000], tf.int32)
        dropped = model.drop_classes(ids).numpy()
        self.assertEqual(set(np.unique(dropped)), {0, 3})
        self.assertAllClose((dropped == 3).mean(), 0.3, atol=0.03)
        self.assertIs(make_procedure().drop_classes(ids), ids)

    def test_images_are_tokenized_by_the_frozen_tokenizer(self):
        tokenizer = tiny_tokenizer()
        model = make_procedure(tokenizer=tokenizer)
        self.assertEqual((model.network.grid_size, model.network.codebook_size), (3, 11))
        images = tf.random.uniform((8, 12, 12, 3), seed=1)
        tokens = model.tokenize({"image": images})
        self.assertAllEqual(tokens, tf.reshape(tokenizer.encode(images), (8, 9)))
        before = [w.numpy() for w in tokenizer.weights]
        model.train_step({"image": images, "label": tf.zeros([8], tf.int32)})
        for b, w in zip(before, tokenizer.weights):
            self.assertAllEqual(b, w.numpy())
        self.assertFalse(tokenizer.trainable)
        info = model.model_info()
        self.assertEqual((info["image_size"], info["class_dropout"]), (12, 0.0))
        samples = model.summary_images(None, per_class=1)["samples"]
        self.assertEqual(samples[0].shape, (3, 12, 12, 3))

    def test_checkpoint_has_the_network_under_model_and_no_tokenizer(self):
        model = make_procedure(tokenizer=tiny_tokenizer(), class_dropout=0.1)
        model.train_step(
            {"image": tf.random.uniform((8, 12, 12, 3)), "label": tf.zeros([8], tf.int32)}
        )
        items = model.checkpoint_items()
        self.assertEqual(set(items), {"model", "prior_optimizer", "class_dropout_seed"})
        self.assertIs(model.optimizer, items["prior_optimizer"])
        path = tf.train.Checkpoint(**items).save(f"{self.get_temp_dir()}/ckpt")
        keys = [k for k, _ in tf.train.list_variables(path)]
        self.assertFalse([k for k in keys if "rmsprop" in k.lower()])
        network = VIM.from_config(model.network_config())
        network.build()
        status = tf.train.Checkpoint(model=network).restore(path)
        status.expect_partial()
        status.assert_existing_objects_matched()
        for restored, trained in zip(network.weights, model.network.weights):
            self.assertAllEqual(restored.numpy(), trained.numpy())

    def test_gin_network_gets_the_tokenizer_grid(self):
        gin_utils.register_configurables()
        gin.parse_config(
            [
                "PriorTraining.network = @VIM",
                "VIM.num_layers = 1",
                "VIM.num_heads = 2",
                "VIM.hidden_dim = 16",
                "VIM.mlp_dim = 32",
                "VIM.num_classes = 10",
                "VIM.dropout = 0.3",
            ]
        )
        model = gin.get_configurable("PriorTraining")(tokenizer=tiny_tokenizer())
        net = model.network
        self.assertEqual((net.grid_size, net.codebook_size), (3, 11))
        self.assertEqual((net.num_classes, net.dropout), (10, 0.3))

    def test_errors(self):
        with self.assertRaisesRegex(ValueError, "class_dropout needs a class-conditional"):
            make_procedure(num_classes=0, class_dropout=0.1)
        with self.assertRaisesRegex(ValueError, r"PriorTraining\.class_dropout must be"):
            make_procedure(class_dropout=1.0)
        wrong = VIM(**PRIOR, grid_size=4, codebook_size=11)
        with self.assertRaisesRegex(ValueError, "VIM.grid_size is 4 but the quantizer has grid"):
            PriorTraining(wrong, tokenizer=tiny_tokenizer())
        with self.assertRaisesRegex(ValueError, "batches of images need the prior's quantizer"):
            make_procedure().tokenize({"image": tf.zeros([1, 12, 12, 3])})


if __name__ == "__main__":
    tf.test.main()
