"""The installable package: what pyproject.toml declares covers every import of vim_tf; the wheel
ships the gin configs and its binaries train from any working directory.

The import checks run vim_tf in a subprocess whose `sitecustomize` blocks every top-level module
that neither the standard library nor a declared runtime dependency (or one of their own declared
dependencies, from the installed metadata) provides, as if it were not installed.
"""

import ast
import importlib.metadata
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import unittest
import zipfile

import gin
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from testcase import TestCase
from vim_tf.config import gin_utils

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = gin_utils.CONFIG_PACKAGE

# Written as sitecustomize.py into a folder put first on PYTHONPATH: Python imports it at start-up,
# before the command runs.
IMPORT_GUARD = '''
"""Blocks top-level imports of modules no declared dependency of vim_tf provides."""
import json
import os
import sys

with open(os.environ["VIM_TF_ALLOWED_IMPORTS"]) as f:
    _ALLOWED = frozenset(json.load(f))


class _DeclaredOnly:
    @staticmethod
    def find_spec(name, path=None, target=None):
        if path is not None or "." in name or name in _ALLOWED:
            return None
        if name in sys.stdlib_module_names or name in sys.builtin_module_names:
            return None
        if name.startswith("_sysconfigdata_"):  # the standard library's build settings
            return None
        sys.stderr.write(f"import guard: blocked {name}\\n")
        raise ModuleNotFoundError(
            f"import guard: no declared dependency of vim_tf provides {name!r}", name=name
        )


sys.meta_path.insert(0, _DeclaredOnly)
'''


def pyproject():
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        raise unittest.SkipTest("reading pyproject.toml needs Python >= 3.11 (tomllib)") from None
    with open(os.path.join(REPO, "pyproject.toml"), "rb") as f:
        return tomllib.load(f)


def declared_requirements(extras=()):
    project = pyproject()["project"]
    reqs = list(project["dependencies"])
    for extra in extras:
        reqs += project["optional-dependencies"][extra]
    return [Requirement(r) for r in reqs]


def _applies(req, extras):
    if req.marker is None:
        return True
    return any(req.marker.evaluate({"extra": e}) for e in ("", *extras))


def dependency_closure(requirements):
    """Canonical names of the installed distributions the requirements reach (themselves and,
    through each one's installed metadata, everything they declare, extras followed)."""
    seen, missing = set(), []
    todo = [r for r in requirements if _applies(r, ())]
    while todo:
        req = todo.pop()
        key = (canonicalize_name(req.name), tuple(sorted(req.extras)))
        if key in seen:
            continue
        seen.add(key)
        try:
            dist = importlib.metadata.distribution(req.name)
        except importlib.metadata.PackageNotFoundError:
            missing.append(str(req))
            continue
        subs = [Requirement(line) for line in dist.requires or ()]
        todo += [s for s in subs if _applies(s, tuple(req.extras))]
    if missing:
        raise AssertionError(f"declared but not installed: {missing}")
    return {name for name, _ in seen}


def top_level_names(distributions):
    """Top-level import names that the given distributions (canonical names) install."""
    names = set()
    for top, dists in importlib.metadata.packages_distributions().items():
        if any(canonicalize_name(d) in distributions for d in dists):
            names.add(top)
    if "setuptools" in distributions:
        names.add("distutils")  # setuptools provides it where the standard library has none
    return names


def write_import_guard(folder, allowed):
    """Writes the guard and its allowed names; returns the environment that activates it."""
    with open(os.path.join(folder, "sitecustomize.py"), "w") as f:
        f.write(IMPORT_GUARD)
    allowed_file = os.path.join(folder, "allowed_imports.json")
    with open(allowed_file, "w") as f:
        json.dump(sorted(allowed | {"vim_tf"}), f)
    return {"VIM_TF_ALLOWED_IMPORTS": allowed_file}


def runtime_import_names():
    return top_level_names(dependency_closure(declared_requirements()))


def run(args, cwd, env=None, pythonpath=(), timeout=300):
    full_env = dict(os.environ, **(env or {}))
    full_env["PYTHONPATH"] = os.pathsep.join(pythonpath)
    full_env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    return subprocess.run(
        args, cwd=cwd, env=full_env, capture_output=True, text=True, timeout=timeout
    )


TINY_CLASSIFIER = (
    "IMAGE_SIZE = 16",
    "BATCH_SIZE = 16",
    "TRAIN_STEPS = 2",
    "CHECKPOINT_EVERY = 2",
    "ImageClassifier.channels = (8,)",
    "ImageClassifier.feature_dim = 8",
    "WarmupCosine.warmup_steps = 1",
    "train.log_every = 1",
)

# Scoring path: every vim_tf module except the binaries (each defines its flags on import; the
# train binary stands for them), TF-GAN's evaluation math through vim_tf.eval.scores.
SCORING_SCRIPT = """
import importlib, pkgutil, sys
import numpy as np
import vim_tf
names = [m.name for m in pkgutil.walk_packages(vim_tf.__path__, "vim_tf.")
         if not m.name.startswith("vim_tf.bin.")]
for name in names + ["vim_tf.bin.train"]:
    importlib.import_module(name)
from vim_tf.eval import scores, tfgan_compat
tfgan_compat.classifier_metrics()
rng = np.random.default_rng(0)
a = rng.normal(size=(64, 3))
shift = np.array([1.0, -2.0, 0.5])
uniform = np.zeros((8, 4))
confident = np.eye(4)[np.arange(8) % 4] * 50.0
print(len(names), scores.frechet_distance(a, a + shift), scores.inception_score(uniform),
      scores.inception_score(confident), scores.kernel_distance(a, a + shift)[0])
"""


class DeclaredDependenciesTest(TestCase):
    def test_every_module_vim_tf_imports_is_declared_directly(self):
        # Static: a module vim_tf names in an import statement must come from the standard
        # library or a distribution pyproject.toml lists itself (not one that happens to arrive
        # through another dependency).
        direct = {canonicalize_name(r.name) for r in declared_requirements()}
        allowed = top_level_names(direct) | set(sys.stdlib_module_names) | {"vim_tf"}
        undeclared = {}
        for folder, _, files in os.walk(os.path.join(REPO, "vim_tf")):
            for name in files:
                if not name.endswith(".py"):
                    continue
                path = os.path.join(folder, name)
                with open(path) as f:
                    tree = ast.parse(f.read(), path)
                for node in ast.walk(tree):
                    if isinstance(node, ast.Import):
                        tops = [a.name.split(".")[0] for a in node.names]
                    elif isinstance(node, ast.ImportFrom) and node.level == 0:
                        tops = [node.module.split(".")[0]]
                    else:
                        continue
                    for top in tops:
                        if top not in allowed:
                            undeclared.setdefault(top, []).append(os.path.relpath(path, REPO))
        self.assertEqual(undeclared, {})

    def test_declared_packages_are_the_package_folders(self):
        # Every folder of vim_tf with an __init__.py, plus the data-only config folder; nothing
        # test-only (test programs and the test base live in tests/).
        folders = {
            os.path.relpath(root, REPO).replace(os.sep, ".")
            for root, _, files in os.walk(os.path.join(REPO, "vim_tf"))
            if "__init__.py" in files
        }
        self.assertEqual(set(pyproject()["tool"]["setuptools"]["packages"]), folders | {CONFIGS})
        self.assertNotIn("vim_tf.testing", folders)

    def test_test_only_packages_are_not_runtime_dependencies(self):
        runtime = {canonicalize_name(r.name) for r in declared_requirements()}
        test_extra = {canonicalize_name(r.name) for r in declared_requirements(["test"])}
        for name in ("scipy", "tensorflow-hub", "pytest"):
            self.assertNotIn(name, runtime)
            self.assertIn(name, test_extra)

    def test_guard_blocks_an_installed_but_undeclared_module(self):
        # pytest is installed here (the test extra) but no runtime dependency provides it.
        folder = self.get_temp_dir()
        env = write_import_guard(folder, runtime_import_names())
        proc = run(
            [sys.executable, "-c", "import json, gin, absl\nimport pytest"],
            cwd=folder,
            env=env,
            pythonpath=[folder, REPO],
        )
        self.assertNotEqual(proc.returncode, 0)
        self.assertIn("no declared dependency of vim_tf provides 'pytest'", proc.stderr)

    def test_scoring_and_train_path_import_only_declared_dependencies(self):
        folder = self.get_temp_dir()
        env = write_import_guard(folder, runtime_import_names())
        proc = run(
            [sys.executable, "-c", SCORING_SCRIPT], cwd=folder, env=env, pythonpath=[folder, REPO]
        )
        self.assertEqual(proc.returncode, 0, msg=proc.stderr[-6000:])
        count, fid, is_uniform, is_confident, kid = proc.stdout.split()[-5:]
        self.assertGreater(int(count), 40)
        # Same covariance, means apart by `shift`: FID = |shift|^2 = 1 + 4 + 0.25.
        self.assertAlmostEqual(float(fid), 5.25, places=6)
        self.assertAlmostEqual(float(is_uniform), 1.0, places=6)
        self.assertAlmostEqual(float(is_confident), 4.0, places=4)
        self.assertGreater(float(kid), 0.0)


class WheelTest(TestCase):
    """Builds the wheel once from a copy of the repository, installs it into a folder of its own
    (dependencies from this environment) and runs it from an empty working directory."""

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.tmp = cls.class_temp_dir()
        # A copy keeps setuptools' build/ and *.egg-info out of the checkout (a stale build/
        # would leak deleted modules into later wheels).
        src = os.path.join(cls.tmp, "src")
        shutil.copytree(
            REPO,
            src,
            ignore=shutil.ignore_patterns(
                ".git", ".venv", "runs", "build", "*.egg-info", "__pycache__", ".*_cache"
            ),
        )
        wheel_dir = os.path.join(cls.tmp, "wheels")
        pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
        build = run(
            [*pip, "wheel", "--no-deps", "--no-build-isolation", "-w", wheel_dir, src], cwd=cls.tmp
        )
        if build.returncode != 0:
            raise AssertionError(f"pip wheel failed:\n{build.stdout}\n{build.stderr}")
        (name,) = os.listdir(wheel_dir)
        cls.wheel = os.path.join(wheel_dir, name)
        cls.site = os.path.join(cls.tmp, "site")
        install = run([*pip, "install", "--no-deps", "--target", cls.site, cls.wheel], cwd=cls.tmp)
        if install.returncode != 0:
            raise AssertionError(f"pip install failed:\n{install.stdout}\n{install.stderr}")

    def _empty_dir(self):
        return tempfile.mkdtemp(dir=self.get_temp_dir())

    def test_wheel_holds_every_module_and_gin_config(self):
        with zipfile.ZipFile(self.wheel) as z:
            names = set(z.namelist())
            (entry_points,) = [n for n in names if n.endswith(".dist-info/entry_points.txt")]
            scripts = z.read(entry_points).decode()
        for folder, prefix, suffix in (
            ("gin", "vim_tf/configs", ".gin"),
            ("vim_tf", "vim_tf", ".py"),
        ):
            expected = set()
            for root, _, files in os.walk(os.path.join(REPO, folder)):
                for f in files:
                    if f.endswith(suffix):
                        rel = os.path.relpath(os.path.join(root, f), os.path.join(REPO, folder))
                        expected.add(f"{prefix}/{rel.replace(os.sep, '/')}")
            self.assertGreater(len(expected), 10)
            self.assertEqual(expected - names, set())
        self.assertIn("vim_tf/configs/experiments/digits_vitvqgan.gin", names)
        # Nothing lands outside the package (no top-level `gin` beside gin-config's).
        self.assertEqual({n.split("/")[0] for n in names if ".dist-info/" not in n}, {"vim_tf"})
        # One console script per binary in tools/, each calling its vim_tf.bin module.
        tools = sorted(f[:-3] for f in os.listdir(os.path.join(REPO, "tools")) if f.endswith(".py"))
        declared = dict(re.findall(r"^(vim-[\w-]+) = (\S+)$", scripts, re.M))
        self.assertEqual(
            declared, {f"vim-{t.replace('_', '-')}": f"vim_tf.bin.{t}:run" for t in tools}
        )

    def test_installed_package_finds_configs_as_resources_from_any_directory(self):
        script = (
            "import vim_tf\n"
            "from vim_tf.config import gin_utils\n"
            "print(vim_tf.__file__)\n"
            "for n in ('experiments/digits_vitvqgan.gin', 'gin/experiments/digits_vitvqgan.gin',"
            " 'digits_vitvqgan.gin'):\n"
            "    print(gin_utils.resolve_gin_file(n))\n"
        )
        proc = run([sys.executable, "-c", script], cwd=self._empty_dir(), pythonpath=[self.site])
        self.assertEqual(proc.returncode, 0, msg=proc.stderr)
        lines = proc.stdout.split()
        # The wheel's copy, not the checkout's (the editable install of this environment).
        self.assertEqual(lines[0], os.path.join(self.site, "vim_tf", "__init__.py"))
        expected = os.path.join(
            self.site, "vim_tf", "configs", "experiments", "digits_vitvqgan.gin"
        )
        self.assertEqual(lines[1:], [expected] * 3)
        with (
            open(expected) as f,
            open(os.path.join(REPO, "gin/experiments/digits_vitvqgan.gin")) as g,
        ):
            self.assertEqual(f.read(), g.read())

    def test_console_script_runs(self):
        # The installed `vim-encode` script; a missing dir is refused before TensorFlow loads.
        proc = run(
            [
                os.path.join(self.site, "bin", "vim-encode"),
                "--quantizer_dir=nowhere",
                "--output_dir=x",
            ],
            cwd=self._empty_dir(),
            pythonpath=[self.site],
        )
        self.assertEqual(proc.returncode, 2, msg=proc.stderr)
        self.assertIn("error:", proc.stderr)
        self.assertIn("nowhere", proc.stderr)

    def test_trains_from_an_empty_directory_with_declared_dependencies_only(self):
        cwd = self._empty_dir()
        guard = self._empty_dir()
        env = write_import_guard(guard, runtime_import_names())
        bindings = [*TINY_CLASSIFIER, f"make_dataset.data_dir = '{self.shared_data_dir()}'"]
        proc = run(
            [
                sys.executable,
                "-m",
                "vim_tf.bin.train",
                "--gin_file=digits_classifier.gin",
                "--model_dir=model",
                *[f"--gin_bindings={b}" for b in bindings],
            ],
            cwd=cwd,
            env=env,
            pythonpath=[guard, self.site],
        )
        self.assertEqual(proc.returncode, 0, msg=proc.stderr[-6000:])
        model_dir = os.path.join(cwd, "model")
        with open(os.path.join(model_dir, "checkpoint")) as f:
            self.assertIn('model_checkpoint_path: "ckpt-2"', f.read())
        self.assertTrue(os.path.exists(os.path.join(model_dir, "ckpt-2.index")))
        # The experiment came from the installed wheel, not from the checkout.
        shipped = os.path.join(self.site, "vim_tf", "configs", "experiments", "digits_classifier")
        self.assertIn(f"gin files read: ['{shipped}.gin']", proc.stderr)
        # The config saved in the model dir reloads on its own (what the other tools do).
        gin_utils.load_model_dir_config(model_dir)
        self.assertEqual(gin.query_parameter("%TRAIN_STEPS"), 2)
        self.assertEqual(gin.query_parameter("ImageClassifier.channels"), (8,))


if __name__ == "__main__":
    unittest.main()
