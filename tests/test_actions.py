"""The Trainer runs pluggable actions between loops of steps (vim_tf/training/actions.py)."""

import glob
import os

import tensorflow as tf

from testcase import TestCase
from tiny import TINY_CLASSIFIER, with_data_dir
from vim_tf.config import gin_utils
from vim_tf.data import input_pipeline
from vim_tf.training import actions, trainer


class Recorder(actions.Action):
    """Records every hook call as (hook, trainer.step)."""

    def __init__(self, every, calls):
        self.every = every
        self.calls = calls

    def begin(self, t):
        self.calls.append(("begin", t.step))

    def after_loop(self, t):
        self.calls.append(("after_loop", t.step))

    def at_step(self, t):
        self.calls.append(("at_step", t.step))

    def finish(self, t):
        self.calls.append(("finish", t.step))

    def close(self, t):
        self.calls.append(("close", t.step))


class Fail(actions.Action):
    def after_loop(self, t):
        raise RuntimeError(f"stop at {t.step}")


class TrainerActionsTest(TestCase):
    def setUp(self):
        super().setUp()
        gin_utils.parse(
            ["gin/experiments/digits_classifier.gin"],
            with_data_dir(TINY_CLASSIFIER, self.shared_data_dir()),
        )

    def _trainer(self, model_dir, acts, steps_per_loop=2):
        return trainer.Trainer(
            model_dir,
            dataset_fn=input_pipeline.make_dataset,
            train_steps=4,
            steps_per_loop=steps_per_loop,
            actions=acts,
        )

    def test_hooks_run_in_order_at_their_steps(self):
        calls = []
        model_dir = os.path.join(self.get_temp_dir(), "recorded")
        model = self._trainer(model_dir, [Recorder(3, calls)]).run()
        self.assertEqual(int(model.step), 4)
        # Loops end at multiples of steps_per_loop (2) and of the action's `every` (3).
        self.assertEqual(
            calls,
            [
                ("begin", 0),
                ("after_loop", 2),
                ("after_loop", 3),
                ("at_step", 3),
                ("after_loop", 4),
                ("at_step", 4),  # the last step
                ("finish", 4),
                ("close", 4),
            ],
        )
        # Without the Checkpointing action nothing is saved.
        self.assertEmpty(glob.glob(os.path.join(model_dir, "ckpt-*")))

    def test_close_runs_after_an_error_and_finish_does_not(self):
        calls = []
        with self.assertRaisesRegex(RuntimeError, "stop at 2"):
            self._trainer(
                os.path.join(self.get_temp_dir(), "failed"), [Recorder(None, calls), Fail()]
            ).run()
        self.assertEqual(calls, [("begin", 0), ("after_loop", 2), ("close", 2)])

    def test_default_actions_checkpoint_at_their_steps(self):
        model_dir = os.path.join(self.get_temp_dir(), "default")
        acts = trainer.default_actions(checkpoint_every=3, log_every=2, image_every=100)
        self._trainer(model_dir, acts).run()
        state = tf.train.get_checkpoint_state(model_dir)
        self.assertEqual(
            [os.path.basename(p) for p in state.all_model_checkpoint_paths], ["ckpt-3", "ckpt-4"]
        )
        self.assertTrue(os.path.exists(os.path.join(model_dir, "operative_config.gin")))


if __name__ == "__main__":
    tf.test.main()
