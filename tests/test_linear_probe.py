"""Linear probe: the softmax head, label-free feature extraction, and a tiny end-to-end run."""

import json
import os
from unittest import mock

import gin
import numpy as np
import tensorflow as tf
from absl.testing import parameterized

from testcase import TestCase
from tiny import TINY_VIM, train_tiny_quantizer, with_data_dir
from vim_tf.eval import linear_probe
from vim_tf.models import loading
from vim_tf.models.vim import VIM
from vim_tf.training import train_lib


def make_prior(num_classes):
    """A `TrainedPrior` without a tokenizer (the tests feed tokens)."""
    model = VIM(
        num_layers=2,
        num_heads=2,
        hidden_dim=8,
        mlp_dim=16,
        grid_size=2,
        codebook_size=8,
        dropout=0.1,
        num_classes=num_classes,
    )
    model.build()
    return loading.TrainedPrior(model, None, class_dropout=0.1)


def token_dataset(tokens, labels):
    """A `dataset_fn` serving pre-computed tokens (no quantizer needed) with their labels."""

    def dataset_fn(split, training, batch_size=4):
        assert split == "train" and not training
        ds = tf.data.Dataset.from_tensor_slices({"tokens": tokens, "label": labels})
        return ds.batch(batch_size)

    return dataset_fn


class TrainProbeTest(TestCase):
    def test_separable_features_are_learned(self):
        rng = np.random.default_rng(1)
        centers = rng.normal(size=(3, 8)) * 4.0
        train_y, test_y = rng.integers(0, 3, 300), rng.integers(0, 3, 150)
        train_x = centers[train_y] + rng.normal(size=(300, 8))
        test_x = centers[test_y] + rng.normal(size=(150, 8))
        test_acc, train_acc = linear_probe.train_probe(train_x, train_y, test_x, test_y, 3)
        self.assertGreaterEqual(test_acc, 0.98)
        self.assertGreaterEqual(train_acc, 0.98)
        # Deterministic with the seed.
        again = linear_probe.train_probe(train_x, train_y, test_x, test_y, 3)
        self.assertEqual((test_acc, train_acc), again)

    def test_random_labels_give_chance(self):
        rng = np.random.default_rng(2)
        x = rng.normal(size=(800, 20))
        y = rng.integers(0, 4, 800)
        test_acc, _ = linear_probe.train_probe(x[:400], y[:400], x[400:], y[400:], 4, epochs=30)
        self.assertBetween(test_acc, 0.15, 0.35)

    def test_normalization_uses_train_statistics(self):
        # A huge offset and scale on every feature: standardized, the head still separates them.
        rng = np.random.default_rng(3)
        y = rng.integers(0, 2, 200)
        x = (np.where(y[:, None] == 1, 1.0, -1.0) + 0.3 * rng.normal(size=(200, 4))) * 1e3 + 5e4
        acc, _ = linear_probe.train_probe(x[:100], y[:100], x[100:], y[100:], 2, epochs=20)
        self.assertGreaterEqual(acc, 0.95)

    def test_bad_labels_and_settings(self):
        x = np.zeros((4, 2), np.float32)
        with self.assertRaisesRegex(ValueError, r"train labels must be in \[0, 1\].*\[5\]"):
            linear_probe.train_probe(x, [0, 1, 5, 0], x, [0, 1, 1, 0], 2)
        with self.assertRaisesRegex(ValueError, "train_probe.epochs must be a positive int"):
            linear_probe.train_probe(x, [0, 1, 1, 0], x, [0, 1, 1, 0], 2, epochs=0)

    def test_gin_binds_the_head(self):
        gin.parse_config("train_probe.learning_rate = -0.5")
        with self.assertRaisesRegex(ValueError, "learning_rate > 0.*got -0.5"):
            linear_probe.train_probe(np.eye(2), [0, 1], np.eye(2), [0, 1], 2)


class CheckLayersTest(TestCase, parameterized.TestCase):
    def test_parsing_and_range(self):
        self.assertEqual(linear_probe.check_layers(None, 3), [1, 2, 3])
        self.assertEqual(linear_probe.check_layers("3, 1,3", 4), [1, 3])
        self.assertEqual(linear_probe.check_layers(["2"], 4), [2])

    @parameterized.named_parameters(
        ("zero", [0]),
        ("above_depth", [5]),
        ("not_a_number", "2,x"),
        ("empty", []),
        ("fraction", [1.5]),
    )
    def test_bad_layers_are_rejected(self, bad):
        with self.assertRaisesRegex(ValueError, r"block numbers in \[1, 4\] \(1-based"):
            linear_probe.check_layers(bad, 4)


class ExtractFeaturesTest(TestCase):
    def _spied_extract(self, model, tokens, labels, layers):
        """Runs extract_features recording what reaches the prior."""
        seen = {"tokenize_keys": [], "class_slots": 0}
        network = model.network
        tokenize, class_slots = model.tokenize, network.class_slots
        expected = network.null_class if network.num_classes else 0

        def spy_tokenize(batch):
            seen["tokenize_keys"].append(sorted(batch))
            return tokenize(batch)

        def spy_class_slots(class_ids):
            # In the traced graph: fails the run if any fed class id is not the expected one.
            seen["class_slots"] += 1
            tf.debugging.assert_equal(class_ids, tf.cast(expected, class_ids.dtype))
            return class_slots(class_ids)

        with (
            # A frozen dataclass: its method is patched on the class.
            mock.patch.object(loading.TrainedPrior, "tokenize", side_effect=spy_tokenize),
            mock.patch.object(network, "class_slots", side_effect=spy_class_slots),
        ):
            feats, got_labels = linear_probe.extract_features(
                model, "train", layers, batch_size=4, dataset_fn=token_dataset(tokens, labels)
            )
        # Every traced batch went through one forward pass (all layers at once), without labels.
        self.assertNotEmpty(seen["tokenize_keys"])
        self.assertEqual(seen["class_slots"], len(seen["tokenize_keys"]))
        for keys in seen["tokenize_keys"]:
            self.assertEqual(keys, ["tokens"])
        return feats, got_labels

    def test_conditional_prior_sees_only_the_null_class(self):
        prior = make_prior(num_classes=3)
        model = prior.network
        rng = np.random.default_rng(0)
        tokens = rng.integers(0, 8, size=(10, 4)).astype(np.int32)
        labels = rng.integers(0, 3, size=10).astype(np.int32)
        feats, got_labels = self._spied_extract(prior, tokens, labels, [2, 1])
        np.testing.assert_array_equal(got_labels, labels)
        self.assertEqual(sorted(feats), [1, 2])

        # Manual reference: block outputs for the null class, averaged over the tokens.
        def manual(class_ids):
            _, hidden = model(tokens, class_ids, training=False, return_hidden=True)
            return {i + 1: h.numpy().mean(axis=1) for i, h in enumerate(hidden)}

        null = manual(np.full(10, model.null_class, np.int32))
        with_labels = manual(labels)
        for layer in (1, 2):
            self.assertEqual(feats[layer].shape, (10, 8))
            self.assertEqual(feats[layer].dtype, np.float32)
            self.assertAllClose(feats[layer], null[layer], rtol=1e-5, atol=1e-5)
            self.assertGreater(np.abs(feats[layer] - with_labels[layer]).max(), 1e-4)
        self.assertAllClose(
            feats[1][:4], model.features(tokens[:4], np.full(4, 3), layer=1), atol=1e-5
        )

    def test_unconditional_prior_gets_zeros(self):
        prior = make_prior(num_classes=0)
        tokens = np.random.randint(0, 8, size=(6, 4)).astype(np.int32)
        labels = np.arange(6, dtype=np.int32)
        feats, _ = self._spied_extract(prior, tokens, labels, [1])
        self.assertAllClose(feats[1], prior.network.features(tokens, layer=1), atol=1e-5)

    def test_bad_layer_and_empty_split(self):
        model = make_prior(num_classes=0)
        tokens = np.zeros((0, 4), np.int32)
        fn = token_dataset(tokens, np.zeros((0,), np.int32))
        with self.assertRaisesRegex(ValueError, r"\[1, 2\]"):
            linear_probe.extract_features(model, "train", [3], dataset_fn=fn)
        with self.assertRaisesRegex(ValueError, "split 'train' is empty"):
            linear_probe.extract_features(model, "train", [1], dataset_fn=fn)


class LinearProbeEndToEndTest(TestCase):
    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        root = cls.class_temp_dir()
        cls.data_dir = cls.shared_data_dir()
        cls.q_dir = os.path.join(root, "quantizer")
        cls.p_dir = os.path.join(root, "prior_uncond")
        train_tiny_quantizer(cls.q_dir, cls.data_dir)
        gin.clear_config()
        train_lib.run(
            cls.p_dir,
            ["gin/experiments/digits_vim_uncond.gin"],
            with_data_dir(
                TINY_VIM,
                cls.data_dir,
                "IMAGE_SIZE = 16",
                "TRAIN_STEPS = 2",
                "VIM.num_layers = 2",
                # Saved in the prior's config.gin, which the probe re-reads.
                "train_probe.epochs = 20",
            ),
            quantizer_dir=cls.q_dir,
        )
        gin.clear_config()

    def test_probe_writes_json_and_plot(self):
        out = os.path.join(self.get_temp_dir(), "probe", "probe.json")
        with mock.patch.object(linear_probe, "train_probe", wraps=linear_probe.train_probe) as spy:
            result = linear_probe.run_linear_probe(self.p_dir, out)
        self.assertEqual(spy.call_count, 2)
        # The probe's settings come from the prior's config (train_probe.epochs = 20 above).
        self.assertEqual(gin.query_parameter("train_probe.epochs"), 20)
        with open(out) as f:
            saved = json.load(f)
        self.assertEqual(saved, result)
        self.assertEqual(set(saved["layers"]), {"1", "2"})
        self.assertEqual(set(saved["train_top1"]), {"1", "2"})
        self.assertIn(saved["best_layer"], (1, 2))
        self.assertEqual(saved["top1"], saved["layers"][str(saved["best_layer"])])
        self.assertEqual(saved["top1"], max(saved["layers"].values()))
        for acc in list(saved["layers"].values()) + list(saved["train_top1"].values()):
            self.assertBetween(acc, 0.0, 1.0)
        # Even a barely trained prior's features beat chance (10 digits) on the train split.
        self.assertGreater(max(saved["train_top1"].values()), 0.2)
        self.assertEqual((saved["num_train"], saved["num_test"]), (1437, 360))
        self.assertEqual(saved["num_classes"], 10)
        self.assertEqual(saved["feature_dim"], 16)
        self.assertEqual(saved["prior"], os.path.abspath(self.p_dir))
        png = os.path.join(self.get_temp_dir(), "probe", "probe.png")
        self.assertEqual(saved["plot"], png)
        with open(png, "rb") as f:
            self.assertEqual(f.read(8), b"\x89PNG\r\n\x1a\n")

    def test_bad_layer_names_the_valid_range(self):
        out = os.path.join(self.get_temp_dir(), "bad.json")
        with self.assertRaisesRegex(ValueError, r"block numbers in \[1, 2\].*got \['3'\]"):
            linear_probe.run_linear_probe(self.p_dir, out, layers=["3"])
        self.assertFalse(os.path.exists(out))
        result = linear_probe.run_linear_probe(self.p_dir, out, layers="2")
        self.assertEqual(list(result["layers"]), ["2"])
        self.assertEqual(result["best_layer"], 2)


if __name__ == "__main__":
    tf.test.main()
