"""vim_tf.training."""
