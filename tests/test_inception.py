"""inception: the Inception v3 file formats `--classifier` takes, each with its resize and input
scaling, loaded from files made here (no weights exist on this machine and nothing downloads).

- Keras weights (`.weights.h5` and the legacy `.h5` of keras.applications) and a TF-GAN-style
  SavedModel ({pool_3, logits}) hold a randomly initialised `keras.applications.InceptionV3`,
  built once for the class.
- The frozen GraphDef is a small fake with the node names and tensor shapes of the original
  FID code's `classify_image_graph_def.pb` (JPEG input -> ExpandDims [1, H, W, 3] ->
  ResizeBilinear 299 -> (x - 128) / 128 -> pool_3 [1, 1, 1, 2048] -> pool_3/_reshape [1, 2048]
  -> softmax/logits [1, 1008]), so the loader is exercised on the real contract, not on real
  Inception weights. It is checked against running that graph the way the original FID code does
  (a TF1 session fed one image at a time at `FID_Inception_Net/ExpandDims:0`, values 0..255).
- The scaling and resizing are checked by hand with a SavedModel that returns statistics of the
  images it receives.
"""

import os

import h5py
import keras
import numpy as np
import tensorflow as tf
from absl.testing import parameterized

from testcase import TestCase
from vim_tf.eval import inception, networks, scores


def write_fake_frozen_graph(path, features=2048, classes=1008, seed=0):
    """A frozen GraphDef with the node names and shapes of classify_image_graph_def.pb: a 299x299
    average pool and a 1x1 convolution stand in for the Inception layers."""
    rng = np.random.default_rng(seed)
    conv_w = rng.normal(size=(1, 1, 3, features)).astype(np.float32) * 0.1
    soft_w = rng.normal(size=(features, classes)).astype(np.float32) * 0.1
    soft_b = rng.normal(size=(classes,)).astype(np.float32)
    graph = tf.Graph()
    with graph.as_default():
        contents = tf.compat.v1.placeholder(tf.string, [], name="DecodeJpeg/contents")
        decoded = tf.io.decode_jpeg(contents, channels=3, name="DecodeJpeg")
        x = tf.expand_dims(tf.cast(decoded, tf.float32, name="Cast"), 0, name="ExpandDims")
        x = tf.compat.v1.image.resize_bilinear(x, [299, 299], name="ResizeBilinear")
        x = tf.multiply(tf.subtract(x, 128.0, name="Sub"), 1.0 / 128.0, name="Mul")
        # Pooling before the (linear) 1x1 convolution: the same features, far less work.
        x = tf.nn.avg_pool2d(x, 299, 299, "VALID", name="avg_pool")
        pool = tf.nn.conv2d(x, tf.constant(conv_w), 1, "VALID", name="pool_3")
        flat = tf.reshape(pool, [1, features], name="pool_3/_reshape")  # batch 1, as the original
        w = tf.constant(soft_w, name="softmax/weights")
        b = tf.constant(soft_b, name="softmax/biases")
        logits = tf.nn.bias_add(
            tf.matmul(flat, w, name="softmax/logits/MatMul"), b, name="softmax/logits"
        )
        tf.nn.softmax(logits, name="softmax")
    graph_def = graph.as_graph_def()
    with tf.io.gfile.GFile(path, "wb") as f:
        f.write(graph_def.SerializeToString())
    return conv_w, soft_w, soft_b


class InputStatistics(tf.Module):
    """A TF-GAN-format module whose "pool_3" reports what it was fed: [min, max, mean, height,
    width] of its images."""

    @tf.function(input_signature=[tf.TensorSpec([None, None, None, 3], tf.float32)])
    def __call__(self, images):
        n = tf.shape(images)[0]
        stats = tf.stack(
            [
                tf.reduce_min(images, [1, 2, 3]),
                tf.reduce_max(images, [1, 2, 3]),
                tf.reduce_mean(images, [1, 2, 3]),
                tf.cast(tf.fill([n], tf.shape(images)[1]), tf.float32),
                tf.cast(tf.fill([n], tf.shape(images)[2]), tf.float32),
            ],
            -1,
        )
        return {"pool_3": stats, "logits": tf.zeros([n, 4])}


class TfganInception(tf.Module):
    """TF-GAN's Inception module layout: `__call__(images in [-1, 1], 299 px)` -> {"pool_3",
    "logits"}."""

    def __init__(self, model):
        super().__init__()
        self.net = keras.Model(
            model.inputs, {"pool_3": model.get_layer("avg_pool").output, "logits": model.output}
        )

    @tf.function(input_signature=[tf.TensorSpec([None, 299, 299, 3], tf.float32)])
    def __call__(self, images):
        return self.net(images, training=False)


class InceptionFormatsTest(TestCase, parameterized.TestCase):
    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.dir = cls.class_temp_dir()
        cls.model = keras.applications.InceptionV3(weights=None, classifier_activation=None)
        cls.weights_h5 = os.path.join(cls.dir, "inception.weights.h5")
        cls.model.save_weights(cls.weights_h5)
        # The legacy weights-only layout of keras.applications' inception_v3_weights_*.h5.
        from keras.src.legacy.saving import legacy_h5_format

        cls.legacy_h5 = os.path.join(cls.dir, "inception_v3_weights_tf_dim_ordering.h5")
        with h5py.File(cls.legacy_h5, "w") as f:
            legacy_h5_format.save_weights_to_hdf5_group(f, cls.model)
        cls.saved_model = os.path.join(cls.dir, "tfgan_inception")
        tf.saved_model.save(TfganInception(cls.model), cls.saved_model)
        cls.graph_pb = os.path.join(cls.dir, "classify_image_graph_def.pb")
        write_fake_frozen_graph(cls.graph_pb)
        cls.images = np.random.default_rng(0).uniform(size=(2, 37, 45, 3)).astype(np.float32)
        # By hand: bilinear resize to 299 x 299, [0, 1] -> [-1, 1], the in-memory network.
        both = keras.Model(
            cls.model.inputs, [cls.model.get_layer("avg_pool").output, cls.model.output]
        )
        cls.features, cls.reference = both(
            tf.image.resize(cls.images, (299, 299), method="bilinear") * 2.0 - 1.0, training=False
        )

    def check_keras_inception(self, network):
        self.assertEqual((network.image_size, network.input_range), ((299, 299), (-1.0, 1.0)))
        features, logits = network.activations(self.images)
        self.assertEqual((features.shape, logits.shape), ((2, 2048), (2, 1000)))
        # A random Inception's outputs are small (~1e-3) and vary by ~2% between images:
        # compare relative to that.
        self.assertGreater(np.std(features, 0).mean(), 1e-3 * np.abs(features).mean())
        self.assertAllClose(logits, self.reference, rtol=1e-4, atol=1e-9)
        self.assertAllClose(features, self.features, rtol=1e-4, atol=1e-9)
        # Logits are pre-softmax: the top layer applied to the features by hand.
        kernel, bias = self.model.get_layer("predictions").get_weights()
        self.assertAllClose(logits, features @ kernel + bias, rtol=1e-4, atol=1e-9)

    @parameterized.named_parameters(
        ("keras_weights_h5", "weights_h5"), ("legacy_applications_h5", "legacy_h5")
    )
    def test_keras_weights_files(self, attr):
        path = getattr(self, attr)
        network = networks.load_scoring_network(path)
        self.assertEqual(network.name, f"keras_inception_v3:{os.path.abspath(path)}")
        self.check_keras_inception(network)

    def test_tfgan_saved_model(self):
        network = networks.load_scoring_network(self.saved_model)
        self.assertEqual(network.name, f"inception_saved_model:{os.path.abspath(self.saved_model)}")
        self.check_keras_inception(network)

    # The .pb file itself, or the directory holding it.
    @parameterized.named_parameters(("graph_file", "graph_pb"), ("directory", "dir"))
    def test_frozen_graph_matches_the_original_fid_code(self, attr):
        network = networks.load_scoring_network(getattr(self, attr))
        self.assertEqual(network.name, f"inception_graph_def:{os.path.abspath(self.graph_pb)}")
        # The graph resizes itself: images go in at their own size, values 0..255.
        self.assertEqual((network.image_size, network.input_range), (None, (0.0, 255.0)))
        features, logits = network.activations(self.images, batch_size=2)
        self.assertEqual((features.shape, logits.shape), ((2, 2048), (2, 1008)))
        graph_def = tf.compat.v1.GraphDef()
        with tf.io.gfile.GFile(self.graph_pb, "rb") as f:
            graph_def.ParseFromString(f.read())
        graph = tf.Graph()
        with graph.as_default():
            tf.compat.v1.import_graph_def(graph_def, name="FID_Inception_Net")
        with tf.compat.v1.Session(graph=graph) as sess:
            for i, image in enumerate(self.images):
                pool, ref_logits = sess.run(
                    ["FID_Inception_Net/pool_3:0", "FID_Inception_Net/softmax/logits:0"],
                    {"FID_Inception_Net/ExpandDims:0": image[None] * 255.0},
                )
                self.assertAllClose(features[i], pool.reshape(-1), atol=1e-5)
                self.assertAllClose(logits[i], ref_logits.reshape(-1), atol=1e-4)

    def test_frozen_graph_scaling_by_hand(self):
        conv_w, soft_w, soft_b = write_fake_frozen_graph(os.path.join(self.dir, "g.pb"), 8, 5)
        network = inception.load(os.path.join(self.dir, "g.pb"))
        grey = np.full((1, 10, 10, 3), 0.25, np.float32)
        features, logits = network.activations(grey)
        pixel = (0.25 * 255.0 - 128.0) / 128.0  # 0..255 in, the graph's own normalisation
        expected = np.full(3, pixel) @ conv_w[0, 0]
        # float32 averaging over 299 x 299 pixels: about 1e-4 relative round-off.
        self.assertAllClose(features[0], expected, rtol=1e-3, atol=1e-5)
        self.assertAllClose(logits[0], expected @ soft_w + soft_b, rtol=1e-3, atol=1e-4)

    def test_saved_model_scaling_and_resize_by_hand(self):
        path = os.path.join(self.dir, "stats")
        tf.saved_model.save(InputStatistics(), path)
        network = scores.ScoringNetwork.from_saved_model(path)
        # No static size in the signature: the Inception contract's 299 x 299.
        self.assertEqual(network.image_size, (299, 299))
        grey = np.full((1, 9, 9, 3), 0.3, np.float32)
        step = np.zeros((1, 4, 4, 3), np.float32)
        step[:, :, 2:] = 1.0  # left half black, right half white
        (stats_grey,), _ = network.activations(grey)
        (stats_step,), _ = network.activations(step)
        # A constant image stays constant under resizing; [0, 1] -> [-1, 1] maps 0.3 to -0.4.
        self.assertAllClose(stats_grey, [-0.4, -0.4, -0.4, 299, 299], atol=1e-6)
        # The step keeps black and white at -1 and 1 and, by symmetry, mean 0.
        self.assertAllClose(stats_step, [-1.0, 1.0, 0.0, 299, 299], atol=1e-6)

    def test_vim_tf_saved_model_contract_unchanged(self):
        class Scorer(tf.Module):
            @tf.function(input_signature=[tf.TensorSpec([None, 6, 6, 3], tf.float32)])
            def scores(self, images):
                f = tf.reduce_mean(images, [1, 2])
                return {"features": f, "logits": tf.concat([f, -f], -1)}

        path = os.path.join(self.dir, "vim_tf_scorer")
        module = Scorer()
        tf.saved_model.save(module, path, signatures={"scores": module.scores})
        network = inception.load(path)
        self.assertEqual((network.image_size, network.input_range), ((6, 6), (0.0, 1.0)))
        features, _ = network.activations(np.full((2, 6, 6, 3), 0.7, np.float32))
        self.assertAllClose(features, np.full((2, 3), 0.7), atol=1e-6)

    def test_unknown_formats_name_what_is_accepted(self):
        with self.assertRaisesRegex(ValueError, r"does not exist; it must be a vim_tf classifier"):
            inception.load(os.path.join(self.dir, "missing.pb"))
        other = os.path.join(self.dir, "weights.npz")
        with open(other, "wb") as f:
            f.write(b"x")
        with self.assertRaisesRegex(ValueError, r"--classifier=.*weights.npz.*no known format"):
            networks.load_scoring_network(other)
        with self.assertRaisesRegex(ValueError, r"not a binary GraphDef"):
            bad = os.path.join(self.dir, "bad.pb")
            with open(bad, "wb") as f:
                f.write(b"\xff\xff\xff not a protobuf")
            inception.load(bad)
        empty = os.path.join(self.dir, "empty_dir")
        os.makedirs(empty, exist_ok=True)
        with self.assertRaisesRegex(ValueError, r"holds neither saved_model.pb nor"):
            inception.load(empty)

    def test_other_weights_are_refused(self):
        # Weights of another network (as a '_notop' file is) do not load into InceptionV3.
        other = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
        path = os.path.join(self.dir, "other.weights.h5")
        other.save_weights(path)
        with self.assertRaisesRegex(ValueError, r"could not load .*other.weights.h5.*top layer"):
            inception.load(path)
