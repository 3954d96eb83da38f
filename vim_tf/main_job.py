"""The README's main job: the whole pipeline on an embedded dataset, stage by stage.

On the digits (the default) it trains and scores every model of the project. On the photos
(`dataset="photos"`) it runs the stages that apply to unlabelled natural images: the quantizer,
its evaluation beside a k-means patch codebook of the same rate, the token shards, an
unconditional prior, its NLL and a sample grid, and the exports. The photos' labels name the
source photograph, and train and test photographs differ, so nothing there has classes to
condition on, score or probe: no classifier, class-conditional prior, guidance, rejection
sampling, FID/IS/KID or linear probe (the summary says so).

Each stage calls, in this process, the library function behind one binary; the equivalent
command (`vim-<name> ...`, also `python tools/<name>.py ...`) is printed before the stage starts,
so the output is a set of ordinary model dirs that every tool reads. Every stage starts from a
clean gin config and a fresh Keras session, as it would in a process of its own. A stage whose
result is already there is reused, not redone: training resumes (and stops at once when
finished); an evaluation, sampling or export output newer than its model's newest checkpoint is
kept.
"""

import gc
import shlex
import time

import gin

from vim_tf.utils import cli, fs

# Classifier-free guidance scale of the guided evaluation and the sample grid.
CFG_SCALE = 2.0
# Prior samples behind each score of a prior, and in the sample grid.
NUM_SCORED_SAMPLES = 1000
NUM_GRID_SAMPLES = 100
# The paper's sampling (temperature 1, no top-k, top-p or guidance), seed 0: the binaries' defaults.
DEFAULT_SAMPLING = dict(temperature=1.0, top_k=0, top_p=1.0, cfg_scale=1.0, seed=0)
# The datasets the main job runs on (the `dataset` argument of `run`; tools/demo.py --dataset).
DATASETS = ("digits", "photos")
# What the photos job leaves out, and why (printed in its summary and returned by `run`).
PHOTOS_SKIPPED = (
    "not run on photos: the digits classifier and what needs a classifier (rFID, FID/IS/KID, "
    "class accuracy, rejection sampling), the class-conditional prior and its guided samples, "
    "and the linear probe. A photo's label names its source photograph and the test "
    "photographs are not in the train split, so there are no classes to condition on, score "
    "or probe."
)


class StageFailed(RuntimeError):
    """A stage stopped on a user error (a bad binding, a missing file, ...); says which and why."""


def _fresh(output, model_dir):
    """True when `output` is newer than the model dir's newest checkpoint."""
    ckpt = fs.join(model_dir, "checkpoint")
    return fs.exists(output) and fs.exists(ckpt) and fs.mtime(output) >= fs.mtime(ckpt)


def _fresh_start():
    """Clears what one stage leaves behind for the next: gin's bindings (each stage parses its
    own config) and Keras's session (layer names, graphs and freed models)."""
    import keras

    gin.clear_config()
    keras.backend.clear_session()
    gc.collect()


def _export_versions(export_dir):
    return [v for v in fs.listdir(export_dir) if v.isdigit()] if fs.isdir(export_dir) else []


class _Pipeline:
    """The model dirs of one main job and the stages that fill them."""

    def __init__(self, output_dir, extra_bindings):
        self.out = fs.abspath(output_dir)
        self.bindings = list(extra_bindings)
        self.timings = {}
        self.q_dir, self.c_dir = fs.join(self.out, "quantizer"), fs.join(self.out, "classifier")
        self.prior_dir = fs.join(self.out, "prior")
        self.uncond_dir = fs.join(self.out, "prior_uncond")
        self.token_dir = fs.join(self.out, "tokens")
        self.samples_dir = fs.join(self.out, "samples")

    def stage(self, label, tool, flags, fn, more_flags=()):
        """Prints the command that does what `fn()` does (`vim-<tool> flags`; one per entry of
        `more_flags` too when `fn` does the work of several), runs `fn()` in a fresh gin and
        Keras state and records its seconds under `label`."""
        commands = [shlex.join([f"vim-{tool.replace('_', '-')}", *f]) for f in (flags, *more_flags)]
        command = " && ".join(commands)
        print("".join(f"\n$ {c}" for c in commands), flush=True)
        _fresh_start()
        start = time.time()
        try:
            result = fn()
        except cli.USER_ERRORS as e:
            raise StageFailed(
                f"the stage {label!r} (`{command}`) failed: {e}\nfinished stages are kept and "
                "reused when you rerun the main job"
            ) from e
        finally:
            _fresh_start()
        self.timings[label] = time.time() - start
        return result

    def train(self, label, experiment, model_dir, quantizer_dir=None, bindings=()):
        from vim_tf.training import train_lib

        gin_file = f"experiments/{experiment}"
        bindings = [*bindings, *self.bindings]
        flags = [f"--gin_file={gin_file}", f"--model_dir={model_dir}"]
        flags += [f"--quantizer_dir={quantizer_dir}"] if quantizer_dir else []
        flags += [f"--gin_bindings={b}" for b in bindings]
        self.stage(
            label,
            "train",
            flags,
            lambda: train_lib.run(model_dir, [gin_file], bindings, quantizer_dir=quantizer_dir),
        )

    def evaluate(self, label, model_dir, output, classifier=None):
        """Scores `model_dir` into `output` unless that is newer than its newest checkpoint;
        returns the metrics."""
        from vim_tf.eval import evaluator

        if _fresh(output, model_dir):
            return fs.read_json(output)
        flags = [f"--model_dir={model_dir}", f"--output={output}"]
        flags += [f"--classifier={classifier}"] if classifier else []
        self.stage(
            label,
            "evaluate",
            flags,
            lambda: evaluator.evaluate(model_dir, output, classifier),
        )
        return fs.read_json(output)

    def evaluate_prior(self, runs):
        """Scores the class-conditional prior under each of `runs` ({output: {acceptance_rate,
        fid_floor_split, cfg_scale} (optional keys)}), NUM_SCORED_SAMPLES samples each, in one
        stage that loads the prior and the real images' statistics once; a run whose output is
        newer than the prior's newest checkpoint is kept. Returns {output: metrics}."""
        from vim_tf.eval import evaluator

        todo = [out for out in runs if not _fresh(out, self.prior_dir)]
        commands, specs = [], []
        for output in todo:
            options = runs[output]
            commands.append(
                [
                    f"--model_dir={self.prior_dir}",
                    f"--output={output}",
                    f"--classifier={self.c_dir}",
                    f"--num_samples={NUM_SCORED_SAMPLES}",
                    *[f"--{k}={v}" for k, v in options.items()],
                ]
            )
            sampling = dict(DEFAULT_SAMPLING, cfg_scale=options.get("cfg_scale", 1.0))
            specs.append(
                dict(
                    output=output,
                    acceptance_rate=options.get("acceptance_rate", 1.0),
                    floor_split=options.get("fid_floor_split"),
                    sampling=sampling,
                )
            )
        if todo:
            self.stage(
                "evaluate prior",
                "evaluate",
                commands[0],
                lambda: evaluator.evaluate_prior_runs(
                    self.prior_dir, self.c_dir, specs, NUM_SCORED_SAMPLES
                ),
                more_flags=commands[1:],
            )
        return {output: fs.read_json(output) for output in runs}

    def encode_tokens(self):
        from vim_tf.data import tokens

        if _fresh(fs.join(self.token_dir, "tokens_info.json"), self.q_dir):
            return
        flags = [f"--quantizer_dir={self.q_dir}", f"--output_dir={self.token_dir}", "--overwrite"]
        self.stage(
            "encode tokens",
            "encode",
            flags,
            lambda: tokens.encode_splits(self.q_dir, self.token_dir, overwrite=True),
        )

    def sample_grid(self, model_dir, cfg_scale):
        """NUM_GRID_SAMPLES samples of the prior in `model_dir` (seed 0, guidance `cfg_scale`)
        into samples_dir, unless they are newer than its newest checkpoint."""
        from vim_tf.eval import generate
        from vim_tf.sampling.settings import SamplingSettings

        if _fresh(fs.join(self.samples_dir, "samples.npz"), model_dir):
            return
        flags = [
            f"--model_dir={model_dir}",
            f"--output_dir={self.samples_dir}",
            f"--num_samples={NUM_GRID_SAMPLES}",
            "--seed=0",
            f"--cfg_scale={cfg_scale}",
            "--overwrite",
        ]

        def fn():
            return generate.generate(
                model_dir,
                self.samples_dir,
                NUM_GRID_SAMPLES,
                settings=SamplingSettings(cfg_scale=cfg_scale),
                seed=0,
                overwrite=True,
            )

        self.stage("sample grid", "sample", flags, fn)

    def kmeans_baseline(self, output):
        """The k-means patch codebook of the quantizer's rate (its dataset, image, patch and
        codebook sizes: the same bits per image) fitted on the train split and scored on the
        test split into `output`, unless that is newer than the quantizer's newest checkpoint;
        returns the metrics."""
        from vim_tf.config import gin_utils
        from vim_tf.reports import kmeans_baseline

        if _fresh(output, self.q_dir):
            return fs.read_json(output)
        info = fs.read_json(fs.join(self.q_dir, "model_info.json"))
        gin_utils.load_model_dir_config(self.q_dir)
        data_dir = gin_utils.bound("make_dataset.data_dir")
        args = dict(
            dataset=gin_utils.bound("%DATASET"),
            image_size=info["image_size"],
            patch_size=info["patch_size"],
            codebook_size=info["codebook_size"],
        )
        gin.clear_config()
        flags = [f"--{k}={v}" for k, v in args.items()] + [f"--output={output}"]
        flags += [f"--data_dir={data_dir}"] if data_dir else []
        self.stage(
            "k-means baseline",
            "kmeans_baseline",
            flags,
            lambda: kmeans_baseline.run_kmeans_baseline(output=output, data_dir=data_dir, **args),
        )
        return fs.read_json(output)

    def linear_probe(self, output):
        from vim_tf.eval import linear_probe

        if not _fresh(output, self.uncond_dir):
            flags = [f"--model_dir={self.uncond_dir}", f"--output={output}"]
            self.stage(
                "linear probe",
                "linear_probe",
                flags,
                lambda: linear_probe.run_linear_probe(self.uncond_dir, output),
            )
        return fs.read_json(output)

    def export(self, name, model_dir):
        """Exports `model_dir` unless its newest export is newer than its newest checkpoint;
        returns the newest version dir."""
        from vim_tf.export import exporter

        export_dir = fs.join(self.out, "export", name)
        versions = _export_versions(export_dir)
        # export_info.json is the last file of a version (a dir has no mtime on object stores).
        newest = max(versions, key=int) if versions else None
        if not newest or not _fresh(fs.join(export_dir, newest, "export_info.json"), model_dir):
            flags = [f"--model_dir={model_dir}", f"--export_dir={export_dir}"]
            self.stage(
                f"export {name}",
                "export",
                flags,
                lambda: exporter.export_model_dir(model_dir, export_dir),
            )
            versions = _export_versions(export_dir)
        return fs.join(export_dir, max(versions, key=int))


def _score_priors(p):
    """The class-conditional prior's scores: unguided (the paper's setting, with the FID floor),
    with rejection sampling at rate 0.5, and with classifier-free guidance at CFG_SCALE (the
    prior trains with class dropout; digits_vim.gin recommends this scale).

    Returns:
      ({summary key: metrics}, {summary key: metrics file}).
    """
    runs = {
        "prior": ("metrics.json", {"fid_floor_split": "train"}),
        "prior_rejection": ("metrics_acceptance_0.5.json", {"acceptance_rate": 0.5}),
        "prior_guided": (f"metrics_cfg_{CFG_SCALE:g}.json", {"cfg_scale": CFG_SCALE}),
    }
    paths = {key: fs.join(p.prior_dir, name) for key, (name, _) in runs.items()}
    metrics = p.evaluate_prior({paths[key]: options for key, (_, options) in runs.items()})
    return {key: metrics[path] for key, path in paths.items()}, paths


def _run_stages(p):
    """Every stage in order; returns the summary's figures and the metrics files written."""
    p.train("train quantizer", "digits_vitvqgan.gin", p.q_dir)
    p.train("train classifier", "digits_classifier.gin", p.c_dir)
    c_json, q_json = fs.join(p.c_dir, "metrics.json"), fs.join(p.q_dir, "metrics.json")
    results = {
        "classifier": p.evaluate("evaluate classifier", p.c_dir, c_json),
        "quantizer": p.evaluate("evaluate quantizer", p.q_dir, q_json, classifier=p.c_dir),
    }
    # The priors train on token shards written once (digits get no random augmentation, so these
    # are the tokens the encoder would give on the fly, without re-encoding every step).
    p.encode_tokens()
    tokens = dict(quantizer_dir=p.q_dir, bindings=[f"TOKEN_DIR = '{p.token_dir}'"])
    p.train("train prior", "digits_vim_tokens.gin", p.prior_dir, **tokens)
    prior_metrics, prior_paths = _score_priors(p)
    results.update(prior_metrics)
    p.sample_grid(p.prior_dir, CFG_SCALE)
    p.train("train unconditional prior", "digits_vim_uncond_tokens.gin", p.uncond_dir, **tokens)
    probe_json = fs.join(p.uncond_dir, "probe.json")
    results["linear_probe"] = p.linear_probe(probe_json)
    results["exports"] = {
        name: p.export(name, model_dir)
        for name, model_dir in (
            ("quantizer", p.q_dir),
            ("prior", p.prior_dir),
            ("classifier", p.c_dir),
        )
    }
    files = [q_json, *prior_paths.values(), probe_json]
    return results, files


def _print_summary(p, r, files, total):
    q, prior, guided, rejection = (
        r["quantizer"],
        r["prior"],
        r["prior_guided"],
        r["prior_rejection"],
    )
    probe = r["linear_probe"]
    print("\n== vim_tf main job: summary ==")
    print(f"quantizer (test split, {q['num_images']} images)")
    for k in ("psnr", "ssim", "l1", "l2", "codebook_usage", "perplexity", "rfid"):
        print(f"  {k:<28} {q[k]:>10.4f}")
    print(f"class-conditional prior ({prior['num_samples']} samples)")
    for k in ("nll_bits_per_token", "fid", "fid_floor", "inception_score", "kid", "class_accuracy"):
        print(f"  {k:<28} {prior[k]:>10.4f}")
    worst = min(prior["class_accuracy_per_class"].values())
    print(f"  {'min per-class accuracy':<28} {worst:>10.4f}")
    for k in ("fid", "inception_score", "kid", "class_accuracy"):
        print(f"  {k + f' (guidance {CFG_SCALE:g})':<28} {guided[k]:>10.4f}")
    worst = min(guided["class_accuracy_per_class"].values())
    print(f"  {f'min per-class (guidance {CFG_SCALE:g})':<28} {worst:>10.4f}")
    for k in ("fid", "inception_score", "class_accuracy", "acceptance_rate"):
        print(f"  {k + ' (rejection)':<28} {rejection[k]:>10.4f}")
    print(
        f"linear probe (unconditional prior): top-1 {probe['top1']:.4f} at block "
        f"{probe['best_layer']}"
    )
    print(
        f"  scores computed with the digits classifier (test accuracy "
        f"{r['classifier']['accuracy']:.4f}), not Inception; fid_floor: "
        f"{prior['fid_floor_splits']}"
    )
    print("\nwritten:")
    for label, path in (
        ("reconstruction grid", q.get("reconstruction_grid")),
        (f"class sample grid (guidance {CFG_SCALE:g})", fs.join(p.samples_dir, "grid.png")),
        ("samples", fs.join(p.samples_dir, "samples.npz")),
        ("linear-probe plot", probe.get("plot")),
        ("metrics", ", ".join(files)),
        ("SavedModels", ", ".join(r["exports"].values())),
        ("TensorBoard logdir", p.out),
    ):
        print(f"  {label:<32} {path}")
    shown = ", ".join(f"{k} {v:.0f}s" for k, v in p.timings.items())
    print(f"\nwall time {total / 60:.1f} min ({shown})")
    print(f"view: tensorboard --logdir {p.out}")


def _run_photos_stages(p):
    """The photos stages in order; returns the summary's figures and the metrics files written."""
    p.train("train quantizer", "photos_vitvqgan.gin", p.q_dir)
    q_json = fs.join(p.q_dir, "metrics.json")
    kmeans_json = fs.join(p.out, "kmeans", "metrics.json")
    prior_json = fs.join(p.uncond_dir, "metrics.json")
    results = {"quantizer": p.evaluate("evaluate quantizer", p.q_dir, q_json)}
    results["kmeans"] = p.kmeans_baseline(kmeans_json)
    # Token shards hold the unflipped crops (the prior's train split without its random flips).
    p.encode_tokens()
    tokens = dict(quantizer_dir=p.q_dir, bindings=[f"TOKEN_DIR = '{p.token_dir}'"])
    p.train("train unconditional prior", "photos_vim_tokens.gin", p.uncond_dir, **tokens)
    results["prior_uncond"] = p.evaluate("evaluate unconditional prior", p.uncond_dir, prior_json)
    p.sample_grid(p.uncond_dir, 1.0)
    results["exports"] = {
        name: p.export(name, model_dir)
        for name, model_dir in (("quantizer", p.q_dir), ("prior_uncond", p.uncond_dir))
    }
    results["skipped"] = PHOTOS_SKIPPED
    return results, [q_json, kmeans_json, prior_json]


def _print_photos_summary(p, r, files, total):
    q, km, prior = r["quantizer"], r["kmeans"], r["prior_uncond"]
    print("\n== vim_tf main job on photos: summary ==")
    print(f"quantizer (test split: {q['num_images']} crops of photographs it never saw)")
    for k in ("psnr", "ssim", "l1", "l2", "codebook_usage", "perplexity"):
        print(f"  {k:<28} {q[k]:>10.4f}")
    print(
        f"k-means patch codebook of the same rate ({km['codebook_size']} codes of "
        f"{km['patch_size']}x{km['patch_size']} patches, {km['bits_per_image']:.0f} bits/image)"
    )
    for k in ("psnr", "ssim", "codebook_usage", "perplexity"):
        print(f"  {k:<28} {km[k]:>10.4f}")
    print(f"  {'quantizer PSNR - k-means':<28} {q['psnr'] - km['psnr']:>+10.4f}")
    print(f"unconditional prior (test split, {prior['num_images']} images)")
    for k in ("nll_bits_per_token", "token_accuracy"):
        print(f"  {k:<28} {prior[k]:>10.4f}")
    print(f"\n{r['skipped']}")
    print("\nwritten:")
    for label, path in (
        ("reconstruction grid", q.get("reconstruction_grid")),
        ("k-means reconstruction grid", km.get("reconstruction_grid")),
        ("unconditional sample grid", fs.join(p.samples_dir, "grid.png")),
        ("samples", fs.join(p.samples_dir, "samples.npz")),
        ("metrics", ", ".join(files)),
        ("SavedModels", ", ".join(r["exports"].values())),
        ("TensorBoard logdir", p.out),
    ):
        print(f"  {label:<32} {path}")
    shown = ", ".join(f"{k} {v:.0f}s" for k, v in p.timings.items())
    print(f"\nwall time {total / 60:.1f} min ({shown})")
    print(f"view: tensorboard --logdir {p.out}")


def run(output_dir, extra_bindings=(), dataset="digits"):
    """Runs every stage for `dataset` into `output_dir` and prints a summary; returns it as a dict.

    Args:
      output_dir: where each stage's model dir (quantizer/, classifier/, prior/, prior_uncond/),
        the token shards, the sample grid and the exports go (photos: quantizer/, kmeans/,
        prior_uncond/, tokens/, samples/, export/).
      extra_bindings: gin bindings given to every training stage, after the experiment's own.
      dataset: one of DATASETS: 'digits' (every stage) or 'photos' (the stages that apply to
        photographs without classes; see the module docstring).

    Returns:
      digits: {"quantizer", "prior", "prior_guided", "prior_rejection", "linear_probe",
      "classifier"}: the metrics dicts; photos: {"quantizer", "kmeans", "prior_uncond"} and
      "skipped" (what was left out and why). Both: "exports": {name: SavedModel version dir};
      "wall_time_s"; and "stage_times": the stages this run executed (a rerun skips finished
      ones) with seconds.

    Raises:
      ValueError: `dataset` is not one of DATASETS.
      StageFailed: a stage stopped on a user error; finished stages are kept.
    """
    if dataset not in DATASETS:
        raise ValueError(
            f"dataset must be one of {', '.join(map(repr, DATASETS))}, got {dataset!r}"
        )
    p = _Pipeline(output_dir, extra_bindings)
    start = time.time()
    stages, summary = (
        (_run_stages, _print_summary)
        if dataset == "digits"
        else (_run_photos_stages, _print_photos_summary)
    )
    results, files = stages(p)
    total = time.time() - start
    summary(p, results, files, total)
    return dict(results, wall_time_s=total, stage_times=dict(p.timings))
