"""The k-means patch-codebook baseline: PSNR, SSIM and usage of a rate-matched plain codebook.

vim-kmeans-baseline --dataset=photos --image_size=32 --patch_size=4 --codebook_size=512 \
    --output=runs/kmeans/photos32.json
Fits k-means on the train split's non-overlapping patches, reconstructs the test split with the
nearest centres, and writes the JSON (psnr, ssim, codebook_usage, perplexity, bits_per_image,
...) and <output stem>_reconstructions.png beside it.

The `vim-kmeans-baseline` console script; also `python -m vim_tf.bin.kmeans_baseline` and `python tools/kmeans_baseline.py`.
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")

from absl import flags  # noqa: E402

from vim_tf.utils import cli  # noqa: E402

flags.DEFINE_string(
    "dataset", "photos", "Dataset name: 'digits', 'photos', 'tfds:...', 'folder:...'."
)
flags.DEFINE_integer("image_size", 32, "Image side S.")
flags.DEFINE_integer("patch_size", 4, "Patch side P (divides S): one code per P x P patch.")
flags.DEFINE_integer("codebook_size", 512, "Number of k-means centres K.")
flags.DEFINE_string("output", None, "Where the metrics JSON goes (the grid PNG goes beside it).")
flags.DEFINE_integer("seed", 0, "Seeds the train-patch subsample and the k-means++ start.")
flags.DEFINE_integer("max_train_patches", 100_000, "Fit on at most this many train patches.")
flags.DEFINE_string("data_dir", None, "TFDS data dir (default: TFDS's own).")
flags.mark_flags_as_required(["output"])
FLAGS = flags.FLAGS


def main(argv):
    del argv
    from vim_tf.reports import kmeans_baseline

    kmeans_baseline.run_kmeans_baseline(
        FLAGS.dataset,
        FLAGS.image_size,
        FLAGS.patch_size,
        FLAGS.codebook_size,
        FLAGS.output,
        seed=FLAGS.seed,
        max_train_patches=FLAGS.max_train_patches,
        data_dir=FLAGS.data_dir,
    )


def run():
    """Entry point of the `vim-kmeans-baseline` console script."""
    cli.run(main)


if __name__ == "__main__":
    run()
