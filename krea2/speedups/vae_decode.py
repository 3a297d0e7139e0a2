"""Single-frame VAE decode: the Qwen-Image video VAE run as the 2D image decoder it is for one frame.

Krea 2 decodes through the Qwen-Image (Wan 2.1) video VAE, one frame. Stock, every causal 3D convolution pads the time
axis with `kernel_t - 1` zero frames in front of its input, so a 3x3x3 kernel multiplies two of its three time slices by
zeros; only the last slice meets real data. The decoder also clones every convolution's input into a feature cache for
the next frame (there is none), upsamples in fp32 (nearest-neighbour: a copy, the same values in bf16), and between
convolutions runs its RMS norm and SiLU as about eight separate elementwise passes in fp32.

`decode_frame` walks the same modules with the same weights on 4D tensors: each convolution as a 2D one with the last
time slice of its kernel and its spatial padding inside the convolution (no padded copy), no feature cache, activations
in channels_last (cuDNN's native layout: no transposes around each convolution), nearest upsampling as one bf16 copy,
and the elementwise work between convolutions through `DecodeOps`, which the compiled fast path turns into one fused
kernel per norm+SiLU and per residual add, with a chunked attention for the mid-block's head dim of 384. The math is
the stock decoder's; only the floating-point rounding may differ, as between any two convolution algorithms
(tests/test_exact_speedups.py checks it against the stock 3D decode).

`use_single_frame_decode(vae)` switches a VAE to this path by swapping classes in place (weights, state dict and
`from_pretrained` are untouched); `use_single_frame_decode(vae, False)` switches it back.

img2img encodes its init image, one frame, through the same VAE's encoder, which wastes the same work (zero time
slices, a feature cache, unfused elementwise passes): `FrameEncoder` walks it the same way, with the decoder's blocks
and ops, and `use_single_frame_encode(vae)` switches it on.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from diffusers.models.autoencoders.autoencoder_kl_qwenimage import (
    AutoencoderKLQwenImage,
    QwenImageAttentionBlock,
    QwenImageCausalConv3d,
    QwenImageResample,
    QwenImageResidualBlock,
    QwenImageRMS_norm,
)
from torch import nn

from .compile import Routed

# Flash and cuDNN attention kernels take head dims up to 256; the VAE's mid-block attention has one head of 384, which
# PyTorch then runs on its slower memory-efficient kernel (bench/NOTES.md, fourth session).
FLASH_MAX_HEAD_DIM = 256
SCORES_PER_CHUNK = 1 << 28  # 1 GB of fp32 attention scores per query chunk


def frame_conv(conv: nn.Conv3d, image: torch.Tensor, with_bias: bool = True) -> torch.Tensor:
    """A causal 3D convolution applied to one uncached frame, as a 2D convolution on `image` (batch, c, h, w).
    `with_bias=False` leaves the bias to the caller (to add it inside a fused kernel)."""
    left, right, top, bottom = conv._padding[:4]
    weight = conv.weight[:, :, -1]  # the time slice that meets the frame itself; the others meet zero padding
    bias = conv.bias if with_bias else None
    if left == right and top == bottom:  # the usual case: padding inside the convolution, no padded copy
        return F.conv2d(image, weight, bias, conv.stride[1:], (top, left), conv.dilation[1:], conv.groups)
    image = F.pad(image, (left, right, top, bottom))
    return F.conv2d(image, weight, bias, conv.stride[1:], 0, conv.dilation[1:], conv.groups)


def single_frame_exact(conv: QwenImageCausalConv3d) -> bool:
    """True when one frame in gives one frame out, computed by the last time slice alone: the causal padding is exactly
    `kernel_t - 1` zero frames and the time axis is neither strided nor dilated."""
    return conv._padding[4] == conv.kernel_size[0] - 1 and conv.stride[0] == 1 and conv.dilation[0] == 1


class SingleFrameCausalConv3d(QwenImageCausalConv3d):
    """A `QwenImageCausalConv3d` that takes the 2D path on one uncached frame and the stock path otherwise (tiled
    decodes and video latents still come through the stock decoder)."""

    def forward(self, x: torch.Tensor, cache_x: torch.Tensor | None = None) -> torch.Tensor:
        if cache_x is not None or x.shape[2] != 1 or not single_frame_exact(self):
            return super().forward(x, cache_x)
        return frame_conv(self, x[:, :, 0]).unsqueeze(2)


def norm_args(norm: QwenImageRMS_norm) -> tuple[torch.Tensor, torch.Tensor | float, float]:
    """A `QwenImageRMS_norm`'s gamma, bias and scale, shaped for 4D (batch, c, h, w) tensors. Tensors, not the module:
    a compiled function would guard on (and recompile for) every distinct module object."""
    bias = norm.bias if isinstance(norm.bias, float) else norm.bias.view(-1, 1, 1)
    return norm.gamma.view(-1, 1, 1), bias, norm.scale


def rms_norm(x: torch.Tensor, gamma: torch.Tensor, bias: torch.Tensor | float, scale: float) -> torch.Tensor:
    """`QwenImageRMS_norm.forward` on a 4D tensor: the same operations in the same order and precision."""
    return F.normalize(x.float(), dim=1).to(x.dtype) * scale * gamma + bias


def norm_silu(x: torch.Tensor, gamma: torch.Tensor, bias: torch.Tensor | float, scale: float) -> torch.Tensor:
    """The residual blocks' norm, then SiLU."""
    return F.silu(rms_norm(x, gamma, bias, scale))


def bias_norm_silu(
    x: torch.Tensor, conv_bias: torch.Tensor, gamma: torch.Tensor, bias: torch.Tensor | float, scale: float
) -> torch.Tensor:
    """The preceding convolution's bias, then the norm and SiLU."""
    return norm_silu(x + conv_bias.view(-1, 1, 1), gamma, bias, scale)


def bias_add(x: torch.Tensor, conv_bias: torch.Tensor, shortcut: torch.Tensor) -> torch.Tensor:
    """A residual block's output: its last convolution's bias, then the shortcut."""
    return x + conv_bias.view(-1, 1, 1) + shortcut


def scaled_softmax(scores: torch.Tensor, scale: float, dtype: torch.dtype) -> torch.Tensor:
    """softmax(scores · scale) in the scores' precision (fp32), rounded to `dtype` for the value GEMM."""
    return torch.softmax(scores * scale, dim=-1).to(dtype)


@dataclass(frozen=True)
class DecodeOps:
    """The decoder's elementwise work between convolutions. Eager (the default): PyTorch's kernels, several passes
    each, and SDPA. `compiled()`: one fused kernel each, and the attention over chunks of fp32 scores (see
    `single_head_attention`).

    Compiled, a residual block's two convolutions leave their bias to the fused kernel that follows (cuDNN adds a
    channels_last bias in a separate, unvectorised pass: bench/NOTES.md, fourth session)."""

    norm_silu: Callable[..., torch.Tensor] = norm_silu
    bias_norm_silu: Callable[..., torch.Tensor] | None = None  # None: the convolutions add their own bias
    bias_add: Callable[..., torch.Tensor] | None = None
    softmax: Callable[..., torch.Tensor] | None = None  # None: SDPA for every head dim
    is_compiled: bool = False

    @classmethod
    def compiled(cls) -> DecodeOps:
        return cls(
            norm_silu=compiled_per_width(norm_silu),
            bias_norm_silu=compiled_per_width(bias_norm_silu),
            bias_add=compiled_per_width(bias_add),
            softmax=Routed(torch.compile(scaled_softmax, dynamic=True), scaled_softmax, mark=mark_batch_unbacked),
            is_compiled=True,
        )


def mark_batch_unbacked(args: tuple, _kwargs: dict) -> None:
    """The first argument's batch dimension as unbacked (the softmax's scores; the per-width kernels' images, below):
    torch.compile otherwise specialises a size of 1 and compiles a second graph for batches of two or more (on the tiny
    VAE, 9 graphs more for a 2-image decode; on an H200 the 2-image shape then compiled no VAE graph, bench/NOTES.md,
    session i). One graph serves every batch size."""
    if args and isinstance(args[0], torch.Tensor):
        torch._dynamo.decorators.mark_unbacked(args[0], 0)


def compiled_per_width(fn: Callable[..., torch.Tensor]) -> Callable[..., torch.Tensor]:
    """`fn` compiled with dynamic batch and spatial sizes but a static channel count: a known row length lets inductor
    keep each row of the norm's reduction in registers (one read) instead of looping over it twice. One compilation
    per width (the decoder has three), for every batch size (`mark_batch_unbacked`). Not `fullgraph`: past dynamo's
    recompile limit it runs eagerly rather than failing."""

    def mark_channels_static(args: tuple, _kwargs: dict) -> None:
        for arg in args:
            if isinstance(arg, torch.Tensor):
                torch._dynamo.mark_static(arg, 1 if arg.dim() == 4 else 0)  # the channel dim
                if arg.dim() == 4:  # an image (the input, a shortcut), not a (channels, 1, 1) parameter
                    torch._dynamo.decorators.mark_unbacked(arg, 0)

    # Routed: eager in a user's thread while the manager compiles in the background (`speedups/compile.py`).
    return Routed(torch.compile(fn, dynamic=True), fn, mark=mark_channels_static)


def single_head_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, softmax: Callable[..., torch.Tensor] | None = None
) -> torch.Tensor:
    """softmax(q kᵀ / √d) v for (batch, tokens, d) tensors, one head.

    PyTorch's SDPA, unless a fused `softmax` is given and the head dim is past the flash kernels' 256 on a GPU: then
    SDPA would run its memory-efficient kernel, and the same math runs faster as two GEMMs per chunk of queries: scores
    accumulated and kept in fp32 (cuBLAS with an fp32 output), softmax in fp32, probabilities rounded to the value
    dtype for the second GEMM as the flash kernels do."""
    if softmax is None or q.shape[-1] <= FLASH_MAX_HEAD_DIM or not q.is_cuda:
        return F.scaled_dot_product_attention(q[:, None], k[:, None], v[:, None])[:, 0]
    return chunked_attention(q, k, v, softmax)


def chunked_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, softmax: Callable[..., torch.Tensor] = scaled_softmax
) -> torch.Tensor:
    """Exact attention by query chunks, holding at most `SCORES_PER_CHUNK` scores (see `single_head_attention`)."""
    tokens, keys, scale = q.shape[1], k.shape[1], q.shape[-1] ** -0.5
    chunk = max(1, SCORES_PER_CHUNK // keys)
    keys_t = k.transpose(1, 2)
    out = torch.empty(q.shape[0], tokens, v.shape[-1], dtype=v.dtype, device=v.device)
    for start in range(0, tokens, chunk):
        queries = q[:, start : start + chunk]
        if q.is_cuda:
            scores = torch.bmm(queries, keys_t, out_dtype=torch.float32)
        else:
            scores = torch.bmm(queries.float(), keys_t.float())
        torch.bmm(softmax(scores, scale, v.dtype), v, out=out[:, start : start + chunk])
    return out


def upsample_nearest_2x(x: torch.Tensor) -> torch.Tensor:
    """Nearest (and nearest-exact: the same at scale 2) 2x upsampling as one copy into channels_last."""
    batch, channels, height, width = x.shape
    pixels = x.permute(0, 2, 3, 1)[:, :, None, :, None, :]
    pixels = pixels.expand(batch, height, 2, width, 2, channels).reshape(batch, 2 * height, 2 * width, channels)
    return pixels.permute(0, 3, 1, 2)


@dataclass
class FrameBlocks:
    """The residual and attention blocks that the Qwen-Image encoder and decoder share, run on one frame as 4D
    channels_last tensors with `ops` for the elementwise work between convolutions."""

    ops: DecodeOps = DecodeOps()

    def residual(self, block: QwenImageResidualBlock, x: torch.Tensor) -> torch.Tensor:
        ops = self.ops
        shortcut = x if isinstance(block.conv_shortcut, nn.Identity) else frame_conv(block.conv_shortcut, x)
        x = ops.norm_silu(x, *norm_args(block.norm1))
        if ops.bias_norm_silu is None or ops.bias_add is None:
            x = frame_conv(block.conv1, x)
            x = frame_conv(block.conv2, ops.norm_silu(x, *norm_args(block.norm2)))  # (dropout: identity in eval)
            return x + shortcut
        x = ops.bias_norm_silu(frame_conv(block.conv1, x, with_bias=False), block.conv1.bias, *norm_args(block.norm2))
        return ops.bias_add(frame_conv(block.conv2, x, with_bias=False), block.conv2.bias, shortcut)

    def attention(self, block: QwenImageAttentionBlock, x: torch.Tensor) -> torch.Tensor:
        batch, channels, height, width = x.shape
        qkv = block.to_qkv(rms_norm(x, *norm_args(block.norm)))
        # Token-major: a view when `x` is channels_last, else one copy. SDPA's flash kernels (CPU ones included) need
        # each token's features next to each other; given a feature-major view they fall back to the math kernel,
        # which holds all tokens² scores at once (16 GiB for a 2048² img2img encode, which killed the process).
        qkv = qkv.permute(0, 2, 3, 1).reshape(batch, height * width, 3 * channels).contiguous()
        q, k, v = qkv.split(channels, dim=-1)
        out = single_head_attention(q, k, v, self.ops.softmax)
        out = out.reshape(batch, height, width, channels).permute(0, 3, 1, 2)  # channels_last again, no copy
        return block.proj(out) + x

    def mid_block(self, mid_block, x: torch.Tensor) -> torch.Tensor:
        x = self.residual(mid_block.resnets[0], x)
        for attention, resnet in zip(mid_block.attentions, mid_block.resnets[1:], strict=True):
            x = self.residual(resnet, self.attention(attention, x))
        return x


@dataclass
class FrameEncoder(FrameBlocks):
    """The Qwen-Image encoder's forward pass for one frame (img2img's init image), as `FrameDecoder` runs the decoder:
    2D convolutions, channels_last, no feature cache, the same `DecodeOps`."""

    def __call__(self, vae: AutoencoderKLQwenImage, x: torch.Tensor) -> torch.Tensor:
        """(batch, 3, 1, h, w) pixels in [-1, 1] → (batch, 2·z_dim, 1, h/8, w/8) moments, like `vae._encode`."""
        encoder = vae.encoder
        x = frame_conv(encoder.conv_in, x[:, :, 0].contiguous(memory_format=torch.channels_last))
        for layer in encoder.down_blocks:
            if isinstance(layer, QwenImageResidualBlock):
                x = self.residual(layer, x)
            elif isinstance(layer, QwenImageAttentionBlock):
                x = self.attention(layer, x)
            else:  # a resample: zero pad right and bottom, stride-2 convolution (see `frame_encodable`)
                x = layer.resample(x)
        x = self.mid_block(encoder.mid_block, x)
        x = frame_conv(encoder.conv_out, self.ops.norm_silu(x, *norm_args(encoder.norm_out)))
        return frame_conv(vae.quant_conv, x).unsqueeze(2)


@dataclass
class FrameDecoder(FrameBlocks):
    """The Qwen-Image decoder's forward pass for one frame, on 4D channels_last tensors (see the module docstring)."""

    def __call__(self, vae: AutoencoderKLQwenImage, z: torch.Tensor) -> torch.Tensor:
        """(batch, z_dim, 1, h, w) latents → (batch, 3, 1, 8h, 8w) images in [-1, 1], like `vae._decode`."""
        decoder = vae.decoder
        x = frame_conv(vae.post_quant_conv, z[:, :, 0])
        x = frame_conv(decoder.conv_in, x.contiguous(memory_format=torch.channels_last))
        x = self.mid_block(decoder.mid_block, x)
        for up_block in decoder.up_blocks:
            for resnet in up_block.resnets:
                x = self.residual(resnet, x)
            if up_block.upsamplers is not None:
                x = up_block.upsamplers[0].resample[1](upsample_nearest_2x(x))  # see `frame_decodable`
        x = frame_conv(decoder.conv_out, self.ops.norm_silu(x, *norm_args(decoder.norm_out)))
        return x.clamp(-1.0, 1.0).unsqueeze(2)


def frame_decodable(vae: AutoencoderKLQwenImage) -> bool:
    """Whether `FrameDecoder` computes exactly what this VAE's decoder does on one frame (see `frame_walkable`), its
    upsampling being nearest 2x then a 2D convolution."""
    decoder = getattr(vae, "decoder", None)
    return decoder is not None and frame_walkable(decoder, vae.post_quant_conv, nearest_2x_then_conv)


def frame_walkable(part: nn.Module, latent_conv: nn.Module, resample_ok: Callable[[QwenImageResample], bool]) -> bool:
    """Whether a frame walk computes exactly what `part` (the VAE's encoder or decoder) and its `latent_conv` (the
    quant conv beside it) do on a first frame: SiLU activations, causal convolutions whose single-frame form is exact,
    and resamples that `resample_ok` accepts. A resample's time convolution is left out: a first frame never meets
    it (the stock cache skips it)."""
    if not isinstance(part.nonlinearity, nn.SiLU):
        return False
    resamples = [m for m in part.modules() if isinstance(m, QwenImageResample)]
    time_convs = {id(m.time_conv) for m in resamples if hasattr(m, "time_conv")}
    modules = [*latent_conv.modules(), *part.modules()]
    convs = [m for m in modules if isinstance(m, QwenImageCausalConv3d) and id(m) not in time_convs]
    residuals = [m for m in part.modules() if isinstance(m, QwenImageResidualBlock)]
    return (
        all(single_frame_exact(conv) for conv in convs)
        and all(resample_ok(m) for m in resamples)
        and all(isinstance(m.nonlinearity, nn.SiLU) for m in residuals)
    )


def nearest_2x_then_conv(resample: QwenImageResample) -> bool:
    """On a first frame the time convolution of "upsample3d" is skipped (the stock cache marks it "Rep"), so both
    upsampling modes are the spatial resample: nearest-exact 2x (stock runs it in fp32; a copy gives the same values in
    bf16), then a 2D convolution."""
    if resample.mode not in ("upsample2d", "upsample3d"):
        return False
    upsample, conv = resample.resample
    scale = upsample.scale_factor if isinstance(upsample.scale_factor, tuple) else (upsample.scale_factor,) * 2
    return upsample.mode in ("nearest", "nearest-exact") and tuple(scale) == (2.0, 2.0) and isinstance(conv, nn.Conv2d)


def hooked(*parts: nn.Module) -> bool:
    """Whether any module in `parts` has forward hooks: PyTorch's, diffusers' (group offloading onloads weights in them)
    or accelerate's. `FrameDecoder` reads weights and calls functions directly, so it would skip them; the stock path
    (still with 2D convolutions, called as modules) runs them."""
    return any(
        m._forward_hooks or m._forward_pre_hooks or hasattr(m, "_diffusers_hook") or hasattr(m, "_hf_hook")
        for part in parts
        for m in part.modules()
    )


class SingleFrameQwenImageVAE(AutoencoderKLQwenImage):
    """The Qwen-Image VAE whose untiled one-frame decode runs `frame_decoder` and whose untiled one-frame encode runs
    `frame_encoder`, where set; everything else is stock."""

    frame_decoder: FrameDecoder | None = None
    frame_encoder: FrameEncoder | None = None

    def _decode(self, z: torch.Tensor, return_dict: bool = True):
        tiled = self.use_tiling and (
            z.shape[-1] > self.tile_sample_min_width // self.spatial_compression_ratio
            or z.shape[-2] > self.tile_sample_min_height // self.spatial_compression_ratio
        )
        if self.frame_decoder is None or z.shape[2] != 1 or tiled or hooked(self.post_quant_conv, self.decoder):
            return super()._decode(z, return_dict)
        out = self.frame_decoder(self, z)
        if not return_dict:
            return (out,)
        from diffusers.models.autoencoders.vae import DecoderOutput

        return DecoderOutput(sample=out)

    def _encode(self, x: torch.Tensor) -> torch.Tensor:
        tiled = self.use_tiling and (
            x.shape[-1] > self.tile_sample_min_width or x.shape[-2] > self.tile_sample_min_height
        )
        if self.frame_encoder is None or x.shape[2] != 1 or tiled or hooked(self.encoder, self.quant_conv):
            return super()._encode(x)
        return self.frame_encoder(self, x)


def use_single_frame_decode(vae: nn.Module, enabled: bool = True, *, compiled: bool = False) -> int:
    """Switch `vae` to the single-frame decoder (`compiled`: its elementwise work compiled into fused kernels, see
    `DecodeOps`), or back to stock with `enabled=False`. Returns how many causal convolutions changed class (0 when
    already switched). A decoder already in the asked form keeps its (compiled) functions."""
    count = swap_causal_convs((getattr(vae, "post_quant_conv", None), getattr(vae, "decoder", None)), enabled)
    if type(vae) in (AutoencoderKLQwenImage, SingleFrameQwenImageVAE):  # not someone else's subclass
        if not (enabled and frame_decodable(vae)):
            _set_frame_path(vae, "frame_decoder", None)
        elif single_frame_decode_of(vae) != ("compiled" if compiled else "eager"):
            _set_frame_path(vae, "frame_decoder", FrameDecoder(_ops(vae, compiled)))
    return count


def use_single_frame_encode(vae: nn.Module, enabled: bool = True, *, compiled: bool = False) -> int:
    """Switch `vae`'s one-frame encode (img2img's init image) to `FrameEncoder`, as `use_single_frame_decode` does for
    the decoder (sharing its `DecodeOps`), or back to stock. The encoder's causal convolutions become 2D ones too, for
    the paths that stay stock (hooks, tiling). Returns how many convolutions changed class."""
    count = swap_causal_convs((getattr(vae, "encoder", None), getattr(vae, "quant_conv", None)), enabled)
    if type(vae) in (AutoencoderKLQwenImage, SingleFrameQwenImageVAE):
        if not (enabled and frame_encodable(vae)):
            _set_frame_path(vae, "frame_encoder", None)
        elif single_frame_encode_of(vae) != ("compiled" if compiled else "eager"):
            _set_frame_path(vae, "frame_encoder", FrameEncoder(_ops(vae, compiled)))
    return count


def _ops(vae: nn.Module, compiled: bool) -> DecodeOps:
    """The VAE's other frame path's ops when they are of the asked kind (one set of compiled kernels for both)."""
    for path in (getattr(vae, "frame_decoder", None), getattr(vae, "frame_encoder", None)):
        if path is not None and path.ops.is_compiled == compiled:
            return path.ops
    return DecodeOps.compiled() if compiled else DecodeOps()


def _set_frame_path(vae: nn.Module, name: str, path: FrameBlocks | None) -> None:
    """Sets (or clears) one frame path; the VAE is a `SingleFrameQwenImageVAE` while it has one, stock otherwise."""
    if path is not None:
        vae.__class__ = SingleFrameQwenImageVAE
        setattr(vae, name, path)
    else:
        vae.__dict__.pop(name, None)
    if getattr(vae, "frame_decoder", None) is None and getattr(vae, "frame_encoder", None) is None:
        vae.__class__ = AutoencoderKLQwenImage


def frame_encodable(vae: AutoencoderKLQwenImage) -> bool:
    """Whether `FrameEncoder` computes exactly what this VAE's encoder does on one frame (see `frame_walkable`), its
    downsampling being a right/bottom zero pad then a stride-2 2D convolution (a "downsample3d" also caches the frame
    for its time convolution, which only a second frame meets)."""
    encoder = getattr(vae, "encoder", None)
    return encoder is not None and frame_walkable(encoder, vae.quant_conv, pad_then_strided_conv)


def pad_then_strided_conv(resample: QwenImageResample) -> bool:
    if resample.mode not in ("downsample2d", "downsample3d") or len(resample.resample) != 2:
        return False
    pad, conv = resample.resample
    return isinstance(pad, nn.ZeroPad2d) and isinstance(conv, nn.Conv2d) and conv.stride == (2, 2)


def swap_causal_convs(parts, enabled: bool = True) -> int:
    """Every causal 3D convolution inside `parts` (modules, or None) to `SingleFrameCausalConv3d` (`enabled`) or back
    to stock, in place; returns how many changed class. The weights and state dict are untouched."""
    target = SingleFrameCausalConv3d if enabled else QwenImageCausalConv3d
    count = 0
    for part in parts:
        for module in part.modules() if part is not None else ():
            if isinstance(module, QwenImageCausalConv3d) and type(module) is not target:
                module.__class__ = target
                count += 1
    return count


def single_frame_decode_of(vae: nn.Module) -> str | None:
    """ "compiled" or "eager" when `vae` decodes one frame through its own `FrameDecoder`, else None."""
    return _kind(vae.__dict__.get("frame_decoder") if isinstance(vae, SingleFrameQwenImageVAE) else None)


def single_frame_encode_of(vae: nn.Module) -> str | None:
    """ "compiled" or "eager" when `vae` encodes one frame through its own `FrameEncoder`, else None."""
    return _kind(vae.__dict__.get("frame_encoder") if isinstance(vae, SingleFrameQwenImageVAE) else None)


def _kind(path: FrameBlocks | None) -> str | None:
    if path is None:
        return None
    return "compiled" if path.ops.is_compiled else "eager"
