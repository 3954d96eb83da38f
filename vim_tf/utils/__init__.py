"""vim_tf.utils."""
