"""vim_tf.utils.fs on the local disk and on TF's in-memory file system (`ram://`, a stand-in
for gs://), and the model-dir checks and trainer IO helpers built on it."""

import os
import uuid
from unittest import mock

import numpy as np
import tensorflow as tf
from absl.testing import parameterized

from testcase import TestCase
from vim_tf.training import trainer
from vim_tf.utils import fs
from vim_tf.utils import model_dir as model_dir_lib


class FsTest(TestCase, parameterized.TestCase):
    def _root(self, where):
        if where == "ram":
            root = f"ram://fs_test_{uuid.uuid4().hex[:8]}"
            self.addCleanup(lambda: tf.io.gfile.rmtree(root) if tf.io.gfile.exists(root) else None)
            return root
        return os.path.join(self.get_temp_dir(), uuid.uuid4().hex[:8])

    @parameterized.parameters("local", "ram")
    def test_local_copy_reads_like_the_original_and_is_removed(self, where):
        path = fs.join(self._root(where), "w.h5")
        fs.write_bytes(path, b"weights\x00")
        with fs.local_copy(path) as local:
            self.assertTrue(os.path.isabs(local) or where == "local")
            with open(local, "rb") as f:  # a plain local read: what h5py does
                self.assertEqual(f.read(), b"weights\x00")
        if where == "ram":
            self.assertNotEqual(local, path)
            self.assertFalse(os.path.exists(local))  # the temporary copy is gone
        else:
            self.assertEqual(local, path)  # local files are used in place
        self.assertTrue(fs.exists(path))

    @parameterized.parameters("local", "ram")
    def test_atomic_writes_round_trip_and_leave_no_temporaries(self, where):
        root = self._root(where)
        fs.write_json(fs.join(root, "a", "m.json"), {"b": 1, "a": [1.5]})
        self.assertEqual(
            fs.read_text(fs.join(root, "a", "m.json")), '{\n  "a": [\n    1.5\n  ],\n  "b": 1\n}\n'
        )
        fs.write_text(fs.join(root, "a", "m.json"), "over")  # replaces
        self.assertEqual(fs.read_text(fs.join(root, "a", "m.json")), "over")
        fs.write_bytes(fs.join(root, "b.bin"), b"\x00\xff")
        self.assertEqual(fs.read_bytes(fs.join(root, "b.bin")), b"\x00\xff")
        fs.append_text(fs.join(root, "log.txt"), "1\n")
        fs.append_text(fs.join(root, "log.txt"), "2\n")
        self.assertEqual(fs.read_text(fs.join(root, "log.txt")), "1\n2\n")
        arrays = {"x": np.arange(6, dtype=np.int32).reshape(2, 3), "y": np.array([0.5])}
        fs.save_npz(fs.join(root, "s.npz"), **arrays)
        loaded = fs.load_npz(fs.join(root, "s.npz"))
        self.assertEqual(sorted(loaded), ["x", "y"])
        np.testing.assert_array_equal(loaded["x"], arrays["x"])
        self.assertEqual(loaded["x"].dtype, np.int32)
        self.assertEqual(sorted(fs.listdir(root)), ["a", "b.bin", "log.txt", "s.npz"])
        self.assertEqual(fs.listdir(fs.join(root, "a")), ["m.json"])

    @parameterized.parameters("local", "ram")
    def test_glob_matches_names_literally_under_the_dir(self, where):
        root = fs.join(self._root(where), "run[1]*")  # glob characters in the dir name
        for name in ("ckpt-1.index", "ckpt-2.index", "ckpt-2_temp", ".hidden.index", "x.index2"):
            fs.write_text(fs.join(root, name), "")
        self.assertEqual(
            fs.glob(root, "*.index"), [fs.join(root, "ckpt-1.index"), fs.join(root, "ckpt-2.index")]
        )
        self.assertEqual(fs.glob(root, ".*.index"), [fs.join(root, ".hidden.index")])
        self.assertEqual(fs.glob(root, fs.escape("ckpt-[2]") + "*"), [])
        self.assertEqual(fs.glob(fs.join(root, "missing"), "*"), [])
        self.assertTrue(model_dir_lib.has_checkpoint(root))
        trainer._remove_stale_temporaries(root)  # a file named like a temp dir is not one
        self.assertTrue(fs.exists(fs.join(root, "ckpt-2_temp")))

    @parameterized.parameters("local", "ram")
    def test_move_dir_keeps_the_whole_tree(self, where):
        root = self._root(where)
        fs.write_text(fs.join(root, "tmp", "variables", "v.index"), "v")
        fs.write_text(fs.join(root, "tmp", "saved_model.pb"), "pb")
        fs.move_dir(fs.join(root, "tmp"), fs.join(root, "1"))
        self.assertFalse(fs.exists(fs.join(root, "tmp")))
        self.assertEqual(fs.read_text(fs.join(root, "1", "variables", "v.index")), "v")
        self.assertEqual(fs.read_text(fs.join(root, "1", "saved_model.pb")), "pb")
        fs.write_text(fs.join(root, "tmp2", "f"), "")
        with self.assertRaises(FileExistsError):
            fs.move_dir(fs.join(root, "tmp2"), fs.join(root, "1"))

    @parameterized.parameters("local", "ram")
    def test_missing_paths_raise_os_errors(self, where):
        root = self._root(where)
        with self.assertRaisesRegex(FileNotFoundError, "nothing.json"):
            fs.read_json(fs.join(root, "nothing.json"))
        with self.assertRaises(FileNotFoundError):
            fs.listdir(fs.join(root, "nothing"))
        fs.rmtree(fs.join(root, "nothing"), ignore_errors=True)
        with self.assertRaisesRegex(ValueError, r"model dir '.*nowhere' does not exist"):
            model_dir_lib.check_model_dir(fs.join(root, "nowhere"))
        fs.makedirs(fs.join(root, "empty"))
        with self.assertRaisesRegex(ValueError, "holds no model_info.json.*it is empty"):
            model_dir_lib.check_model_dir(fs.join(root, "empty"))
        model_dir_lib.write_model_info(fs.join(root, "m"), {"kind": "prior"})
        with self.assertRaisesRegex(ValueError, "no checkpoint in .*the prior model there"):
            model_dir_lib.check_model_dir(fs.join(root, "m"), ("prior",))
        fs.write_text(fs.join(root, "m", "ckpt-1.index"), "")
        self.assertEqual(model_dir_lib.check_model_dir(fs.join(root, "m")), {"kind": "prior"})

    @parameterized.parameters("local", "ram")
    def test_npz_bytes_depend_only_on_the_arrays_and_stream_in_chunks(self, where):
        root = self._root(where)
        arrays = {"a": np.arange(24, dtype=np.int32).reshape(2, 3, 4), "s": np.float32(2.5)}
        fs.save_npz(fs.join(root, "x.npz"), **arrays)
        fs.save_npz(fs.join(root, "y.npz"), **arrays)
        self.assertEqual(
            fs.read_bytes(fs.join(root, "x.npz")), fs.read_bytes(fs.join(root, "y.npz"))
        )
        back = fs.load_npz(fs.join(root, "x.npz"))
        np.testing.assert_array_equal(back["a"], arrays["a"])
        self.assertEqual(back["s"], 2.5)
        images = np.random.RandomState(0).randint(0, 255, (7, 2, 2, 3)).astype(np.uint8)
        with fs.write_npz_stream(fs.join(root, "z.npz")) as npz:
            npz.begin("images", np.uint8, images.shape)
            for start in range(0, 7, 3):  # rows in chunks of 3, 3, 1
                npz.write(images[start : start + 3])
            npz.add_array("empty", np.zeros((0, 5), np.float32))
        back = fs.load_npz(fs.join(root, "z.npz"))
        np.testing.assert_array_equal(back["images"], images)
        self.assertEqual(back["empty"].shape, (0, 5))
        with self.assertRaisesRegex(ValueError, "closed with 1 rows missing"):
            with fs.write_npz_stream(fs.join(root, "bad.npz")) as npz:
                npz.begin("images", np.uint8, images.shape)
                npz.write(images[:6])
                npz.close()
        self.assertFalse(fs.exists(fs.join(root, "bad.npz")))

    def test_paths(self):
        self.assertEqual(fs.abspath("gs://b/run"), "gs://b/run")
        self.assertEqual(fs.abspath("run"), os.path.join(os.getcwd(), "run"))
        self.assertEqual(fs.join("gs://b", "run", "x.json"), "gs://b/run/x.json")
        self.assertEqual(fs.dirname("gs://b/run/x.json"), "gs://b/run")
        self.assertEqual(fs.dirname("x.json"), os.getcwd())
        self.assertTrue(fs.is_remote("ram://x") and not fs.is_remote("/tmp/x"))

    def test_trainer_checks_on_a_remote_dir(self):
        root = self._root("ram")
        trainer._check_writable(fs.join(root, "run"))
        self.assertEqual(fs.listdir(fs.join(root, "run")), [])  # the probe is gone
        # Through a mock, not root-logger capture: absl's logging state depends on what other
        # tests of the same (xdist) worker did before.
        with mock.patch.object(trainer.logging, "info") as info:
            trainer._check_free_space(root, model=None)  # not measured: no model needed
        self.assertEqual(
            [c.args[0] % c.args[1:] for c in info.call_args_list],
            [f"not checking free space of {root} (not a local disk)"],
        )
