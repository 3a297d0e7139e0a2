from PIL import Image

from storage import NewGeneration, NewImage


def new_generation(
    prompt: str = "a red fox in the snow", *, images: int = 1, loras: list | None = None, **fields
) -> NewGeneration:
    base = {
        "checkpoint": "turbo", "prompt": prompt, "negative_prompt": "", "seed": 7, "steps": 8, "guidance": 0.0,
        "width": 64, "height": 64, "num_images": images, "status": "ok", "device": "cpu", "placement": "cpu",
        "app_version": "test",
    }  # fmt: skip
    base.update(fields)
    pictures = [NewImage(Image.new("RGB", (64, 64), (40 * k, 90, 200)), base["seed"] + k) for k in range(images)]
    params = {**{k: base[k] for k in ("prompt", "negative_prompt", "steps", "guidance", "width", "height")}}
    params["model"] = "Krea 2 Turbo"
    return NewGeneration(base, pictures, params, loras=loras)
