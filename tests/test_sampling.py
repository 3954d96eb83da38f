"""vim_tf.sampling: logit processing against numpy references, the settings' validation, the
batch-seed rule, the cached loop against full recomputation and XLA, guidance, the Sampler."""

from types import SimpleNamespace

import numpy as np
import tensorflow as tf
from absl.testing import parameterized

from testcase import TestCase
from vim_tf.models.vim import VIM
from vim_tf.sampling import decoding, seeds
from vim_tf.sampling import logits as sampling
from vim_tf.sampling.sampler import Sampler, class_plan
from vim_tf.sampling.settings import SamplingSettings, split_seed
from vim_tf.training import precision


def make_prior(num_classes=3, **kw):
    args = dict(
        num_layers=2,
        num_heads=2,
        hidden_dim=16,
        mlp_dim=32,
        grid_size=3,
        codebook_size=11,
        dropout=0.0,
        num_classes=num_classes,
    )
    args.update(kw)
    model = VIM(**args)
    model.build()
    return model


class LogitsTest(TestCase, parameterized.TestCase):
    def setUp(self):
        super().setUp()
        self.logits = tf.constant([[3.0, 1.0, 2.0, 0.0, -1.0], [0.0, 0.5, 4.0, 1.0, 0.2]])

    def test_top_k(self):
        out = sampling.apply_top_k(self.logits, 2).numpy()
        keep = out > sampling.NEG_INF / 2
        np.testing.assert_array_equal(keep, [[1, 0, 1, 0, 0], [0, 0, 1, 1, 0]])
        np.testing.assert_array_equal(sampling.apply_top_k(self.logits, 0), self.logits)

    @parameterized.named_parameters(
        ("p_0_3", 0.3), ("p_0_7", 0.7), ("p_0_9", 0.9), ("p_0_999", 0.999)
    )
    def test_top_p_keeps_the_smallest_set_reaching(self, p):
        probs = tf.nn.softmax(self.logits).numpy()
        out = sampling.apply_top_p(self.logits, p).numpy()
        keep = out > sampling.NEG_INF / 2
        for row, prob in zip(keep, probs):
            order = np.argsort(-prob)
            before = np.concatenate([[0.0], np.cumsum(prob[order])[:-1]])
            expected = np.zeros_like(row)
            expected[order[before < p]] = True
            np.testing.assert_array_equal(row, expected)

    def test_top_p_one_is_off(self):
        np.testing.assert_array_equal(sampling.apply_top_p(self.logits, 1.0), self.logits)

    def test_temperature_and_guidance(self):
        out = sampling.process_logits(self.logits, 2.0, 0, 1.0)
        self.assertAllClose(out, self.logits / 2.0)
        cond, uncond = self.logits[:1], self.logits[1:]
        self.assertAllClose(sampling.guide(cond, uncond, 1.0), cond)
        self.assertAllClose(sampling.guide(cond, uncond, 3.0), uncond + 3.0 * (cond - uncond))

    def test_filters_that_are_off_are_not_traced(self):
        def ops_of(*knobs, specs=()):
            fn = tf.function(lambda x, *t: sampling.process_logits(x, *knobs, *t))
            graph = fn.get_concrete_function(tf.TensorSpec([2, 5]), *specs).graph
            ops = [op.type for op in graph.get_operations()]
            conds = sum(t in ("If", "StatelessIf") for t in ops)
            return ops.count("TopKV2"), conds, "RealDiv" in ops

        self.assertEqual(ops_of(1.0, 0, 1.0), (0, 0, False))
        self.assertEqual(ops_of(2.0, 3, 1.0), (1, 0, True))  # one sort: top-k's
        self.assertEqual(ops_of(1.0, 0, 0.9), (1, 0, False))
        # Knobs known only at run time: top-k and top-p each under a tf.cond.
        specs = [tf.TensorSpec([], d) for d in (tf.float32, tf.int32, tf.float32)]
        self.assertEqual(ops_of(specs=specs), (0, 2, True))
        fn = tf.function(sampling.process_logits)
        for k, p in ((0, 1.0), (2, 1.0), (0, 0.6), (3, 0.8)):
            want = sampling.process_logits(self.logits, 0.7, k, p)
            self.assertAllEqual(fn(self.logits, *SamplingSettings(0.7, k, p).tensors()[:3]), want)

    def test_draw_is_seeded_and_follows_the_distribution(self):
        logits = tf.math.log(tf.constant([[0.7, 0.2, 0.1]] * 4000))
        a = sampling.draw(logits, 5, 3).numpy()
        self.assertAllEqual(a, sampling.draw(logits, 5, 3))
        self.assertNotAllEqual(a, sampling.draw(logits, 5, 4))
        freq = np.bincount(a, minlength=3) / a.size
        self.assertAllClose(freq, [0.7, 0.2, 0.1], atol=0.03)

    def test_counter_uniforms_are_uniform_and_independent(self):
        from scipy import stats

        u = sampling.uniform([200, 500], 11, 4).numpy().ravel()
        self.assertGreater(stats.kstest(u, "uniform").pvalue, 1e-3)
        other = sampling.uniform([200, 500], 11, 5).numpy().ravel()
        self.assertLess(abs(np.corrcoef(u, other)[0, 1]), 0.01)
        self.assertTrue(((u > 0) & (u < 1)).all())


class SettingsTest(TestCase, parameterized.TestCase):
    @parameterized.parameters(
        (dict(temperature=0), "temperature must be > 0, got 0"),
        (dict(temperature=float("nan")), "temperature must be > 0, got nan"),
        (dict(top_k=-1), r"top_k must be an int >= 0 \(0 = off\), got -1"),
        (dict(top_k=2.5), "top_k must be an int >= 0 .*got 2.5"),
        (dict(top_p=1.5), r"top_p must be in \(0, 1\] \(1 = off\), got 1.5"),
        (dict(top_p=0.0), r"top_p must be in \(0, 1\].*got 0.0"),
        (dict(cfg_scale=-2.5), r"cfg_scale must be >= 0 \(1 = no guidance\), got -2.5"),
    )
    def test_bad_values_are_named(self, kwargs, pattern):
        with self.assertRaisesRegex(ValueError, pattern):
            SamplingSettings(**kwargs)

    def test_values_and_split_seed(self):
        settings = SamplingSettings(temperature=0.9, top_k=5.0, cfg_scale=2.0)
        self.assertEqual(settings.top_k, 5)
        self.assertIsInstance(settings.top_k, int)
        self.assertTrue(settings.guided)
        self.assertFalse(SamplingSettings().guided)
        self.assertEqual(
            settings.as_dict(), dict(temperature=0.9, top_k=5, top_p=1.0, cfg_scale=2.0)
        )
        traced = SamplingSettings(top_p=0.9).traced()
        self.assertEqual((traced.temperature, traced.top_k, traced.cfg_scale), (1.0, 0, 1.0))
        self.assertIsInstance(traced.top_p, tf.Tensor)
        self.assertAllClose(traced.top_p, 0.9)
        with self.assertRaises(AttributeError):  # frozen
            settings.top_k = 3
        got, seed = split_seed(dict(top_p=0.9, seed=7))
        self.assertEqual((got, seed), (SamplingSettings(top_p=0.9), 7))
        self.assertEqual(split_seed(None), (SamplingSettings(), 0))
        with self.assertRaisesRegex(ValueError, r"unknown sampling settings \['cfg'\]; valid: "):
            split_seed({"cfg": 2.0})


class SeedsTest(TestCase, parameterized.TestCase):
    @parameterized.named_parameters(
        ("zero", 0, 0),
        ("small", 3, 2),
        ("negative", -1, 0),
        ("thousands", 5000, 4),
        ("int32_max", 2**31 - 1, 1),
        ("beyond_int32", 10**12, 3),
    )
    def test_batch_seed_rule(self, s, b):
        # Hand computation of s * 1_000_003 + b modulo 2**32.
        self.assertEqual(int(seeds.batch_seed(s, b)), (s * 1_000_003 + b) % 2**32)

    def test_batch_seed_takes_tensors(self):
        self.assertEqual(int(seeds.batch_seed(tf.constant(3), tf.constant(2))), 3_000_011)

    @parameterized.named_parameters(
        ("zero", 0, 1), ("small", 3, 2), ("negative", -7, 9), ("int32_max", 2**31 - 1, 5)
    )
    def test_request_seed_reproduces_every_batch(self, s, b):
        # A `generate` signature draws with batch_seed(request, 0).
        request = seeds.request_seed(s, b)
        self.assertBetween(request, -(2**31), 2**31 - 1)
        self.assertEqual(int(seeds.batch_seed(request, 0)), int(seeds.batch_seed(s, b)))

    def test_request_seed_of_batch_zero_is_the_seed(self):
        self.assertEqual(seeds.request_seed(4, 0), 4)


class DecodingTest(TestCase, parameterized.TestCase):
    @parameterized.parameters(
        dict(num_classes=3, cfg_scale=1.0, top_k=0, top_p=1.0, temperature=1.0),
        dict(num_classes=3, cfg_scale=2.5, top_k=4, top_p=0.9, temperature=0.8),
        dict(num_classes=0, cfg_scale=1.0, top_k=0, top_p=0.7, temperature=1.3),
    )
    def test_cached_sampling_equals_full_recomputation(
        self, num_classes, cfg_scale, top_k, top_p, temperature
    ):
        # The cached loop as `Sampler` runs it by default (XLA, the filters that are off left
        # out) in 4 chunks of 2, 2, 3 and 2 positions, against full recomputation in graph mode.
        model = make_prior(num_classes=num_classes)
        cls = tf.constant([0, 1, 2, 1], tf.int32)
        settings = SamplingSettings(temperature, top_k, top_p, cfg_scale)
        self.assertEqual(decoding.chunk_bounds(9, 4), [(0, 2), (2, 4), (4, 7), (7, 9)])
        cached = tf.function(
            lambda seed: decoding.sample_tokens(
                model, cls, seed, settings.traced(), settings.guided, num_chunks=4
            ),
            jit_compile=True,
        )
        full = tf.function(
            lambda: decoding.sample_tokens(model, cls, 7, settings, use_cache=False)
        )().numpy()
        got = cached(tf.constant(7)).numpy()
        self.assertEqual(got.shape, (4, 3, 3))
        np.testing.assert_array_equal(got, full)
        np.testing.assert_array_equal(got, cached(tf.constant(7)).numpy())
        self.assertFalse(np.array_equal(got, cached(tf.constant(8)).numpy()))

    def test_cached_sampling_under_the_mixed_bfloat16_policy(self):
        # A prior built and sampled under Keras's mixed_bfloat16 (as the training loop draws
        # its sample grids): the bfloat16 cache takes the step's keys, and the tokens equal full
        # recomputation, in graph mode and with XLA.
        with precision.use_policy("mixed_bfloat16"):
            model = make_prior()
            cls = tf.constant([0, 1, 2], tf.int32)
            self.assertEqual(model.init_cache(3, 2)[0][0].dtype, tf.bfloat16)
            full = tf.function(lambda: decoding.sample_tokens(model, cls, 5, use_cache=False))()
            for jit in (False, True):
                cached = tf.function(
                    lambda: decoding.sample_tokens(model, cls, 5, num_chunks=2), jit_compile=jit
                )()
                np.testing.assert_array_equal(cached.numpy(), full.numpy(), err_msg=f"jit={jit}")

    def test_sampling_compiles_with_xla(self):
        # One graph for every setting (the export's): the filters run under tf.cond; the same
        # tokens with and without XLA, and with any chunking of the cache.
        model = make_prior()
        cls = tf.constant([0, 2], tf.int32)
        settings = SamplingSettings(0.9, 3, 0.95, 2.0).tensors()

        def run(chunks):
            return lambda: decoding.sample_tokens(
                model, cls, 3, settings, guided=True, num_chunks=chunks
            )

        plain = tf.function(run(1))()
        xla = tf.function(run(2), jit_compile=True)()
        np.testing.assert_array_equal(plain.numpy(), xla.numpy())
        np.testing.assert_array_equal(plain.numpy(), tf.function(run(9))().numpy())

    def test_chunks(self):
        self.assertEqual(decoding.chunk_bounds(10, 3), [(0, 3), (3, 7), (7, 10)])
        self.assertEqual(decoding.chunk_bounds(2, 5), [(0, 1), (1, 2)])
        self.assertEqual(decoding.chunk_bounds(5, 1), [(0, 5)])
        # Chunks of at least DEFAULT_CHUNK_LENGTH positions, at most DEFAULT_CHUNK_LIMIT.
        self.assertEqual(decoding.DEFAULT_CHUNK_LENGTH, 64)
        self.assertEqual(decoding.DEFAULT_CHUNK_LIMIT, 8)
        self.assertEqual(
            [decoding.default_chunks(n) for n in (9, 64, 256, 1024, 4096)], [1, 1, 4, 8, 8]
        )

    def test_sampling_follows_the_model_distribution(self):
        # A prior whose logits ignore the input: every position is drawn from softmax(bias).
        model = make_prior(num_classes=0, codebook_size=4, grid_size=2)
        model.head.kernel.assign(tf.zeros_like(model.head.kernel))
        bias = np.log(np.array([0.5, 0.3, 0.15, 0.05], np.float32))
        model.head.bias.assign(bias)
        tokens = tf.function(lambda: decoding.sample_tokens(model, tf.zeros([3000], tf.int32), 1))()
        freq = np.bincount(tokens.numpy().ravel(), minlength=4) / tokens.numpy().size
        self.assertAllClose(freq, [0.5, 0.3, 0.15, 0.05], atol=0.02)

    def test_guidance_mixes_conditional_and_null_class_logits(self):
        # choose() on [cond; uncond] rows draws from process(uncond + s * (cond - uncond)).
        rng = np.random.default_rng(0)
        cond, uncond = rng.normal(size=(2, 5, 7)).astype(np.float32)
        settings = SamplingSettings(temperature=0.7, top_k=3, cfg_scale=2.5)
        got = decoding.choose(tf.constant(np.concatenate([cond, uncond])), settings, 9, 4, True)
        mixed = uncond + 2.5 * (cond - uncond)
        want = sampling.draw(sampling.process_logits(mixed, 0.7, 3, 1.0), 9, 4)
        self.assertAllEqual(got, want)
        classes = decoding.guided_classes(make_prior(), tf.constant([0, 2]), True)
        self.assertAllEqual(classes, [0, 2, 3, 3])  # then the null class (id num_classes)
        with self.assertRaisesRegex(ValueError, "guidance needs a class-conditional prior"):
            decoding.sample_tokens(
                make_prior(num_classes=0), tf.zeros([1], tf.int32), 0, guided=True
            )


class FakeTokenizer:
    """decode: token grid [B, h, w] -> an image [B, h, w, 3] holding token / 10."""

    def decode(self, tokens):
        return tf.repeat(tf.cast(tokens, tf.float32)[..., None] / 10.0, 3, axis=-1)


class SamplerTest(TestCase):
    def test_batches_follow_the_seed_rule_with_and_without_xla(self):
        # The default Sampler (XLA) against sample_tokens in graph mode and a graph-mode Sampler.
        model = make_prior()
        ids = class_plan(5, 3)
        np.testing.assert_array_equal(ids, [0, 0, 1, 1, 2])
        settings = SamplingSettings(top_k=5, cfg_scale=1.5)
        tokens, images = Sampler(model, FakeTokenizer(), class_dropout=0.1).sample(
            ids, 4, settings, batch_size=2
        )
        self.assertEqual(tokens.shape, (5, 3, 3))
        self.assertAllClose(images, np.repeat(tokens[..., None] / 10.0, 3, -1))
        # Batch b is sample_tokens with seed batch_seed(4, b).
        one = tf.function(lambda cls, seed: decoding.sample_tokens(model, cls, seed, settings))
        for b, start in enumerate(range(0, 5, 2)):
            batch = one(tf.constant(ids[start : start + 2]), seeds.batch_seed(4, b))
            np.testing.assert_array_equal(tokens[start : start + 2], batch)
        self.assertTrue(Sampler(model, FakeTokenizer()).jit_compile)  # XLA by default
        plain = Sampler(model, FakeTokenizer(), jit_compile=False, class_dropout=0.1)
        plain = plain.sample(ids, 4, settings, 2)[0]
        np.testing.assert_array_equal(tokens, plain)

    def test_class_plan_errors(self):
        with self.assertRaisesRegex(ValueError, r"class ids \[12\] out of range: valid are 0..9"):
            class_plan(10, 10, ["12"])
        with self.assertRaisesRegex(ValueError, "unconditional"):
            class_plan(10, 0, ["1"])
        with self.assertRaisesRegex(ValueError, "num_samples must be >= 1, got 0"):
            class_plan(0, 10)
        self.assertIsNone(class_plan(4, 0))

    def test_guidance_needs_a_prior_trained_with_class_dropout(self):
        no_dropout = Sampler(SimpleNamespace(num_classes=10), None, class_dropout=0.0)
        with self.assertRaisesRegex(
            ValueError, r"cfg_scale=2.0: .*PriorTraining.class_dropout > 0"
        ):
            no_dropout.sample([1, 2], settings=SamplingSettings(cfg_scale=2.0))
        uncond = Sampler(SimpleNamespace(num_classes=0), None)
        with self.assertRaisesRegex(ValueError, r"cfg_scale=1.5: .*unconditional"):
            uncond.sample([0], settings=SamplingSettings(cfg_scale=1.5))


if __name__ == "__main__":
    tf.test.main()
