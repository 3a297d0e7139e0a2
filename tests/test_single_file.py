"""Single-file checkpoints: tiny files in Krea's and ComfyUI's layouts (bf16 and fp8 scaled), written from the demo
transformer, load through the app's loader and draw what the diffusers-format demo checkpoint draws."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from single_file_helpers import dequantised, fp8_scaled, krea_name, krea_state, with_prefix, write

from krea2 import GenerationRequest
from krea2.checkpoints import RAW, TURBO
from krea2.errors import LoadError
from krea2.loading import PipelineLoader
from krea2.manager import ModelManager
from krea2.single_file import inspect_checkpoint, load_transformer_file

ROOT = Path(__file__).resolve().parents[1]
REQUEST = {"prompt": "a red circle on a blue background", "width": 256, "height": 256, "seed": 3, "steps": 3}


def pixels(result) -> np.ndarray:
    return np.asarray(result.images[0], dtype=np.float32)


@pytest.fixture(scope="module")
def demo_transformers(demo_sources):
    from diffusers import Krea2Transformer2DModel

    def load(source: str) -> torch.nn.Module:
        return Krea2Transformer2DModel.from_pretrained(source, subfolder="transformer", dtype=torch.float32)

    return {"turbo": load(demo_sources["turbo"]), "raw": load(demo_sources["raw"])}


@pytest.fixture(scope="module")
def files(tmp_path_factory, demo_transformers) -> dict[str, dict[str, Path]]:
    """Per layout, a Turbo and a Raw file."""
    folder = tmp_path_factory.mktemp("single-files")
    out: dict[str, dict[str, Path]] = {}
    for key, transformer in demo_transformers.items():
        native = krea_state(transformer.state_dict())
        old_fp8, _ = fp8_scaled(native, "old")
        new_fp8, _ = fp8_scaled(native, "new")
        layouts = {
            "krea": native,  # krea-ai/krea-2's OSS_RAW / OSS_TURBO files
            "comfyui": with_prefix(native, "model.diffusion_model.", whole_checkpoint=True),
            "comfyui-model": with_prefix(native, "diffusion_model."),
            "comfyui-fp8-scaled": old_fp8,
            "comfyui-fp8-mixed": with_prefix(new_fp8, "model.diffusion_model."),
        }
        for layout, state in layouts.items():
            out.setdefault(layout, {})[key] = write(folder / f"krea2_{key}_{layout}.safetensors", state)
    return out


def file_manager(turbo: Path, raw: Path, demo_sources, **loader_options) -> ModelManager:
    loader = PipelineLoader(
        {"turbo": str(turbo), "raw": str(raw)}, torch.float32, shared=demo_sources["turbo"], **loader_options
    )
    manager = ModelManager(loader, device="cpu", demo=True)
    manager.start(background=False)
    assert manager.status().checkpoints["turbo"].state == "ready", manager.status().summary()
    return manager


def seed_gap(manager: ModelManager, checkpoint: str) -> float:
    """How far two seeds' images are apart: the yardstick for 'the same image'."""
    other = manager.generate(GenerationRequest(**{**REQUEST, "seed": 4}, checkpoint=checkpoint))
    return float(np.abs(pixels(other) - reference_pixels(manager, checkpoint)).mean())


def reference_pixels(manager: ModelManager, checkpoint: str) -> np.ndarray:
    return pixels(manager.generate(GenerationRequest(**REQUEST, checkpoint=checkpoint)))


@pytest.mark.parametrize("layout", ["krea", "comfyui"])
def test_bf16_single_files_draw_the_demo_image(layout, files, demo_sources, manager):
    """The demo's weights are bf16 on disk, so a bf16 file holds exactly them: identical pixels, both checkpoints, and
    the text encoder and VAE are the components folder's."""
    loaded = file_manager(files[layout]["turbo"], files[layout]["raw"], demo_sources)
    for checkpoint in ("turbo", "raw"):
        assert np.array_equal(reference_pixels(loaded, checkpoint), reference_pixels(manager, checkpoint)), checkpoint
    assert loaded.pipes["raw"].text_encoder is loaded.pipes["turbo"].text_encoder


def test_a_comfyui_model_file_holds_the_same_weights(files, demo_sources, demo_transformers):
    """`diffusion_model.`-prefixed (a ComfyUI `diffusion_models/` export): the very weights, through the same path."""
    checkpoint = inspect_checkpoint(files["comfyui-model"]["raw"], RAW.display_name)
    assert (checkpoint.layout, checkpoint.prefix) == ("ComfyUI", "diffusion_model.")
    model = load_transformer_file(checkpoint, torch.float32, config_source=demo_sources["turbo"])
    expected = demo_transformers["raw"].state_dict()
    assert all(torch.equal(value, expected[name]) for name, value in model.state_dict().items())


@pytest.mark.parametrize("layout", ["comfyui-fp8-scaled", "comfyui-fp8-mixed"])
def test_fp8_scaled_files_dequantise_exactly(layout, files):
    checkpoint = inspect_checkpoint(files[layout]["turbo"], TURBO.display_name)
    assert checkpoint.fp8 and checkpoint.layout == "ComfyUI"
    model = load_transformer_file(checkpoint, torch.float32)
    expected = dequantised({k.removeprefix("model.diffusion_model."): v for k, v in load_file(checkpoint.path).items()})
    for name, value in model.state_dict().items():
        native = krea_name(name)
        want = expected[native].reshape(value.shape)
        assert torch.equal(value.float(), want), name  # weight = fp8 value x its scale, nothing else


def test_an_fp8_scaled_file_draws_the_demo_image(files, demo_sources, manager):
    layout = "comfyui-fp8-scaled"
    loaded = file_manager(files[layout]["turbo"], files[layout]["raw"], demo_sources)
    for key in ("turbo", "raw"):
        gap = float(np.abs(reference_pixels(loaded, key) - reference_pixels(manager, key)).mean())
        assert gap < 0.25 * seed_gap(manager, key), (key, gap)  # fp8 rounding, far less than another seed


def test_fp8_file_loads_straight_into_the_fp8_path(files, demo_sources, manager):
    """With the fast path's fp8 on, the blocks' weights stay fp8: fused like the fast path fuses them, as torchao's own
    row-wise tensors holding the file's bytes (a per-tensor scale repeated per row), and the model draws."""
    from torchao.quantization import Float8Tensor

    path = files["comfyui-fp8-scaled"]["turbo"]
    checkpoint = inspect_checkpoint(path, TURBO.display_name)
    model = load_transformer_file(checkpoint, torch.float32, fp8_weights=True)
    block = model.transformer_blocks[0]
    fused = block.attn.to_qkvg.weight
    assert isinstance(fused, Float8Tensor) and isinstance(block.ff.down.weight, Float8Tensor)
    state = load_file(path)
    parts = [state[f"blocks.0.attn.{name}.weight"] for name in ("wq", "wk", "wv", "gate")]
    assert torch.equal(fused.qdata.view(torch.uint8), torch.cat(parts).view(torch.uint8))  # the file's bytes
    scales = torch.cat([state[f"blocks.0.attn.{n}.scale_weight"].expand(p.shape[0]) for n, p in
                        zip(("wq", "wk", "wv", "gate"), parts, strict=True)])  # fmt: skip
    assert torch.equal(fused.scale.flatten(), scales)

    loaded = file_manager(path, files["comfyui-fp8-scaled"]["raw"], demo_sources, fp8_weights=True)
    from krea2.speedups import installed

    assert {"fused projections", "fp8"} <= set(installed(loaded.pipes["turbo"]))
    gap = float(np.abs(reference_pixels(loaded, "turbo") - reference_pixels(manager, "turbo")).mean())
    assert gap < 0.5 * seed_gap(manager, "turbo")  # fp8 weights and fp8 activations


# ------------------------------------------------------------------------------------------------ errors
def test_a_file_of_another_model_is_one_sentence(tmp_path):
    flux = write(tmp_path / "flux1-dev.safetensors", {"double_blocks.0.img_attn.qkv.weight": torch.zeros(6, 2)})
    with pytest.raises(LoadError) as caught:
        inspect_checkpoint(flux, "Krea 2 Turbo")
    assert str(caught.value) == f"Krea 2 Turbo: {flux} is not a Krea 2 transformer: it looks like a FLUX transformer."
    other = write(tmp_path / "other.safetensors", {"weight": torch.zeros(2)})
    with pytest.raises(LoadError, match=r"none of its 1 tensors is Krea 2's `txtfusion\.projector\.weight`"):
        inspect_checkpoint(other, "Krea 2 Raw")


def test_a_truncated_file_is_one_sentence(tmp_path, files):
    whole = files["krea"]["turbo"].read_bytes()
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(whole[: len(whole) // 2])
    with pytest.raises(LoadError, match=r"is truncated: it is [\d,]+ bytes long but its tensors need") as caught:
        inspect_checkpoint(cut, "Krea 2 Turbo")
    assert "\n" not in str(caught.value)
    header_only = tmp_path / "stub.safetensors"
    header_only.write_bytes(whole[:5])
    with pytest.raises(LoadError, match=r"not a \.safetensors file"):
        inspect_checkpoint(header_only, "Krea 2 Turbo")


def test_incomplete_unsupported_and_gguf_files(tmp_path, files):
    state = load_file(files["krea"]["turbo"])
    del state["blocks.2.mlp.down.weight"]
    with pytest.raises(LoadError, match=r"not a complete Krea 2 transformer: 1 tensors are missing"):
        inspect_checkpoint(write(tmp_path / "partial.safetensors", state), "Krea 2 Turbo")
    state = load_file(files["krea"]["turbo"])
    nvfp4 = {"layers": {"blocks.0.attn.wq": {"format": "nvfp4"}}}
    path = write(tmp_path / "nvfp4.safetensors", state, {"_quantization_metadata": json.dumps(nvfp4)})
    with pytest.raises(LoadError, match="quantised as nvfp4, which Krea 2 Studio cannot load"):
        inspect_checkpoint(path, "Krea 2 Turbo")
    with pytest.raises(LoadError, match="is a GGUF file"):
        inspect_checkpoint(tmp_path / "krea2-Q8_0.gguf", "Krea 2 Turbo")


def test_the_app_reports_a_bad_raw_file_and_still_serves_nothing_broken(tmp_path, files, demo_sources):
    """A wrong file fails its load with the sentence, in the status line (no traceback)."""
    flux = write(tmp_path / "flux.safetensors", {"double_blocks.0.img_attn.qkv.weight": torch.zeros(6, 2)})
    loader = PipelineLoader({"turbo": str(files["krea"]["turbo"]), "raw": str(flux)}, torch.float32,
                            shared=demo_sources["turbo"])  # fmt: skip
    manager = ModelManager(loader, device="cpu", demo=True)
    manager.start(background=False)
    status = manager.status()
    assert status.checkpoints["raw"].state == "failed"
    assert "it looks like a FLUX transformer" in status.checkpoints["raw"].reason


def test_sources_are_a_file_a_folder_or_a_repo(files, demo_sources):
    loader = PipelineLoader({"turbo": str(files["krea"]["turbo"]), "raw": demo_sources["raw"]}, torch.float32)
    assert loader.components_source() == TURBO.default_source  # Turbo's Hub repo, unless told otherwise
    loader = PipelineLoader({"turbo": demo_sources["turbo"], "raw": str(files["krea"]["raw"])}, torch.float32)
    assert loader.components_source() == demo_sources["turbo"]
    raw = loader.load_transformer(RAW)
    assert raw.config.num_layers == 6 and raw.transformer_blocks[0].norm1.weight.dtype == torch.float32


# ------------------------------------------------------------------------------------------------ memory
PEAK_SCRIPT = """
import json, sys, torch
from krea2.single_file import inspect_checkpoint, load_transformer_file

def status():
    fields = dict(line.split(":", 1) for line in open("/proc/self/status") if line.startswith(("VmRSS", "VmHWM")))
    return {k: int(v.split()[0]) * 1024 for k, v in fields.items()}

checkpoint = inspect_checkpoint(sys.argv[1], "Krea 2 Turbo")
import krea2.speedups, torchao.quantization  # imported before measuring: what is measured is the load
from krea2.speedups.fp8 import float8_weight
float8_weight(torch.zeros(16, 16, dtype=torch.float8_e4m3fn), torch.ones(16, 1), torch.bfloat16)
open("/proc/self/clear_refs", "w").write("5")  # reset the peak to now
before = status()["VmRSS"]
model = load_transformer_file(checkpoint, torch.bfloat16, fp8_weights=True)
print(json.dumps({"peak": status()["VmHWM"] - before, "held": status()["VmRSS"] - before}))
"""


def test_a_pre_quantised_file_loads_in_at_most_1_2x_its_size(tmp_path):
    """An fp8 file whose blocks dominate it, as in the real 13 GB file: the process's peak resident memory during the
    load stays within 1.2x the file's size, because no bf16 copy of a block weight is ever made (the fp8 bytes go
    from the file into the weights; only the small non-block tensors are dequantised, a slice at a time).

    The real file's weights are tens of MB each, which glibc serves from mmap and returns on free; this file's are
    1-10 MB, which glibc would serve from its heap and keep after free. The child process gets the real file's
    behaviour (MALLOC_MMAP_THRESHOLD_), so that what is measured is the loader, not the heap's bookkeeping."""
    from diffusers import Krea2Transformer2DModel

    from krea2.demo import build_transformer

    torch.manual_seed(0)
    config = {**build_transformer().config, "num_layers": 16, "attention_head_dim": 64, "num_attention_heads": 12,
              "num_key_value_heads": 4, "intermediate_size": 3072, "axes_dims_rope": [16, 24, 24]}  # fmt: skip
    with torch.device("meta"):
        shapes = {k: v.shape for k, v in Krea2Transformer2DModel.from_config(config).state_dict().items()}
    state = {}
    for name, shape in shapes.items():  # random weights, written directly in Krea's layout
        state[name] = torch.randn(shape, dtype=torch.bfloat16) * 0.02
    native, _ = fp8_scaled(krea_state(state), "old")
    path = write(tmp_path / "big-fp8.safetensors", native)
    del state, native
    size = path.stat().st_size
    assert size > 120e6  # large enough that interpreter noise does not matter
    done = subprocess.run([sys.executable, "-c", PEAK_SCRIPT, str(path)], cwd=ROOT, capture_output=True, text=True,
                          timeout=300, env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin",
                                                "MALLOC_MMAP_THRESHOLD_": "65536"})  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    measured = json.loads(done.stdout.strip().splitlines()[-1])
    assert measured["peak"] <= 1.2 * size, (measured, size)
    assert measured["held"] >= 0.9 * size  # the weights are really there, in fp8


def test_settings_take_a_file_for_a_checkpoint_and_a_repo_or_folder_for_the_components(tmp_path, demo_sources):
    from studio.settings import SettingError, load_settings

    settings = load_settings(
        {"KREA2_TURBO": "/models/krea2_turbo_fp8_scaled.safetensors", "KREA2_COMPONENTS": demo_sources["turbo"]}
    )
    assert settings.turbo.endswith(".safetensors") and settings.components == demo_sources["turbo"]
    assert load_settings({"KREA2_COMPONENTS": "krea/Krea-2-Turbo"}).components == "krea/Krea-2-Turbo"
    with pytest.raises(SettingError, match=r"^KREA2_COMPONENTS must be a Hub repo id"):
        load_settings({"KREA2_COMPONENTS": str(tmp_path / "krea2_turbo.safetensors")})
