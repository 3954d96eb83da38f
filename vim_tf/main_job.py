"""The README's main job: the whole pipeline on the embedded digits, stage by stage.

Each stage runs the same binary a user would run (`python -m vim_tf.bin.<name>`, the `vim-<name>`
console script; printed before it starts) in its own process, so the output is a set of ordinary
model dirs. A stage whose result is already there is reused, not redone:
training resumes (and stops at once when finished); an evaluation or sampling output newer than
its model's newest checkpoint is kept.
"""

import shlex
import subprocess
import sys
import time

from vim_tf.utils import fs

# Classifier-free guidance scale of the guided evaluation and the sample grid.
CFG_SCALE = 2.0


class StageFailed(RuntimeError):
    """A stage's command exited non-zero; its own output above says why."""


def _run(args):
    """Runs the binary `vim_tf.bin.<args[0]>` with the flags `args[1:]`; returns its seconds."""
    cmd = [sys.executable, "-m", f"vim_tf.bin.{args[0]}", *args[1:]]
    print(f"\n$ {shlex.join(cmd)}", flush=True)
    t = time.time()
    result = subprocess.run(cmd)
    if result.returncode != 0:
        raise StageFailed(
            f"the stage `{shlex.join(cmd[1:])}` failed with exit status {result.returncode} (its "
            "output is above); finished stages are kept and reused when you rerun the main job"
        )
    return time.time() - t


def _fresh(output, model_dir):
    """True when `output` is newer than the model dir's newest checkpoint."""
    ckpt = fs.join(model_dir, "checkpoint")
    return fs.exists(output) and fs.exists(ckpt) and fs.mtime(output) >= fs.mtime(ckpt)


class _Pipeline:
    def __init__(self, output_dir, extra_bindings):
        self.out = fs.abspath(output_dir)
        self.bindings = [f"--gin_bindings={b}" for b in extra_bindings]
        self.timings = {}

    def train(self, label, experiment, model_dir, *flags):
        self.timings[label] = _run(
            [
                "train",
                f"--gin_file=experiments/{experiment}",
                f"--model_dir={model_dir}",
                *flags,
                *self.bindings,
            ]
        )

    def once(self, label, output, model_dir, args):
        """Runs `args` unless `output` is newer than model_dir's newest checkpoint."""
        if not _fresh(output, model_dir):
            self.timings[label] = _run(args)
        if output.endswith(".json"):
            return fs.read_json(output)
        return None


def run(output_dir, extra_bindings=()):
    """Runs every stage into `output_dir` and prints a summary; returns the summary dict."""
    p = _Pipeline(output_dir, extra_bindings)
    start = time.time()
    q_dir, c_dir = fs.join(p.out, "quantizer"), fs.join(p.out, "classifier")
    prior_dir, uncond_dir = fs.join(p.out, "prior"), fs.join(p.out, "prior_uncond")
    samples_dir = fs.join(p.out, "samples")

    p.train("train quantizer", "digits_vitvqgan.gin", q_dir)
    p.train("train classifier", "digits_classifier.gin", c_dir)
    c_metrics = p.once(
        "evaluate classifier",
        fs.join(c_dir, "metrics.json"),
        c_dir,
        [
            "evaluate",
            f"--model_dir={c_dir}",
            f"--output={fs.join(c_dir, 'metrics.json')}",
        ],
    )
    q_json = fs.join(q_dir, "metrics.json")
    q_metrics = p.once(
        "evaluate quantizer",
        q_json,
        q_dir,
        [
            "evaluate",
            f"--model_dir={q_dir}",
            f"--output={q_json}",
            f"--classifier={c_dir}",
        ],
    )
    # The priors train on token shards written once (digits get no random augmentation, so these
    # are the tokens the encoder would give on the fly, without re-encoding every step).
    token_dir = fs.join(p.out, "tokens")
    if not _fresh(fs.join(token_dir, "tokens_info.json"), q_dir):
        p.timings["encode tokens"] = _run(
            ["encode", f"--quantizer_dir={q_dir}", f"--output_dir={token_dir}"]
        )
    tokens_flags = (f"--quantizer_dir={q_dir}", f"--gin_bindings=TOKEN_DIR = '{token_dir}'")
    p.train("train prior", "digits_vim_tokens.gin", prior_dir, *tokens_flags)

    def score_prior(label, output, *flags):
        """1,000 prior samples scored by the classifier (plus the test NLL)."""
        args = [f"--model_dir={prior_dir}", f"--output={output}", f"--classifier={c_dir}"]
        return p.once(label, output, prior_dir, ["evaluate", *args, "--num_samples=1000", *flags])

    p_json = fs.join(prior_dir, "metrics.json")
    p_metrics = score_prior("evaluate prior", p_json, "--fid_floor_split=train")
    r_json = fs.join(prior_dir, "metrics_acceptance_0.5.json")
    r_metrics = score_prior("evaluate prior, rejection 0.5", r_json, "--acceptance_rate=0.5")
    # The prior trains with class dropout; classifier-free guidance at this scale is the setting
    # digits_vim.gin recommends (the unguided scores above are the paper's setting).
    g_json = fs.join(prior_dir, f"metrics_cfg_{CFG_SCALE:g}.json")
    g_metrics = score_prior(
        f"evaluate prior, guidance {CFG_SCALE:g}", g_json, f"--cfg_scale={CFG_SCALE}"
    )
    p.once(
        "sample grid",
        fs.join(samples_dir, "samples.npz"),
        prior_dir,
        [
            "sample",
            f"--model_dir={prior_dir}",
            f"--output_dir={samples_dir}",
            "--num_samples=100",
            "--seed=0",
            f"--cfg_scale={CFG_SCALE}",
        ],
    )
    p.train("train unconditional prior", "digits_vim_uncond_tokens.gin", uncond_dir, *tokens_flags)
    probe_json = fs.join(uncond_dir, "probe.json")
    probe = p.once(
        "linear probe",
        probe_json,
        uncond_dir,
        ["linear_probe", f"--model_dir={uncond_dir}", f"--output={probe_json}"],
    )

    exports = {}
    for name, model_dir in (("quantizer", q_dir), ("prior", prior_dir), ("classifier", c_dir)):
        export_dir = fs.join(p.out, "export", name)
        versions = (
            [v for v in fs.listdir(export_dir) if v.isdigit()] if fs.isdir(export_dir) else []
        )
        # export_info.json is the last file of a version (a dir has no mtime on object stores).
        newest = max(versions, key=int) if versions else None
        if not newest or not _fresh(fs.join(export_dir, newest, "export_info.json"), model_dir):
            p.timings[f"export {name}"] = _run(
                ["export", f"--model_dir={model_dir}", f"--export_dir={export_dir}"]
            )
            versions = [v for v in fs.listdir(export_dir) if v.isdigit()]
        exports[name] = fs.join(export_dir, max(versions, key=int))

    total = time.time() - start
    print("\n== vim_tf main job: summary ==")
    print(f"quantizer (test split, {q_metrics['num_images']} images)")
    for k in ("psnr", "ssim", "l1", "l2", "codebook_usage", "perplexity", "rfid"):
        print(f"  {k:<28} {q_metrics[k]:>10.4f}")
    print(f"class-conditional prior ({p_metrics['num_samples']} samples)")
    for k in ("nll_bits_per_token", "fid", "fid_floor", "inception_score", "kid", "class_accuracy"):
        print(f"  {k:<28} {p_metrics[k]:>10.4f}")
    print(
        f"  {'min per-class accuracy':<28} {min(p_metrics['class_accuracy_per_class'].values()):>10.4f}"
    )
    for k in ("fid", "inception_score", "kid", "class_accuracy"):
        print(f"  {k + f' (guidance {CFG_SCALE:g})':<28} {g_metrics[k]:>10.4f}")
    worst = min(g_metrics["class_accuracy_per_class"].values())
    print(f"  {f'min per-class (guidance {CFG_SCALE:g})':<28} {worst:>10.4f}")
    for k in ("fid", "inception_score", "class_accuracy", "acceptance_rate"):
        print(f"  {k + ' (rejection)':<28} {r_metrics[k]:>10.4f}")
    print(
        f"linear probe (unconditional prior): top-1 {probe['top1']:.4f} at block "
        f"{probe['best_layer']}"
    )
    print(
        f"  scores computed with the digits classifier (test accuracy "
        f"{c_metrics['accuracy']:.4f}), not Inception; fid_floor: "
        f"{p_metrics['fid_floor_splits']}"
    )
    print("\nwritten:")
    for label, path in (
        ("reconstruction grid", q_metrics.get("reconstruction_grid")),
        (f"class sample grid (guidance {CFG_SCALE:g})", fs.join(samples_dir, "grid.png")),
        ("samples", fs.join(samples_dir, "samples.npz")),
        ("linear-probe plot", probe.get("plot")),
        ("metrics", f"{q_json}, {p_json}, {g_json}, {r_json}, {probe_json}"),
        ("SavedModels", ", ".join(exports.values())),
        ("TensorBoard logdir", p.out),
    ):
        print(f"  {label:<32} {path}")
    shown = ", ".join(f"{k} {v:.0f}s" for k, v in p.timings.items())
    print(f"\nwall time {total / 60:.1f} min ({shown})")
    print(f"view: tensorboard --logdir {p.out}")
    return {
        "quantizer": q_metrics,
        "prior": p_metrics,
        "prior_guided": g_metrics,
        "prior_rejection": r_metrics,
        "linear_probe": probe,
        "classifier": c_metrics,
        "exports": exports,
        "wall_time_s": total,
        # The stages this run executed (a rerun skips finished ones), with their seconds.
        "stage_times": dict(p.timings),
    }
