"""Sample-quality scores accumulated batch by batch, so memory does not grow with the sample count.

Each batch of images goes through the scoring network once; only these summaries are kept:

- FID: the count, the sum of features and the sum of their outer products (float64, [F] and
  [F, F]); the mean and unbiased covariance follow, and the Frechet distance uses TF-GAN's
  `trace_sqrt_product`, exactly as `scores.frechet_distance` does for all features at once.
- Inception (classifier) score: per split, the count, sum_x sum_y p(y|x) log p(y|x) and
  sum_x p(y|x) ([C]). The mean KL then decomposes as
  E_x[KL(p(y|x) || p(y))] = mean_x sum_y p log p - sum_y p(y) log p(y), p(y) = mean_x p(y|x).
- KID: a uniform random subset of at most `kid_max_samples` features per image set (reservoir
  sampling, seeded), shuffled before TF-GAN's block estimator (whose blocks assume random order).
  Up to that many samples KID is computed on every feature, as `scores.kernel_distance` does;
  above it, on the subset (features kept as float32: kid_max_samples * F * 4 bytes, e.g.
  10,000 x 2048 Inception features = 82 MB per set).
- Class accuracy: per-class counts of samples and of samples the network assigns to their class.

Example:

    fake = ActivationSummary(num_classes=10)
    for class_ids, images in batches:
        fake.add_images(network, images, class_ids)   # images dropped after this call
    real = ActivationSummary.of_batches(network, real_batches)
    fid = frechet_distance(real, fake)
"""

import numpy as np
import tensorflow as tf
from absl import logging

from vim_tf.eval import tfgan_compat

DEFAULT_KID_MAX_SAMPLES = 10_000


def _as_2d(x, label):
    x = np.asarray(x, np.float64)
    if x.ndim != 2:
        raise ValueError(f"{label} must be [B, D], got shape {x.shape}")
    return x


class FeatureMoments:
    """Running count, sum and sum of outer products of [B, F] feature batches, in float64.

    The sums are taken around a shift (the first batch's mean) so that the covariance does not
    lose precision to the subtraction of two large numbers when features have a large mean.
    """

    def __init__(self):
        self.count = 0
        self._shift = self._sum = self._outer = None

    @property
    def width(self):
        return None if self._sum is None else self._sum.shape[0]

    def update(self, features):
        """Adds features [B, F] (any float dtype; B may be 0)."""
        f = _as_2d(features, "features")
        if self._sum is None:
            if not len(f):
                return
            self._shift = f.mean(0)
            self._sum = np.zeros(f.shape[1], np.float64)
            self._outer = np.zeros((f.shape[1], f.shape[1]), np.float64)
        if f.shape[1] != self.width:
            raise ValueError(f"features of width {f.shape[1]} after width {self.width}")
        d = f - self._shift
        self.count += len(f)
        self._sum += d.sum(0)
        self._outer += d.T @ d

    def mean(self):
        """[F] float64 mean of every feature added."""
        self._check(1)
        return self._shift + self._sum / self.count

    def covariance(self):
        """[F, F] float64 unbiased (n - 1) covariance, as TF-GAN's FID uses."""
        self._check(2)
        m = self._sum / self.count
        return (self._outer - self.count * np.outer(m, m)) / (self.count - 1)

    def _check(self, at_least):
        if self.count < at_least:
            raise ValueError(f"need at least {at_least} feature vectors, got {self.count}")


def frechet_distance_from_moments(a, b):
    """Frechet distance between Gaussians with the moments of two `FeatureMoments`, with TF-GAN's
    math (float64): |m_a - m_b|^2 + Tr(C_a) + Tr(C_b) - 2 Tr((C_a C_b)^(1/2)).

    Returns:
      Python float.
    """
    for label, m in (("first", a), ("second", b)):
        if m.count < 2:
            raise ValueError(f"the {label} feature set needs >= 2 samples, got {m.count}")
    if a.width != b.width:
        raise ValueError(f"feature widths differ: {a.width} and {b.width}")
    cm = tfgan_compat.classifier_metrics()
    sigma_a, sigma_b = tf.constant(a.covariance()), tf.constant(b.covariance())
    sqrt_trace = cm.trace_sqrt_product(sigma_a, sigma_b)
    trace = tf.linalg.trace(sigma_a + sigma_b) - 2.0 * sqrt_trace
    mean = tf.reduce_sum(tf.math.squared_difference(tf.constant(a.mean()), tf.constant(b.mean())))
    return float(trace + mean)


class ClassifierScoreSums:
    """Running sums for the Inception (classifier) score of logits batches, in float64.

    Args:
      num_splits: the score is computed on this many consecutive splits and averaged (the
        usual protocol is 10 splits); more than 1 needs `total`.
      total: the number of samples that will be added (fixes the split boundaries, the same
        near-equal consecutive splits as `np.array_split`).
    """

    def __init__(self, num_splits=1, total=None):
        num_splits = int(num_splits)
        if num_splits < 1:
            raise ValueError(f"num_splits must be >= 1, got {num_splits}")
        if num_splits > 1 and (total is None or not num_splits <= int(total)):
            raise ValueError(
                f"num_splits={num_splits} needs total >= num_splits (the number of samples "
                f"that will be added), got total={total}"
            )
        self.num_splits = num_splits
        self.total = None if total is None else int(total)
        sizes = [len(s) for s in np.array_split(np.zeros(self.total or 0), num_splits)]
        self._ends = np.cumsum(sizes) if num_splits > 1 else None
        self.count = 0
        self._counts = np.zeros(num_splits, np.int64)
        self._plogp = np.zeros(num_splits, np.float64)
        self._p = None

    def update(self, logits):
        """Adds logits [B, C]."""
        logits = _as_2d(logits, "logits")
        if self._p is None:
            if logits.shape[1] < 2:
                raise ValueError(f"logits need >= 2 classes, got shape {logits.shape}")
            self._p = np.zeros((self.num_splits, logits.shape[1]), np.float64)
        if logits.shape[1] != self._p.shape[1]:
            raise ValueError(f"logits of {logits.shape[1]} classes after {self._p.shape[1]}")
        if self.total is not None and self.count + len(logits) > self.total:
            raise ValueError(f"more than total={self.total} samples added")
        log_p = logits - logits.max(1, keepdims=True)
        log_p -= np.log(np.exp(log_p).sum(1, keepdims=True))
        p = np.exp(log_p)
        plogp = (p * log_p).sum(1)
        if self._ends is None:
            split = np.zeros(len(logits), np.int64)
        else:
            split = np.searchsorted(self._ends, self.count + np.arange(len(logits)), side="right")
        np.add.at(self._counts, split, 1)
        np.add.at(self._plogp, split, plogp)
        np.add.at(self._p, split, p)
        self.count += len(logits)

    @property
    def num_classes(self):
        """The logits' width, None before the first batch."""
        return None if self._p is None else self._p.shape[1]

    def score_with_std(self):
        """(mean, population std) of the score over the splits; std is 0.0 for one split."""
        if self.count < 1:
            raise ValueError("no logits were added: the classifier score needs >= 1 sample")
        if self.total is not None and self.num_splits > 1 and self.count != self.total:
            raise ValueError(f"{self.count} samples added, expected total={self.total}")
        q = self._p / self._counts[:, None]
        log_score = self._plogp / self._counts - (q * np.log(np.where(q > 0, q, 1.0))).sum(1)
        s = np.exp(log_score)
        return float(np.mean(s)), float(np.std(s))

    def score(self):
        return self.score_with_std()[0]


class FeatureSample:
    """A uniform random subset of at most `max_size` feature rows (reservoir sampling), float32.

    Args:
      max_size: rows kept at most; every row is kept while fewer have been added.
      seed: the random choice of rows (the same rows for the same seed and inputs).
    """

    def __init__(self, max_size=DEFAULT_KID_MAX_SAMPLES, seed=0):
        if int(max_size) < 2:
            raise ValueError(f"max_size must be >= 2, got {max_size}")
        self.max_size = int(max_size)
        self.count = 0
        self._chunks = []  # rows while fewer than max_size were added
        self._rows = None  # [max_size, F] once full
        self._rng = np.random.default_rng(seed)

    @property
    def width(self):
        first = self._rows if self._rows is not None else (self._chunks or [None])[0]
        return None if first is None else first.shape[1]

    def update(self, features):
        f = _as_2d(features, "features").astype(np.float32)
        if self.width is not None and f.shape[1] != self.width:
            raise ValueError(f"features of width {f.shape[1]} after width {self.width}")
        room = max(0, self.max_size - self.count)
        if room:
            self._chunks.append(f[:room])
            if self.count + len(f) >= self.max_size:
                self._rows, self._chunks = np.concatenate(self._chunks), []
        # Row t (0-based over everything added) replaces a random kept row with prob. max/(t+1).
        for i in range(room, len(f)):
            j = int(self._rng.integers(0, self.count + i + 1))
            if j < self.max_size:
                self._rows[j] = f[i]
        self.count += len(f)

    @property
    def subsampled(self):
        return self.count > self.max_size

    def rows(self):
        """The kept rows [min(count, max_size), F] float32, in a seeded random order."""
        if not self.count:
            raise ValueError("no features were added")
        rows = self._rows if self._rows is not None else np.concatenate(self._chunks)
        return rows[np.random.default_rng(self.count).permutation(len(rows))]


class ActivationSummary:
    """Everything the scores need from one set of images, accumulated batch by batch.

    Args:
      kid_max_samples: KID uses a random subset of at most this many features (see the module
        docstring); None keeps no features (no KID).
      num_splits, total: classifier-score splits (see `ClassifierScoreSums`).
      seed: the KID subset's random choice.
      keep_logits: accumulate the classifier score and class counts (fake images); real
        images need only features.
    """

    def __init__(
        self,
        kid_max_samples=DEFAULT_KID_MAX_SAMPLES,
        num_splits=1,
        total=None,
        seed=0,
        keep_logits=True,
    ):
        self.moments = FeatureMoments()
        self.sample = FeatureSample(kid_max_samples, seed) if kid_max_samples else None
        self.score_sums = ClassifierScoreSums(num_splits, total) if keep_logits else None
        self._correct = {}
        self._seen = {}

    @property
    def count(self):
        return self.moments.count

    def update(self, features, logits=None, class_ids=None):
        """Adds one batch: features [B, F] (extra dims flattened), logits [B, C] (needed unless
        keep_logits=False), class_ids [B] ints in [0, C) (for class accuracy) or None."""
        features = np.asarray(features)
        features = features.reshape(len(features), -1)
        width = self.moments.width
        if width is not None and features.shape[1] != width:
            raise ValueError(f"features of width {features.shape[1]} after width {width}")
        if logits is not None:
            logits = _as_2d(logits, "logits")
            if len(logits) != len(features):
                raise ValueError(f"{len(features)} feature rows but {len(logits)} logits rows")
        if self.score_sums is not None and logits is None:
            raise ValueError("logits are needed to accumulate the classifier score")
        if class_ids is not None:
            if logits is None:
                raise ValueError("class accuracy needs the logits")
            ids = np.asarray(class_ids)
            if ids.shape != (len(logits),) or not np.issubdtype(ids.dtype, np.integer):
                raise ValueError(
                    f"class_ids must be [{len(logits)}] ints, got {ids.shape} {ids.dtype}"
                )
            bad = ids[(ids < 0) | (ids >= logits.shape[1])]
            if bad.size:
                raise ValueError(
                    f"class_ids must be in [0, {logits.shape[1]}), got {bad[:5].tolist()}"
                )
        # Everything is checked: no accumulator is left half-updated by a bad batch.
        if self.score_sums is not None:
            self.score_sums.update(logits)
        if class_ids is not None:
            hit = np.argmax(logits, 1) == ids
            for c in np.unique(ids):
                c = int(c)
                self._seen[c] = self._seen.get(c, 0) + int(np.sum(ids == c))
                self._correct[c] = self._correct.get(c, 0) + int(np.sum(hit[ids == c]))
        self.moments.update(features)
        if self.sample is not None:
            self.sample.update(features)

    def add_images(self, network, images, class_ids=None, batch_size=250):
        """Runs `network` (a `scores.ScoringNetwork`) on images [B, H, W, 3] in [0, 1] and adds
        the result; keeps nothing of the images. Returns (features, logits) of the batch."""
        features, logits = network.activations(images, batch_size)
        self.update(features, logits, class_ids)
        return features, logits

    @classmethod
    def of_batches(cls, network, image_batches, batch_size=250, **kwargs):
        """A summary of the features (no logits) of an iterable of image batches."""
        summary = cls(keep_logits=False, **kwargs)
        for images in image_batches:
            summary.add_images(network, images, batch_size=batch_size)
        return summary

    def inception_score(self):
        return self.score_sums.score()

    def class_accuracy(self):
        """Fraction of samples with class ids that the network assigns to their class."""
        total = sum(self._seen.values())
        if not total:
            raise ValueError("no class ids were added")
        return sum(self._correct.values()) / total

    def class_accuracy_per_class(self):
        """{str(class): accuracy} for every class that had samples."""
        return {str(c): self._correct[c] / self._seen[c] for c in sorted(self._seen)}


def frechet_distance(real, fake):
    """FID between two `ActivationSummary`s (Python float)."""
    return frechet_distance_from_moments(real.moments, fake.moments)


def kid_features(real, fake):
    """The feature subsets KID is computed on, of two summaries: (real [N, F], fake [M, F]), for
    `scores.kernel_distance`; logs when a subset is a random part of more features."""
    if real.sample is None or fake.sample is None:
        raise ValueError("KID needs summaries built with kid_max_samples")
    for label, s in (("real", real.sample), ("fake", fake.sample)):
        if s.subsampled:
            logging.info(
                "KID on a random subset of %d of the %d %s features", s.max_size, s.count, label
            )
    return real.sample.rows(), fake.sample.rows()
