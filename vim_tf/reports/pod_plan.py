"""Expected times of the paper's ImageNet pipeline on a pod, derived from FLOP counts.

The paper gives one throughput for the pod it trained on: ViT-VQGAN SS stage-1 training at
`PAPER_SS_TRAIN_IMG_PER_S` images/s. Multiplied by this project's matmul FLOPs of one SS train
step per image (`flops.stage1_flops`, of the gin config `models/vitvqgan_ss.gin` at 256 px),
it gives the sustained matmul rate of that pod on that workload. Every other stage's time is
its matmul FLOPs (`flops.stage1_flops`, `flops.prior_flops` of `models/vim_{base,large}.gin`
with the SS quantizer's 32x32 grid and 8,192 codes, Inception v3's multiply-adds) divided by
that rate: the time at the same utilization on the same pod.

What that leaves out, and which way it errs:
- the discriminator's and VGG's FLOPs of stage-1 training are not counted, so the derived rate
  is below the pod's true sustained rate and the other stages' times are overestimated by that
  share (for workloads as matmul-efficient as stage-1 training);
- sampling runs one token position per step, bound by memory bandwidth rather than matmul
  rate, at a utilization far below training's: its figure is a lower bound;
- host work (JPEG decoding, TFRecord writing, file I/O) is not counted.
"""

import gin

from vim_tf.config import gin_utils
from vim_tf.reports import flops

# The paper (its stage-1 throughput comparison): ViT-VQGAN SS trains at 1520 images/s on its pod.
PAPER_SS_TRAIN_IMG_PER_S = 1520.0
# The paper's schedules: stage 1 batch 256 for 500k steps, stage 2 batch 1024 for 450k steps.
STAGE1_STEPS, STAGE1_BATCH = 500_000, 256
STAGE2_STEPS, STAGE2_BATCH = 450_000, 1024
IMAGENET_TRAIN, IMAGENET_VALIDATION = 1_281_167, 50_000
FID_SAMPLES = 50_000
# Inception v3 at 299x299: 5.7 billion multiply-adds per image (its paper), 2 FLOPs each.
INCEPTION_FLOPS = 2 * 5.7e9


def _ss_flops(image_size=256):
    gin.clear_config()
    gin_utils.parse(["models/vitvqgan_ss.gin"], [f"IMAGE_SIZE = {image_size}"])
    try:
        q = gin.query_parameter
        counts = flops.stage1_flops(
            image_size,
            q("ViTVQGAN.patch_size"),
            q("ViTVQGAN.encoder"),
            q("ViTVQGAN.codebook_size"),
            q("ViTVQGAN.code_dim"),
            decoder=q("ViTVQGAN.decoder"),
        )
        grid = image_size // q("ViTVQGAN.patch_size")
        return counts, grid, q("ViTVQGAN.codebook_size")
    finally:
        gin.clear_config()


def _prior_flops(name, grid_size, codebook_size):
    gin.clear_config()
    gin_utils.parse([f"models/{name}.gin"], [])
    try:
        stack = {
            k: gin.query_parameter(f"VIM.{k}") for k in ("num_layers", "hidden_dim", "mlp_dim")
        }
    finally:
        gin.clear_config()
    return flops.prior_flops(stack, grid_size, codebook_size)


def plan(img_per_s=PAPER_SS_TRAIN_IMG_PER_S):
    """The pipeline's stages and their expected times at the derived rate.

    Returns:
      {"rows": [{stage, flops, hours, note}], "rate": FLOP/s, "img_per_s": `img_per_s`,
      "ss_train_flops": FLOPs of one SS train step per image}.
    """
    ss, grid, codes = _ss_flops()
    rate = img_per_s * ss["train"]
    base = _prior_flops("vim_base", grid, codes)
    large = _prior_flops("vim_large", grid, codes)
    stages = [
        (
            "train ViT-VQGAN SS (500k steps x 256)",
            STAGE1_STEPS * STAGE1_BATCH * ss["train"],
            "the paper's throughput itself",
        ),
        (
            "encode ImageNet train + validation to tokens",
            (IMAGENET_TRAIN + IMAGENET_VALIDATION) * ss["encode"],
            "tools/encode.py --strategy=tpu",
        ),
        (
            "train VIM-Base (450k steps x 1024)",
            STAGE2_STEPS * STAGE2_BATCH * base["train"],
            "on token shards",
        ),
        (
            "train VIM-Large (450k steps x 1024)",
            STAGE2_STEPS * STAGE2_BATCH * large["train"],
            "on token shards",
        ),
        (
            "sample 50k with VIM-Base",
            FID_SAMPLES * (base["sample"] + ss["forward"] - ss["encode"]),
            "lower bound: memory-bound decoding",
        ),
        (
            "sample 50k with VIM-Large",
            FID_SAMPLES * (large["sample"] + ss["forward"] - ss["encode"]),
            "lower bound: memory-bound decoding",
        ),
        (
            "Inception on 50k samples + 50k validation images",
            2 * FID_SAMPLES * INCEPTION_FLOPS,
            "host decoding and resizing not counted",
        ),
    ]
    rows = [
        {"stage": s, "flops": f, "hours": f / rate / 3600.0, "note": note} for s, f, note in stages
    ]
    return {"rows": rows, "rate": rate, "img_per_s": img_per_s, "ss_train_flops": ss["train"]}


def markdown(result):
    """A `plan` result as a markdown table."""
    rows, rate = result["rows"], result["rate"]
    lines = [
        f"Derived sustained matmul rate: {rate / 1e12:.0f} TFLOP/s "
        f"({result['img_per_s']:.0f} SS train images/s x {result['ss_train_flops']:.3g} "
        "matmul FLOPs each).",
        "",
        "| stage | matmul FLOPs | expected time | note |",
        "|---|---|---|---|",
    ]
    for r in rows:
        hours = r["hours"]
        if hours >= 1:
            shown = f"{hours:.1f} h"
        elif hours * 60 >= 1:
            shown = f"{hours * 60:.1f} min"
        else:
            shown = f"{hours * 3600:.0f} s"
        lines.append(f"| {r['stage']} | {r['flops']:.3g} | {shown} | {r['note']} |")
    return "\n".join(lines)
