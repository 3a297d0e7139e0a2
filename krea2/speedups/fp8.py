"""fp8 weights and activations (torchao, row-wise scales) for the linear layers of the repeated blocks, where nearly
all the FLOPs are. Needs compute capability >= 8.9 and torchao; the error it adds is in bench/NOTES.md."""

from __future__ import annotations

import torch
from torch import nn


def fp8_config():
    """The one torchao configuration of the fast path: fp8 e4m3 weights and activations, one scale per row. Not
    `set_inductor_config`: torchao would switch on inductor's kernel tuning for the whole process as a side effect of
    quantising; the fast path sets that itself (`kernel_tuning`, `speedups/compile.py`)."""
    from torchao.quantization import Float8DynamicActivationFloat8WeightConfig, PerRow

    return Float8DynamicActivationFloat8WeightConfig(granularity=PerRow(), set_inductor_config=False)


def quantize_fp8(transformer: nn.Module) -> None:
    """Quantise the blocks' linear layers in place (fuse the projections first: see `projections.py`). A transformer
    already quantised is left alone."""
    if fp8_quantized(transformer):
        return
    from torchao.quantization import quantize_

    quantize_(transformer, fp8_config(), filter_fn=in_blocks)


def float8_weight(qdata: torch.Tensor, row_scale: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """The weight `quantize_fp8` gives a Linear, built from data that is quantised already (a pre-quantised fp8
    checkpoint, `krea2/single_file.py`): `qdata` fp8 e4m3 (out, in), `row_scale` fp32 (out, 1), weight = qdata * scale.
    Same tensor type and settings as torchao's own quantisation, so the fast path treats it as its own."""
    from torchao.quantization.quantize_.workflows.float8.float8_tensor import (
        Float8Tensor,
        QuantizeTensorToFloat8Kwargs,
    )

    config = fp8_config()
    activation_granularity, _weight_granularity = config.granularity
    activations = QuantizeTensorToFloat8Kwargs(
        config.activation_dtype,
        activation_granularity,
        hp_value_lb=config.activation_value_lb,
        hp_value_ub=config.activation_value_ub,
        kernel_preference=config.kernel_preference,
    )
    return Float8Tensor(
        qdata,
        row_scale,
        block_size=[1, qdata.shape[-1]],
        mm_config=config.mm_config,
        act_quant_kwargs=activations,
        kernel_preference=config.kernel_preference,
        dtype=dtype,
    )


def in_blocks(module: nn.Module, fqn: str) -> bool:
    """The layers fp8 quantises: the repeated blocks' linear layers."""
    return isinstance(module, nn.Linear) and fqn.startswith("transformer_blocks.")


def fp8_layers(transformer: nn.Module) -> list[str]:
    return [fqn for fqn, module in transformer.named_modules() if in_blocks(module, fqn)]


def fp8_quantized(transformer: nn.Module) -> bool:
    """Whether the blocks' linear layers hold torchao's quantised weights."""
    return any(fp8_quantized_module(block) for block in transformer.transformer_blocks)


def fp8_quantized_module(module: nn.Module) -> bool:
    """Whether any linear layer of `module` holds torchao's quantised weights."""
    layers = (layer for layer in module.modules() if isinstance(layer, nn.Linear))
    return any(type(layer.weight).__module__.startswith("torchao") for layer in layers)


def quantize_linears_fp8(module: nn.Module) -> None:
    """Every linear layer of `module` (one transformer block, one text-encoder layer) in the fast path's fp8, in place,
    on whatever device it is on."""
    from torchao.quantization import quantize_

    quantize_(module, fp8_config(), filter_fn=lambda layer, _name: isinstance(layer, nn.Linear))


def quantize_rows(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """torchao's own row-wise fp8 quantisation of one weight, as `quantize_fp8` does it (from bf16): the fp8 e4m3
    data and its fp32 scale per row."""
    from torchao.quantization.quantize_.workflows.float8.float8_tensor import Float8Tensor

    _activation_granularity, weight_granularity = fp8_config().granularity
    quantized = Float8Tensor.from_hp(weight.to(torch.bfloat16), granularity=weight_granularity)
    return quantized.qdata, quantized.scale
