"""Tests for vim_tf.data.folder: scanning, labels, splits and robust decoding of image folders."""

import io
import os
import re

import numpy as np
import tensorflow as tf
from PIL import Image

from testcase import TestCase
from vim_tf.data import folder
from vim_tf.data import input_pipeline as ip

RGB = np.array([[[255, 0, 0], [0, 255, 0], [0, 0, 255]], [[10, 20, 30], [40, 50, 60], [7, 8, 9]]])


def encode(image: Image.Image, fmt: str, **kwargs) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **kwargs)
    return buffer.getvalue()


def write(path: str, data: bytes) -> str:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(data)
    return path


def palette_image() -> Image.Image:
    image = Image.fromarray(np.array([[0, 1], [1, 2]], np.uint8), mode="P")
    image.putpalette([0, 0, 0, 10, 20, 30, 250, 240, 230] + [0] * (3 * 253))
    return image


def flat_jpeg(size=(8, 8), color=(200, 120, 40)) -> bytes:
    return encode(Image.new("RGB", size, color), "JPEG", quality=95)


class DecodeTest(TestCase):
    """Each mode's conversion against a hand computation."""

    def test_rgb_png_is_exact(self):
        out = folder.decode_image_bytes(encode(Image.fromarray(RGB.astype(np.uint8)), "PNG"))
        np.testing.assert_array_equal(out, RGB)
        self.assertEqual(out.dtype, np.uint8)

    def test_grayscale_is_replicated(self):
        gray = np.array([[0, 77], [128, 255]], np.uint8)
        out = folder.decode_image_bytes(encode(Image.fromarray(gray), "PNG"))
        np.testing.assert_array_equal(out, np.stack([gray] * 3, axis=-1))

    def test_rgba_is_composited_on_black(self):
        rgba = np.array([[[200, 100, 50, 128], [10, 20, 30, 0], [1, 2, 3, 255]]], np.uint8)
        out = folder.decode_image_bytes(encode(Image.fromarray(rgba), "PNG"))
        # rgb * alpha / 255: 200 * 128 / 255 = 100.4 -> 100, 100 -> 50.2 -> 50, 50 -> 25.1 -> 25.
        np.testing.assert_array_equal(out, [[[100, 50, 25], [0, 0, 0], [1, 2, 3]]])

    def test_palette_uses_its_colours(self):
        out = folder.decode_image_bytes(encode(palette_image(), "PNG"))
        np.testing.assert_array_equal(
            out, [[[0, 0, 0], [10, 20, 30]], [[10, 20, 30], [250, 240, 230]]]
        )

    def test_16_bit_png_is_scaled_by_257(self):
        values = np.array([[0, 257 * 100], [1000, 65535]], np.uint16)
        data = encode(Image.fromarray(values), "PNG")
        self.assertEqual(Image.open(io.BytesIO(data)).mode, "I;16")
        out = folder.decode_image_bytes(data)
        # 1000 / 257 = 3.89 -> 4.
        np.testing.assert_array_equal(out[..., 0], [[0, 100], [4, 255]])
        np.testing.assert_array_equal(out[..., 0], out[..., 2])

    def test_cmyk_tiff(self):
        cmyk = Image.new("CMYK", (2, 1), (0, 255, 0, 0))
        out = folder.decode_image_bytes(encode(cmyk, "TIFF"))
        np.testing.assert_array_equal(out, [[[255, 0, 255], [255, 0, 255]]])

    def test_jpeg_is_close(self):
        out = folder.decode_image_bytes(flat_jpeg())
        self.assertEqual(out.shape, (8, 8, 3))
        np.testing.assert_allclose(out.reshape(-1, 3).mean(0), [200, 120, 40], atol=3)

    def test_bad_data_raises(self):
        with self.assertRaises((ValueError, OSError)):
            folder.decode_image_bytes(b"not an image at all")
        with self.assertRaises((ValueError, OSError)):
            folder.decode_image_bytes(flat_jpeg((64, 64))[:300])


class FolderSourceTest(TestCase):
    def _mixed_folder(self):
        """train/test class folders with every awkward kind of file; returns (root, bad paths)."""
        root = self.get_temp_dir()
        tr = os.path.join(root, "train")
        write(
            os.path.join(tr, "cat", "a_rgb.png"),
            encode(Image.fromarray(RGB.astype(np.uint8)), "PNG"),
        )
        write(
            os.path.join(tr, "cat", "b_gray.png"),
            encode(Image.fromarray(np.full((3, 5), 9, np.uint8)), "PNG"),
        )
        write(
            os.path.join(tr, "cat", "c_rgba.png"),
            encode(Image.fromarray(np.full((4, 4, 4), 255, np.uint8)), "PNG"),
        )
        write(os.path.join(tr, "cat", "d_palette.gif"), encode(palette_image(), "GIF"))
        write(
            os.path.join(tr, "dog", "deep", "e_16bit.png"),
            encode(Image.fromarray(np.full((4, 6), 65535, np.uint16)), "PNG"),
        )
        write(os.path.join(tr, "dog", "f.JPG"), flat_jpeg())
        bad = [
            write(os.path.join(tr, "dog", "g_corrupt.png"), b"\x89PNG\r\n\x1a\n garbage"),
            write(os.path.join(tr, "dog", "h_truncated.jpg"), flat_jpeg((64, 64))[:300]),
        ]
        write(os.path.join(tr, "dog", "notes.txt"), b"not an image")
        write(os.path.join(tr, ".hidden", "x.png"), b"hidden folders are skipped")
        write(os.path.join(root, "test", "cat", "t1.bmp"), encode(Image.new("RGB", (4, 4)), "BMP"))
        write(
            os.path.join(root, "test", "emu", "t2.webp"), encode(Image.new("RGB", (4, 4)), "WEBP")
        )
        return root, sorted(bad)

    def test_mixed_folder_labels_skips_and_counts(self):
        root, bad = self._mixed_folder()
        source = folder.FolderSource(root)
        # Classes are the union over splits, sorted: cat, dog, emu.
        self.assertEqual(source.class_names, ["cat", "dog", "emu"])
        self.assertEqual(source.num_classes, 3)
        self.assertEqual(source.split_names, ("train", "test"))
        paths, labels = source.files("train")
        names = [os.path.relpath(p, os.path.join(root, "train")) for p in paths]
        self.assertEqual(
            names,
            [
                "cat/a_rgb.png",
                "cat/b_gray.png",
                "cat/c_rgba.png",
                "cat/d_palette.gif",
                "dog/deep/e_16bit.png",
                "dog/f.JPG",
                "dog/g_corrupt.png",
                "dog/h_truncated.jpg",
            ],
        )
        self.assertEqual(labels, [0, 0, 0, 0, 1, 1, 1, 1])
        self.assertEqual(source.files("test")[1], [0, 2])
        self.assertEqual(source.num_ignored, 1)
        self.assertEqual(os.path.basename(source.ignored_files[0]), "notes.txt")

        with self.assertLogs("absl", level="WARNING") as logs:
            ds = source.as_dataset("train")
            first = [(ex["image"].numpy(), int(ex["label"])) for ex in ds]
            second = [(ex["image"].numpy(), int(ex["label"])) for ex in ds]
        self.assertEqual([y for _, y in first], [0, 0, 0, 0, 1, 1])
        self.assertEqual([x.shape for x, _ in first][:2], [(2, 3, 3), (3, 5, 3)])
        np.testing.assert_array_equal(first[0][0], RGB)
        np.testing.assert_array_equal(first[4][0], np.full((4, 6, 3), 255))
        self.assertEqual(len(second), len(first))
        self.assertEqual(source.num_skipped, 2)
        self.assertEqual(sorted(source.skipped), bad)
        for reason in source.skipped.values():
            self.assertNotEmpty(reason)
        # Logged once per bad file, with its path, although the split was read twice.
        skip_lines = [line for line in logs.output if "skipping" in line]
        self.assertLen(skip_lines, 2)
        for path in bad:
            self.assertLen([line for line in skip_lines if path in line], 1)

    def test_make_dataset_on_a_folder_with_bad_files(self):
        root, bad = self._mixed_folder()
        source = folder.get_source(root, refresh=True)
        ds = ip.make_dataset(f"folder:{root}", "train", 3, 2, training=False)
        images = np.concatenate([b["image"].numpy() for b in ds])
        labels = np.concatenate([b["label"].numpy() for b in ds])
        self.assertEqual(images.shape, (6, 3, 3, 3))
        np.testing.assert_array_equal(labels, [0, 0, 0, 0, 1, 1])
        self.assertBetween(images.min(), 0.0, 1.0)
        self.assertBetween(images.max(), 0.0, 1.0)
        self.assertEqual(source.num_skipped, 2)
        self.assertEqual(sorted(p for p in folder.skipped_files() if p.startswith(root)), bad)
        train = ip.make_dataset(f"folder:{root}", "train", 3, 4, seed=0)
        for batch in train.take(3):  # repeats forever past the bad files
            self.assertEqual(batch["image"].shape, (4, 3, 3, 3))
        info = ip.dataset_info(f"folder:{root}")
        self.assertEqual(info, {"num_classes": 3, "num_examples": {"train": 8, "test": 2}})

    def test_holdout_every_tenth_sorted_file_unlabeled(self):
        root = self.get_temp_dir()
        for i in range(21):
            sub = "" if i % 2 else "nested"
            gray = Image.fromarray(np.full((2, 2), i, np.uint8))
            write(os.path.join(root, sub, f"img{i:02d}.png"), encode(gray, "PNG"))
        source = folder.FolderSource(root)
        self.assertIsNone(source.class_names)
        self.assertIsNone(source.num_classes)
        everything = sorted(
            os.path.relpath(os.path.join(d, f), root) for d, _, fs in os.walk(root) for f in fs
        )
        test_paths, test_labels = source.files("test")
        train_paths, _ = source.files("train")
        self.assertEqual([os.path.relpath(p, root) for p in test_paths], everything[::10])
        self.assertLen(test_paths, 3)
        self.assertLen(train_paths, 18)
        self.assertEqual(test_labels, [0, 0, 0])
        self.assertEqual(source.files("validation"), source.files("test"))  # alias
        self.assertEqual(
            ip.dataset_info(f"folder:{root}"),
            {"num_classes": None, "num_examples": {"train": 18, "test": 3}},
        )

    def test_val_folder_answers_to_test(self):
        root = self.get_temp_dir()
        write(os.path.join(root, "train", "a.png"), encode(Image.new("L", (2, 2)), "PNG"))
        write(os.path.join(root, "val", "b.png"), encode(Image.new("L", (2, 2)), "PNG"))
        source = folder.FolderSource(root)
        self.assertEqual(source.split_names, ("train", "val"))
        self.assertEqual(source.files("test"), source.files("val"))
        with self.assertRaisesRegex(ValueError, r"split 'extra'.*\['train', 'val'\]"):
            source.files("extra")

    def test_random_and_center_crops_come_from_the_image(self):
        root = self.get_temp_dir()
        columns = np.tile(np.arange(0, 80, 10, dtype=np.uint8)[None, :, None], (4, 1, 3))
        for name in ("a", "b"):
            write(
                os.path.join(root, "train", "x", f"{name}.png"),
                encode(Image.fromarray(columns), "PNG"),
            )
        write(os.path.join(root, "test", "x", "c.png"), encode(Image.fromarray(columns), "PNG"))
        windows = {tuple(range(s * 10, s * 10 + 40, 10)) for s in range(5)}
        seen = set()
        train = ip.make_dataset(f"folder:{root}", "train", 4, 2, seed=1)
        for batch in train.take(10):
            for image in np.rint(batch["image"].numpy()[..., 0] * 255).astype(int):
                self.assertIn(tuple(image[0]), windows)
                seen.add(tuple(image[0]))
        self.assertGreater(len(seen), 1)
        center = ip.make_dataset(f"folder:{root}", "test", 4, 1, training=False)
        image = next(iter(center))["image"].numpy()[0, ..., 0]
        np.testing.assert_allclose(image[0] * 255, [20, 30, 40, 50], atol=1e-4)

    def test_missing_and_empty_folders_are_named(self):
        missing = os.path.join(self.get_temp_dir(), "nowhere")
        with self.assertRaisesRegex(FileNotFoundError, "nowhere"):
            folder.FolderSource(missing)
        with self.assertRaisesRegex(FileNotFoundError, "nowhere"):
            ip.make_dataset(f"folder:{missing}", "train", 4, 2)
        empty = os.path.join(self.get_temp_dir(), "empty")
        write(os.path.join(empty, "readme.txt"), b"no images here")
        pattern = re.escape(repr(empty)) + " holds no image files.*1 other files"
        with self.assertRaisesRegex(ValueError, pattern):
            folder.FolderSource(empty)

    def test_everything_bad_yields_empty_not_crash(self):
        root = self.get_temp_dir()
        write(os.path.join(root, "x.png"), b"broken")
        source = folder.FolderSource(root)
        self.assertEqual(list(source.as_dataset("test")), [])
        self.assertEqual(source.num_skipped, 1)
        self.assertIsInstance(source.as_dataset("test"), tf.data.Dataset)


if __name__ == "__main__":
    import absl.testing.absltest

    absl.testing.absltest.main()
