"""vim_tf.export: trained model dirs as versioned SavedModels for TF Serving, hub.load and
keras.layers.TFSMLayer."""
