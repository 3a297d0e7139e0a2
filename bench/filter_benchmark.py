"""What the content filter (krea2/content_filter.py) adds to a 1024² image, on one CUDA GPU. Issue 18's target: at
most 15 ms per image.

Two measurements, each a median of `--repeats` after a warm-up:

1. The filter alone: `ImageClassifierFilter.check` on a decoded (B, 3, 1024, 1024) batch already on the GPU (what
   `krea2.generation.generate` hands it), for each batch size; beside it the 8-bit conversion the batch gets anyway.
2. End to end, one run of the same Turbo 1024² generation through `ModelManager.generate` without and with the
   content policy (the difference is what a person waits longer); full-size architecture with random weights, as
   bench/benchmark.py builds it.

The classifier is Falconsai/nsfw_image_detection's architecture and preprocessing (ViT-Base/16 at 224², a
ViTImageProcessor with mean/std 0.5, bilinear) with random weights, saved and loaded through the filter's real path:
the device has no network, and the time does not depend on the weights. `--filter-model` names a real one instead.

    python bench/filter_benchmark.py --out bench/results
    python bench/filter_benchmark.py --smoke --out /tmp/smoke   # the check tests/test_filter_benchmark_smoke.py runs

`--smoke` runs the same script on the CPU with the demo checkpoints at 256² and a tiny ViT: its numbers mean nothing.
"""

from __future__ import annotations

import argparse
import logging
import statistics
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.benchmark import CUDA, InMemoryLoader, build_full_size, build_smoke, environment, timed, write_result
from krea2.content_filter import ContentPolicy, ImageClassifierFilter
from krea2.generation import to_pil_images
from krea2.manager import ModelManager
from krea2.request import GenerationRequest

log = logging.getLogger("bench.filter")
TARGET_MS = 15.0  # per 1024² image, on the GPU (issue 18)
PROMPT = "a photograph of a red fox standing in fresh snow at dawn"
LABELS = {0: "normal", 1: "nsfw"}


def build_classifier(folder: Path, smoke: bool) -> str:
    """Falconsai/nsfw_image_detection's architecture and processor config (a tiny ViT for --smoke), random weights,
    written in the layout `from_pretrained` reads."""
    from transformers import ViTConfig, ViTForImageClassification, ViTImageProcessor

    side = 32 if smoke else 224
    shape = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64,
             "patch_size": 8} if smoke else {}  # fmt: skip
    config = ViTConfig(image_size=side, num_labels=2, id2label=LABELS, label2id={v: k for k, v in LABELS.items()},
                       **shape)  # fmt: skip  # the defaults are ViT-Base/16
    torch.manual_seed(0)
    ViTForImageClassification(config).eval().save_pretrained(folder)
    ViTImageProcessor(size={"height": side, "width": side}, image_mean=[0.5] * 3, image_std=[0.5] * 3,
                      resample=2).save_pretrained(folder)  # fmt: skip
    return str(folder)


def filter_alone(image_filter: ImageClassifierFilter, side: int, batch_sizes: list[int], repeats: int) -> dict:
    device = "cuda" if CUDA else "cpu"
    out: dict = {}
    for batch in batch_sizes:
        torch.manual_seed(batch)
        images = torch.rand(batch, 3, side, side, device=device)  # a decoded batch in [0, 1], where it is decoded
        for _ in range(3):  # warm-up: kernels, the allocator, cuDNN's choices
            image_filter.check(images)
        times, _ = timed(lambda images=images: image_filter.check(images), repeats)
        convert, _ = timed(lambda images=images: to_pil_images(images), repeats)
        out[f"batch{batch}"] = {
            "filter_ms": statistics.median(times) * 1000,
            "filter_ms_per_image": statistics.median(times) * 1000 / batch,
            "filter_runs_ms": [t * 1000 for t in times],
            "to_8bit_ms": statistics.median(convert) * 1000,  # the conversion every batch gets, filter or not
        }
        log.info("filter alone, batch %d: %.2f ms", batch, out[f"batch{batch}"]["filter_ms"])
    return out


def end_to_end(policy: ContentPolicy, smoke: bool, repeats: int) -> dict:
    """The same Turbo request through the manager, without and then with the policy: one manager, same modules."""
    turbo, raw_transformer = build_smoke() if smoke else build_full_size("cuda")
    manager = ModelManager(InMemoryLoader(turbo, raw_transformer), placement="gpu" if CUDA else "cpu")
    manager.start(background=False)
    side, steps = (256, 2) if smoke else (1024, 8)
    request = GenerationRequest(prompt=PROMPT, checkpoint="turbo", width=side, height=side, steps=steps, seed=1)
    results: dict = {"width": side, "height": side, "steps": steps}
    for label, applied in (("without", None), ("with", policy)):
        manager.content_policy = applied
        run_once(manager, request)  # warm-up
        times, _ = timed(lambda: run_once(manager, request), repeats)
        results[f"{label}_s"] = statistics.median(times)
        results[f"{label}_runs_s"] = times
    results["added_ms"] = (results["with_s"] - results["without_s"]) * 1000
    return results


def run_once(manager: ModelManager, request: GenerationRequest) -> None:
    from krea2.errors import ContentBlocked

    try:
        manager.generate(request)
    except ContentBlocked:  # a random classifier may flag a random model's image: the work done is the same
        pass


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--filter-model", help="a classifier's Hub id or folder (default: Falconsai-shaped, random)")
    parser.add_argument("--labels", default="nsfw")
    parser.add_argument("--batch-sizes", default="1,4")
    parser.add_argument("--repeats", type=int, default=20, help="filter-alone repeats (end to end: a fifth of it)")
    parser.add_argument("--no-end-to-end", action="store_true", help="only the filter alone")
    parser.add_argument("--out", default="bench/results")
    parser.add_argument("--smoke", action="store_true", help="tiny CPU run that checks the script, not the speed")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    if not CUDA and not args.smoke:
        parser.error("needs a CUDA GPU (or --smoke)")
    device = "cuda" if CUDA else "cpu"
    side = 256 if args.smoke else 1024

    with tempfile.TemporaryDirectory() as folder:
        source = args.filter_model or build_classifier(Path(folder) / "classifier", args.smoke)
        image_filter = ImageClassifierFilter(source, tuple(args.labels.split(",")), 0.5)
        image_filter.load(device)
        payload: dict = {
            "environment": environment(),
            "classifier": {
                "source": args.filter_model
                or "Falconsai/nsfw_image_detection architecture, random weights"
                + (" (tiny, --smoke)" if args.smoke else ""),
                "model": type(image_filter.model).__name__,
                "parameters": sum(p.numel() for p in image_filter.model.parameters()),
                "preprocessing": "torch, on the device" if image_filter.preprocessing else "the image processor (CPU)",
            },
            "side": side,
            "target_ms_per_image": TARGET_MS,
        }
        batch_sizes = [int(b) for b in args.batch_sizes.split(",")]
        payload["filter_alone"] = filter_alone(image_filter, side, batch_sizes, args.repeats)
        if not args.no_end_to_end:
            policy = ContentPolicy(image_filter, required=True)
            policy.state = "ready"  # loaded above
            payload["end_to_end"] = end_to_end(policy, args.smoke, max(1, args.repeats // 5))
    per_image = max(run["filter_ms_per_image"] for run in payload["filter_alone"].values())
    payload["within_target"] = None if args.smoke else per_image <= TARGET_MS
    write_result(args.out, payload, "filter-smoke" if args.smoke else "filter")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
