"""Bad input and bad configuration (issue 8): nothing crashes obscurely, nothing is lost.

1. A folder dataset full of malformed files: every readable image (any mode, any size) is
   converted to RGB at the requested size, every unreadable one is skipped, counted and logged,
   non-image files are ignored and counted, all the way through `make_dataset`.
2. Configuration errors fail in `train_lib.run` (what tools/train.py runs) before any work, with
   a message naming the parameter, its value and the valid values; no checkpoint is written.
3. Every tool pointed at a missing, empty, wrong-kind or checkpoint-less model dir exits with
   status 2 and one `error: ...` line, and leaves the dir as it was.

Per-mode decoding values are in tests/test_folder.py, gin parsing in tests/test_gin_configs.py,
training and resuming in tests/test_trainer.py.
"""

import hashlib
import io
import json
import os
import struct
import subprocess
import sys
import zlib
from unittest import mock

import numpy as np
from absl.testing import parameterized
from PIL import Image

from testcase import TestCase
from tiny import TINY_CLASSIFIER, TINY_VIM, tiny_vitvqgan_bindings, with_data_dir
from vim_tf.data import folder
from vim_tf.data import input_pipeline as ip
from vim_tf.training import train_lib
from vim_tf.utils import cli
from vim_tf.utils import model_dir as model_dir_lib

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SIZE = 16
BATCH = 4


# ----------------------------------------------------------------- file makers
def encode(image, fmt, **kwargs):
    buffer = io.BytesIO()
    image.save(buffer, fmt, **kwargs)
    return buffer.getvalue()


def _png_chunk(kind, data):
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_16bit_rgb(height, width, rgb):
    """A 48-bit RGB PNG (PIL cannot write one): 16 bits per channel, big-endian."""
    row = b"\0" + struct.pack(">" + "H" * 3 * width, *(list(rgb) * width))
    header = struct.pack(">IIBBBBB", width, height, 16, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", header)
        + _png_chunk(b"IDAT", zlib.compress(row * height))
        + _png_chunk(b"IEND", b"")
    )


def png_bomb():
    """A PNG header claiming 100000 x 100000 pixels (PIL refuses it as a decompression bomb)."""
    header = struct.pack(">IIBBBBB", 100_000, 100_000, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", header)
        + _png_chunk(b"IDAT", zlib.compress(b""))
        + _png_chunk(b"IEND", b"")
    )


def palette(index, transparency=None, fmt="PNG"):
    image = Image.new("P", (10, 12), index)
    image.putpalette([1, 2, 3, 250, 240, 230] + [0] * (3 * 254))
    kwargs = {} if transparency is None else {"transparency": transparency}
    return encode(image, fmt, **kwargs)


def animated_gif():
    frames = [Image.new("RGB", (8, 8), (255, 0, 0)), Image.new("RGB", (8, 8), (0, 0, 255))]
    return encode(frames[0], "GIF", save_all=True, append_images=frames[1:])


def noise_jpeg(size=64):
    pixels = np.random.default_rng(0).integers(0, 256, (size, size, 3), dtype=np.uint8)
    return encode(Image.fromarray(pixels), "JPEG", quality=90)


def noise_png(size=64):
    pixels = np.random.default_rng(1).integers(0, 256, (size, size, 3), dtype=np.uint8)
    return encode(Image.fromarray(pixels), "PNG")


# (relative path, bytes, expected RGB after conversion, tolerance). Every readable image is one
# solid colour, so its resized crops are that colour too, whatever the augmentation.
GOOD_TRAIN = [
    ("cat/a_rgb.jpg", lambda: encode(Image.new("RGB", (64, 48), (200, 120, 40)), "JPEG", quality=95), (200, 120, 40), 4),
    ("cat/b_gray.png", lambda: encode(Image.new("L", (24, 20), 77), "PNG"), (77, 77, 77), 0),
    # alpha 128 over black: 200 * 128 / 255 = 100.4 -> 100, 50.2 -> 50, 25.1 -> 25
    ("cat/c_rgba_half.png", lambda: encode(Image.new("RGBA", (20, 20), (200, 100, 50, 128)), "PNG"), (100, 50, 25), 0),
    ("cat/d_palette.png", lambda: palette(1), (250, 240, 230), 0),
    ("cat/e_palette_transparent.gif", lambda: palette(0, transparency=0, fmt="GIF"), (0, 0, 0), 0),
    ("cat/f_gray16.png", lambda: encode(Image.fromarray(np.full((20, 20), 257 * 100, np.uint16)), "PNG"), (100, 100, 100), 0),
    ("cat/g_rgb48.png", lambda: png_16bit_rgb(20, 20, (65535, 0x8080, 0)), (255, 128, 0), 0),
    ("cat/h_bilevel.png", lambda: encode(Image.new("1", (20, 20), 1), "PNG"), (255, 255, 255), 0),
    ("dog/i_gray_alpha.png", lambda: encode(Image.new("LA", (20, 20), (200, 255)), "PNG"), (200, 200, 200), 0),
    ("dog/j_cmyk.jpg", lambda: encode(Image.new("CMYK", (20, 20), (0, 255, 0, 0)), "JPEG", quality=95), (255, 0, 255), 4),
    ("dog/k_tiny_3x5.png", lambda: encode(Image.new("RGB", (5, 3), (5, 6, 7)), "PNG"), (5, 6, 7), 0),
    ("dog/l_1x1.bmp", lambda: encode(Image.new("RGB", (1, 1), (90, 80, 70)), "BMP"), (90, 80, 70), 0),
    ("dog/m_huge_5000x4000.jpg", lambda: encode(Image.new("RGB", (5000, 4000), (30, 60, 90)), "JPEG", quality=90), (30, 60, 90), 4),
    ("dog/n_thin_2x300.png", lambda: encode(Image.new("RGB", (2, 300), (1, 2, 3)), "PNG"), (1, 2, 3), 0),
    ("dog/o_animated.gif", animated_gif, (255, 0, 0), 0),
    ("dog/p_upper_case.PNG", lambda: encode(Image.new("RGB", (20, 20), (33, 66, 99)), "PNG"), (33, 66, 99), 0),
    ("dog/q_lossless.webp", lambda: encode(Image.new("RGB", (20, 20), (120, 130, 140)), "WEBP", lossless=True), (120, 130, 140), 0),
    ("dog/r_gray16.tif", lambda: encode(Image.fromarray(np.full((20, 20), 65535, np.uint16)), "TIFF"), (255, 255, 255), 0),
]  # fmt: skip
BAD_TRAIN = [
    ("cat/s_truncated.jpg", lambda: noise_jpeg()[:300]),
    ("cat/t_truncated.png", lambda: noise_png()[: len(noise_png()) // 2]),
    ("dog/u_empty.jpg", lambda: b""),
    ("dog/v_error_page.jpg", lambda: b"<html><body>404 Not Found</body></html>"),
    ("dog/w_decompression_bomb.png", png_bomb),
    ("dog/x_garbage.png", lambda: b"\x89PNG\r\n\x1a\n" + b"\x00garbage" * 20),
]
IGNORED_TRAIN = [
    ("cat/notes.txt", b"some notes"),
    ("cat/.DS_Store", b"\x00\x00\x00\x01Bud1"),
    ("cat/._a_rgb.jpg", b"\x00\x05\x16\x07 AppleDouble"),  # a macOS resource fork
    ("dog/Thumbs.db", b"\xd0\xcf\x11\xe0"),
    ("dog/README", b""),
    ("dog/labels.json", b"{}"),
]
GOOD_TEST = [
    ("cat/good.png", lambda: encode(Image.new("RGB", (20, 20), (11, 22, 33)), "PNG"), (11, 22, 33), 0),
    ("dog/good_gray.jpg", lambda: encode(Image.new("L", (30, 20), 150), "JPEG", quality=95), (150, 150, 150), 4),
]  # fmt: skip
BAD_TEST = [("cat/bad.jpg", lambda: noise_jpeg()[:500])]
IGNORED_TEST = [("dog/.DS_Store", b"\x00\x00\x00\x01Bud1")]


def write(path, data):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(data)
    return path


class MalformedImageFolderTest(TestCase):
    def _build(self):
        root = os.path.join(self.get_temp_dir(), "malformed")
        for split, good, bad, ignored in (
            ("train", GOOD_TRAIN, BAD_TRAIN, IGNORED_TRAIN),
            ("test", GOOD_TEST, BAD_TEST, IGNORED_TEST),
        ):
            for rel, make, _, _ in good:
                write(os.path.join(root, split, rel), make())
            for rel, make in bad:
                write(os.path.join(root, split, rel), make())
            for rel, data in ignored:
                write(os.path.join(root, split, rel), data)
        return root

    def _check_batches(self, batches, expected_colours, tolerances):
        """Every image is float32 [SIZE, SIZE, 3] in [0, 1] and one solid expected colour."""
        colours = []
        for batch in batches:
            images = batch["image"].numpy()
            self.assertEqual(images.dtype, np.float32)
            self.assertEqual(images.shape[1:], (SIZE, SIZE, 3))
            self.assertGreaterEqual(images.min(), 0.0)
            self.assertLessEqual(images.max(), 1.0)
            self.assertTrue(set(batch["label"].numpy().tolist()) <= {0, 1})
            for image in np.rint(images * 255):
                mean = image.reshape(-1, 3).mean(0)
                self.assertLessEqual(np.abs(image - mean).max(), 4.0, msg=f"not solid: {mean}")
                colours.append(mean)
        for colour in colours:
            gaps = [np.abs(colour - c).max() - tol for c, tol in zip(expected_colours, tolerances)]
            self.assertLessEqual(min(gaps), 0.0, msg=f"colour {colour} is none of the inputs")
        return colours

    def test_malformed_folder_end_to_end(self):
        root = self._build()
        dataset = f"folder:{root}"
        with self.assertLogs("absl", level="WARNING") as logs:
            source = folder.get_source(root, refresh=True)
            info = ip.dataset_info(dataset)
            # Evaluation passes: sorted order, every readable file once.
            evaluated = {
                split: list(ip.make_dataset(dataset, split, SIZE, BATCH, training=False))
                for split in ("train", "test")
            }
            train = ip.make_dataset(dataset, "train", SIZE, BATCH, seed=0, random_flip=True)
            train_batches = list(train.take(12))  # > 2 epochs of the 18 readable images

        # The scan: every file with an image extension counts as an example until read;
        # hidden files and non-image files are ignored and counted.
        self.assertEqual(source.class_names, ["cat", "dog"])
        self.assertEqual(
            info,
            {
                "num_classes": 2,
                "num_examples": {
                    "train": len(GOOD_TRAIN) + len(BAD_TRAIN),
                    "test": len(GOOD_TEST) + len(BAD_TEST),
                },
            },
        )
        ignored = sorted(os.path.basename(p) for p in source.ignored_files)
        expected_ignored = [os.path.basename(r) for r, _ in IGNORED_TRAIN + IGNORED_TEST]
        self.assertEqual(ignored, sorted(expected_ignored))
        self.assertEqual(source.num_ignored, 7)

        # Kept vs skipped: every readable file came through, every unreadable one was skipped.
        for split, good in (("train", GOOD_TRAIN), ("test", GOOD_TEST)):
            batches = evaluated[split]
            kept = sum(len(b["label"]) for b in batches)
            self.assertEqual(kept, len(good), split)
            colours = self._check_batches(batches, [g[2] for g in good], [g[3] for g in good])
            # Sorted order is kept: image i is the i-th readable file, with its own colour.
            for colour, (rel, _, want, tol) in zip(colours, good):
                self.assertLessEqual(np.abs(colour - want).max(), tol, msg=rel)
            labels = np.concatenate([b["label"].numpy() for b in batches])
            want_labels = [0 if rel.startswith("cat/") else 1 for rel, *_ in good]
            np.testing.assert_array_equal(labels, want_labels, err_msg=split)
        bad_paths = sorted(
            [os.path.join(root, "train", rel) for rel, _ in BAD_TRAIN]
            + [os.path.join(root, "test", rel) for rel, _ in BAD_TEST]
        )
        self.assertEqual(source.num_skipped, 7)
        self.assertEqual(sorted(source.skipped), bad_paths)
        bomb = os.path.join(root, "train", "dog", "w_decompression_bomb.png")
        self.assertIn("DecompressionBombError", source.skipped[bomb])
        for path in bad_paths:
            self.assertNotEmpty(source.skipped[path])
            # Logged once with its path and the running count, though read more than once.
            lines = [line for line in logs.output if f"skipping {path} " in line]
            self.assertLen(lines, 1, msg=path)
            self.assertRegex(lines[0], r"\d+ unreadable files so far")
        self.assertTrue(any("ignored 7 hidden files or files without" in s for s in logs.output))

        # Training: static shapes for the trainer, only real (converted) pixels, both classes.
        self.assertEqual(train.element_spec["image"].shape.as_list(), [BATCH, SIZE, SIZE, 3])
        self.assertLen(train_batches, 12)
        for batch in train_batches:
            self.assertEqual(batch["image"].shape, (BATCH, SIZE, SIZE, 3))
        colours = self._check_batches(
            train_batches, [g[2] for g in GOOD_TRAIN], [g[3] for g in GOOD_TRAIN]
        )
        self.assertLen(colours, 12 * BATCH)
        labels = np.concatenate([b["label"].numpy() for b in train_batches])
        self.assertEqual(set(labels.tolist()), {0, 1})
        # Training skipped nothing new; the process-wide skip report names every bad file.
        self.assertEqual(source.num_skipped, 7)
        self.assertEqual(folder.skipped_files().keys() & set(bad_paths), set(bad_paths))

    def test_split_of_only_unreadable_files_fails_at_once(self):
        root = os.path.join(self.get_temp_dir(), "all_bad")
        bad = write(os.path.join(root, "train", "a", "x.jpg"), noise_jpeg()[:300])
        write(os.path.join(root, "train", "a", "y.png"), b"")
        write(os.path.join(root, "test", "a", "z.png"), noise_png())
        folder.get_source(root, refresh=True)
        # Not an endless (or silently empty) pipeline: an error naming the split and a file.
        with self.assertRaisesRegex(
            ValueError,
            r"none of the 2 image files of split 'train' of folder dataset .*all_bad.* can be "
            rf"decoded \(e\.g\. {bad}: OSError",
        ):
            ip.make_dataset(f"folder:{root}", "train", SIZE, BATCH, seed=0)
        # The readable split still works.
        batch = next(iter(ip.make_dataset(f"folder:{root}", "test", SIZE, BATCH, training=False)))
        self.assertEqual(batch["image"].shape, (1, SIZE, SIZE, 3))

    def test_split_without_image_files_fails_at_once(self):
        root = os.path.join(self.get_temp_dir(), "no_train_images")
        write(os.path.join(root, "train", "a", "notes.txt"), b"no images")
        write(os.path.join(root, "test", "a", "z.png"), noise_png())
        folder.get_source(root, refresh=True)
        with self.assertRaisesRegex(
            ValueError, r"split 'train' of folder dataset .* holds no image files.*'test': 1"
        ):
            ip.make_dataset(f"folder:{root}", "train", SIZE, BATCH, seed=0)


# ----------------------------------------------------------------- configuration errors
QUANTIZER = "gin/experiments/digits_vitvqgan.gin"
PRIOR = "gin/experiments/digits_vim.gin"
CLASSIFIER = "gin/experiments/digits_classifier.gin"
FAKE_QUANTIZER_INFO = {
    "kind": "quantizer",
    "image_size": 16,
    "patch_size": 4,
    "grid_size": 4,
    "codebook_size": 16,
    "code_dim": 4,
}
# Files the trainer writes before it builds the model (config.gin, command.txt): a model
# constructor error leaves those but never a checkpoint or model_info.json.
CONFIG_ONLY = {"config.gin", "command.txt"}


def snapshot(path):
    """{relative path: (size, sha1)} of every file and dir under `path` (None if missing)."""
    if not os.path.exists(path):
        return None
    out = {}
    for dirpath, dirnames, filenames in os.walk(path):
        for name in dirnames:
            out[os.path.relpath(os.path.join(dirpath, name), path) + "/"] = "dir"
        for name in filenames:
            full = os.path.join(dirpath, name)
            with open(full, "rb") as f:
                out[os.path.relpath(full, path)] = (
                    os.path.getsize(full),
                    hashlib.sha1(f.read()).hexdigest(),
                )
    return out


def make_model_dir(path, kind=None, checkpoint=False, **info):
    """A fabricated model dir: model_info.json of `kind` (if any), an empty checkpoint index."""
    os.makedirs(path, exist_ok=True)
    if kind is not None:
        model_dir_lib.write_model_info(path, dict(info, kind=kind))
    if checkpoint:
        write(os.path.join(path, "checkpoint"), b'model_checkpoint_path: "ckpt-2"\n')
        write(os.path.join(path, "ckpt-2.index"), b"")
    return path


def make_export_dir(path):
    """What tools/export.py writes (a SavedModel version dir): not a model dir."""
    write(os.path.join(path, "saved_model.pb"), b"\x08\x01")
    write(os.path.join(path, "export_info.json"), json.dumps({"kind": "quantizer"}).encode())
    return path


CONFIG_CASES = [
    # name, experiment, extra bindings, --quantizer_dir, message regex, model dir untouched
    ("unknown_parameter", QUANTIZER, ["train.trian_steps = 5"], None,
     r"'train' doesn't have a parameter named 'trian_steps'\. Valid parameters of train: \[.*'train_steps'", True),
    ("unknown_model_parameter", QUANTIZER, ["ViTVQGAN.codebok_size = 3"], None,
     r"unknown gin parameter ViTVQGAN\.codebok_size: ViTVQGAN takes \[.*'codebook_size'", True),
    ("string_for_int", QUANTIZER, ["ViTVQGAN.codebook_size = 'big'"], None,
     r"ViTVQGAN\.codebook_size must be an int >= 1, got 'big' \(a str\)", False),
    ("float_for_int", QUANTIZER, ["ViTVQGAN.code_dim = 4.0"], None,
     r"ViTVQGAN\.code_dim must be an int >= 1, got 4\.0 \(a float\)", False),
    ("float_train_steps", QUANTIZER, ["train.train_steps = 1.5"], None,
     r"train\.train_steps must be a positive int, got 1\.5", True),
    ("image_size_not_divisible", QUANTIZER, ["IMAGE_SIZE = 30"], None,
     r"ViTVQGAN\.image_size=30 is not divisible by ViTVQGAN\.patch_size=4: use an image size "
     r"that is a multiple of the patch size \(e\.g\. 28 or 32\)", False),
    ("codebook_size_zero", QUANTIZER, ["ViTVQGAN.codebook_size = 0"], None,
     r"ViTVQGAN\.codebook_size must be an int >= 1, got 0", False),
    ("codebook_size_negative", QUANTIZER, ["ViTVQGAN.codebook_size = -8"], None,
     r"ViTVQGAN\.codebook_size must be an int >= 1, got -8", False),
    ("code_dim_zero", QUANTIZER, ["ViTVQGAN.code_dim = 0"], None,
     r"ViTVQGAN\.code_dim must be an int >= 1, got 0", False),
    ("heads_do_not_divide_width", QUANTIZER,
     ["ViTVQGAN.encoder = {'num_layers': 1, 'num_heads': 3, 'hidden_dim': 16, 'mlp_dim': 32}"], None,
     r"ViTVQGAN\.encoder\['num_heads'\]=3 does not divide ViTVQGAN\.encoder\['hidden_dim'\]=16: "
     r"valid head counts for width 16 are \[1, 2, 4, 8, 16\]", False),
    ("width_not_multiple_of_4", QUANTIZER,
     ["ViTVQGAN.decoder = {'num_layers': 1, 'num_heads': 2, 'hidden_dim': 18, 'mlp_dim': 32}"], None,
     r"ViTVQGAN\.decoder\['hidden_dim'\]=18 is not a multiple of 4", False),
    ("batch_size_zero", QUANTIZER, ["BATCH_SIZE = 0"], None,
     r"make_dataset\.batch_size \(%BATCH_SIZE\) must be a positive int, got 0", True),
    ("quantizer_dir_for_a_quantizer", QUANTIZER, [], "quantizer",
     r"--quantizer_dir is for a prior \(VIM\), but this experiment trains a ViTVQGAN "
     r"\(create_model\.model_class = @VQGANTraining\)", True),
    ("prior_grid_mismatch", PRIOR, ["VIM.grid_size = 5"], "quantizer",
     r"VIM\.grid_size is 5 but the quantizer at .* has grid_size 4", False),
    ("prior_codebook_mismatch", PRIOR, ["VIM.codebook_size = 32"], "quantizer",
     r"VIM\.codebook_size is 32 but the quantizer at .* has codebook_size 16", False),
    ("prior_num_classes_negative", PRIOR, ["VIM.num_classes = -1"], "quantizer",
     r"VIM\.num_classes must be an int >= 0, got -1", False),
    ("prior_fewer_classes_than_data", PRIOR, ["VIM.num_classes = 5"], "quantizer",
     r"VIM\.num_classes=5 but dataset 'digits' has 10 classes \(labels 0\.\.9\): set "
     r"VIM\.num_classes = 10", True),
    ("prior_heads_do_not_divide_width", PRIOR, ["VIM.num_heads = 3"], "quantizer",
     r"VIM\.num_heads=3 does not divide VIM\.hidden_dim=16", False),
    ("prior_without_quantizer", PRIOR, [], None,
     r"VIM needs its quantizer: pass --quantizer_dir=DIR", True),
    ("prior_quantizer_missing", PRIOR, [], "missing",
     r"model dir '.*missing_quantizer' does not exist", True),
    ("prior_quantizer_wrong_kind", PRIOR, [], "classifier",
     r"'.*classifier_dir' holds a 'classifier' model, not a 'quantizer'", True),
    ("prior_quantizer_without_checkpoint", PRIOR, [], "no_checkpoint",
     r"no checkpoint in '.*quantizer_without_checkpoint'", True),
    ("classifier_num_classes_negative", CLASSIFIER, ["ImageClassifier.num_classes = -1"], None,
     r"ImageClassifier\.num_classes must be an int >= 2, got -1", False),
    ("classifier_image_too_small", CLASSIFIER, ["IMAGE_SIZE = 2"], None,
     r"ImageClassifier\.image_size must be an int >= 4, got 2 \(2 conv blocks", False),
]  # fmt: skip


class ConfigErrorTest(TestCase, parameterized.TestCase):
    """Each bad setting through the real entry point; the run stops before any work."""

    def _quantizer_dir(self, which):
        base = self.get_temp_dir()
        if which == "quantizer":
            path = os.path.join(base, "fake_quantizer")
            return make_model_dir(path, checkpoint=True, **FAKE_QUANTIZER_INFO)
        if which == "missing":
            return os.path.join(base, "missing_quantizer")
        if which == "classifier":
            return make_model_dir(os.path.join(base, "classifier_dir"), "classifier", True)
        if which == "no_checkpoint":
            path = os.path.join(base, "quantizer_without_checkpoint")
            return make_model_dir(path, **FAKE_QUANTIZER_INFO)
        return None

    @parameterized.named_parameters(*CONFIG_CASES)
    def test_fails_before_any_work(self, experiment, extra, quantizer, pattern, untouched):
        data_dir = os.path.join(self.get_temp_dir(), "tfds")
        tiny = {QUANTIZER: None, PRIOR: TINY_VIM, CLASSIFIER: TINY_CLASSIFIER}[experiment]
        if tiny is None:
            bindings = tiny_vitvqgan_bindings(data_dir, *extra)
        else:
            bindings = with_data_dir(tiny, data_dir, *extra)
        quantizer_dir = self._quantizer_dir(quantizer)
        before = snapshot(quantizer_dir) if quantizer_dir else None
        model_dir = os.path.join(self.get_temp_dir(), "model")
        with self.assertRaisesRegex(ValueError, pattern):
            train_lib.run(model_dir, [experiment], bindings, quantizer_dir=quantizer_dir)
        # No work: no checkpoint, no model_info.json, no data prepared.
        self.assertFalse(os.path.exists(data_dir), "the dataset was prepared")
        if untouched:
            self.assertFalse(os.path.exists(model_dir), "the model dir was created")
        elif os.path.exists(model_dir):
            self.assertLessEqual(set(os.listdir(model_dir)), CONFIG_ONLY)
        if quantizer_dir:
            self.assertEqual(snapshot(quantizer_dir), before)


# ----------------------------------------------------------------- tools on wrong model dirs
def _dirs(base):
    """The wrong dirs every tool is tried on (created fresh per test)."""
    return {
        "missing": os.path.join(base, "does_not_exist"),
        "empty": make_model_dir(os.path.join(base, "empty")),
        "export_dir": make_export_dir(os.path.join(base, "export", "1")),
        "classifier": make_model_dir(os.path.join(base, "classifier"), "classifier", True),
        "quantizer": make_model_dir(os.path.join(base, "quantizer"), checkpoint=True, **FAKE_QUANTIZER_INFO),
        "prior": make_model_dir(os.path.join(base, "prior"), "prior", True, grid_size=4, codebook_size=16),
        "quantizer_no_ckpt": make_model_dir(os.path.join(base, "quantizer_no_ckpt"), **FAKE_QUANTIZER_INFO),
        "prior_no_ckpt": make_model_dir(os.path.join(base, "prior_no_ckpt"), "prior", grid_size=4),
    }  # fmt: skip


MISSING = r"error: model dir '.*does_not_exist' does not exist: expected a trained vim_tf model dir"
EMPTY = (
    r"error: '.*empty' holds no model_info\.json: not a trained vim_tf model dir \(it is empty\)"
)
EXPORT = r"error: '.*export/1' holds no model_info\.json: .*SavedModel export .*--saved_model"
NO_CKPT = (
    r"error: no checkpoint in '.*_no_ckpt': the (quantizer|prior) model there has not saved one"
)


def _wrong_kind(kind, wanted, purpose):
    return rf"error: '.*{kind}' holds a '{kind}' model, not a '{wanted}': {purpose}"


# tool -> (argv template, [(dir key, stderr regex)]); {dir} is the model dir, {out} a fresh path.
TOOLS = {
    "evaluate": (
        ["--model_dir={dir}", "--output={out}/m.json"],
        [("missing", MISSING), ("empty", EMPTY), ("export_dir", EXPORT), ("quantizer_no_ckpt", NO_CKPT)],
    ),
    "sample": (
        ["--model_dir={dir}", "--output_dir={out}"],
        [("missing", MISSING), ("classifier", _wrong_kind("classifier", "prior", "tools/sample.py samples from a prior")), ("prior_no_ckpt", NO_CKPT)],
    ),
    "export": (
        ["--model_dir={dir}", "--export_dir={out}"],
        [("empty", EMPTY), ("export_dir", EXPORT), ("prior_no_ckpt", NO_CKPT)],
    ),
    "encode": (
        ["--quantizer_dir={dir}", "--output_dir={out}"],
        [("missing", MISSING), ("prior", _wrong_kind("prior", "quantizer", "tools/encode.py encodes images")), ("quantizer_no_ckpt", NO_CKPT)],
    ),
    "linear_probe": (
        ["--model_dir={dir}", "--output={out}/probe.json"],
        [("empty", EMPTY), ("quantizer", _wrong_kind("quantizer", "prior", "tools/linear_probe.py probes a prior")), ("prior_no_ckpt", NO_CKPT)],
    ),
    "train": (
        ["--gin_file=gin/experiments/digits_vim.gin", "--quantizer_dir={dir}", "--model_dir={out}"],
        [("missing", MISSING), ("classifier", _wrong_kind("classifier", "quantizer", "--quantizer_dir must be a trained stage-1")), ("quantizer_no_ckpt", NO_CKPT)],
    ),
}  # fmt: skip
TOOL_CASES = [
    (f"{tool}_{key}", tool, key, pattern)
    for tool, (_, cases) in TOOLS.items()
    for key, pattern in cases
]


def run_tool(tool, *args):
    return subprocess.run(
        [sys.executable, os.path.join("tools", f"{tool}.py"), *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )


class ToolWrongDirTest(TestCase, parameterized.TestCase):
    @parameterized.named_parameters(*TOOL_CASES)
    def test_tool_says_what_is_wrong(self, tool, key, pattern):
        base = self.get_temp_dir()
        model_dir = _dirs(base)[key]
        out = os.path.join(base, "tool_output")
        before = snapshot(os.path.dirname(model_dir))
        argv = [a.format(dir=model_dir, out=out) for a in TOOLS[tool][0]]
        proc = run_tool(tool, *argv)
        self.assertEqual(proc.returncode, cli.EXIT_USER_ERROR, proc.stderr)
        # One line, no traceback, saying what is wrong with which dir.
        self.assertNotIn("Traceback", proc.stderr)
        self.assertLen(proc.stderr.strip().splitlines(), 1, proc.stderr)
        self.assertRegex(proc.stderr.strip(), "^" + pattern)
        # Nothing in or beside the given dir changed, and no output was started.
        self.assertEqual(snapshot(os.path.dirname(model_dir)), before)
        self.assertFalse(os.path.exists(out))

    def test_error_after_tensorflow_loads_is_one_line_too(self):
        """A config error from deep inside training (not the tools' early checks)."""
        model_dir = os.path.join(self.get_temp_dir(), "q")
        proc = run_tool(
            "train",
            f"--gin_file={QUANTIZER}",
            "--gin_bindings=IMAGE_SIZE = 30",
            f"--model_dir={model_dir}",
        )
        self.assertEqual(proc.returncode, cli.EXIT_USER_ERROR, proc.stderr[-3000:])
        self.assertNotIn("Traceback", proc.stderr)
        errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
        self.assertEqual(
            errors,
            [
                "error: ViTVQGAN.image_size=30 is not divisible by ViTVQGAN.patch_size=4: use an "
                "image size that is a multiple of the patch size (e.g. 28 or 32)"
            ],
        )
        self.assertFalse(any(name.startswith("ckpt") for name in os.listdir(model_dir)))
        self.assertNotIn(model_dir_lib.MODEL_INFO_FILE, os.listdir(model_dir))


class LibraryWrongDirTest(TestCase, parameterized.TestCase):
    """The library entry points behind the tools check the dir the same way (for callers that
    do not go through tools/, e.g. the main job), before building anything."""

    def _entry_points(self, out):
        from vim_tf.data import tokens
        from vim_tf.eval import evaluator, generate, linear_probe
        from vim_tf.export import exporter
        from vim_tf.models import loading

        return {
            "evaluate": lambda d: evaluator.evaluate(d, os.path.join(out, "m.json")),
            "sample": lambda d: generate.generate(d, out, 4),
            "export": lambda d: exporter.export_model_dir(d, out),
            "linear_probe": lambda d: linear_probe.run_linear_probe(d, os.path.join(out, "p.json")),
            "encode": lambda d: tokens.encode_splits(d, out),
            "load_tokenizer": loading.load_tokenizer,
            "load_classifier": loading.load_classifier,
            "load_network": lambda d: loading.load_network(d, kinds=("prior",), purpose="a prior"),
        }

    @parameterized.parameters(
        ("evaluate", "export_dir", r"holds no model_info\.json.*SavedModel export"),
        ("evaluate", "quantizer_no_ckpt", r"no checkpoint in '.*quantizer_no_ckpt'"),
        ("sample", "missing", r"model dir '.*does_not_exist' does not exist"),
        ("sample", "classifier", r"holds a 'classifier' model, not a 'prior': sampling needs a prior"),
        ("sample", "prior_no_ckpt", r"no checkpoint in '.*prior_no_ckpt'"),
        ("export", "empty", r"holds no model_info\.json: not a trained vim_tf model dir \(it is empty\)"),
        ("export", "prior_no_ckpt", r"no checkpoint in '.*prior_no_ckpt'"),
        ("linear_probe", "classifier", r"holds a 'classifier' model, not a 'prior': linear_probe\.py probes a prior"),
        ("linear_probe", "prior_no_ckpt", r"no checkpoint in"),
        ("encode", "prior", r"holds a 'prior' model, not a 'quantizer'"),
        ("load_tokenizer", "quantizer_no_ckpt", r"no checkpoint in '.*quantizer_no_ckpt'"),
        ("load_tokenizer", "missing", r"does not exist"),
        ("load_network", "classifier", r"holds a 'classifier' model, not a 'prior': a prior"),
        ("load_network", "prior_no_ckpt", r"no checkpoint in '.*prior_no_ckpt'"),
        ("load_classifier", "prior", r"holds a 'prior' model, not a 'classifier': the scoring network"),
        ("load_classifier", "empty", r"it is empty"),
    )  # fmt: skip
    def test_entry_point_refuses(self, entry, key, pattern):
        base = self.get_temp_dir()
        model_dir = _dirs(base)[key]
        out = os.path.join(base, "library_output")
        before = snapshot(base)
        with mock.patch.object(model_dir_lib, "read_model_config") as read_config:
            with self.assertRaisesRegex(ValueError, pattern):
                self._entry_points(out)[entry](model_dir)
        read_config.assert_not_called()  # refused before anything was rebuilt
        self.assertEqual(snapshot(base), before)

    def test_damaged_model_info_is_named(self):
        model_dir = make_model_dir(os.path.join(self.get_temp_dir(), "damaged"))
        write(os.path.join(model_dir, model_dir_lib.MODEL_INFO_FILE), b'{"kind": "pri')
        with self.assertRaisesRegex(ValueError, r"model_info\.json is not valid JSON .* damaged"):
            model_dir_lib.check_model_dir(model_dir, ("prior",))

    def test_cli_guard(self):
        def main(argv):
            raise ValueError(f"bad thing in {argv[1]}")

        with mock.patch("sys.stderr", new_callable=io.StringIO) as stderr:
            self.assertEqual(cli.guard(main)(["tool", "x"]), cli.EXIT_USER_ERROR)
        self.assertEqual(stderr.getvalue(), "error: bad thing in x\n")
        # Programming errors are not user errors: they keep their traceback.
        with self.assertRaises(KeyError):
            cli.guard(lambda argv: {}["missing"])(["tool"])
        with mock.patch.dict(os.environ, {"VIM_TF_TRACEBACK": "1"}):
            with self.assertRaisesRegex(ValueError, "bad thing in y"):
                cli.guard(main)(["tool", "y"])


if __name__ == "__main__":
    import absl.testing.absltest

    absl.testing.absltest.main()
