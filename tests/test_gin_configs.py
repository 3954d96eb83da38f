"""Every shipped gin config parses; paper sizes are exact; common macros exist."""

import os

import gin
from absl.testing import parameterized

from vim_tf.config import gin_utils
from vim_tf.models import param_counts
from vim_tf.testing.test_case import TestCase

EXPERIMENTS = [n for n in gin_utils.shipped_configs() if n.startswith("experiments/")]
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

    def test_paper_prior_sizes_exact(self):
        for name, size in (("vim_base", (24, 16, 1536, 6144)), ("vim_large", (36, 32, 2048, 8192))):
            gin.clear_config()
            gin_utils.parse([f"models/{name}.gin"])
            got = tuple(
                gin.query_parameter(f"VIM.{k}")
                for k in ("num_layers", "num_heads", "hidden_dim", "mlp_dim")
            )
            self.assertEqual(got, size)
            self.assertAllClose(gin.query_parameter("VIM.dropout"), 0.1)

    def test_unknown_parameter_names_file_and_line(self):
        with self.assertRaisesRegex(ValueError, "ViTVQGAN.nonsense"):
            gin_utils.parse(["experiments/digits_vitvqgan.gin"], ["ViTVQGAN.nonsense = 1"])
