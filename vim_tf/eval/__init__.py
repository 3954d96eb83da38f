"""vim_tf.eval."""
