"""Test program: training randomness under a 2-replica MirroredStrategy (run by
tests/test_randomness.py in a fresh process, since logical CPU devices must be configured before
TensorFlow initializes).

For dropout (`ReplicaDropout` inside a ViT block's residual branch is the same layer), VIM's class
dropout and the classifier's random shifts, it draws twice from a freshly seeded model on both
replicas with the same input and writes an npz: `<what>/run<r>/replica<i>` for runs r = 0, 1
(each after `keras.utils.set_random_seed(SEED)`).

    python tests/replica_randomness_check.py --output=/tmp/randomness.npz
"""

import argparse
import sys

import numpy as np

SEED = 5


def _draws(strategy, make, draw, x):
    """Per-replica outputs of `draw(layer, x)` for a layer `make()` builds in the scope."""
    import keras
    import tensorflow as tf

    keras.utils.set_random_seed(SEED)
    with strategy.scope():
        layer = make()

    @tf.function
    def run():
        return strategy.run(lambda: draw(layer, x))

    return [t.numpy() for t in strategy.experimental_local_results(run())]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", required=True)
    args = parser.parse_args(argv)

    import tensorflow as tf

    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    from vim_tf.models.classifier import ImageClassifier
    from vim_tf.models.randomness import ReplicaDropout
    from vim_tf.models.vim import VIM
    from vim_tf.training.classifier import ClassifierTraining
    from vim_tf.training.prior import PriorTraining

    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])

    def dropout():
        layer = ReplicaDropout(0.5)
        layer.build((64, 32))
        return layer

    def prior():
        network = VIM(
            grid_size=2,
            codebook_size=8,
            num_layers=1,
            num_heads=1,
            hidden_dim=8,
            mlp_dim=8,
            num_classes=10,
        )
        model = PriorTraining(network, class_dropout=0.5)
        model.build()
        return model

    def classifier():
        network = ImageClassifier(image_size=16, num_classes=10, channels=(4,), feature_dim=8)
        model = ClassifierTraining(network, max_shift=4)
        model.build()
        return model

    cases = {
        "dropout": (dropout, lambda m, x: m(x, training=True), tf.ones((64, 32))),
        "class_dropout": (prior, lambda m, x: m.drop_classes(x), tf.range(256) % 10),
        # A single bright pixel: where it lands after the shift shows the crop offset.
        # Eight shifts of a one-pixel image: where the pixel lands shows each crop offset.
        "shift": (
            classifier,
            lambda m, x: tf.concat([m.augment(x) for _ in range(8)], 0),
            tf.reshape(
                tf.tile(tf.one_hot([8 * 16 + 8], 256)[:, :, None], [1, 1, 3]), (1, 16, 16, 3)
            ),
        ),
    }
    out = {}
    for name, (make, draw, x) in cases.items():
        for r in range(2):
            for i, value in enumerate(_draws(strategy, make, draw, x)):
                out[f"{name}/run{r}/replica{i}"] = value
    np.savez(args.output, **out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
