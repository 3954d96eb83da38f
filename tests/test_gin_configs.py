"""Every shipped gin config parses; paper sizes are exact; common macros exist."""

import os
import tempfile

import gin
from absl.testing import parameterized

from testcase import TestCase
from vim_tf.config import gin_utils
from vim_tf.reports import param_counts

EXPERIMENTS = [n for n in gin_utils.shipped_configs() if n.startswith("experiments/")]
REPO_GIN = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "gin")
PAPER_STACKS = {
    "small": {"num_layers": 8, "num_heads": 8, "hidden_dim": 512, "mlp_dim": 2048},
    "base": {"num_layers": 12, "num_heads": 12, "hidden_dim": 768, "mlp_dim": 3072},
    "large": {"num_layers": 32, "num_heads": 16, "hidden_dim": 1280, "mlp_dim": 5120},
}


def vit_params(n, d, m, p=8):
    block = 4 * d + (3 * d * d + 3 * d) + (d * d + d) + (d * m + m) + (m * d + d)
    return n * block + 2 * d + (d * m + m)


class GinConfigTest(TestCase, parameterized.TestCase):
    @parameterized.parameters(*[os.path.basename(f) for f in EXPERIMENTS])
    def test_experiment_parses_and_has_common_macros(self, name):
        gin_utils.parse([os.path.join("experiments", name)])
        for macro in ("DATASET", "IMAGE_SIZE", "BATCH_SIZE", "TRAIN_STEPS", "CHECKPOINT_EVERY"):
            gin.query_parameter(f"%{macro}")

    def test_includes_log_no_false_errors(self):
        # gin looks for each include as a package resource first and logs every miss at ERROR
        # level on the root logger; nothing failed, so none of that may reach the user's log.
        with self.assertNoLogs(level="ERROR"):
            gin_utils.parse([os.path.join("experiments", "digits_vim.gin")])

    @parameterized.parameters(
        ("vitvqgan_ss", "small", "small"),
        ("vitvqgan_bb", "base", "base"),
        ("vitvqgan_sl", "small", "large"),
    )
    def test_paper_sizes_exact(self, config, enc, dec):
        gin_utils.parse([f"models/{config}.gin"], ["IMAGE_SIZE = 256"])
        self.assertEqual(gin.query_parameter("ViTVQGAN.encoder"), PAPER_STACKS[enc])
        self.assertEqual(gin.query_parameter("ViTVQGAN.decoder"), PAPER_STACKS[dec])
        self.assertEqual(gin.query_parameter("ViTVQGAN.patch_size"), 8)
        self.assertEqual(gin.query_parameter("ViTVQGAN.codebook_size"), 8192)
        self.assertEqual(gin.query_parameter("ViTVQGAN.code_dim"), 32)

    def test_parameter_count_tool(self):
        counts = param_counts.vitvqgan_counts("vitvqgan_tiny", image_size=32)
        # Encoder: patch embedding (4x4x3 -> 128) + 2 blocks + LN + tanh FFN back to 128.
        enc = (48 * 128 + 128) + vit_params(2, 128, 512) + (512 * 128 + 128)
        dec = vit_params(2, 128, 512) + (512 * 16 * 6 + 16 * 6)
        self.assertEqual(counts["encoder"], enc)
        self.assertEqual(counts["decoder"], dec)
        # Projections 128 -> 32 -> 128, the codebook, its use average.
        self.assertEqual(counts["quantizer"], (128 * 32 + 32) + (32 * 128 + 128) + 512 * 32 + 512)

    def test_prior_parameter_count(self):
        # Embeddings (8 codes, 3 classes + null, 2x2 grid rows/cols), 4 blocks, final LN, head.
        gin_utils.parse(["models/vim_tiny.gin"])
        d, m = 128, 512
        expected = 8 * d + 4 * d + 2 * d + 2 * d + vit_params(4, d, m) - (d * m + m) + (d * 8 + 8)
        self.assertEqual(param_counts.vim_counts("vim_tiny", 2, 8, 3), expected)

    @parameterized.named_parameters(
        ("vim_base", "vim_base", (24, 16, 1536, 6144)),
        ("vim_large", "vim_large", (36, 32, 2048, 8192)),
    )
    def test_paper_prior_sizes_exact(self, name, size):
        gin.clear_config()
        gin_utils.parse([f"models/{name}.gin"])
        got = tuple(
            gin.query_parameter(f"VIM.{k}")
            for k in ("num_layers", "num_heads", "hidden_dim", "mlp_dim")
        )
        self.assertEqual(got, size)
        self.assertAllClose(gin.query_parameter("VIM.dropout"), 0.1)

    def test_experiment_bindings_reach_the_procedure_and_its_network(self):
        from vim_tf.training import trainer

        gin_utils.parse(["experiments/digits_vitvqgan.gin"], ["IMAGE_SIZE = 16"])
        procedure = trainer.create_model()
        self.assertEqual(type(procedure).__name__, "VQGANTraining")
        self.assertEqual((procedure.disc_start_step, procedure.r1_gamma), (1200, 1.0))
        network = procedure.network
        self.assertEqual(type(network).__name__, "ViTVQGAN")
        self.assertEqual((network.image_size, network.patch_size), (16, 4))
        self.assertTrue(network.restart_dead_codes)
        gin.clear_config()
        gin_utils.parse(["experiments/digits_classifier.gin"], ["ClassifierTraining.max_shift = 3"])
        procedure = trainer.create_model()
        self.assertEqual(procedure.max_shift, 3)
        self.assertEqual(procedure.network.channels, (32, 64, 128))
        gin.clear_config()
        gin_utils.parse(
            ["experiments/digits_vim.gin"], ["VIM.grid_size = 2", "VIM.codebook_size = 8"]
        )
        procedure = trainer.create_model()
        self.assertAllClose(procedure.class_dropout, 0.1)
        self.assertEqual((procedure.network.num_classes, procedure.network.grid_size), (10, 2))

    def test_unknown_parameter_names_file_and_line(self):
        with self.assertRaisesRegex(ValueError, "ViTVQGAN.nonsense"):
            gin_utils.parse(["experiments/digits_vitvqgan.gin"], ["ViTVQGAN.nonsense = 1"])


class ConfigLookupTest(TestCase):
    """Shipped configs are package resources, found by name from any working directory."""

    def setUp(self):
        super().setUp()
        self.cwd = tempfile.mkdtemp(dir=self.get_temp_dir())
        previous = os.getcwd()
        os.chdir(self.cwd)
        self.addCleanup(os.chdir, previous)

    def test_shipped_configs_are_the_repository_gin_folder(self):
        expected = sorted(
            os.path.relpath(os.path.join(root, f), REPO_GIN).replace(os.sep, "/")
            for root, _, files in os.walk(REPO_GIN)
            for f in files
            if f.endswith(".gin")
        )
        self.assertEqual(gin_utils.shipped_configs(), expected)

    def test_three_names_for_one_config_from_another_directory(self):
        paths = {
            gin_utils.resolve_gin_file(name)
            for name in (
                "experiments/digits_vitvqgan.gin",
                "gin/experiments/digits_vitvqgan.gin",
                "digits_vitvqgan.gin",
            )
        }
        self.assertLen(paths, 1)
        (path,) = paths
        with (
            open(path) as f,
            open(os.path.join(REPO_GIN, "experiments", "digits_vitvqgan.gin")) as g,
        ):
            self.assertEqual(f.read(), g.read())
        gin_utils.parse(["digits_vitvqgan.gin"])
        self.assertEqual(gin.query_parameter("%IMAGE_SIZE"), 32)

    def test_a_real_file_wins_over_a_shipped_config(self):
        os.makedirs("experiments")
        with open(os.path.join("experiments", "digits_vitvqgan.gin"), "w") as f:
            f.write("include 'digits_vitvqgan.gin'\nIMAGE_SIZE = 24\n")
        self.assertEqual(
            gin_utils.resolve_gin_file("experiments/digits_vitvqgan.gin"),
            "experiments/digits_vitvqgan.gin",
        )
        # Its include by the plain name reaches the shipped config, whose value it overrides.
        gin_utils.parse(["experiments/digits_vitvqgan.gin"])
        self.assertEqual(gin.query_parameter("%IMAGE_SIZE"), 24)
        self.assertEqual(gin.query_parameter("ViTVQGAN.codebook_size"), 512)

    def test_includes_take_every_name_form(self):
        with open("mine.gin", "w") as f:
            f.write("include 'gin/models/vim_tiny.gin'\ninclude 'digits.gin'\nIMAGE_SIZE = 16\n")
            f.write("BATCH_SIZE = 4\n")
        gin_utils.parse([os.path.join(self.cwd, "mine.gin")])
        self.assertEqual(gin.query_parameter("VIM.num_layers"), 4)
        self.assertFalse(
            gin.query_parameter("make_dataset.random_flip")
        )  # from datasets/digits.gin

    def test_unknown_names_list_the_shipped_configs(self):
        with self.assertRaisesRegex(
            ValueError, r"gin file not found: 'digits_vqgan.gin'.*experiments/digits_vitvqgan.gin"
        ):
            gin_utils.parse(["digits_vqgan.gin"])
        with open("bad_include.gin", "w") as f:
            f.write("include 'models/nope.gin'\n")
        with self.assertRaisesRegex(
            ValueError, r"(?s)models/nope.gin.*shipped with vim_tf: datasets/digits.gin"
        ):
            gin_utils.parse(["bad_include.gin"])
