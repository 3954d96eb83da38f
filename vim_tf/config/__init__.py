"""vim_tf.config."""
