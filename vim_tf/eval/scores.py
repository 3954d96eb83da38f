"""Sample-quality scores (FID, Inception-style classifier score, KID, class accuracy) computed
with TF-GAN's evaluation math over the activations of a named scoring network.

Every score says which network computed it (`ScoringNetwork.name`, reported as `classifier`): a
score from the project's digits classifier is a digits score, not an Inception score, and is only
comparable with scores from the same network and the same number of samples.

The math comes from TF-GAN (`tensorflow_gan.python.eval.classifier_metrics`, loaded by
`vim_tf.eval.tfgan_compat`), in float64:

- FID: |m1 - m2|^2 + Tr(C1 + C2 - 2 (C1 C2)^(1/2)) over feature means and unbiased covariances.
- Inception (classifier) score: exp(E_x[KL(p(y|x) || p(y))]) over softmax(logits).
- KID: unbiased MMD^2 with the kernel k(x, y) = (x.y / d + 1)^3, TF-GAN's block estimator.

These functions take all activations at once; `score_samples` and the prior evaluation stream
them batch by batch through `vim_tf.eval.streaming_scores` (same math, bounded memory).
Inception v3 files (SavedModel, frozen GraphDef, Keras weights) load as `ScoringNetwork`s
through `vim_tf.eval.inception`.

Example:

    network = ScoringNetwork.from_keras(classifier, name=f"digits_classifier:{classifier_dir}")
    metrics = score_samples(network, fake_images, real_images, class_ids=plan)
"""

import math
import os

import numpy as np
import tensorflow as tf

from vim_tf.eval import streaming_scores, tfgan_compat


def _activations_pair(real_activations, fake_activations):
    """Both arrays as float64 [N, F] tensors with the same F; errors name the bad shape."""
    real = np.asarray(real_activations, np.float64)
    fake = np.asarray(fake_activations, np.float64)
    for label, a in (("real_activations", real), ("fake_activations", fake)):
        if a.ndim != 2 or a.shape[0] < 2:
            raise ValueError(f"{label} must be [N >= 2, F], got shape {a.shape}")
    if real.shape[1] != fake.shape[1]:
        raise ValueError(
            f"real and fake activations must have the same width, got {real.shape} and {fake.shape}"
        )
    return tf.constant(real), tf.constant(fake)


def frechet_distance(real_activations, fake_activations):
    """Frechet distance between Gaussians fitted to two activation sets (FID when the activations
    are Inception pool features), computed in float64.

    Args:
      real_activations: [N, F] features of real images.
      fake_activations: [M, F] features of generated images.

    Returns:
      Python float, >= 0 up to round-off.
    """
    real, fake = _activations_pair(real_activations, fake_activations)
    cm = tfgan_compat.classifier_metrics()
    return float(cm.frechet_classifier_distance_from_activations(real, fake))


def inception_score_with_std(logits, num_splits=1):
    """Inception (classifier) score exp(E_x[KL(p(y|x) || p(y))]), mean and std over splits.

    Args:
      logits: [N, C] classifier logits (softmax is applied here).
      num_splits: the samples are cut into this many near-equal consecutive splits, each scored
        on its own (the usual protocol is 10 splits of 5,000); 1 scores all samples together.

    Returns:
      (mean, std) Python floats over the splits; std (population, as in the original protocol)
      is 0.0 for one split. The score ranges from 1 (every p(y|x) equal) to C.
    """
    logits = np.asarray(logits, np.float64)
    if logits.ndim != 2 or logits.shape[0] < 1 or logits.shape[1] < 2:
        raise ValueError(f"logits must be [N >= 1, C >= 2], got shape {logits.shape}")
    num_splits = int(num_splits)
    if not 1 <= num_splits <= logits.shape[0]:
        raise ValueError(
            f"num_splits must be in [1, {logits.shape[0]}] (the number of samples), "
            f"got {num_splits}"
        )
    cm = tfgan_compat.classifier_metrics()
    scores = [
        float(cm.classifier_score_from_logits(tf.constant(split)))
        for split in np.array_split(logits, num_splits)
    ]
    return float(np.mean(scores)), float(np.std(scores))


def inception_score(logits, num_splits=1):
    """Mean Inception (classifier) score over `num_splits` splits of `logits` [N, C]; see
    `inception_score_with_std`. Returns a Python float in [1, C]."""
    return inception_score_with_std(logits, num_splits)[0]


def kernel_distance(real_activations, fake_activations, max_block_size=1024):
    """Kernel (Inception) distance: TF-GAN's unbiased block estimate of MMD^2 with the cubic
    polynomial kernel k(x, y) = (x.y / F + 1)^3, in float64.

    Args:
      real_activations: [N, F] features of real images.
      fake_activations: [M, F] features of generated images.
      max_block_size: the samples are split into ceil(max(N, M) / max_block_size) blocks of
        near-equal size (real block i against fake block i); with one block the estimate is the
        exact unbiased MMD^2 over all samples. Blocks assume both sets are in random order.

    Returns:
      (kid, std): Python floats; std estimates the standard error from the spread over blocks and
      is NaN when there is only one block.
    """
    if int(max_block_size) < 2:
        raise ValueError(f"max_block_size must be >= 2, got {max_block_size}")
    real, fake = _activations_pair(real_activations, fake_activations)
    cm = tfgan_compat.classifier_metrics()
    if hasattr(cm, "kernel_classifier_distance_and_std_from_activations"):
        kid, std = cm.kernel_classifier_distance_and_std_from_activations(
            real, fake, max_block_size=int(max_block_size), dtype=tf.float64
        )
        return float(kid), float(std)
    kid = cm.kernel_classifier_distance_from_activations(
        real, fake, max_block_size=int(max_block_size), dtype=tf.float64
    )
    return float(kid), float("nan")


def class_accuracy(logits, class_ids):
    """Fraction of samples whose argmax logit is their class.

    Args:
      logits: [N, C] classifier logits.
      class_ids: [N] int classes in [0, C) (the class each sample was generated for).

    Returns:
      Python float in [0, 1].
    """
    logits = np.asarray(logits)
    class_ids = np.asarray(class_ids)
    if logits.ndim != 2 or class_ids.shape != logits.shape[:1]:
        raise ValueError(
            f"need logits [N, C] and class_ids [N], got {logits.shape} and {class_ids.shape}"
        )
    if not np.issubdtype(class_ids.dtype, np.integer):
        raise ValueError(f"class_ids must be integers, got dtype {class_ids.dtype}")
    bad = class_ids[(class_ids < 0) | (class_ids >= logits.shape[1])]
    if bad.size:
        raise ValueError(f"class_ids must be in [0, {logits.shape[1]}), got {bad[:5].tolist()}")
    return float(np.mean(np.argmax(logits, axis=-1) == class_ids))


class ScoringNetwork:
    """A named network that maps images to the features and logits the scores are computed on.

    Args:
      fn: callable `images: [B, H, W, 3] float32 tf.Tensor in [0, 1] -> {"features": [B, F],
        "logits": [B, C]}` (features with extra dims, e.g. [B, 1, 1, F], are flattened).
      name: which network this is, reported with every score, e.g. "digits_classifier:<path>".
      image_size: (height, width) the network expects, or None; images of another size are
        resized to it (bilinear, `tf.image.resize`) before `fn`.
      input_dtype: dtype `fn` takes.
      input_range: (lo, hi), the values `fn` expects for black and white: images in [0, 1] are
        mapped to x * (hi - lo) + lo after resizing, e.g. (-1, 1) for Inception networks,
        (0, 255) for the frozen Inception graph of the original FID code.

    Example:

        network = ScoringNetwork.from_saved_model("/models/scorer", name="my_inception:/models")
        features, logits = network.activations(images)  # [N, F], [N, C] float64
    """

    def __init__(self, fn, name, image_size=None, input_dtype=tf.float32, input_range=(0.0, 1.0)):
        if not callable(fn):
            raise TypeError(f"fn must be callable, got {fn!r}")
        if not name or not isinstance(name, str):
            raise ValueError(f"name must be a non-empty string naming the network, got {name!r}")
        if image_size is not None:
            if isinstance(image_size, int):
                image_size = (image_size, image_size)
            image_size = tuple(int(s) for s in image_size)
            if len(image_size) != 2 or min(image_size) < 1:
                raise ValueError(f"image_size must be (height, width) > 0, got {image_size}")
        lo, hi = (float(v) for v in input_range)
        if not lo < hi:
            raise ValueError(f"input_range must be (lo, hi) with lo < hi, got {input_range}")
        self.fn = fn
        self.name = name
        self.image_size = image_size
        self.input_dtype = tf.as_dtype(input_dtype)
        self.input_range = (lo, hi)

    def __repr__(self):
        return (
            f"ScoringNetwork(name={self.name!r}, image_size={self.image_size}, "
            f"input_range={self.input_range})"
        )

    @classmethod
    def from_keras(cls, model, name, image_size=None):
        """Wraps a Keras model with `features(images) -> [B, F]` and `model(images) -> logits
        [B, C]` (as `vim_tf.models.classifier.ImageClassifier`), both run with training off.

        Args:
          model: the Keras model.
          name: e.g. f"digits_classifier:{classifier_dir}".
          image_size: int or (height, width); defaults to `model.image_size` if the model has one.
        """
        if not callable(getattr(model, "features", None)):
            raise TypeError(
                f"{type(model).__name__} has no features(images) method; from_keras needs a "
                "model with features(images) -> [B, F] and __call__(images) -> logits [B, C]"
            )
        if image_size is None:
            image_size = getattr(model, "image_size", None)

        @tf.function(reduce_retracing=True)
        def fn(images):
            return {"features": model.features(images), "logits": model(images, training=False)}

        return cls(fn, name, image_size=image_size, input_dtype=model.compute_dtype)

    @classmethod
    def from_saved_model(cls, path, name=None, signature=None):
        """Loads a SavedModel / TF Hub module directory with `tf.saved_model.load`.

        Contract: the signature named `signature`, else "scores", else "serving_default", else
        "default" (else the loaded object itself, if callable, e.g. TF-GAN's Inception module)
        takes one input, images [B, H, W, 3] float, and returns a dict with either

        - "features" [B, F] and "logits" [B, C]: a vim_tf scoring network, images in [0, 1]
          (the `scores` signature of a vim_tf classifier export), or
        - "pool_3" [B, F] or [B, 1, 1, F] and "logits" [B, C]: an Inception network in TF-GAN's
          format, images in [-1, 1] at 299 x 299.

        If the input spec has a static height and width, images are resized to it (bilinear).

        Args:
          path: the SavedModel directory.
          name: reported with the scores; defaults to "saved_model:<absolute path>"
            ("inception_saved_model:<absolute path>" for the Inception contract).
          signature: a signature name, to pick one explicitly.
        """
        loaded = tf.saved_model.load(path)
        signatures = dict(getattr(loaded, "signatures", {}) or {})
        wanted = [signature] if signature else ["scores", "serving_default", "default"]
        chosen = next((s for s in wanted if s in signatures), None)
        if signature and chosen is None:
            raise ValueError(
                f"{path!r} has no signature {signature!r}; it has {sorted(signatures)}"
            )
        if chosen is None:
            concrete = _single_concrete_call(loaded)
            if concrete is None:
                raise ValueError(
                    f"{path!r} has no 'scores', 'serving_default' or 'default' signature (it has "
                    f"{sorted(signatures)}) and the loaded object is not a callable with a "
                    "traced images -> dict function"
                )
            where = f"{path}:__call__"
            args, kwargs = concrete.structured_input_signature
            specs = list(args) + list(kwargs.values())

            def call(images):
                return loaded(images)

        else:
            concrete = signatures[chosen]
            where = f"{path}:{chosen}"
            _, kwargs = concrete.structured_input_signature
            if len(kwargs) != 1:
                raise ValueError(
                    f"signature {chosen!r} of {path!r} must take one images input, "
                    f"got {sorted(kwargs)}"
                )
            specs = list(kwargs.values())
            (input_name,) = kwargs

            def call(images):
                return concrete(**{input_name: images})

        if len(specs) != 1 or not isinstance(specs[0], tf.TensorSpec):
            raise ValueError(f"{where} must take one images tensor, got {specs}")
        spec = specs[0]
        features_key, default_size, input_range = _output_contract(concrete, where)
        kind = "inception_saved_model" if features_key == "pool_3" else "saved_model"
        name = name or f"{kind}:{os.path.abspath(path)}"
        hw = tuple(spec.shape[1:3]) if spec.shape.rank == 4 else (None, None)
        image_size = hw if None not in hw else default_size
        fn = _checked_outputs(call, where, features_key)
        network = cls(
            fn, name, image_size=image_size, input_dtype=spec.dtype, input_range=input_range
        )
        network._loaded = loaded  # keeps the restored variables alive
        return network

    def activations(self, images, batch_size=250):
        """Features and logits of every image, computed in batches.

        Args:
          images: [N, H, W, 3] float array in [0, 1] (uint8 in [0, 255] is scaled by 1/255).
          batch_size: images per forward pass.

        Returns:
          (features [N, F] np.float64, logits [N, C] np.float64).
        """
        images = np.asarray(images)
        if images.dtype == np.uint8:
            images = images.astype(np.float32) / 255.0
        if not np.issubdtype(images.dtype, np.floating):
            raise ValueError(f"images must be float in [0, 1] or uint8, got dtype {images.dtype}")
        if images.ndim != 4 or images.shape[-1] != 3 or images.shape[0] < 1:
            raise ValueError(f"images must be [N >= 1, H, W, 3], got shape {images.shape}")
        lo, hi = float(images.min()), float(images.max())
        if lo < -1e-3 or hi > 1 + 1e-3:
            raise ValueError(f"images must be in [0, 1], got values in [{lo:.3g}, {hi:.3g}]")
        if int(batch_size) < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        features, logits = [], []
        lo, hi = self.input_range
        for start in range(0, len(images), int(batch_size)):
            x = tf.constant(images[start : start + int(batch_size)], tf.float32)
            if self.image_size is not None and tuple(x.shape[1:3]) != self.image_size:
                x = tf.image.resize(x, self.image_size, method="bilinear")
            if (lo, hi) != (0.0, 1.0):
                x = x * (hi - lo) + lo
            out = self.fn(tf.cast(x, self.input_dtype))
            f = np.asarray(out["features"], np.float64)
            features.append(f.reshape(f.shape[0], -1))
            logits.append(np.asarray(out["logits"], np.float64))
        features, logits = np.concatenate(features), np.concatenate(logits)
        if logits.ndim != 2 or len(features) != len(images) or len(logits) != len(images):
            raise ValueError(
                f"{self.name} returned features {features.shape} and logits {logits.shape} "
                f"for {len(images)} images; expected [N, F] and [N, C]"
            )
        return features, logits


# Output dicts a SavedModel scoring network may return: features key -> (default input size,
# the values images in [0, 1] are mapped to).
_CONTRACTS = {
    "features": (None, (0.0, 1.0)),  # vim_tf's own scoring networks
    "pool_3": ((299, 299), (-1.0, 1.0)),  # TF-GAN's Inception v3
}


def _single_concrete_call(loaded):
    """The (first) traced function behind a loaded object's `__call__`, or None."""
    call = loaded.__call__ if callable(loaded) else None
    functions = list(getattr(call, "concrete_functions", None) or [])
    return functions[0] if functions else None


def _output_contract(concrete, where):
    """(features key, default image size, input range) from a function's output keys."""
    outputs = concrete.structured_outputs
    keys = set(outputs) if isinstance(outputs, dict) else set()
    for key, (size, input_range) in _CONTRACTS.items():
        if {key, "logits"} <= keys:
            return key, size, input_range
    got = sorted(keys) if isinstance(outputs, dict) else type(outputs).__name__
    raise ValueError(
        f"{where} must return a dict with 'logits' and 'features' (a vim_tf scoring network) "
        f"or 'pool_3' (an Inception network), got {got}"
    )


def _checked_outputs(fn, where, features_key="features"):
    """`fn` returning {"features", "logits"}, taken from its `features_key` and "logits" outputs
    (checked to exist)."""

    def checked(images):
        out = fn(images)
        if not isinstance(out, dict) or not {features_key, "logits"} <= set(out):
            got = sorted(out) if isinstance(out, dict) else type(out).__name__
            raise ValueError(
                f"{where} must return a dict with {features_key!r} and 'logits', got {got}"
            )
        return {"features": out[features_key], "logits": out["logits"]}

    return checked


def score_samples(
    network,
    fake_images,
    real_images=None,
    class_ids=None,
    batch_size=250,
    num_splits=1,
    kid_block_size=1024,
    kid_max_samples=streaming_scores.DEFAULT_KID_MAX_SAMPLES,
):
    """Scores generated images with `network`, batch by batch (see `streaming_scores`).

    Args:
      network: a `ScoringNetwork`.
      fake_images: [N, H, W, 3] generated images in [0, 1] (an array, or any sliceable
        sequence of images: only `batch_size` of them are converted at a time).
      real_images: [M, H, W, 3] real images in [0, 1], or None (then no FID / KID).
      class_ids: [N] class each generated image was conditioned on, or None (no class accuracy).
      batch_size: images per forward pass of the network.
      num_splits: splits for the Inception score (mean over splits is reported).
      kid_block_size: `max_block_size` of the KID estimator.
      kid_max_samples: KID uses a random subset of at most this many features of each set.

    Returns:
      dict: "inception_score" (the classifier score of `network`, see "classifier"),
      "num_samples" (N), "classifier" (network.name); with real images also "fid", "kid" and
      "kid_std" (None when KID used a single block, where it is undefined) and
      "num_real_samples" (M); with class_ids also "class_accuracy".
    """
    n = len(fake_images)
    if class_ids is not None and len(class_ids) != n:
        raise ValueError(f"need class_ids [{n}] (one per fake image), got {len(class_ids)}")
    kid_max = kid_max_samples if real_images is not None else None
    fake = streaming_scores.ActivationSummary(kid_max, num_splits, total=n)
    for start in range(0, n, int(batch_size)):
        ids = None if class_ids is None else np.asarray(class_ids[start : start + batch_size])
        fake.add_images(network, fake_images[start : start + batch_size], ids, batch_size)
    metrics = {
        "classifier": network.name,
        "num_samples": int(fake.count),
        "inception_score": fake.inception_score(),
    }
    if real_images is not None:
        real = streaming_scores.ActivationSummary.of_batches(
            network,
            (real_images[i : i + batch_size] for i in range(0, len(real_images), batch_size)),
            batch_size,
            kid_max_samples=kid_max_samples,
        )
        kid, kid_std = kernel_distance(
            *streaming_scores.kid_features(real, fake), max_block_size=kid_block_size
        )
        metrics.update(
            fid=streaming_scores.frechet_distance(real, fake),
            kid=kid,
            kid_std=kid_std if math.isfinite(kid_std) else None,
            num_real_samples=int(real.count),
        )
    if class_ids is not None:
        metrics["class_accuracy"] = fake.class_accuracy()
    return metrics
