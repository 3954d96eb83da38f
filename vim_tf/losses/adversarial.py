"""Adversarial losses and the R1 gradient penalty.

The four loss forms are registered with gin for selection by reference, in the compare_gan
style (a binding of the stage-1 model's loss parameters, `generator_loss = @hinge_generator_loss`,
`discriminator_loss = @hinge_discriminator_loss`). They have no gin parameters of their own: the
model passes every argument.

Logits are [B] (or any shape; every loss averages over all elements) and every result is a float32
scalar, whatever the logits' dtype.
"""

import tensorflow as tf

from vim_tf.config import gin_utils


def _to_float32(x):
    return tf.cast(tf.convert_to_tensor(x), tf.float32)


@gin_utils.register_selectable
def non_saturating_generator_loss(fake_logits):
    """Non-saturating generator loss, `mean(softplus(-D(G(z))))` = `-mean(log sigmoid(fake))`.

    Args:
        fake_logits: [B] float discriminator logits on generated images.

    Returns:
        float32 scalar.
    """
    return tf.reduce_mean(tf.nn.softplus(-_to_float32(fake_logits)))


@gin_utils.register_selectable
def non_saturating_discriminator_loss(real_logits, fake_logits):
    """Logistic discriminator loss, `mean(softplus(-real)) + mean(softplus(fake))`.

    Args:
        real_logits: [B] float discriminator logits on real images.
        fake_logits: [B] float discriminator logits on generated images.

    Returns:
        float32 scalar.
    """
    real = tf.reduce_mean(tf.nn.softplus(-_to_float32(real_logits)))
    fake = tf.reduce_mean(tf.nn.softplus(_to_float32(fake_logits)))
    return real + fake


@gin_utils.register_selectable
def hinge_generator_loss(fake_logits):
    """Hinge generator loss, `-mean(fake)`.

    Args:
        fake_logits: [B] float discriminator logits on generated images.

    Returns:
        float32 scalar.
    """
    return -tf.reduce_mean(_to_float32(fake_logits))


@gin_utils.register_selectable
def hinge_discriminator_loss(real_logits, fake_logits):
    """Hinge discriminator loss, `mean(relu(1 - real)) + mean(relu(1 + fake))`.

    Args:
        real_logits: [B] float discriminator logits on real images.
        fake_logits: [B] float discriminator logits on generated images.

    Returns:
        float32 scalar.
    """
    real = tf.reduce_mean(tf.nn.relu(1.0 - _to_float32(real_logits)))
    fake = tf.reduce_mean(tf.nn.relu(1.0 + _to_float32(fake_logits)))
    return real + fake


def r1_penalty(discriminator, real_images):
    """R1 penalty (Mescheder et al. 2018): `mean_b ||d D(x_b) / d x_b||^2` on real images.

    The gradient of `sum_b D(x_b)` with respect to the batch is each example's own gradient when
    examples do not interact. A minibatch std-dev layer couples them slightly; StyleGAN2 takes the
    gradient of the batch sum all the same, and so does this function. The caller scales the result
    by `gamma / 2` and, with lazy regularization, by the interval.

    Runs inside an outer `tf.GradientTape` watching the discriminator's variables: the inner tape is
    created here and its gradient stays differentiable (double backprop), so the penalty can be
    minimized with respect to the discriminator weights. Works under `tf.function`.

    Args:
        discriminator: callable mapping [B, H, W, C] images to [B] (or [B, 1]) logits.
        real_images: [B, H, W, C] real images, in whatever range the discriminator expects.

    Returns:
        float32 scalar.
    """
    # float32 because squared gradients of bfloat16 activations underflow and lose the penalty.
    real_images = _to_float32(real_images)
    with tf.GradientTape() as tape:
        tape.watch(real_images)
        logits = _to_float32(discriminator(real_images))
        total = tf.reduce_sum(logits)
    grads = tape.gradient(total, real_images)
    if grads is None:
        raise ValueError(
            "r1_penalty: the discriminator output does not depend on its input images, so the "
            "gradient is None; pass a callable whose logits are computed from `real_images`."
        )
    grads = _to_float32(grads)
    per_example = tf.reduce_sum(tf.square(grads), axis=tf.range(1, tf.rank(grads)))
    return tf.reduce_mean(per_example)
