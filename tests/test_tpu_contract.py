"""The TPU contract of every train step (tests/tpu_contract_check.py): under a 2-replica strategy
only TPU-accepted dtypes cross replicas, and every phase's step compiles with XLA.

Each case runs in a subprocess: logical CPU devices must be configured before TensorFlow
initializes, which this (pytest) process has long done.
"""

import json
import os
import subprocess
import sys

from absl.testing import parameterized

from testcase import TestCase

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PROGRAM = os.path.join(REPO, "tests", "tpu_contract_check.py")
TIMEOUT = 300


def _run(case, output, *extra):
    proc = subprocess.run(
        [sys.executable, PROGRAM, f"--case={case}", f"--output={output}", *extra],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )
    if proc.returncode != 0:
        raise AssertionError("\n".join(proc.stderr.splitlines()[-40:]))
    with open(output) as f:
        return json.load(f)


class TpuContractTest(TestCase, parameterized.TestCase):
    @parameterized.parameters(
        "quantizer", "prior_class_dropout", "prior_unconditional", "classifier"
    )
    def test_reductions_are_tpu_dtypes_and_steps_compile(self, case):
        out = _run(case, os.path.join(self.get_temp_dir(), f"{case}.json"))
        self.assertEqual(out["violations"], [])
        # Not vacuous: the gradients (float32) and the guard's flag (int32) were seen crossing.
        self.assertGreater(out["checked"].get("float32", 0), 0, msg=out)
        self.assertGreater(out["checked"].get("int32", 0), 0, msg=out)
        # Every step of every phase ran XLA-compiled.
        self.assertEqual(out["xla_steps"], 3)

    def test_int64_flag_is_reported(self):
        """The check catches what TPU refuses: the guard's flag summed as int64."""
        out = _run(
            "classifier",
            os.path.join(self.get_temp_dir(), "int64.json"),
            "--flag_dtype=int64",
            "--no_xla",
        )
        self.assertNotEmpty(out["violations"])
        self.assertTrue(all("int64" in v for v in out["violations"]), msg=out["violations"])
