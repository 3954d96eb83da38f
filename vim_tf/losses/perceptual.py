"""LPIPS-style perceptual distance on frozen VGG16 features, without LPIPS's learned linear heads.

Nothing is downloaded: the VGG16 weights come from a local file. The usual one is the Keras
applications file `vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5` (ImageNet, no classifier
head), from https://storage.googleapis.com/tensorflow/keras-applications/vgg16/ ; copy it onto the
training machine and pass its path. A `.weights.h5` file saved by Keras 3 from
`keras.applications.VGG16(include_top=False, weights=None)` works too.
"""

import keras
from keras import ops

from vim_tf.utils import fs

DEFAULT_FEATURE_LAYERS = (
    "block1_conv2",
    "block2_conv2",
    "block3_conv3",
    "block4_conv3",
    "block5_conv3",
)
# ImageNet channel means in BGR order, as subtracted by VGG's 'caffe' preprocessing.
_IMAGENET_MEAN_BGR = (103.939, 116.779, 123.68)
_WEIGHTS_HELP = (
    "The perceptual loss needs local VGG16 ImageNet weights (nothing is downloaded at run time). "
    "Get the Keras applications file vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5 "
    "(https://storage.googleapis.com/tensorflow/keras-applications/vgg16/"
    "vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5), copy it to this machine and set "
    "the stage-1 model's perceptual_weights_path to it; otherwise set the perceptual loss weight "
    "to 0."
)


@keras.saving.register_keras_serializable(package="vim_tf")
class PerceptualLoss(keras.layers.Layer):
    """Frozen VGG16 feature distance between two image batches.

    For each feature layer `l` with features `F_l` [B, H_l, W_l, C_l], unit-normalized along
    channels (`F / (||F||_2 + 1e-10)`), the distance is
    `sum_l mean_{h,w} sum_c (F_l(x) - F_l(y))^2`, averaged over the batch. This is LPIPS with all
    linear-head weights equal to one (the "baseline" variant of Zhang et al. 2018).

    Images smaller than `min_size` pixels on a side are bilinearly upsampled to `min_size` first:
    VGG halves the resolution four times before block5_conv3, so 32 px keeps a 2x2 map there.
    The check uses the static image shape; images of unknown static size are used as they are.

    The layer is frozen (`trainable=False`); its weights never change, gradients flow to the images.

    Example:

    ```python
    loss_fn = PerceptualLoss(weights_path="/data/vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5")
    loss = loss_fn(images, reconstructions)  # float32 scalar
    ```

    Args:
        weights_path: path of the VGG16 notop weights (see module docstring). Required.
        feature_layers: names of the VGG16 layers whose outputs are compared.
        min_size: int >= 1, smallest image side fed to VGG.
    """

    def __init__(
        self, weights_path=None, feature_layers=DEFAULT_FEATURE_LAYERS, min_size=32, **kwargs
    ):
        kwargs["trainable"] = False
        super().__init__(**kwargs)
        if weights_path is None:
            raise ValueError(f"PerceptualLoss got weights_path=None. {_WEIGHTS_HELP}")
        if not fs.exists(weights_path):
            raise ValueError(
                f"PerceptualLoss: weights_path {weights_path!r} does not exist. {_WEIGHTS_HELP}"
            )
        if not feature_layers:
            raise ValueError(f"feature_layers must name at least one layer, got {feature_layers}")
        if min_size < 1:
            raise ValueError(f"min_size must be >= 1, got {min_size}")
        self.weights_path = str(weights_path)
        self.feature_layers = list(feature_layers)
        self.min_size = int(min_size)

        vgg = keras.applications.VGG16(include_top=False, weights=None, input_shape=(None, None, 3))
        with fs.local_copy(self.weights_path) as local:
            vgg.load_weights(local)
        vgg.trainable = False
        names = [layer.name for layer in vgg.layers]
        unknown = [n for n in self.feature_layers if n not in names]
        if unknown:
            raise ValueError(f"feature_layers {unknown} are not VGG16 layers; valid: {names[1:]}")
        # One multi-output model shares the VGG layers; only the prefix up to the deepest requested
        # layer is ever evaluated.
        self.features = keras.Model(
            vgg.input,
            [vgg.get_layer(n).output for n in self.feature_layers],
            name="vgg16_features",
        )
        self.features.trainable = False

    def preprocess(self, images):
        """[B, H, W, 3] RGB in [0, 1] -> VGG 'caffe' input: BGR in [0, 255] minus ImageNet mean."""
        x = ops.cast(images, "float32")
        h, w = x.shape[1], x.shape[2]
        if h is not None and w is not None and min(h, w) < self.min_size:
            size = (max(h, self.min_size), max(w, self.min_size))
            x = ops.image.resize(x, size, interpolation="bilinear", data_format="channels_last")
        x = ops.flip(x * 255.0, axis=-1)
        return x - ops.convert_to_tensor(_IMAGENET_MEAN_BGR, dtype="float32")

    def per_example(self, images, reconstructions):
        """Distance per example.

        Args:
            images: [B, H, W, 3] float in [0, 1].
            reconstructions: [B, H, W, 3] float in [0, 1].

        Returns:
            [B] float32.
        """
        batch = ops.shape(images)[0]
        # One VGG pass over both batches halves the number of small kernel launches.
        both = ops.concatenate([self.preprocess(images), self.preprocess(reconstructions)], axis=0)
        feats = self.features(both, training=False)
        if not isinstance(feats, (list, tuple)):
            feats = [feats]
        total = 0.0
        for f in feats:
            f = ops.cast(f, "float32")
            f = f / (ops.sqrt(ops.sum(ops.square(f), axis=-1, keepdims=True)) + 1e-10)
            diff = ops.sum(ops.square(f[:batch] - f[batch:]), axis=-1)  # [B, H_l, W_l]
            total = total + ops.mean(diff, axis=(1, 2))
        return total

    def call(self, images, reconstructions):
        """Mean distance over the batch.

        Args:
            images: [B, H, W, 3] float in [0, 1].
            reconstructions: [B, H, W, 3] float in [0, 1].

        Returns:
            float32 scalar.
        """
        return ops.mean(self.per_example(images, reconstructions))

    def get_config(self):
        config = super().get_config()
        config.update(
            weights_path=self.weights_path,
            feature_layers=list(self.feature_layers),
            min_size=self.min_size,
        )
        return config
