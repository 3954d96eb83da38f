"""vim_tf: ViT-VQGAN (stage 1) and VIM (stage 2) in TensorFlow 2 / Keras 3."""

__version__ = "0.1.0"
