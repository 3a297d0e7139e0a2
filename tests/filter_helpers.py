"""Tiny image classifiers in the real layout (`save_pretrained` of a transformers model + its image processor config),
built offline, for the content-filter tests.

`build_red_flagging_classifier` constructs (no training) a ResNet whose weights flag the demo model's red: one feature
per pixel, ReLU(R - 2G - B - 0.1) on the 0..1 colours, which is positive for the demo palette's red (220, 40, 40) and
for no other colour of it (orange, pink, brown, purple... all give R - 2G - B < 0), averaged over the picture; the
"nsfw" logit rises with it. Measured on the demo checkpoints (256², Turbo and Raw): a red background averages
0.23-0.30, every other background 0.00 (0.04 for a red square on white), so the decision threshold at 0.1 sits far from
both. Its processor is a ViTImageProcessor, the kind Falconsai/nsfw_image_detection uses, so the filter's tensor
preprocessing is exercised on the same processor type as in production.
"""

from __future__ import annotations

from pathlib import Path

import torch

RED_RULE = ((1.0, -2.0, -1.0), 0.1)  # weights on (R, G, B) in 0..1, margin: feature = ReLU(w·rgb - margin)
RED_FEATURE_THRESHOLD = 0.1  # mean feature at which P(nsfw) = 0.5
STEEPNESS = 100.0
LABELS = {0: "normal", 1: "nsfw"}


def build_red_flagging_classifier(folder: Path, side: int = 64) -> Path:
    from transformers import ResNetConfig, ResNetForImageClassification, ViTImageProcessor

    config = ResNetConfig(
        num_channels=3, embedding_size=4, hidden_sizes=[4], depths=[1], layer_type="basic", hidden_act="relu",
        downsample_in_first_stage=False, num_labels=2, id2label=LABELS, label2id={v: k for k, v in LABELS.items()},
    )  # fmt: skip
    model = ResNetForImageClassification(config).eval()
    (w_r, w_g, w_b), margin = RED_RULE
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.zero_()
        for name, buffer in model.named_buffers():
            if name.endswith("running_var"):
                buffer.fill_(1.0)
            elif name.endswith("running_mean"):
                buffer.zero_()
        embedder = model.resnet.embedder.embedder
        # The processor maps x in 0..1 to x' = (x - 0.5) / 0.5, so w·x - margin = (w/2)·x' + (sum(w)/2 - margin).
        centre = embedder.convolution.kernel_size[0] // 2
        eps = embedder.normalization.eps
        embedder.convolution.weight[0, :, centre, centre] = torch.tensor([w_r, w_g, w_b]) / 2
        embedder.normalization.weight.fill_((1 + eps) ** 0.5)  # undo BatchNorm's 1/sqrt(var + eps)
        embedder.normalization.bias[0] = (w_r + w_g + w_b) / 2 - margin
        embedder.normalization.bias[1:] = -1.0  # the other channels stay at ReLU(-1) = 0
        # The residual block adds nothing (its last BatchNorm scales by 0): the stage passes the feature through.
        classifier = model.classifier[1]
        classifier.weight[1, 0] = STEEPNESS
        classifier.bias[1] = -STEEPNESS * RED_FEATURE_THRESHOLD
    model.save_pretrained(folder)
    ViTImageProcessor(size={"height": side, "width": side}, image_mean=[0.5] * 3, image_std=[0.5] * 3).save_pretrained(
        folder
    )
    return folder


def build_random_vit(folder: Path, side: int = 32, labels: dict[int, str] | None = None) -> Path:
    """A randomly initialised ViT classifier shaped like Falconsai/nsfw_image_detection (ViT + ViTImageProcessor),
    only tiny: for the loading path and the preprocessing check, not for decisions."""
    from transformers import ViTConfig, ViTForImageClassification, ViTImageProcessor

    labels = labels or LABELS
    torch.manual_seed(0)
    config = ViTConfig(
        hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32, image_size=side,
        patch_size=8, num_labels=len(labels), id2label=labels, label2id={v: k for k, v in labels.items()},
    )  # fmt: skip
    ViTForImageClassification(config).eval().save_pretrained(folder)
    ViTImageProcessor(size={"height": side, "width": side}).save_pretrained(folder)
    return folder
