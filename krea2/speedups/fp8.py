"""fp8 weights and activations (torchao, row-wise scales) for the linear layers of the repeated blocks, where nearly
all the FLOPs are. Needs compute capability >= 8.9 and torchao; the error it adds is in bench/NOTES.md."""

from __future__ import annotations

from torch import nn


def quantize_fp8(transformer: nn.Module) -> None:
    """Quantise the blocks' linear layers in place (fuse the projections first: see `projections.py`). A transformer
    already quantised is left alone."""
    if fp8_quantized(transformer):
        return
    from torchao.quantization import Float8DynamicActivationFloat8WeightConfig, PerRow, quantize_

    quantize_(transformer, Float8DynamicActivationFloat8WeightConfig(granularity=PerRow()), filter_fn=in_blocks)


def in_blocks(module: nn.Module, fqn: str) -> bool:
    """The layers fp8 quantises: the repeated blocks' linear layers."""
    return isinstance(module, nn.Linear) and fqn.startswith("transformer_blocks.")


def fp8_layers(transformer: nn.Module) -> list[str]:
    return [fqn for fqn, module in transformer.named_modules() if in_blocks(module, fqn)]


def fp8_quantized(transformer: nn.Module) -> bool:
    """Whether the blocks' linear layers hold torchao's quantised weights."""
    return any(
        isinstance(module, nn.Linear) and type(module.weight).__module__.startswith("torchao")
        for block in transformer.transformer_blocks
        for module in block.modules()
    )
