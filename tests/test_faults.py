"""Faults during training: NaN steps, kill -9 (also mid-save), SIGTERM, full or unwritable disks,
a damaged checkpoint. None may lose or corrupt the newest good checkpoint."""

import collections
import glob
import os
import random
import re
import signal
import subprocess
import sys
import time
from unittest import mock

import gin
import numpy as np
import tensorflow as tf

from testcase import TestCase
from tiny import tiny_vitvqgan_bindings
from vim_tf.config import gin_utils
from vim_tf.data import input_pipeline
from vim_tf.training import guard, trainer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXPERIMENT = "gin/experiments/digits_vitvqgan.gin"


def _poisoned(bad_batches):
    """A dataset_fn whose training batches at `bad_batches` (0-based) are all NaN."""
    bad = tf.constant(sorted(bad_batches) or [-1], tf.int64)

    def dataset_fn(split="train", training=True, **kwargs):
        ds = input_pipeline.make_dataset(split=split, training=training, **kwargs)
        if not training:
            return ds

        def poison(i, batch):
            hit = tf.reduce_any(tf.equal(i, bad))
            image = tf.where(hit, tf.fill(tf.shape(batch["image"]), np.nan), batch["image"])
            return dict(batch, image=image)

        return ds.enumerate().map(poison)

    return dataset_fn


def _checkpoints(model_dir):
    return sorted(
        int(m.group(1))
        for f in glob.glob(os.path.join(model_dir, "ckpt-*.index"))
        if (m := re.search(r"ckpt-(\d+)\.index$", f))
    )


def _finite_checkpoint(path):
    reader = tf.train.load_checkpoint(path)
    for name, dtype in reader.get_variable_to_dtype_map().items():
        if dtype.is_floating:
            value = reader.get_tensor(name)
            if not np.all(np.isfinite(value)):
                return False
    return True


class _Base(TestCase):
    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.data_dir = os.path.join(tf.compat.v1.test.get_temp_dir(), "tfds")

    def _parse(self, *extra):
        gin.clear_config()
        gin_utils.parse([EXPERIMENT], tiny_vitvqgan_bindings(self.data_dir, *extra))


class NonFiniteTest(_Base):
    def test_stop_names_the_step_and_saves_nothing_after_it(self):
        model_dir = os.path.join(self.get_temp_dir(), "stop")
        self._parse()
        # Batches 0-3 train steps 1-4; batch 4 would be step 5.
        with self.assertRaisesRegex(
            trainer.NonFiniteLossError, r"at step 5 .*last good checkpoint is .*ckpt-3"
        ):
            trainer.train(model_dir, dataset_fn=_poisoned({4}))
        self.assertEqual(_checkpoints(model_dir), [3])
        self.assertTrue(_finite_checkpoint(os.path.join(model_dir, "ckpt-3")))

    def test_skip_mode_counts_skipped_steps_and_finishes(self):
        model_dir = os.path.join(self.get_temp_dir(), "skip")
        self._parse("train.nonfinite = 'skip'")
        # Batch 1 falls in the autoencoder phase, batch 4 in the adversarial one.
        model = trainer.train(model_dir, dataset_fn=_poisoned({1, 4}))
        self.assertEqual(int(model.step), 6)  # skipped batches do not count as steps
        self.assertEqual(int(guard.state_of(model).skipped), 2)
        for v in model.trainable_variables:
            self.assertTrue(np.all(np.isfinite(v.numpy())), v.path)
        self.assertEqual(_checkpoints(model_dir), [3, 6])
        self.assertTrue(_finite_checkpoint(os.path.join(model_dir, "ckpt-6")))
        skipped = [
            float(tf.make_ndarray(v.tensor))
            for f in glob.glob(os.path.join(model_dir, "events.out.tfevents.*"))
            for e in tf.compat.v1.train.summary_iterator(f)
            for v in e.summary.value
            if v.tag == "train/skipped_steps"
        ]
        self.assertEqual(max(skipped), 2.0)

    def test_skip_mode_gives_up_after_max_skipped_steps(self):
        model_dir = os.path.join(self.get_temp_dir(), "allbad")
        self._parse("train.nonfinite = 'skip'", "train.max_skipped_steps = 3")
        with self.assertRaisesRegex(
            trainer.NonFiniteLossError, r"more than train.max_skipped_steps=3"
        ):
            trainer.train(model_dir, dataset_fn=_poisoned(set(range(100))))
        self.assertEqual(_checkpoints(model_dir), [])

    def test_bad_mode_is_named(self):
        self._parse("train.nonfinite = 'ignore'")
        with self.assertRaisesRegex(ValueError, r"'stop' or 'skip', got 'ignore'"):
            trainer.train(os.path.join(self.get_temp_dir(), "x"))


class DiskTest(_Base):
    def test_unwritable_model_dir_fails_fast(self):
        blocker = os.path.join(self.get_temp_dir(), "a_file")
        open(blocker, "w").close()
        self._parse()
        with self.assertRaisesRegex(OSError, r"model dir .*a_file/run.* is not writable"):
            trainer.train(os.path.join(blocker, "run"))

    def test_too_little_free_space_fails_before_training(self):
        model_dir = os.path.join(self.get_temp_dir(), "full")
        self._parse()
        usage = collections.namedtuple("usage", "total used free")(10**9, 10**9 - 1000, 1000)
        with mock.patch.object(trainer.shutil, "disk_usage", return_value=usage):
            with self.assertRaisesRegex(
                trainer.CheckpointWriteError, r"0.0 MiB free.*two must fit"
            ):
                trainer.train(model_dir)
        self.assertEqual(_checkpoints(model_dir), [])

    def test_failed_save_names_the_last_good_checkpoint(self):
        model_dir = os.path.join(self.get_temp_dir(), "enospc")
        self._parse()
        real_save = tf.train.CheckpointManager.save

        def save(manager, checkpoint_number=None, **kw):
            if checkpoint_number == 6:
                raise tf.errors.ResourceExhaustedError(None, None, "No space left on device")
            return real_save(manager, checkpoint_number=checkpoint_number, **kw)

        with mock.patch.object(tf.train.CheckpointManager, "save", save):
            with self.assertRaisesRegex(
                trainer.CheckpointWriteError,
                r"checkpoint of step 6 .*No space left on device.*newest good checkpoint is "
                r".*ckpt-3; free disk space",
            ):
                trainer.train(model_dir)
        self.assertEqual(_checkpoints(model_dir), [3])

    def test_damaged_newest_checkpoint_falls_back_to_the_one_before(self):
        model_dir = os.path.join(self.get_temp_dir(), "damaged")
        self._parse()
        trainer.train(model_dir)
        data = glob.glob(os.path.join(model_dir, "ckpt-6.data-*"))[0]
        with open(data, "r+b") as f:
            f.truncate(os.path.getsize(data) // 2)
        self._parse("TRAIN_STEPS = 7")
        with mock.patch.object(trainer.logging, "error") as error:
            model = trainer.train(model_dir)
        self.assertIn("ckpt-6", str(error.call_args_list[0]))
        self.assertEqual(int(model.step), 7)
        self.assertIn(7, _checkpoints(model_dir))


class ProcessFaultTest(_Base):
    """kill -9 and SIGTERM against the real binary (tools/train.py) in a subprocess."""

    def _flags(self, model_dir, *extra):
        bindings = tiny_vitvqgan_bindings(self.data_dir, "train.log_every = 1", *extra)
        return [
            f"--gin_file={EXPERIMENT}",
            f"--model_dir={model_dir}",
            *[f"--gin_bindings={b}" for b in bindings],
        ]

    def _run(self, args, timeout=180):
        return subprocess.run(
            [sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout
        )

    def _train(self, model_dir, *extra):
        return self._run(["tools/train.py", *self._flags(model_dir, *extra)])

    def _start(self, model_dir, *extra):
        return subprocess.Popen(
            [sys.executable, "tools/train.py", *self._flags(model_dir, *extra)],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )

    def _assert_resumes(self, model_dir, step, *extra):
        result = self._train(model_dir, *extra)
        self.assertEqual(result.returncode, 0, result.stderr[-3000:])
        self.assertRegex(result.stderr, rf"resumed from .*ckpt-{step} at step {step}\b")
        return result

    def test_kill_9_mid_save(self):
        for fault, leftover in (
            ("--kill_before_merge=6", "ckpt-6_temp"),
            ("--kill_before_state_update=6", "ckpt-6.index"),
        ):
            with self.subTest(fault):
                model_dir = os.path.join(self.get_temp_dir(), fault.strip("-").split("=")[0])
                killed = self._run(
                    [os.path.join("tests", "faults.py"), fault, "--", *self._flags(model_dir)]
                )
                self.assertEqual(killed.returncode, -signal.SIGKILL, killed.stderr[-3000:])
                # The save was cut short: its files are there, but nothing names them.
                self.assertTrue(os.path.exists(os.path.join(model_dir, leftover)), leftover)
                self.assertTrue(tf.train.latest_checkpoint(model_dir).endswith("ckpt-3"))
                self.assertTrue(_finite_checkpoint(tf.train.latest_checkpoint(model_dir)))
                self._assert_resumes(model_dir, 3)
                self.assertTrue(tf.train.latest_checkpoint(model_dir).endswith("ckpt-6"))
                self.assertEmpty(glob.glob(os.path.join(model_dir, "*_temp")))

    def test_kill_9_at_random_moments(self):
        """Kills at random times of a run that saves every step (so often mid-save); every time
        the newest named checkpoint reads back whole and the rerun resumes from it."""
        model_dir = os.path.join(self.get_temp_dir(), "random")
        extra = ("TRAIN_STEPS = 400", "CHECKPOINT_EVERY = 1", "train.steps_per_loop = 1")
        rng = random.Random(0)
        last = 0
        for _ in range(3):
            proc = self._start(model_dir, *extra)
            try:
                deadline = time.time() + 120
                while time.time() < deadline:
                    newest = tf.train.latest_checkpoint(model_dir)
                    if newest and int(newest.rsplit("-", 1)[1]) > last:
                        break
                    time.sleep(0.05)
                time.sleep(rng.uniform(0.0, 1.0))
            finally:
                proc.kill()
                proc.communicate(timeout=30)
            newest = tf.train.latest_checkpoint(model_dir)
            step = int(newest.rsplit("-", 1)[1])
            self.assertGreater(step, last)
            self.assertTrue(_finite_checkpoint(newest))
            last = step
        result = self._assert_resumes(
            model_dir, last, f"TRAIN_STEPS = {last + 2}", "CHECKPOINT_EVERY = 1"
        )
        self.assertIn(f"ckpt-{last + 2}", result.stderr)

    def test_sigterm_saves_and_resumes_at_that_step(self):
        model_dir = os.path.join(self.get_temp_dir(), "sigterm")
        proc = self._start(model_dir, "TRAIN_STEPS = 100000", "CHECKPOINT_EVERY = 100000")
        try:
            deadline = time.time() + 120
            while time.time() < deadline and not os.path.exists(
                os.path.join(model_dir, "operative_config.gin")
            ):
                time.sleep(0.1)
            time.sleep(1.0)
            proc.send_signal(signal.SIGTERM)
            out, _ = proc.communicate(timeout=60)
        finally:
            proc.kill()
        self.assertEqual(proc.returncode, trainer.PREEMPTED_EXIT_CODE, out[-3000:])
        match = re.search(
            r"SIGTERM: stopped at step (\d+)/100000 with checkpoint \S+ckpt-(\d+)", out
        )
        self.assertIsNotNone(match, out[-3000:])
        step = int(match.group(1))
        self.assertEqual(int(match.group(2)), step)
        self.assertGreater(step, 0)
        self.assertEqual(_checkpoints(model_dir), [step])
        self._assert_resumes(
            model_dir, step, f"TRAIN_STEPS = {step + 1}", "CHECKPOINT_EVERY = 100000"
        )


if __name__ == "__main__":
    tf.test.main()


class GuardHaltTest(TestCase):
    """`train.nonfinite='stop'` is decided after a loop, not per step: once a step was skipped,
    the guard applies no later update of the loop, so the run stops with the weights of before
    the bad step; in 'skip' mode later finite updates go on."""

    def _apply(self, halt_after_skip, grads_per_step):
        import keras

        var = keras.Variable(1.0)
        opt = keras.optimizers.SGD(learning_rate=1.0)
        opt.build([var])
        holder = keras.layers.Layer()
        state = guard.attach(holder, halt_after_skip=halt_after_skip)
        applied = []
        for g in grads_per_step:
            ok = guard.apply_if_finite(
                holder, opt, [tf.constant(g)], [var], tf.constant(0.0), step=len(applied)
            )
            applied.append(bool(ok))
        return float(var.numpy()), applied, int(state.skipped), int(state.first_step)

    def test_stop_mode_applies_nothing_after_a_skip(self):
        value, applied, skipped, first = self._apply(True, [0.25, np.nan, 0.5, 0.125])
        self.assertEqual(applied, [True, False, False, False])
        self.assertEqual(value, 0.75)  # 1 - 0.25: only the step before the bad one
        self.assertEqual((skipped, first), (1, 1))  # one skip, at step 1 (0-based)

    def test_skip_mode_goes_on_after_a_skip(self):
        value, applied, skipped, first = self._apply(False, [0.25, np.nan, 0.5, np.inf])
        self.assertEqual(applied, [True, False, True, False])
        self.assertEqual(value, 0.25)  # 1 - 0.25 - 0.5
        self.assertEqual((skipped, first), (2, 1))
