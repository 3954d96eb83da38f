"""Prints each model config's parameter count next to the paper's.

vim-param-counts [--configs=vitvqgan_ss,vitvqgan_bb,vitvqgan_sl] [--flops]
vim-param-counts --pod_plan    (the ImageNet pipeline's expected times on the paper's pod)

The `vim-param-counts` console script; also `python -m vim_tf.bin.param_counts` and `python tools/param_counts.py`.
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import flags  # noqa: E402

from vim_tf.utils import cli  # noqa: E402

flags.DEFINE_list(
    "configs", ["vitvqgan_ss", "vitvqgan_bb", "vitvqgan_sl"], "Model configs under gin/models/."
)
flags.DEFINE_list("priors", ["vim_base", "vim_large"], "Prior configs under gin/models/.")
flags.DEFINE_integer("image_size", 256, "Image size the configs are built at.")
flags.DEFINE_bool(
    "flops", False, "Also print each config's network total and its FLOPs per image (millions)."
)
flags.DEFINE_bool(
    "pod_plan",
    False,
    "Print only the expected time of each stage of the paper's ImageNet pipeline on its pod, "
    "derived from the FLOP counts and the paper's stage-1 throughput "
    "(vim_tf/reports/pod_plan.py says how).",
)
FLAGS = flags.FLAGS


def main(argv):
    del argv
    if FLAGS.pod_plan:
        from vim_tf.reports import pod_plan

        print(pod_plan.markdown(pod_plan.plan()))
        return
    from vim_tf.reports import param_counts

    print(f"{'config':<14} {'part':<14} {'ours (M)':>10} {'paper (M)':>10}")
    rows = param_counts.table(FLAGS.configs, FLAGS.image_size) + param_counts.vim_table(
        FLAGS.priors
    )
    if FLAGS.flops:
        rows += param_counts.flops_table(FLAGS.configs, FLAGS.image_size)
    for name, part, ours, paper in rows:
        shown = f"{paper:>10}" if paper is not None else f"{'-':>10}"
        print(f"{name:<14} {part:<14} {ours:>10.1f} {shown}")


def run():
    """Entry point of the `vim-param-counts` console script."""
    cli.run(main)


if __name__ == "__main__":
    run()
