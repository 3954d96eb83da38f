"""tfgan_compat: loads TF-GAN's classifier_metrics without its package __init__, and fails
cleanly (a RuntimeError naming the cause, no half-registered modules) when it cannot."""

import contextlib
import sys
from unittest import mock

import numpy as np

from testcase import TestCase
from vim_tf.eval import tfgan_compat


def _tfgan_keys():
    return {k for k in sys.modules if k == "tensorflow_gan" or k.startswith("tensorflow_gan.")}


@contextlib.contextmanager
def fresh_load_state():
    """Runs the body as if TF-GAN had never been loaded, then restores the previous state."""
    tfgan_compat.classifier_metrics()  # make sure there is a state to restore
    saved = {k: sys.modules.pop(k) for k in _tfgan_keys()}
    try:
        with mock.patch.object(tfgan_compat, "_cached", None):
            yield
    finally:
        for k in _tfgan_keys():
            del sys.modules[k]
        sys.modules.update(saved)


class TfganCompatTest(TestCase):
    def test_loads_classifier_metrics_once(self):
        cm = tfgan_compat.classifier_metrics()
        self.assertIs(cm, tfgan_compat.classifier_metrics())
        self.assertEqual(cm.__name__, tfgan_compat.MODULE)
        self.assertTrue(cm.__file__.endswith("classifier_metrics.py"))
        for group in tfgan_compat.REQUIRED_FUNCTIONS:
            self.assertTrue(any(callable(getattr(cm, f, None)) for f in group), group)
        self.assertIn("tensorflow_gan.python.eval.eval_utils", sys.modules)
        # The math runs: classifier score of uniform logits is 1.
        self.assertAllClose(cm.classifier_score_from_logits(np.zeros((4, 3))), 1.0)

    def test_fresh_load_registers_placeholders_only(self):
        with fresh_load_state():
            cm = tfgan_compat.classifier_metrics()
            self.assertEqual(
                _tfgan_keys(),
                {
                    "tensorflow_gan",
                    "tensorflow_gan.python",
                    "tensorflow_gan.python.eval",
                    "tensorflow_gan.python.eval.eval_utils",
                    tfgan_compat.MODULE,
                },
            )
            package = sys.modules["tensorflow_gan"]
            self.assertIs(package.python.eval.classifier_metrics, cm)
            # The real __init__ did not run, and the placeholder says where to look.
            with self.assertRaisesRegex(AttributeError, "tfgan_compat.classifier_metrics"):
                package.losses  # noqa: B018

    def test_missing_function_names_it_and_cleans_up(self):
        real_import = tfgan_compat._import_classifier_metrics

        def import_without_classifier_score():
            module = real_import()
            del module.classifier_score_from_logits  # as in a TF-GAN version without it
            return module

        with fresh_load_state():
            with mock.patch.object(
                tfgan_compat, "_import_classifier_metrics", import_without_classifier_score
            ):
                with self.assertRaises(RuntimeError) as ctx:
                    tfgan_compat.classifier_metrics()
            message = str(ctx.exception)
            self.assertIn("classifier_score_from_logits", message)
            self.assertIn(tfgan_compat.installed_version(), message)
            self.assertNotIn("frechet", message)
            self.assertEqual(_tfgan_keys(), set())
            self.assertIsNone(tfgan_compat._cached)

    def test_missing_kid_needs_both_alternatives(self):
        cm = tfgan_compat.classifier_metrics()
        fake = mock.Mock(spec=["frechet_classifier_distance_from_activations"])
        fake.frechet_classifier_distance_from_activations = (
            cm.frechet_classifier_distance_from_activations
        )
        missing = tfgan_compat._missing_functions(fake)
        self.assertEqual(len(missing), 2)
        self.assertIn("classifier_score_from_logits", missing)
        self.assertIn(
            "kernel_classifier_distance_and_std_from_activations or "
            "kernel_classifier_distance_from_activations",
            missing,
        )

    def test_import_failure_is_runtime_error_and_cleans_up(self):
        empty = self.get_temp_dir()
        with fresh_load_state():
            with mock.patch.object(tfgan_compat, "_package_dir", return_value=empty):
                with self.assertRaisesRegex(RuntimeError, r"classifier_metrics.*2\.1\.0"):
                    tfgan_compat.classifier_metrics()
            self.assertEqual(_tfgan_keys(), set())
            # A later call retries and succeeds.
            self.assertTrue(hasattr(tfgan_compat.classifier_metrics(), "classifier_score"))

    def test_not_installed(self):
        with fresh_load_state():
            with mock.patch.object(tfgan_compat, "_package_dir", return_value=None):
                with self.assertRaisesRegex(RuntimeError, "no `tensorflow_gan` package"):
                    tfgan_compat.classifier_metrics()
            self.assertEqual(_tfgan_keys(), set())
