"""The README's main job: the whole pipeline on the embedded digits, stage by stage.

Each stage runs the same binary a user would run (printed before it starts), so the output is a
set of ordinary model dirs. A stage whose result is already there is reused, not redone.
"""

import json
import os
import shlex
import subprocess
import sys
import time

from absl import logging

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run(args):
    cmd = [sys.executable] + args
    print(f"\n$ {shlex.join(cmd)}", flush=True)
    t = time.time()
    subprocess.run(cmd, check=True, cwd=ROOT)
    return time.time() - t


def _fresh(output, model_dir):
    """True when `output` is newer than the model dir's newest checkpoint."""
    ckpt = os.path.join(model_dir, "checkpoint")
    return (
        os.path.exists(output)
        and os.path.exists(ckpt)
        and os.path.getmtime(output) >= os.path.getmtime(ckpt)
    )


def run(output_dir, extra_bindings=()):
    """Runs every stage into `output_dir` and prints a summary; returns the summary dict."""
    output_dir = os.path.abspath(output_dir)
    os.makedirs(output_dir, exist_ok=True)
    start = time.time()
    timings = {}
    q_dir = os.path.join(output_dir, "quantizer")
    bindings = [f"--gin_bindings={b}" for b in extra_bindings]
    timings["train quantizer"] = _run(
        [
            "tools/train.py",
            "--gin_file=gin/experiments/digits_vitvqgan.gin",
            f"--model_dir={q_dir}",
            *bindings,
        ]
    )
    q_metrics = os.path.join(q_dir, "metrics.json")
    if _fresh(q_metrics, q_dir):
        logging.info("reusing %s", q_metrics)
    else:
        timings["evaluate quantizer"] = _run(
            ["tools/evaluate.py", f"--model_dir={q_dir}", f"--output={q_metrics}"]
        )
    with open(q_metrics) as f:
        metrics = json.load(f)

    c_dir = os.path.join(output_dir, "classifier")
    timings["train classifier"] = _run(
        [
            "tools/train.py",
            "--gin_file=gin/experiments/digits_classifier.gin",
            f"--model_dir={c_dir}",
            *bindings,
        ]
    )
    c_metrics = os.path.join(c_dir, "metrics.json")
    if not _fresh(c_metrics, c_dir):
        timings["evaluate classifier"] = _run(
            ["tools/evaluate.py", f"--model_dir={c_dir}", f"--output={c_metrics}"]
        )
    with open(c_metrics) as f:
        classifier_metrics = json.load(f)

    p_dir = os.path.join(output_dir, "prior")
    timings["train prior"] = _run(
        [
            "tools/train.py",
            "--gin_file=gin/experiments/digits_vim.gin",
            f"--quantizer_dir={q_dir}",
            f"--model_dir={p_dir}",
            *bindings,
        ]
    )
    p_metrics = os.path.join(p_dir, "metrics.json")
    if not _fresh(p_metrics, p_dir):
        timings["evaluate prior"] = _run(
            ["tools/evaluate.py", f"--model_dir={p_dir}", f"--output={p_metrics}"]
        )
    with open(p_metrics) as f:
        prior_metrics = json.load(f)
    samples_dir = os.path.join(output_dir, "samples")
    if not _fresh(os.path.join(samples_dir, "samples.npz"), p_dir):
        timings["sample"] = _run(
            [
                "tools/sample.py",
                f"--model_dir={p_dir}",
                f"--output_dir={samples_dir}",
                "--num_samples=100",
                "--seed=0",
            ]
        )

    total = time.time() - start
    print("\n== vim_tf main job: summary ==")
    print(f"quantizer (test split, {metrics['num_images']} images)")
    for k in ("psnr", "ssim", "l1", "l2", "codebook_usage", "perplexity"):
        print(f"  {k:<20} {metrics[k]:>10.4f}")
    print(f"prior (test split, {prior_metrics['num_images']} images)")
    for k in ("nll_bits_per_token", "token_accuracy", "class_accuracy"):
        print(f"  {k:<20} {prior_metrics[k]:>10.4f}")
    print(
        f"  (class_accuracy: {prior_metrics['num_samples']} samples scored by the digits "
        f"classifier, test accuracy {classifier_metrics['accuracy']:.4f})"
    )
    print("\nwritten:")
    for label, path in (
        ("reconstruction grid", metrics.get("reconstruction_grid")),
        ("class sample grid", os.path.join(samples_dir, "grid.png")),
        ("samples", os.path.join(samples_dir, "samples.npz")),
        ("quantizer metrics", q_metrics),
        ("prior metrics", p_metrics),
        ("TensorBoard logdir", output_dir),
    ):
        print(f"  {label:<20} {path}")
    shown = ", ".join(f"{k} {v:.0f}s" for k, v in timings.items())
    print(f"\nwall time {total / 60:.1f} min ({shown})")
    print(f"view: tensorboard --logdir {output_dir}")
    return {
        "quantizer": metrics,
        "prior": prior_metrics,
        "classifier": classifier_metrics,
        "wall_time_s": total,
    }
