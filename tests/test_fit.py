"""`model.fit` trains the procedures as the production trainer does (vim_tf/training/fit.py)."""

import os
from unittest import mock

import gin
import keras
import numpy as np
import tensorflow as tf
from absl.testing import parameterized

from testcase import TestCase
from tiny import (
    TINY_CLASSIFIER,
    TINY_VIM,
    tiny_vitvqgan_bindings,
    train_tiny_quantizer,
    with_data_dir,
)
from vim_tf.config import gin_utils
from vim_tf.data import input_pipeline
from vim_tf.training import fit as fit_lib
from vim_tf.training import guard, trainer

STEPS = 4
SEED = 0
# The quantizer's discriminator starts mid-run, and R1 runs on its first step (interval 2).
QUANTIZER = (
    f"TRAIN_STEPS = {STEPS}",
    "VQGANTraining.disc_start_step = 2",
    "VQGANTraining.r1_interval = 2",
    "VQGANTraining.r1_gamma = 10.0",
)
CASES = {
    "quantizer": "gin/experiments/digits_vitvqgan.gin",
    "prior": "gin/experiments/digits_vim.gin",
    "classifier": "gin/experiments/digits_classifier.gin",
}


class FitTest(TestCase, parameterized.TestCase):
    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.data_dir = cls.shared_data_dir()
        cls.q_dir = os.path.join(cls.class_temp_dir(), "quantizer")
        train_tiny_quantizer(cls.q_dir, cls.data_dir)

    def _parse(self, case, *extra):
        bindings = {
            "quantizer": tiny_vitvqgan_bindings(self.data_dir, *QUANTIZER),
            "prior": with_data_dir(TINY_VIM, self.data_dir, "IMAGE_SIZE = 16"),
            "classifier": with_data_dir(TINY_CLASSIFIER, self.data_dir),
        }[case]
        bindings += [
            f"TRAIN_STEPS = {STEPS}",
            # The same batches in the same order in every pipeline built from these settings.
            "make_dataset.deterministic = True",
            # An attention key bias has a zero gradient up to rounding (softmax ignores a shift
            # shared by all keys); Adam's default epsilon (1e-8) would turn that rounding, which
            # differs between two traced graphs of the same step, into steps of learning-rate
            # size. 1e-3 keeps every update a function of the real gradient.
            "make_optimizer.epsilon = 1e-3",
            *extra,
        ]
        gin.clear_config()
        gin_utils.parse([CASES[case]], bindings)

    def _model_kwargs(self, case):
        return {"quantizer_dir": self.q_dir} if case == "prior" else {}

    _by_trainer = {}

    def _trained_by_trainer(self, case):
        """{'weights': arrays, 'iterations': {optimizer: int}} after `trainer.train` (one run
        per case and process)."""
        if case not in self._by_trainer:
            self._parse(case)
            model_dir = os.path.join(self.class_temp_dir(), f"trainer_{case}")
            model = trainer.train(model_dir, model_kwargs=self._model_kwargs(case))
            self._by_trainer[case] = {
                "weights": [w.numpy() for w in model.weights],
                "iterations": {k: int(o.iterations) for k, o in model.named_optimizers().items()},
            }
        return self._by_trainer[case]

    def _fit_model(self, case, *extra):
        """The model as the trainer builds it (same seed), and the trainer's training batches."""
        self._parse(case, *extra)
        keras.utils.set_random_seed(SEED)
        model = trainer.build_model(tf.distribute.get_strategy(), **self._model_kwargs(case))
        # The trainer's dataset_fn with the trainer's seed (train.seed).
        dataset = input_pipeline.make_dataset(split="train", training=True, seed=SEED)
        return model, dataset

    def _assert_same_weights(self, expected, actual):
        # Same variables in the same order.
        self.assertEqual([w.shape for w in expected["weights"]], [w.shape for w in actual.weights])
        for a, b in zip(expected["weights"], actual.weights):
            np.testing.assert_allclose(b.numpy(), a, rtol=1e-5, atol=1e-7, err_msg=b.path)
        iterations = {k: int(o.iterations) for k, o in actual.named_optimizers().items()}
        self.assertEqual(iterations, expected["iterations"])

    @parameterized.named_parameters(*[(case, case) for case in CASES])
    def test_fit_gives_the_trainers_weights(self, case):
        expected = self._trained_by_trainer(case)
        model, dataset = self._fit_model(case)
        model.fit(dataset, steps_per_epoch=STEPS // 2, epochs=2, verbose=0)
        self.assertEqual(int(model.step), STEPS)
        self._assert_same_weights(expected, model)
        if case == "quantizer":
            # The discriminator trained from step 2 on, and R1 ran (on its step 0 of 2).
            self.assertEqual(int(model.discriminator_optimizer.iterations), 2)
            r1 = {m.name: m for m in model.metrics}["r1_penalty"]
            self.assertEqual(float(r1.count), 1.0)

    def test_quantizer_fit_with_steps_per_execution_and_xla_except_adversarial(self):
        expected = self._trained_by_trainer("quantizer")
        model, dataset = self._fit_model("quantizer")
        model.compile_optimizers(
            model.named_optimizers(), steps_per_execution=2, jit_compile="except_adversarial"
        )
        with mock.patch.object(fit_lib.logging, "info") as info:
            # Two fits: the second starts in the adversarial phase, on the batches after the
            # first fit's (a new pipeline of the same seed, past the batches already used).
            model.fit(dataset, steps_per_epoch=STEPS // 2, epochs=1, verbose=0)
            again = input_pipeline.make_dataset(split="train", training=True, seed=SEED)
            model.fit(again.skip(STEPS // 2), steps_per_epoch=STEPS // 2, epochs=1, verbose=0)
        logs = [call.args[0] % call.args[1:] for call in info.call_args_list]
        self.assertEqual(
            [r for r in logs if r.startswith("fit: train step")],
            [
                "fit: train step from step 0: XLA-compiled",
                "fit: train step from step 2: graph mode (no XLA)",
            ],
        )
        self.assertEqual(model.jit_compile, "except_adversarial")  # restored after fit
        self._assert_same_weights(expected, model)

    def test_phase_boundary_inside_an_execution_is_refused(self):
        model, dataset = self._fit_model("quantizer")
        model.compile_optimizers(model.named_optimizers(), steps_per_execution=3)
        with self.assertRaisesRegex(
            ValueError,
            r"changes its train step at step 2 .*steps_per_execution=3 steps starting at step 0",
        ):
            model.fit(dataset, steps_per_epoch=STEPS, epochs=1, verbose=0)
        self.assertEqual(int(model.step), 0)  # refused before any step ran

    def test_non_finite_steps_are_skipped_under_fit(self):
        self._parse("classifier")
        keras.utils.set_random_seed(SEED)
        # Built without the trainer: fit attaches the guard itself.
        model = trainer.create_model()
        model.build_all()
        model.compile_optimizers({"classifier": keras.optimizers.SGD(0.1)})
        model.build_optimizers()
        self.assertIsNone(guard.state_of(model))
        dataset = input_pipeline.make_dataset(split="train", training=True, seed=SEED)

        def poison(i, batch):
            image = batch["image"]
            return dict(
                batch, image=tf.where(tf.equal(i, 1), tf.fill(tf.shape(image), np.nan), image)
            )

        with mock.patch.object(fit_lib.logging, "warning") as warning:
            model.fit(dataset.enumerate().map(poison), steps_per_epoch=3, epochs=1, verbose=0)
        self.assertEqual(int(guard.state_of(model).skipped), 1)
        self.assertEqual(int(model.step), 2)  # the skipped batch applied no update
        for v in model.trainable_variables:
            self.assertTrue(np.all(np.isfinite(v.numpy())), v.path)
        self.assertIn("first at step 2", warning.call_args.args[0] % warning.call_args.args[1:])


if __name__ == "__main__":
    tf.test.main()
