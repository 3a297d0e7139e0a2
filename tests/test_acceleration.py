"""The fast path's model surgery, checked on a tiny real Krea 2 transformer: same outputs as stock."""

import math
import os

import pytest
import torch
from diffusers import Krea2Pipeline

from krea2.demo import TEXT_HIDDEN, TEXT_LAYERS, build_transformer
from krea2.speedups.attention import Krea2FastAttnProcessor, flash4_unavailable_reason, install_fast_attention
from krea2.speedups.projections import FusedSwiGLU, fuse_projections


def inputs(text_tokens: int = 5, grid: int = 4, masked: bool = False):
    torch.manual_seed(0)
    kwargs = {
        "hidden_states": torch.randn(1, grid * grid, 64),
        "encoder_hidden_states": torch.randn(1, text_tokens, len(TEXT_LAYERS), TEXT_HIDDEN),
        "timestep": torch.tensor([0.6]),
        "position_ids": Krea2Pipeline.prepare_position_ids(text_tokens, grid, grid, "cpu"),
    }
    if masked:
        kwargs["encoder_attention_mask"] = torch.tensor([[True, True, True, False, False]])
    return kwargs


@pytest.mark.parametrize("masked", [False, True])
def test_fused_projections_and_fast_processor_match_stock(masked):
    transformer = build_transformer(seed=3).eval()
    with torch.no_grad():
        reference = transformer(**inputs(masked=masked), return_dict=False)[0]
        fuse_projections(transformer)
        install_fast_attention(transformer)
        fused = transformer(**inputs(masked=masked), return_dict=False)[0]
    block = transformer.transformer_blocks[0]
    assert hasattr(block.attn, "to_qkvg") and not hasattr(block.attn, "to_q")
    assert isinstance(block.ff, FusedSwiGLU)
    assert isinstance(block.attn.processor, Krea2FastAttnProcessor)
    # Text-fusion blocks keep their separate projections and run through the same processor.
    assert hasattr(transformer.text_fusion.refiner_blocks[0].attn, "to_q")
    torch.testing.assert_close(fused, reference, rtol=1e-5, atol=1e-5)


def test_fusing_twice_is_a_no_op():
    transformer = build_transformer(seed=3).eval()
    fuse_projections(transformer)
    weights = [p.data_ptr() for p in transformer.parameters()]
    fuse_projections(transformer)
    assert [p.data_ptr() for p in transformer.parameters()] == weights


def test_flash4_is_refused_with_a_reason_where_it_cannot_run():
    if flash4_unavailable_reason() is None:
        pytest.skip("FlashAttention-4 runs here")
    with pytest.raises(RuntimeError, match="FlashAttention-4 unavailable"):
        install_fast_attention(build_transformer(seed=3), "flash4")


def test_fast_path_is_off_unless_the_weights_sit_on_the_gpu(demo_sources):
    """fp8, compile and the attention kernel were measured resident on the GPU only; elsewhere (CPU here, offload
    on a small GPU) the manager runs the plain path instead of an untested combination."""
    from krea2.loading import PipelineLoader
    from krea2.manager import ModelManager
    from krea2.speedups import FastPathOptions, installed

    options = FastPathOptions(fp8=True, compile=True, attention="flash4", text_graphs=True, denoiser_graphs=True)
    loader = PipelineLoader(demo_sources, torch.float32)
    manager = ModelManager(loader, device="cpu", options=options, demo=True)  # CPU also where a GPU is present
    manager.start(background=False)
    assert manager.placement == "cpu"
    assert manager.options == FastPathOptions() and manager.requested_options == options
    for pipe in manager.pipes.values():  # read from the modules: only the exact single-frame decode is on
        assert installed(pipe) == ["single-frame VAE decode and encode"]
        assert pipe.text_graphs is None
        assert hasattr(pipe.transformer.transformer_blocks[0].attn, "to_q")  # not fused
    assert manager.status().warmup == "off" and manager.status().fast_path == "single-frame VAE decode and encode"


@pytest.mark.parametrize(("probe", "expected"), [(None, "flash4"), ("flash-attn-4 did not run (ImportError)", None)])
def test_attention_choice(monkeypatch, probe, expected):
    """Automatic means FlashAttention-4 exactly when its start-up probe passes, PyTorch's SDPA when it says why not;
    an explicit choice is taken as asked, and never probes."""
    import krea2.speedups.attention as attention
    from studio.runtime import choose_attention

    probes = []
    monkeypatch.setattr(attention, "flash4_unavailable_reason", lambda: probes.append(1) or probe)
    assert choose_attention(None, cuda=True) == expected
    assert choose_attention(None, cuda=False) is None  # no GPU: nothing to probe
    assert choose_attention("sdpa", cuda=True) is None
    assert choose_attention("_native_cudnn", cuda=True) == "_native_cudnn"
    assert choose_attention("cudnn-fp8", cuda=True) == "cudnn-fp8"
    assert len(probes) == 1


def test_attention_setting():
    from studio.settings import SettingError, load_settings

    def attention_setting(text):
        return load_settings({"KREA2_ATTENTION": text}).attention

    assert load_settings({}).attention is None and attention_setting(" ") is None
    assert attention_setting("flash4") == "flash4" and attention_setting("_native_cudnn") == "_native_cudnn"
    assert attention_setting("cudnn-fp8") == "cudnn-fp8"
    with pytest.raises(SettingError, match="KREA2_ATTENTION must be one of flash4, cudnn-fp8, sdpa"):
        attention_setting("flash5")


def test_per_tensor_fp8_scale_is_a_power_of_two_that_fills_the_range():
    from krea2.speedups.fp8_attention import FP8_MAX, quantize_per_tensor

    x = torch.randn(2, 50, 3, 16) * 7.3
    quantized, descale = quantize_per_tensor(x)
    scale = 1 / float(descale)
    assert quantized.dtype == torch.float8_e4m3fn and descale.shape == (1, 1, 1, 1)
    assert scale == 2.0 ** round(math.log2(scale))  # exact scaling both ways
    assert FP8_MAX / 2 < float(x.abs().max()) * scale <= FP8_MAX
    restored = quantized.float() * descale
    assert float((restored - x).norm() / x.norm()) < 0.05


def test_fp8_attention_scales_round_trip_through_the_kernel_fallback():
    """On a machine without cuDNN's fp8 kernel the op computes SDPA on the dequantised inputs: that checks the scales
    around the kernel (Q/K/V descales, O's scale) end to end, grouped-query heads included."""
    from krea2.speedups.fp8_attention import fp8_attention

    torch.manual_seed(0)
    query = torch.randn(1, 64, 8, 32, dtype=torch.bfloat16)
    key = torch.randn(1, 64, 2, 32, dtype=torch.bfloat16) + 4  # an offset shared by all keys: smoothed away
    value = torch.randn(1, 64, 2, 32, dtype=torch.bfloat16) * 5
    out = fp8_attention(query, key, value)
    reference = torch.nn.functional.scaled_dot_product_attention(
        query.transpose(1, 2).float(), key.transpose(1, 2).float(), value.transpose(1, 2).float(), enable_gqa=True
    ).transpose(1, 2)
    assert out.dtype == torch.bfloat16 and out.shape == query.shape
    assert float((out.float() - reference).norm() / reference.norm()) < 0.08


def test_cudnn_fp8_attention_is_refused_with_a_reason_where_it_cannot_run():
    from krea2.speedups.fp8_attention import cudnn_fp8_unavailable_reason

    if cudnn_fp8_unavailable_reason() is None:
        pytest.skip("cuDNN fp8 attention runs here")
    with pytest.raises(RuntimeError, match="cuDNN fp8 attention unavailable"):
        install_fast_attention(build_transformer(seed=3), "cudnn-fp8")


def test_text_graphs_default_on_a_resident_gpu_only():
    from studio.runtime import fast_path_options
    from studio.settings import Settings

    assert fast_path_options(Settings(), cuda=True, demo=False).text_graphs
    assert not fast_path_options(Settings(), cuda=False, demo=True).text_graphs
    assert not fast_path_options(Settings(text_graphs=False), cuda=True, demo=False).text_graphs  # env off
    assert not fast_path_options(Settings(), cuda=True, demo=False, prepare_on_cpu=True).text_graphs  # ZeroGPU


def test_compile_caches_go_to_the_data_folder_unless_set(tmp_path, monkeypatch):
    from studio.runtime import use_compile_cache
    from studio.settings import load_settings

    monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR", raising=False)
    monkeypatch.setenv("TRITON_CACHE_DIR", "/elsewhere/triton")
    use_compile_cache(load_settings(), tmp_path)
    assert os.environ["TORCHINDUCTOR_CACHE_DIR"] == str(tmp_path / "compile-cache" / "inductor")
    assert os.environ["TRITON_CACHE_DIR"] == "/elsewhere/triton"  # an operator's choice wins

    from torch._inductor.runtime.cache_dir_utils import cache_dir

    assert cache_dir() == str(tmp_path / "compile-cache" / "inductor")  # read when used, so setting it late works
