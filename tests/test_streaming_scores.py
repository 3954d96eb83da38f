"""streaming_scores: FID / IS / KID / class accuracy accumulated batch by batch equal the
all-at-once TF-GAN computations of `scores`, and prior scoring holds one batch of images at a
time."""

import gc
import weakref

import numpy as np
import tensorflow as tf
from absl.testing import parameterized

from testcase import TestCase
from vim_tf.eval import prior_eval, scores, streaming_scores
from vim_tf.sampling import rejection


def uneven_batches(n, sizes=(1, 7, 2, 13, 5)):
    """Consecutive slices of range(n) with cycling, uneven sizes."""
    out, start, i = [], 0, 0
    while start < n:
        out.append(slice(start, min(n, start + sizes[i % len(sizes)])))
        start, i = start + sizes[i % len(sizes)], i + 1
    return out


def moments_of(features, batch_slices):
    m = streaming_scores.FeatureMoments()
    for s in batch_slices:
        m.update(features[s])
    return m


class StreamingMathTest(TestCase, parameterized.TestCase):
    def setUp(self):
        super().setUp()
        self.rng = np.random.default_rng(0)

    def test_moments_match_numpy_with_a_large_mean(self):
        # Features far from 0 (as post-ReLU pool features can be): sums around a shift keep the
        # covariance exact to float64 round-off.
        x = self.rng.normal(size=(101, 5)) + 1e4
        m = moments_of(x, uneven_batches(101))
        self.assertEqual(m.count, 101)
        self.assertAllClose(m.mean(), x.mean(0), rtol=0, atol=1e-9)
        self.assertAllClose(m.covariance(), np.cov(x, rowvar=False), rtol=0, atol=1e-8)
        with self.assertRaisesRegex(ValueError, "width 4 after width 5"):
            m.update(np.zeros((2, 4)))

    def test_streamed_fid_equals_all_at_once(self):
        a = self.rng.normal(size=(230, 8)) @ self.rng.normal(size=(8, 8)) + 3.0
        b = self.rng.normal(size=(97, 8)) * 1.3 + 0.2
        fid = streaming_scores.frechet_distance_from_moments(
            moments_of(a, uneven_batches(230)), moments_of(b, uneven_batches(97, (11, 3)))
        )
        ref = scores.frechet_distance(a, b)
        self.assertGreater(ref, 1.0)
        self.assertAllClose(fid, ref, rtol=0, atol=1e-6)

    @parameterized.named_parameters(("one_split", 1), ("four_splits", 4))
    def test_streamed_inception_score_equals_all_at_once(self, num_splits):
        logits = self.rng.normal(size=(103, 6)) * 3
        sums = streaming_scores.ClassifierScoreSums(num_splits, total=103)
        for s in uneven_batches(103):  # batches cross the split boundaries
            sums.update(logits[s])
        mean, std = sums.score_with_std()
        ref_mean, ref_std = scores.inception_score_with_std(logits, num_splits)
        self.assertAllClose(mean, ref_mean, rtol=0, atol=1e-6)
        self.assertAllClose(std, ref_std, rtol=0, atol=1e-6)

    def test_split_inception_score_needs_the_total(self):
        with self.assertRaisesRegex(ValueError, "num_splits=4 needs total"):
            streaming_scores.ClassifierScoreSums(4)

    def test_kid_uses_every_feature_up_to_the_cap(self):
        real, fake = self.rng.normal(size=(40, 4)), self.rng.normal(size=(55, 4)) + 0.3
        summaries = []
        for x in (real, fake):
            s = streaming_scores.ActivationSummary(kid_max_samples=100, keep_logits=False)
            for sl in uneven_batches(len(x)):
                s.update(x[sl])
            summaries.append(s)
        kid, _ = scores.kernel_distance(*streaming_scores.kid_features(*summaries))
        self.assertAllClose(kid, scores.kernel_distance(real, fake)[0], rtol=1e-6)

    def test_kid_subset_is_bounded_uniform_and_seeded(self):
        x = np.arange(2000, dtype=np.float64)[:, None] * np.ones((1, 3))
        kept = []
        for seed in (0, 0, 1):
            sample = streaming_scores.FeatureSample(max_size=200, seed=seed)
            for sl in uneven_batches(2000, (64, 3, 250)):
                sample.update(x[sl])
            kept.append(sample.rows()[:, 0])
        self.assertTrue(sample.subsampled)
        self.assertEqual(kept[0].shape, (200,))
        self.assertEqual(len(np.unique(kept[0])), 200)  # distinct input rows
        self.assertAllEqual(kept[0], kept[1])
        self.assertNotAllEqual(np.sort(kept[0]), np.sort(kept[2]))
        # Uniform over the whole stream: each quarter of the rows holds about a quarter.
        quarters = np.bincount((kept[0] // 500).astype(int), minlength=4)
        self.assertTrue(np.all((quarters > 30) & (quarters < 70)), msg=quarters)

    def test_class_accuracy_from_counts(self):
        logits = self.rng.normal(size=(50, 4))
        ids = self.rng.integers(0, 4, size=50)
        s = streaming_scores.ActivationSummary(kid_max_samples=None)
        for sl in uneven_batches(50):
            s.update(self.rng.normal(size=(sl.stop - sl.start, 3)), logits[sl], ids[sl])
        self.assertAllClose(s.class_accuracy(), scores.class_accuracy(logits, ids), atol=1e-12)
        hit = logits.argmax(1) == ids
        self.assertEqual(
            s.class_accuracy_per_class(), {str(c): float(hit[ids == c].mean()) for c in range(4)}
        )
        with self.assertRaisesRegex(ValueError, r"class_ids must be in \[0, 4\).*\[7\]"):
            s.update(np.zeros((1, 3)), logits[:1], np.array([7]))
        # A refused batch leaves every accumulator as it was.
        self.assertEqual((s.count, s.score_sums.count), (50, 50))
        self.assertAllClose(s.class_accuracy(), scores.class_accuracy(logits, ids), atol=1e-12)


class FakeSampler:
    """Deterministic images per (seed, batch); remembers every image batch it handed out (by
    weak reference) and how many earlier ones were still alive when it made the next."""

    def __init__(self, size=8, num_classes=10):
        self.size = size
        self.num_classes = num_classes
        self.handed_out = []
        self.most_alive = 0

    def alive(self):
        gc.collect()
        return sum(r() is not None for r in self.handed_out)

    def sample_batches(self, class_ids, seed=0, settings=None, batch_size=100):
        for b, start in enumerate(range(0, len(class_ids), batch_size)):
            self.most_alive = max(self.most_alive, self.alive())
            ids = np.asarray(class_ids[start : start + batch_size], np.int32)
            rng = np.random.default_rng([seed, b])
            brightness = (ids[:, None, None, None] + 1) / 12.0
            images = np.clip(
                brightness + 0.1 * rng.normal(size=(len(ids), self.size, self.size, 3)), 0, 1
            ).astype(np.float32)
            self.handed_out.append(weakref.ref(images))
            yield ids, np.zeros((len(ids), 2, 2), np.int32), images
            del images

    def sample(self, class_ids, seed=0, settings=None, batch_size=100):
        batches = list(self.sample_batches(class_ids, seed, settings, batch_size))
        return np.concatenate([t for _, t, _ in batches]), np.concatenate([i for *_, i in batches])


def brightness_network(batch_sizes):
    """Features: channel means and stds; logits favour class round(12 * mean - 1); records
    every batch size it is called with."""

    def fn(images):
        batch_sizes.append(int(images.shape[0]))
        f = tf.concat([tf.reduce_mean(images, [1, 2]), tf.math.reduce_std(images, [1, 2])], -1)
        centre = tf.reduce_mean(f[:, :3], -1, keepdims=True) * 12.0 - 1.0
        logits = -tf.square(tf.range(10, dtype=tf.float32)[None] - centre)
        return {"features": f, "logits": logits}

    return scores.ScoringNetwork(fn, "brightness")


def real_dataset(split, training, cache):
    rng = np.random.default_rng({"test": 0, "train": 1}[split])
    for _ in range(3):
        images = rng.uniform(0.1, 0.9, size=(20, 8, 8, 3)).astype(np.float32)
        yield {"image": tf.constant(images)}


class StreamingPriorEvalTest(TestCase):
    def score(self, acceptance_rate, num_samples=250):
        sampler, batch_sizes = FakeSampler(), []
        network = brightness_network(batch_sizes)
        metrics = prior_eval.score_prior_samples(
            sampler,
            network,
            num_samples,
            acceptance_rate,
            seed=3,
            floor_split="train",
            dataset_fn=real_dataset,
        )
        return metrics, sampler, network, batch_sizes

    def all_at_once(self, network, images, plan):
        real = np.concatenate([b["image"].numpy() for b in real_dataset("test", False, False)])
        rf, _ = network.activations(real)
        ff, fl = network.activations(images)
        return {
            "fid": scores.frechet_distance(rf, ff),
            "inception_score": scores.inception_score(fl),
            "kid": scores.kernel_distance(rf, ff)[0],
            "class_accuracy": scores.class_accuracy(fl, plan),
        }

    def test_one_batch_of_images_at_a_time_and_same_scores(self):
        metrics, sampler, network, batch_sizes = self.score(1.0)
        # While a batch was being made, at most the previous one (still bound to the loop
        # variable) was alive; after scoring, none is.
        self.assertEqual(len(sampler.handed_out), 3)
        self.assertLessEqual(sampler.most_alive, 1)
        self.assertEqual(sampler.alive(), 0)
        self.assertLessEqual(max(batch_sizes), 100)
        plan = np.repeat(np.arange(10, dtype=np.int32), 25)
        _, images = FakeSampler().sample(plan, seed=3)
        ref = self.all_at_once(network, images, plan)
        for key, value in ref.items():
            self.assertAllClose(metrics[key], value, rtol=1e-6, atol=1e-9, msg=key)
        self.assertEqual((metrics["num_samples"], metrics["num_real"]), (250, 60))
        self.assertEqual(metrics["acceptance_rate"], 1.0)
        self.assertEqual(set(metrics["class_accuracy_per_class"]), {str(c) for c in range(10)})
        self.assertGreater(metrics["fid_floor"], 0.0)

    def test_no_class_accuracy_when_the_classes_differ(self):
        # A 5-class prior scored by a 10-class network: class ids do not correspond.
        metrics = prior_eval.score_prior_samples(
            FakeSampler(num_classes=5), brightness_network([]), 20, dataset_fn=real_dataset
        )
        self.assertNotIn("class_accuracy", metrics)
        self.assertIn("fid", metrics)

    def test_rejection_streams_and_keeps_the_same_samples(self):
        metrics, sampler, network, _ = self.score(0.5, num_samples=60)
        self.assertEqual(len(sampler.handed_out), 2)  # 120 candidates in batches of 100
        self.assertLessEqual(sampler.most_alive, 1)
        self.assertEqual(sampler.alive(), 0)
        plan = np.repeat(np.arange(10, dtype=np.int32), 6)
        _, images, achieved = rejection.rejection_sample(FakeSampler(), network, plan, 0.5, 3)
        kept_ids = np.repeat(np.arange(10, dtype=np.int32), 6)  # kept grouped by class
        ref = self.all_at_once(network, images, kept_ids)
        for key, value in ref.items():
            self.assertAllClose(metrics[key], value, rtol=1e-6, atol=1e-9, msg=key)
        self.assertEqual(metrics["acceptance_rate"], achieved)
        self.assertEqual(metrics["num_samples"], 60)
