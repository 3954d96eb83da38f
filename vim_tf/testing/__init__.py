"""vim_tf.testing."""
