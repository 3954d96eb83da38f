"""vim_tf.losses."""
