"""vim_tf.data."""
