"""The pod plan: expected stage times of the paper's ImageNet pipeline from FLOP counts."""

from testcase import TestCase
from vim_tf.reports import pod_plan


class PodPlanTest(TestCase):
    def test_times_follow_from_the_paper_throughput_and_hand_counted_flops(self):
        result = pod_plan.plan()
        rows = {r["stage"].split(" (")[0]: r for r in result["rows"]}
        # Stage 1 is the paper's own figure: 500k steps of 256 images at 1520 images/s.
        self.assertAlmostEqual(
            rows["train ViT-VQGAN SS"]["hours"], 500_000 * 256 / 1520 / 3600, places=9
        )
        # VIM-Base by hand: 24 blocks of width 1536 (MLP 6144) over 1024 positions, each
        # 8*N*D^2 + 4*N^2*D + 4*N*D*M, plus the 8192-way head 2*N*D*K; training is 3x forward.
        n, d, m, k = 1024, 1536, 6144, 8192
        forward = 24 * (8 * n * d * d + 4 * n * n * d + 4 * n * d * m) + 2 * n * d * k
        expected = 450_000 * 1024 * 3 * forward
        self.assertEqual(rows["train VIM-Base"]["flops"], expected)
        self.assertAlmostEqual(
            rows["train VIM-Base"]["hours"], expected / result["rate"] / 3600, places=9
        )
        self.assertAlmostEqual(result["rate"], 1520 * result["ss_train_flops"])
        table = pod_plan.markdown(result)
        self.assertIn("| train ViT-VQGAN SS (500k steps x 256) | 5.6e+19 | 23.4 h |", table)
