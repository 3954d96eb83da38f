"""vim_tf.models."""
