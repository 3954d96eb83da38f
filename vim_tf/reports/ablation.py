"""The paper's Table 4 at small scale: quantizer ablations trained with one step budget.

Each row of the ablation is the base experiment (`experiments/digits_vitvqgan.gin` by default)
with a few gin files and bindings on top (a smaller or larger lookup dimension, no l2
normalisation, a CNN encoder/decoder), trained with dead-code restarts off (the paper's
quantizer) and on (the digits recipe's), for several seeds, to the same `train_steps`. Every run
trains through `train_lib.run` (what `tools/train.py` does) and is scored on the test split by
`evaluator.evaluate` (what `tools/evaluate.py` does): codebook usage over the whole split,
perplexity, PSNR, SSIM, rFID when a scoring network is at hand, and the training wall time.
Each run's tokenizer is also measured as its training starts (`_init_geometry`): how many codes
the test split reaches and how spread its lookup vectors are at step 0, which tells a codebook
that collapses in training from one that starts collapsed.

Layout of `output_dir` (every file through `vim_tf.utils.fs`, so any TF file system works):

    <dataset>/spec.json                                the base config every run of it shares
    <dataset>/classifier/                              the digits classifier for rFID (digits)
    <dataset>/<row>/restarts_<on|off>/seed_<n>/model/  the run's model dir
        .../trained.json                               written once training finished
        .../metrics.json, eval_reconstructions.png     the evaluator's output
        .../result.json                                the run's figures (written last)
    ablation.md, ablation.csv, ablation.json, ablation.png   the table, rebuilt after every run

Resuming: every file is written atomically, and a run with a `result.json` is never redone, so
rerunning a killed ablation with the same command runs only the missing runs. A run killed
during training restarts cleanly: its model dir is removed and it trains again from step 0
(the figures and the wall time then come from one uninterrupted run, as for every other run);
a run killed after training (`trained.json` written) is only evaluated again. A result written
before the step-0 figures existed gets them added on the next rerun (no retraining).
"""

import dataclasses
import io
import math
import re
import time

from absl import logging

from vim_tf.utils import fs

DEFAULT_GIN_FILE = "experiments/digits_vitvqgan.gin"
CLASSIFIER_GIN_FILE = "experiments/digits_classifier.gin"
RESTARTS = ("off", "on")
# The evaluator's figures of the trained model, then the codebook's state as training starts.
EVAL_METRICS = ("codebook_usage", "perplexity", "psnr", "ssim", "rfid")
INIT_METRICS = ("init_usage", "init_cosine")
METRICS = (*EVAL_METRICS, "train_seconds", *INIT_METRICS)
OUTPUT_NAME = "ablation"


@dataclasses.dataclass(frozen=True)
class Row:
    """One ablation row: gin files and bindings on top of the base experiment.

    Attributes:
      name: the row's name on the command line (`--rows`) and in the output dir.
      description: what the row changes, shown in the table.
      network: the class `VQGANTraining.network` names in this row (its bindings, e.g. the
        dead-code restarts, go to this class).
      gin_files: parsed after the base experiment's files (e.g. another model config).
      bindings: gin bindings applied after the user's.
    """

    name: str
    description: str
    network: str = "ViTVQGAN"
    gin_files: tuple = ()
    bindings: tuple = ()

    def run_bindings(self, restarts):
        """The row's bindings with dead-code restarts set on or off."""
        value = {"on": True, "off": False}[restarts]
        return (*self.bindings, f"{self.network}.restart_dead_codes = {value}")


def _dim_row(dim):
    return Row(f"dim_{dim}", f"lookup dim {dim}, l2", bindings=(f"ViTVQGAN.code_dim = {dim}",))


# The rows, in table order. A row is data (gin files and bindings): a new one needs no code.
ROWS = {
    row.name: row
    for row in (
        Row("baseline", "lookup dim 32, l2 (the paper's quantizer)", bindings=(
            "ViTVQGAN.code_dim = 32", "ViTVQGAN.l2_normalize = True")),
        *(_dim_row(d) for d in (256, 128, 64, 16, 8)),
        Row("no_l2", "lookup dim 32, no l2 normalisation", bindings=(
            "ViTVQGAN.code_dim = 32", "ViTVQGAN.l2_normalize = False")),
        Row(
            "cnn",
            "CNN encoder/decoder (VQGAN), lookup dim 32, l2",
            network="CNNVQGAN",
            gin_files=("models/vqgan_cnn_tiny.gin",),
            bindings=("VQGANTraining.network = @CNNVQGAN",),
        ),
    )
}  # fmt: skip
DEFAULT_ROWS = ("baseline", "dim_256", "dim_64", "dim_8", "no_l2", "cnn")

# The paper, Table 4 (ViT-VQGAN Base-Base on ImageNet, 8192 codes, no dead-code restarts):
# codebook usage and reconstruction FID (Inception features, ImageNet validation images).
# `usage` is a (low, high) range in [0, 1]; None where the paper gives no figure for the row.
PAPER_TABLE4 = {
    "baseline": {"usage": (0.96, 0.96), "rfid": 1.55, "note": "32-d, l2"},
    "dim_256": {"usage": (0.04, 0.04), "rfid": None, "note": "256-d lookup"},
    "dim_128": {"usage": (0.14, 0.14), "rfid": None, "note": "128-d lookup"},
    "dim_64": {"usage": (0.37, 0.37), "rfid": None, "note": "64-d lookup"},
    "dim_16": {"usage": (0.95, 0.96), "rfid": None, "note": "as good as 32-d or better"},
    "dim_8": {"usage": (0.95, 0.96), "rfid": None, "note": "as good as 32-d or better"},
    "no_l2": {"usage": (0.02, 0.02), "rfid": 5.44, "note": "no l2 normalisation"},
    "cnn": {"usage": (0.63, 0.63), "rfid": 2.26, "note": "CNN encoder/decoder, worse FID"},
}


def paper_usage_text(row):
    """The paper's usage for `row` as shown in the table ('96%', '95-96%', or '-')."""
    paper = PAPER_TABLE4.get(row)
    if not paper or paper["usage"] is None:
        return "-"
    low, high = (round(100 * u) for u in paper["usage"])
    return f"{low}%" if low == high else f"{low}-{high}%"


# ----------------------------------------------------------------------------- arguments
def check_args(rows, restarts, seeds, train_steps):
    """Validates the ablation's selection; returns (rows, restarts) as lists in table order.

    Args:
      rows: row names (a list, or a comma-separated str); None or empty: DEFAULT_ROWS.
      restarts: 'on' and/or 'off' (list or comma-separated str); None or empty: both.
      seeds: number of seeds per row and restart setting (seeds 0..seeds-1), >= 1.
      train_steps: the step budget of every run (>= 1), or None for the base experiment's.

    Raises:
      ValueError: naming the bad value and the valid ones.
    """
    rows = _names(rows) or list(DEFAULT_ROWS)
    bad = [r for r in rows if r not in ROWS]
    if bad:
        raise ValueError(f"unknown ablation row(s) {bad}: valid rows are {', '.join(ROWS)}")
    restarts = _names(restarts) or list(RESTARTS)
    bad = [r for r in restarts if r not in RESTARTS]
    if bad:
        raise ValueError(f"unknown --restarts value(s) {bad}: valid values are 'on' and 'off'")
    for name, value in (("seeds", seeds), ("train_steps", train_steps)):
        if name == "train_steps" and value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"--{name} must be an integer >= 1, got {value!r}")
    rows = [r for r in ROWS if r in rows]
    return rows, [r for r in RESTARTS if r in restarts]


def _names(value):
    if value is None:
        return []
    if isinstance(value, str):
        value = value.split(",")
    return [str(v).strip() for v in value if str(v).strip()]


def dataset_tag(dataset):
    """A directory name for a dataset string ('folder:/data/x' -> 'folder_data_x')."""
    tag = re.sub(r"[^A-Za-z0-9.-]+", "_", str(dataset)).strip("_.")
    return tag or "dataset"


# ----------------------------------------------------------------------------- the runs
@dataclasses.dataclass
class Ablation:
    """An ablation's settings (see `run_ablation` for their meaning)."""

    output_dir: str
    gin_files: tuple = (DEFAULT_GIN_FILE,)
    gin_bindings: tuple = ()
    dataset: str = None
    rows: tuple = DEFAULT_ROWS
    restarts: tuple = RESTARTS
    seeds: int = 2
    train_steps: int = None
    classifier_dir: str = None
    classifier_bindings: tuple = ()
    inception_weights: str = None

    def base_bindings(self):
        """The user's bindings, after the dataset override."""
        dataset = [f"DATASET = {self.dataset!r}"] if self.dataset else []
        return [*dataset, *self.gin_bindings]

    def run_config(self, row, restarts, seed, train_steps):
        """(gin files, bindings) of one run."""
        bindings = [
            *self.base_bindings(),
            *ROWS[row].run_bindings(restarts),
            f"TRAIN_STEPS = {train_steps}",
            f"train.seed = {seed}",
        ]
        return [*self.gin_files, *ROWS[row].gin_files], bindings


def _fresh_start():
    """Clears gin's bindings and Keras's session: each run starts as in a process of its own."""
    import gc

    import gin
    import keras

    gin.clear_config()
    keras.backend.clear_session()
    gc.collect()


def _base_settings(ablation):
    """The dataset, step budget, image size and data dir the base config binds (after the
    user's bindings)."""
    from vim_tf.config import gin_utils

    _fresh_start()
    try:
        gin_utils.parse(ablation.gin_files, ablation.base_bindings(), finalize=False)
        settings = {
            "dataset": gin_utils.bound("%DATASET"),
            "train_steps": gin_utils.bound("%TRAIN_STEPS"),
            "data_dir": gin_utils.bound("make_dataset.data_dir"),
        }
    finally:
        _fresh_start()
    if settings["dataset"] is None:
        raise ValueError(
            f"the base config {list(ablation.gin_files)} binds no DATASET macro: use a "
            f"quantizer experiment such as {DEFAULT_GIN_FILE}, or pass --dataset"
        )
    return settings


def _check_row_configs(ablation, rows, restarts, train_steps):
    """Parses every selected row's config before anything trains; a row whose config is missing
    or broken fails here, naming the row (never silently skipped)."""
    from vim_tf.config import gin_utils

    for row in rows:
        for name in ROWS[row].gin_files:
            try:
                gin_utils.resolve_gin_file(name)
            except ValueError as e:
                raise ValueError(
                    f"ablation row {row!r} ({ROWS[row].description}) needs the gin config "
                    f"{name!r}, which this vim_tf does not have (its network "
                    f"{ROWS[row].network} may not be installed yet): drop the row from --rows "
                    f"(e.g. --rows={','.join(r for r in rows if r != row)})"
                ) from e
        files, bindings = ablation.run_config(row, restarts[0], 0, train_steps)
        _fresh_start()
        try:
            gin_utils.parse(files, bindings)
        except (ValueError, SyntaxError) as e:
            raise ValueError(f"ablation row {row!r} ({ROWS[row].description}): {e}") from e
        finally:
            _fresh_start()


def _check_spec(tag_dir, spec):
    """Records the base config of an output dir's dataset, or checks a rerun against it."""
    path = fs.join(tag_dir, "spec.json")
    if not fs.exists(path):
        fs.write_json(path, spec)
        return
    old = fs.read_json(path)
    diff = {k: (old.get(k), v) for k, v in spec.items() if old.get(k) != v}
    if diff:
        shown = "; ".join(f"{k}: {a!r} there, {b!r} now" for k, (a, b) in diff.items())
        raise ValueError(
            f"{tag_dir!r} holds an ablation of another configuration ({shown}): rows trained "
            "with different settings would share one table. Use another --output_dir, or the "
            "same flags as before"
        )


def _scoring_network(ablation, settings, tag_dir):
    """The rFID network: (path for `networks.load_scoring_network`, or None when not computed).

    Inception weights when given; else a classifier dir when given; else, on digits, the
    project's digits classifier, trained into `<dataset>/classifier` when not there yet.
    """
    from vim_tf.utils import model_dir as model_dir_lib

    if ablation.inception_weights:
        if not fs.exists(ablation.inception_weights):
            raise ValueError(f"--inception_weights={ablation.inception_weights!r} does not exist")
        return ablation.inception_weights
    classifier_dir = ablation.classifier_dir
    if classifier_dir and fs.exists(fs.join(classifier_dir, model_dir_lib.MODEL_INFO_FILE)):
        model_dir_lib.check_model_dir(classifier_dir, ("classifier",), "--classifier_dir")
        return classifier_dir
    if settings["dataset"] != "digits":
        if classifier_dir:
            raise ValueError(
                f"--classifier_dir={classifier_dir!r} holds no trained classifier, and only "
                "the digits classifier is trained here: train one with tools/train.py"
            )
        logging.warning(
            "dataset %r: no --inception_weights or --classifier_dir, so rFID is not computed "
            "(nothing is downloaded)",
            settings["dataset"],
        )
        return None
    classifier_dir = classifier_dir or fs.join(tag_dir, "classifier")
    if not _trained_to_end(classifier_dir):
        _train_classifier(ablation, settings, classifier_dir)
    return classifier_dir


def _newest_step(model_dir):
    """The step of the newest checkpoint in `model_dir` (0 without one)."""
    steps = [p.rsplit("-", 1)[-1][: -len(".index")] for p in fs.glob(model_dir, "ckpt-*.index")]
    return max((int(s) for s in steps if s.isdigit()), default=0)


def _trained_to_end(model_dir):
    """Whether `model_dir` holds a checkpoint at the step budget its model_info records."""
    from vim_tf.utils import model_dir as model_dir_lib

    path = fs.join(model_dir, model_dir_lib.MODEL_INFO_FILE)
    if not fs.exists(path):
        return False
    budget = fs.read_json(path).get("train_steps")
    return budget is not None and _newest_step(model_dir) >= budget


def _train_classifier(ablation, settings, classifier_dir):
    """Trains (or resumes) the digits classifier whose features give rFID on digits."""
    from vim_tf.training import train_lib

    bindings = ["DATASET = 'digits'"]
    if settings["data_dir"]:
        bindings.append(f"make_dataset.data_dir = {settings['data_dir']!r}")
    bindings += list(ablation.classifier_bindings)
    logging.info("the digits classifier for rFID: %s", classifier_dir)
    _fresh_start()
    try:
        train_lib.run(classifier_dir, [CLASSIFIER_GIN_FILE], bindings)
    finally:
        _fresh_start()


def run_dir(tag_dir, row, restarts, seed):
    return fs.join(tag_dir, row, f"restarts_{restarts}", f"seed_{seed}")


def _train_run(ablation, spec, key, directory):
    """Trains one run from scratch (removing a half-trained model dir); returns its seconds."""
    from vim_tf.training import train_lib
    from vim_tf.utils import model_dir as model_dir_lib

    model_dir = fs.join(directory, "model")
    if fs.exists(model_dir):
        logging.info(
            "%s: a previous attempt stopped during training (newest checkpoint at step %d): "
            "restarting it from step 0",
            key,
            _newest_step(model_dir),
        )
        fs.rmtree(model_dir)
    files, bindings = ablation.run_config(*key, spec["train_steps"])
    _fresh_start()
    start = time.time()
    try:
        train_lib.run(model_dir, files, bindings)
    finally:
        seconds = time.time() - start
        _fresh_start()
    info = model_dir_lib.read_model_info(model_dir)
    fs.write_json(
        fs.join(directory, "trained.json"),
        dict(train_seconds=seconds, gin_files=files, gin_bindings=bindings, model_info=info),
    )
    return seconds


def _init_geometry(ablation, spec, key):
    """The run's tokenizer as its training starts, measured on the test split: the model built
    as the trainer builds it (same config, `keras.utils.set_random_seed(seed)` first, so the
    same initial weights), untrained. `init_usage` is the fraction of codes the test split's
    tokens reach, `init_cosine` the mean pairwise cosine of their lookup vectors (0: spread
    over the sphere, 1: all one direction), both in float32.
    """
    import keras
    import tensorflow as tf

    from vim_tf.config import gin_utils
    from vim_tf.eval import quantizer_eval
    from vim_tf.training import trainer

    files, bindings = ablation.run_config(*key, spec["train_steps"])
    _fresh_start()
    try:
        gin_utils.parse(files, bindings)
        keras.utils.set_random_seed(key[2])  # the run's `train.seed`
        model = trainer.build_model(tf.distribute.get_strategy())
        geometry = quantizer_eval.lookup_geometry(model.network)
    finally:
        _fresh_start()
    return dict(init_usage=geometry["codebook_usage"], init_cosine=geometry["lookup_cosine"])


def _run_one(ablation, spec, key, directory, scoring):
    """Trains and evaluates one (row, restarts, seed) unless its result exists; returns it."""
    from vim_tf.eval import evaluator

    result_path = fs.join(directory, "result.json")
    if fs.exists(result_path):
        logging.info("%s: done before (%s)", key, result_path)
        result = fs.read_json(result_path)
        if any(k not in result for k in INIT_METRICS):  # a result from before they existed
            result.update(_init_geometry(ablation, spec, key))
            fs.write_json(result_path, result)
        return result
    trained = fs.join(directory, "trained.json")
    if fs.exists(trained):
        record = fs.read_json(trained)
        logging.info("%s: trained before; evaluating", key)
    else:
        _train_run(ablation, spec, key, directory)
        record = fs.read_json(trained)
    _fresh_start()
    start = time.time()
    try:
        metrics = evaluator.evaluate(
            fs.join(directory, "model"), fs.join(directory, "metrics.json"), classifier=scoring
        )
    finally:
        _fresh_start()
    row, restarts, seed = key
    result = dict(
        spec=spec,
        row=row,
        restarts=restarts,
        seed=seed,
        description=ROWS[row].description,
        gin_files=record["gin_files"],
        gin_bindings=record["gin_bindings"],
        train_seconds=record["train_seconds"],
        eval_seconds=time.time() - start,
        step=metrics["step"],
        num_images=metrics["num_images"],
        codebook_size=metrics["codebook_size"],
        classifier=metrics.get("classifier"),
        **{k: metrics.get(k) for k in EVAL_METRICS},
        **_init_geometry(ablation, spec, key),
    )
    fs.write_json(result_path, result)
    return result


def run_ablation(ablation):
    """Runs every missing (row, restarts, seed) of `ablation` and rebuilds the table.

    Args:
      ablation: an `Ablation`: `output_dir`; the base experiment (`gin_files`, `gin_bindings`,
        and `dataset` overriding its DATASET); `rows` (names of ROWS); `restarts` ('on'/'off');
        `seeds` (count); `train_steps` (None: the base experiment's TRAIN_STEPS);
        `classifier_dir` / `classifier_bindings` (the digits classifier for rFID: used if
        trained, else trained there with experiments/digits_classifier.gin and these bindings;
        default `<output_dir>/<dataset>/classifier` on digits); `inception_weights` (an Inception
        v3 file for rFID on any dataset; without it or a classifier, rFID is not computed).

    Returns:
      The table (see `build_table`), also written as ablation.{md,csv,json,png} in output_dir.

    Raises:
      ValueError: a bad selection, a row whose config is missing or broken, or an output dir
        holding an ablation of another configuration; raised before anything trains.
      RunsFailed: after every run was tried, naming the runs that failed (e.g. a non-finite
        loss); the table is written from the others.
    """
    rows, restarts = check_args(
        ablation.rows, ablation.restarts, ablation.seeds, ablation.train_steps
    )
    settings = _base_settings(ablation)
    train_steps = ablation.train_steps or settings["train_steps"]
    check_args(rows, restarts, ablation.seeds, train_steps)
    _check_row_configs(ablation, rows, restarts, train_steps)
    spec = dict(
        gin_files=list(ablation.gin_files),
        gin_bindings=ablation.base_bindings(),
        dataset=settings["dataset"],
        train_steps=train_steps,
    )
    tag_dir = fs.join(ablation.output_dir, dataset_tag(settings["dataset"]))
    _check_spec(tag_dir, spec)
    scoring = _scoring_network(ablation, settings, tag_dir)
    keys = [(r, s, seed) for r in rows for s in restarts for seed in range(ablation.seeds)]
    failed = []
    for i, key in enumerate(keys):
        logging.info("ablation run %d of %d: row %s, restarts %s, seed %d", i + 1, len(keys), *key)
        try:
            _run_one(ablation, spec, key, run_dir(tag_dir, *key), scoring)
        except Exception as e:  # noqa: BLE001 - one diverging run must not stop the others
            logging.exception("ablation run %s failed", key)
            failed.append(f"{'/'.join(map(str, key))}: {type(e).__name__}: {e}")
        write_table(ablation.output_dir)
    table = write_table(ablation.output_dir)
    if failed:
        raise RunsFailed(
            f"{len(failed)} of {len(keys)} ablation runs failed (the table holds the others; "
            "rerunning the command retries only the missing runs):\n" + "\n".join(failed)
        )
    return table


class RunsFailed(RuntimeError):
    """Some runs of an ablation failed; the others finished and are in the table."""


# ----------------------------------------------------------------------------- the table
def _stats(values):
    """{mean, std (sample, 0 for one value), min, max, values} of the non-None values, or None."""
    values = [float(v) for v in values if v is not None]
    if not values:
        return None
    mean = sum(values) / len(values)
    var = sum((v - mean) ** 2 for v in values) / (len(values) - 1) if len(values) > 1 else 0.0
    return dict(mean=mean, std=math.sqrt(var), min=min(values), max=max(values), values=values)


def collect_results(output_dir):
    """{dataset tag: [result dicts]} of every result.json under `output_dir`."""
    out = {}
    for tag_dir in fs.glob(output_dir, "*"):
        if not fs.exists(fs.join(tag_dir, "spec.json")):
            continue
        results = []
        for row_dir in fs.glob(tag_dir, "*"):
            for restarts_dir in fs.glob(row_dir, "restarts_*"):
                for seed_dir in fs.glob(restarts_dir, "seed_*"):
                    path = fs.join(seed_dir, "result.json")
                    if fs.exists(path):
                        results.append(fs.read_json(path))
        out[tag_dir.rstrip("/").rsplit("/", 1)[-1]] = results
    return out


def _order(row):
    names = list(ROWS)
    return (names.index(row) if row in names else len(names), row)


def build_table(output_dir):
    """The table from every result under `output_dir` (whatever exists).

    Returns:
      {"datasets": {tag: {"dataset", "train_steps", "gin_files", "gin_bindings", "scoring",
      "rows": [{"row", "description", "restarts", "seeds", "paper": {"usage", "usage_text",
      "rfid", "note"}, "metrics": {metric: {mean, std, min, max, values} or None}}]}}}.
    """
    datasets = {}
    for tag, results in collect_results(output_dir).items():
        if not results:
            continue
        spec = results[0]["spec"]
        groups = {}
        for r in results:
            groups.setdefault((r["row"], r["restarts"]), []).append(r)
        rows = []
        for (row, restarts), group in sorted(
            groups.items(), key=lambda kv: (_order(kv[0][0]), RESTARTS.index(kv[0][1]))
        ):
            group.sort(key=lambda r: r["seed"])
            paper = dict(PAPER_TABLE4.get(row, {"usage": None, "rfid": None, "note": ""}))
            paper["usage_text"] = paper_usage_text(row)
            rows.append(
                dict(
                    row=row,
                    description=group[0]["description"],
                    restarts=restarts,
                    seeds=[r["seed"] for r in group],
                    paper=paper,
                    metrics={m: _stats([r.get(m) for r in group]) for m in METRICS},
                )
            )
        scoring = sorted({r.get("classifier") or "" for r in results} - {""})
        datasets[tag] = dict(
            dataset=spec["dataset"],
            train_steps=spec["train_steps"],
            gin_files=spec["gin_files"],
            gin_bindings=spec["gin_bindings"],
            scoring=scoring,
            rows=rows,
        )
    return {"datasets": datasets}


# How each metric shows in the markdown table: (column title, scale, decimals, unit).
COLUMNS = {
    "codebook_usage": ("codebook usage (test)", 100.0, 1, "%"),
    "perplexity": ("perplexity", 1.0, 1, ""),
    "psnr": ("PSNR (dB)", 1.0, 2, ""),
    "ssim": ("SSIM", 1.0, 3, ""),
    "rfid": ("rFID", 1.0, 2, ""),
    "train_seconds": ("train time (s)", 1.0, 0, ""),
    "init_usage": ("usage at step 0", 100.0, 1, "%"),
    "init_cosine": ("lookup cosine at step 0", 1.0, 2, ""),
}
NOT_COMPUTED = "not computed"


def format_cell(stats, metric):
    """'mean ± std' (sample std over seeds; the mean alone for one seed) as the table shows."""
    if stats is None:
        return NOT_COMPUTED if metric == "rfid" else "-"
    _, scale, decimals, unit = COLUMNS[metric]
    mean = f"{stats['mean'] * scale:.{decimals}f}"
    if len(stats["values"]) < 2:
        return f"{mean}{unit}"
    return f"{mean} ± {stats['std'] * scale:.{decimals}f}{unit}"


def _paper_cell(row):
    paper = row["paper"]
    if row["restarts"] == "on":
        return "(no restarts in the paper)"
    text = paper["usage_text"]
    return f"{text} ({paper['note']})" if paper.get("note") and text != "-" else text


def to_markdown(table):
    """The table as markdown: one section per dataset, the paper's Table 4 beside ours."""
    lines = [
        "Ours: tiny models, each row and restart setting trained to the same step budget "
        "for every seed; mean ± sample std over the seeds (the seeds column). The paper: "
        "Table 4, ViT-VQGAN Base-Base on ImageNet, 8192 codes, no dead-code restarts; its "
        "rFID uses Inception features. Paper rFID: "
        + ", ".join(f"{k} {v['rfid']}" for k, v in PAPER_TABLE4.items() if v["rfid"])
        + ".",
        "",
    ]
    titles = [COLUMNS[m][0] for m in METRICS]
    for data in table["datasets"].values():
        scoring = ", ".join(data["scoring"]) or (
            "not computed: no scoring network (pass --inception_weights or --classifier_dir)"
        )
        lines += [
            f"### {data['dataset']} ({data['train_steps']} steps per run)",
            "",
            f"Base config: {', '.join(data['gin_files'])}; bindings: "
            f"{'; '.join(data['gin_bindings']) or 'none'}. rFID network: {scoring}.",
            "",
            "| row | restarts | seeds | " + " | ".join(titles[:1]) + " | paper usage (Table 4) | "
            + " | ".join(titles[1:]) + " |",
            "|" + "---|" * (len(titles) + 4),
        ]  # fmt: skip
        for row in data["rows"]:
            cells = [format_cell(row["metrics"][m], m) for m in METRICS]
            lines.append(
                f"| {row['row']}: {row['description']} | {row['restarts']} | {len(row['seeds'])} "
                f"| {cells[0]} | {_paper_cell(row)} | " + " | ".join(cells[1:]) + " |"
            )
        lines.append("")
    return "\n".join(lines)


def to_csv(table):
    """One line per (dataset, row, restarts): mean, std, min and max of every metric."""
    import csv

    header = ["dataset", "row", "restarts", "seeds", "paper_usage_low", "paper_usage_high"]
    header += [f"{m}_{s}" for m in METRICS for s in ("mean", "std", "min", "max")]
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(header)
    for data in table["datasets"].values():
        for row in data["rows"]:
            usage = row["paper"]["usage"] or ("", "")
            line = [data["dataset"], row["row"], row["restarts"], len(row["seeds"]), *usage]
            for m in METRICS:
                stats = row["metrics"][m]
                line += [repr(stats[s]) if stats else "" for s in ("mean", "std", "min", "max")]
            writer.writerow(line)
    return buf.getvalue()


def plot(table, path):
    """A PNG per the table: per dataset, codebook usage (with the paper's and the step-0 usage as
    markers), PSNR and rFID by row, bars at the seed mean with min-max error bars, restarts off
    and on side by side.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    datasets = list(table["datasets"].values())
    panels = ("codebook_usage", "psnr", "rfid")
    fig = Figure(figsize=(15, 4.2 * max(1, len(datasets))), dpi=100)
    FigureCanvasAgg(fig)
    for i, data in enumerate(datasets):
        names = list(dict.fromkeys(r["row"] for r in data["rows"]))
        for j, metric in enumerate(panels):
            ax = fig.add_subplot(max(1, len(datasets)), len(panels), i * len(panels) + j + 1)
            _plot_panel(ax, data, names, metric)
            ax.set_title(f"{data['dataset']}: {COLUMNS[metric][0]}")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    fs.write_bytes(path, buf.getvalue())


def _plot_panel(ax, data, names, metric):
    scale = COLUMNS[metric][1]
    width = 0.38
    for k, restarts in enumerate(RESTARTS):
        xs, heights, spread = [], [], [[], []]
        for x, name in enumerate(names):
            stats = next(
                (r["metrics"][metric] for r in data["rows"]
                 if r["row"] == name and r["restarts"] == restarts), None)  # fmt: skip
            if stats is None:
                continue
            xs.append(x + (k - 0.5) * width)
            heights.append(stats["mean"] * scale)
            spread[0].append((stats["mean"] - stats["min"]) * scale)
            spread[1].append((stats["max"] - stats["mean"]) * scale)
        if xs:
            ax.bar(xs, heights, width, yerr=spread, capsize=3, label=f"restarts {restarts}")
    if metric == "codebook_usage":
        for x, name in enumerate(names):
            usage = PAPER_TABLE4.get(name, {}).get("usage")
            if usage:
                ax.plot([x - 0.5 * width], [100 * sum(usage) / 2], "kD", label=None)
        ax.plot([], [], "kD", label="the paper (Table 4)")
        # Usage as training starts: one marker per row (restarts off and on start from the
        # same weights), from whichever restart setting has the figure.
        at_start = {}
        for r in data["rows"]:
            if r["metrics"].get("init_usage"):
                at_start.setdefault(r["row"], 100 * r["metrics"]["init_usage"]["mean"])
        init = [(x, at_start[name]) for x, name in enumerate(names) if name in at_start]
        if init:
            ax.plot(*zip(*init), "o", mfc="none", mec="0.3", label="at step 0")
    if not ax.patches:
        ax.text(0.5, 0.5, NOT_COMPUTED, ha="center", va="center", transform=ax.transAxes)
    ax.set_xticks(range(len(names)))
    ax.set_xticklabels(names, rotation=30, ha="right")
    # A fixed margin of half a slot each side: one row's bars would otherwise fill the panel.
    ax.set_xlim(-0.5 - width, len(names) - 0.5 + width)
    ax.grid(True, axis="y", alpha=0.3)
    if ax.get_legend_handles_labels()[1]:  # no empty legend box on a "not computed" panel
        ax.legend(loc="best", fontsize=8)


def output_paths(output_dir):
    """The table's files: ablation.md, .csv, .json and .png in `output_dir`."""
    base = fs.join(output_dir, OUTPUT_NAME)
    return [f"{base}.{ext}" for ext in ("md", "csv", "json", "png")]


def write_table(output_dir):
    """Rebuilds the table from the results under `output_dir` and writes ablation.md, .csv,
    .json and .png there (each atomically); returns the table."""
    table = build_table(output_dir)
    md, csv_path, json_path, png = output_paths(output_dir)
    fs.write_json(json_path, table)
    fs.write_text(md, to_markdown(table))
    fs.write_text(csv_path, to_csv(table))
    plot(table, png)
    return table
