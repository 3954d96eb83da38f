"""The Table 4 ablation tool (runs, table, resume, bad flags) and the raw-pixel probe baseline.

One tiny ablation (16 px digits, 2 steps, rows baseline and dim_8, restarts off, 2 seeds) runs
once on TF's in-memory file system; the tests read its files, rebuild its table and resume it.
"""

import csv
import io
import json
import os
import subprocess
import sys
import uuid
from unittest import mock

import gin
import numpy as np
import tensorflow as tf

from testcase import TestCase
from tiny import TINY_CLASSIFIER, TINY_VITVQGAN
from vim_tf.data import digits
from vim_tf.eval import evaluator
from vim_tf.reports import ablation, pixel_probe
from vim_tf.training import train_lib, trainer
from vim_tf.utils import fs
from vim_tf.utils import model_dir as model_dir_lib

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ROWS = ("baseline", "dim_8")
SEEDS = 2


def tiny_ablation(output_dir, data_dir, **overrides):
    bindings = (
        *TINY_VITVQGAN,
        f"make_dataset.data_dir = '{data_dir}'",
        "VQGANTraining.disc_start_step = 10",
    )
    settings = dict(
        output_dir=output_dir,
        gin_bindings=bindings,
        rows=ROWS,
        restarts=("off",),
        seeds=SEEDS,
        train_steps=2,
        classifier_bindings=TINY_CLASSIFIER,
    )
    return ablation.Ablation(**dict(settings, **overrides))


def model_dirs(mock_run):
    """The model dirs `train_lib.run` was called with, classifier excluded."""
    dirs = [c.args[0] for c in mock_run.call_args_list]
    return sorted(d for d in dirs if not d.endswith("/classifier"))


class AblationRunTest(TestCase):
    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.data_dir = cls.shared_data_dir()
        digits.load_digits_builder(16, cls.data_dir)
        cls.root = f"ram://ablation_test_{uuid.uuid4().hex[:8]}"
        gin.clear_config()
        # Every model built (by training and by the step-0 measure): its network's initial
        # weights, keyed by the seed and code_dim bound at the time.
        cls.built = []
        build_model = trainer.build_model

        def record(*args, **kwargs):
            model = build_model(*args, **kwargs)
            if hasattr(model.network, "codebook"):
                key = (gin.query_parameter("train.seed"), model.network.code_dim)
                cls.built.append((key, [w.numpy().copy() for w in model.network.weights]))
            return model

        with (
            mock.patch.object(train_lib, "run", wraps=train_lib.run) as run,
            mock.patch.object(trainer, "build_model", side_effect=record),
        ):
            cls.table = ablation.run_ablation(tiny_ablation(cls.root, cls.data_dir))
            cls.trained = model_dirs(run)
        cls.tag_dir = fs.join(cls.root, "digits")

    @classmethod
    def tearDownClass(cls):
        if tf.io.gfile.exists(cls.root):
            tf.io.gfile.rmtree(cls.root)
        super().tearDownClass()

    def result(self, row, seed):
        return fs.read_json(
            fs.join(ablation.run_dir(self.tag_dir, row, "off", seed), "result.json")
        )

    def test_each_run_trains_its_row_to_the_budget_and_is_scored_on_the_test_split(self):
        expected = [
            fs.join(ablation.run_dir(self.tag_dir, r, "off", s), "model")
            for r in ROWS
            for s in range(SEEDS)
        ]
        self.assertEqual(self.trained, sorted(expected))
        for row in ROWS:
            for seed in range(SEEDS):
                r = self.result(row, seed)
                self.assertEqual(
                    (r["row"], r["restarts"], r["seed"], r["step"]), (row, "off", seed, 2)
                )
                self.assertEqual(r["num_images"], 360)  # the digits test split
                self.assertIn(f"train.seed = {seed}", r["gin_bindings"])
                self.assertEqual(
                    r["gin_bindings"][-2:], ["TRAIN_STEPS = 2", f"train.seed = {seed}"]
                )
                config = model_dir_lib.read_model_config(
                    fs.join(ablation.run_dir(self.tag_dir, row, "off", seed), "model")
                )
                # The row's bindings win over the base bindings (code_dim 4 there).
                self.assertEqual(config["code_dim"], 32 if row == "baseline" else 8)
                self.assertFalse(config["restart_dead_codes"])
                self.assertTrue(config["l2_normalize"])
                metrics = fs.read_json(
                    fs.join(ablation.run_dir(self.tag_dir, row, "off", seed), "metrics.json")
                )
                for k in ("codebook_usage", "perplexity", "psnr", "ssim", "rfid"):
                    self.assertEqual(r[k], metrics[k])
                # Usage is a fraction of the 16 codes: k / 16 for some k codes used.
                self.assertAllClose(r["codebook_usage"] * 16, round(r["codebook_usage"] * 16))
                self.assertGreater(r["train_seconds"], 0)
                self.assertStartsWith(r["classifier"], "vim_tf_classifier:")
        # Seeds differ: another initialization gives other reconstructions.
        self.assertNotEqual(self.result("baseline", 0)["psnr"], self.result("baseline", 1)["psnr"])

    def test_step0_figures_measure_the_initial_weights_training_started_from(self):
        # Each run builds its model twice, to train and to measure step 0: the same weights.
        keys = [key for key, _ in self.built]
        expected = [(s, {"baseline": 32, "dim_8": 8}[r]) for r in ROWS for s in range(SEEDS)]
        self.assertEqual(keys, [k for k in expected for _ in range(2)])
        for (_, trained), (_, measured) in zip(self.built[::2], self.built[1::2]):
            self.assertEqual(len(trained), len(measured))
            for a, b in zip(trained, measured):
                self.assertAllEqual(a, b)
        flat = [np.concatenate([w.ravel() for w in weights]) for _, weights in self.built]
        self.assertNotAllClose(flat[0], flat[2])  # seeds 0 and 1
        for row in ROWS:
            for seed in range(SEEDS):
                r = self.result(row, seed)
                # A fraction of the 16 codes; a cosine in [-1, 1] that depends on the weights.
                self.assertAllClose(r["init_usage"] * 16, round(r["init_usage"] * 16))
                self.assertBetween(r["init_usage"], 1 / 16, 1.0)
                self.assertBetween(r["init_cosine"], -1.0, 1.0)
        self.assertNotEqual(
            self.result("baseline", 0)["init_cosine"], self.result("baseline", 1)["init_cosine"]
        )

    def test_rerun_adds_missing_step0_figures_without_training_or_evaluating(self):
        path = fs.join(ablation.run_dir(self.tag_dir, "baseline", "off", 1), "result.json")
        text = fs.read_text(path)
        old = fs.read_json(path)
        for k in ablation.INIT_METRICS:
            del old[k]
        fs.write_json(path, old)  # a result written before the step-0 figures existed
        with (
            mock.patch.object(train_lib, "run") as run,
            mock.patch.object(evaluator, "evaluate") as evaluate,
        ):
            ablation.run_ablation(tiny_ablation(self.root, self.data_dir))
        run.assert_not_called()
        evaluate.assert_not_called()
        self.assertEqual(fs.read_text(path), text)

    def test_table_json_markdown_and_csv_agree(self):
        md, csv_path, json_path, png = ablation.output_paths(self.root)
        table = fs.read_json(json_path)
        (data,) = table["datasets"].values()
        self.assertEqual((data["dataset"], data["train_steps"]), ("digits", 2))
        self.assertEqual(
            [(r["row"], r["restarts"]) for r in data["rows"]], [(r, "off") for r in ROWS]
        )
        lines = [line for line in fs.read_text(md).splitlines() if line.startswith("| ")]
        header = [c.strip() for c in lines[0].strip("|").split("|")]
        csv_rows = list(csv.DictReader(io.StringIO(fs.read_text(csv_path))))
        self.assertEqual(len(csv_rows), len(ROWS))
        for row, line, csv_row in zip(data["rows"], lines[1:], csv_rows):
            # The statistics are those of the seeds' results (sample std over 2 seeds).
            for metric in ablation.METRICS:
                values = [self.result(row["row"], s)[metric] for s in range(SEEDS)]
                stats = row["metrics"][metric]
                self.assertAllClose(stats["values"], values)
                self.assertAllClose(stats["mean"], np.mean(values))
                self.assertAllClose(stats["std"], np.std(values, ddof=1))
                self.assertEqual((stats["min"], stats["max"]), (min(values), max(values)))
                self.assertEqual(float(csv_row[f"{metric}_mean"]), stats["mean"])
                self.assertEqual(float(csv_row[f"{metric}_std"]), stats["std"])
            cells = dict(zip(header, (c.strip() for c in line.strip("|").split("|"))))
            self.assertEqual(cells["row"], f"{row['row']}: {row['description']}")
            self.assertEqual(cells["seeds"], "2")
            usage = row["metrics"]["codebook_usage"]
            self.assertEqual(
                cells["codebook usage (test)"],
                f"{100 * usage['mean']:.1f} ± {100 * usage['std']:.1f}%",
            )
            self.assertEqual(cells["rFID"], ablation.format_cell(row["metrics"]["rfid"], "rfid"))
            paper = {"baseline": "96% (32-d, l2)", "dim_8": "95-96% (as good as 32-d or better)"}
            self.assertEqual(cells["paper usage (Table 4)"], paper[row["row"]])
            self.assertEqual(csv_row["row"], row["row"])
            self.assertEqual(float(csv_row["paper_usage_low"]), row["paper"]["usage"][0])
        # The table on file is the one rebuilt from the results.
        self.assertEqual(json.loads(json.dumps(ablation.build_table(self.root))), table)

    def test_plot_is_a_png(self):
        png = fs.read_bytes(ablation.output_paths(self.root)[3])
        self.assertEqual(png[:8], b"\x89PNG\r\n\x1a\n")
        image = tf.io.decode_png(png)
        self.assertEqual(int(image.shape[1]), 1500)  # 3 panels, 15 inches at 100 dpi
        self.assertGreater(float(tf.math.reduce_std(tf.cast(image, tf.float32))), 1.0)

    def test_rerun_runs_only_missing_runs_and_restarts_half_trained_ones_cleanly(self):
        # Killed during training: no result, no trained.json, a model dir (a stray file marks it).
        half = ablation.run_dir(self.tag_dir, "dim_8", "off", 0)
        fs.remove(fs.join(half, "result.json"))
        fs.remove(fs.join(half, "trained.json"))
        fs.write_text(fs.join(half, "model", "stray.txt"), "from the killed attempt")
        # Killed during evaluation: trained.json but no result.
        evaluated = ablation.run_dir(self.tag_dir, "dim_8", "off", 1)
        fs.remove(fs.join(evaluated, "result.json"))
        train_seconds = fs.read_json(fs.join(evaluated, "trained.json"))["train_seconds"]
        kept = [
            fs.join(ablation.run_dir(self.tag_dir, "baseline", "off", s), "result.json")
            for s in range(SEEDS)
        ]
        kept_text = [fs.read_text(k) for k in kept]
        # A run that fails is reported after the others ran; it stays missing.
        real_run = train_lib.run

        def fail_runs(model_dir, *args, **kwargs):
            if model_dir.endswith("/model"):
                raise RuntimeError("loss is nan")
            return real_run(model_dir, *args, **kwargs)

        with mock.patch.object(train_lib, "run", side_effect=fail_runs):
            with self.assertRaisesRegex(
                ablation.RunsFailed, r"1 of 4 ablation runs failed.*\ndim_8/off/0: RuntimeError: loss is nan"
            ):  # fmt: skip
                ablation.run_ablation(tiny_ablation(self.root, self.data_dir))
        self.assertTrue(fs.exists(fs.join(evaluated, "result.json")))
        self.assertFalse(fs.exists(fs.join(half, "result.json")))
        with (
            mock.patch.object(train_lib, "run", wraps=train_lib.run) as run,
            mock.patch.object(evaluator, "evaluate", wraps=evaluator.evaluate) as evaluate,
        ):
            table = ablation.run_ablation(tiny_ablation(self.root, self.data_dir))
        self.assertEqual(model_dirs(run), [fs.join(half, "model")])
        self.assertEqual([c.args[0] for c in evaluate.call_args_list], [fs.join(half, "model")])
        self.assertFalse(fs.exists(fs.join(half, "model", "stray.txt")))
        self.assertEqual([fs.read_text(k) for k in kept], kept_text)
        self.assertEqual(self.result("dim_8", 0)["step"], 2)
        self.assertEqual(self.result("dim_8", 1)["train_seconds"], train_seconds)
        (data,) = table["datasets"].values()
        self.assertEqual([len(r["seeds"]) for r in data["rows"]], [SEEDS] * len(ROWS))

    def test_rerun_with_another_budget_is_refused_before_training(self):
        with mock.patch.object(train_lib, "run") as run:
            with self.assertRaisesRegex(ValueError, r"train_steps: 2 there, 3 now"):
                ablation.run_ablation(tiny_ablation(self.root, self.data_dir, train_steps=3))
        run.assert_not_called()


class AblationArgsTest(TestCase):
    def test_bad_selections_name_the_value_and_the_valid_ones(self):
        cases = [
            (dict(rows=["baseline", "dim_3"]), r"\['dim_3'\].*baseline, dim_256, .*no_l2, cnn"),
            (dict(restarts=["sometimes"]), r"\['sometimes'\].*'on' and 'off'"),
            (dict(seeds=0), r"--seeds must be an integer >= 1, got 0"),
            (dict(train_steps=0), r"--train_steps must be an integer >= 1, got 0"),
            (dict(train_steps=-5), r"got -5"),
        ]
        for overrides, pattern in cases:
            args = dict(dict(rows=None, restarts=None, seeds=2, train_steps=10), **overrides)
            with self.assertRaisesRegex(ValueError, pattern):
                ablation.check_args(**args)
        rows, restarts = ablation.check_args("dim_8, baseline", None, 2, None)
        self.assertEqual((rows, restarts), (["baseline", "dim_8"], ["off", "on"]))

    def test_binary_reports_a_bad_row_in_one_line_before_tensorflow(self):
        proc = subprocess.run(
            [sys.executable, "-m", "vim_tf.bin.ablate", f"--output_dir={self.get_temp_dir()}",
             "--rows=baseline,dim_7", "--seeds=2"],
            capture_output=True, text=True, cwd=REPO, timeout=60,
            env=dict(os.environ, PYTHONPATH=REPO),
        )  # fmt: skip
        self.assertEqual(proc.returncode, 2, proc.stderr)
        self.assertIn(
            "error: unknown ablation row(s) ['dim_7']: valid rows are baseline", proc.stderr
        )

    def test_row_with_a_missing_config_fails_before_anything_trains(self):
        data_dir = self.shared_data_dir()
        missing = ablation.Row(
            "other_net", "another network", network="OtherVQGAN", gin_files=("models/no_such.gin",)
        )
        output_dir = os.path.join(self.get_temp_dir(), "missing_config")
        with (
            mock.patch.dict(ablation.ROWS, {"other_net": missing}),
            mock.patch.object(train_lib, "run") as run,
        ):
            with self.assertRaisesRegex(
                ValueError, r"row 'other_net' \(another network\) needs the gin config "
                r"'models/no_such.gin'.*--rows=baseline"
            ):  # fmt: skip
                ablation.run_ablation(
                    tiny_ablation(output_dir, data_dir, rows=("baseline", "other_net"))
                )
        run.assert_not_called()
        self.assertFalse(os.path.exists(os.path.join(output_dir, "digits")))

    def test_plot_panel_of_one_row_keeps_a_margin_and_no_empty_legend(self):
        from matplotlib.figure import Figure

        usage = dict(mean=0.5, std=0.0, min=0.5, max=0.5, values=[0.5])
        data = {"rows": [dict(row="baseline", restarts="off",
                              metrics={"codebook_usage": usage, "rfid": None})]}  # fmt: skip
        fig = Figure()
        usage_ax, rfid_ax = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)
        ablation._plot_panel(usage_ax, data, ["baseline"], "codebook_usage")
        ablation._plot_panel(rfid_ax, data, ["baseline"], "rfid")
        # The one bar (width 0.38, centred at -0.19) spans less than half the x range.
        (bar,) = usage_ax.patches
        low, high = usage_ax.get_xlim()
        self.assertLess(bar.get_width() / (high - low), 0.5)
        self.assertAlmostEqual(bar.get_height(), 50.0)
        self.assertCountEqual(
            [t.get_text() for t in usage_ax.get_legend().get_texts()],
            ["restarts off", "the paper (Table 4)"],
        )
        # Nothing to plot: the "not computed" note and no legend box.
        self.assertIsNone(rfid_ax.get_legend())
        self.assertEqual([t.get_text() for t in rfid_ax.texts], [ablation.NOT_COMPUTED])

    def test_step0_usage_marker_per_row_from_either_restart_setting(self):
        from matplotlib.figure import Figure

        def stats(v):
            return dict(mean=v, std=0.0, min=v, max=v, values=[v])

        data = {"rows": [
            dict(row="baseline", restarts="on",
                 metrics={"codebook_usage": stats(0.5), "init_usage": stats(0.25)}),
            dict(row="dim_8", restarts="off",
                 metrics={"codebook_usage": stats(0.1), "init_usage": stats(0.125)}),
            dict(row="dim_8", restarts="on",
                 metrics={"codebook_usage": stats(0.3), "init_usage": stats(0.125)}),
            dict(row="cnn", restarts="off", metrics={"codebook_usage": stats(0.2)}),
        ]}  # fmt: skip
        ax = Figure().add_subplot(1, 1, 1)
        ablation._plot_panel(ax, data, ["baseline", "dim_8", "cnn"], "codebook_usage")
        (line,) = [ln for ln in ax.get_lines() if ln.get_label() == "at step 0"]
        # One marker per row that has the figure (cnn, from an older result, has none).
        self.assertAllClose(line.get_xdata(), [0, 1])
        self.assertAllClose(line.get_ydata(), [25.0, 12.5])

    def test_paper_table_covers_every_row(self):
        self.assertEqual(set(ablation.PAPER_TABLE4), set(ablation.ROWS))
        self.assertEqual(ablation.paper_usage_text("dim_256"), "4%")
        self.assertEqual(ablation.paper_usage_text("dim_16"), "95-96%")
        self.assertEqual(ablation.dataset_tag("folder:/data/my photos"), "folder_data_my_photos")


class PixelProbeTest(TestCase):
    def test_fit_pixels_on_separable_and_on_random_labels(self):
        rng = np.random.default_rng(0)
        x = rng.uniform(size=(200, 12)).astype(np.float32)
        y = rng.integers(0, 2, 200).astype(np.int32)
        # One pixel decides the class, with a margin: 0.2-0.4 for class 0, 0.6-0.8 for class 1.
        x[:, 3] = np.where(y == 1, 0.7, 0.3) + rng.uniform(-0.1, 0.1, 200)
        test_acc, train_acc = pixel_probe.fit_pixels(
            (x[:150], y[:150]), (x[150:], y[150:]), c=100.0
        )
        self.assertEqual((test_acc, train_acc), (1.0, 1.0))
        noise = rng.integers(0, 2, 200)
        test_acc, _ = pixel_probe.fit_pixels((x[:150], noise[:150]), (x[150:], noise[150:]))
        self.assertLess(test_acc, 0.75)
        with self.assertRaisesRegex(ValueError, "1 class"):
            pixel_probe.fit_pixels((x, np.zeros(200, np.int32)), (x, y))

    def test_digits_pixels_on_the_probe_splits(self):
        data_dir = self.shared_data_dir()
        digits.load_digits_builder(16, data_dir)
        output = os.path.join(self.get_temp_dir(), "pixel_probe.json")
        bindings = [
            "IMAGE_SIZE = 16",
            f"make_dataset.data_dir = '{data_dir}'",
            "probe_prior.train_split = 'train[:400]'",
            "probe_prior.test_split = 'test[:120]'",
        ]
        result = pixel_probe.run_pixel_probe(output, gin_bindings=bindings)
        self.assertEqual(fs.read_json(output), result)
        self.assertEqual((result["num_train"], result["num_test"]), (400, 120))
        self.assertEqual((result["feature_dim"], result["image_size"]), (16 * 16 * 3, 16))
        self.assertEqual(
            (result["train_split"], result["test_split"]), ("train[:400]", "test[:120]")
        )
        # Real digits are linearly separable from pixels; labels out of step with the images
        # would give about 0.1.
        self.assertGreater(result["top1"], 0.85)
        self.assertEqual(result["train_top1"], 1.0)
