"""Test helper: samples and encodes on one device and on a 2-replica MirroredStrategy.

    python tests/inference_check.py --prior_dir=P --quantizer_dir=Q --output_dir=OUT

Splits the CPU into two logical devices (before TensorFlow initializes, hence a subprocess),
then writes OUT/{one,two}/samples (`generate.generate`: 10 samples, batches of 4, shards of 8,
so the last batch is short and padded) and OUT/{one,two}/tokens (`tokens.encode_splits` of the
test split, batches of 64, shards of 100 images). tests/test_sharded_inference.py compares the
two trees byte by byte.
"""

import argparse
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def main(argv=None):
    parser = argparse.ArgumentParser()
    parser.add_argument("--prior_dir", required=True)
    parser.add_argument("--quantizer_dir", required=True)
    parser.add_argument("--output_dir", required=True)
    args = parser.parse_args(argv)

    import gin
    import tensorflow as tf

    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    from vim_tf.data import tokens
    from vim_tf.eval import generate

    two = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    for name, strategy in (("one", None), ("two", two)):
        out = os.path.join(args.output_dir, name)
        gin.clear_config()
        generate.generate(
            args.prior_dir,
            os.path.join(out, "samples"),
            10,
            batch_size=4,
            shard_size=8,
            seed=3,
            strategy=strategy,
            return_arrays=False,
        )
        gin.clear_config()
        tokens.encode_splits(
            args.quantizer_dir,
            os.path.join(out, "tokens"),
            splits=("test",),
            batch_size=64,
            strategy=strategy,
            examples_per_shard=100,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
