"""Named CLIP presets (data only; no torch import, so the CLI can list them instantly)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

CONFIG_DIR = Path(__file__).parent / "model_configs"  # open_clip configs of our own architectures
TINY_MODEL = "promptmine-tiny"
TINY_SEED = 0  # the `tiny` preset is random weights built under this torch seed
DEFAULT_FLUENCY = 0.03  # the fluency weight where a prompt LM is in use (CLI, endpoint): README "Readable prompts"
WORLD_DIR = Path(__file__).parent / "world_models"  # `world` / `world-ref`: trained by `promptmine world train`


@dataclass(frozen=True)
class Preset:
    model: str  # open_clip architecture name
    pretrained: str | None  # open_clip pretrained tag; None builds random weights (seeded)
    fits: str  # which text-to-image model's text encoder this is
    folder: str | None = None  # weights shipped with promptmine: a save_clip folder under WORLD_DIR
    parts: tuple[str, ...] = ()  # a joint preset: these presets' text encoders read one prompt (joint.py)
    prompt_lm: str | None = None  # the fluency prior PEZ uses with it by default (pez_core.prompt_lm.PRESETS)


PRESETS: dict[str, Preset] = {
    "sd15": Preset("ViT-L-14", "openai", "Stable Diffusion 1.x"),
    "sd2": Preset("ViT-H-14", "laion2b_s32b_b79k", "Stable Diffusion 2.x (the paper's model)"),
    "sdxl": Preset("ViT-L-14+ViT-bigG-14", None, "SDXL (both its text encoders at once: sd15's and sdxl-g's)",
                   parts=("sd15", "sdxl-g")),
    "sdxl-g": Preset("ViT-bigG-14", "laion2b_s39b_b160k", "SDXL (its second text encoder alone)"),
    "tiny": Preset(TINY_MODEL, None, "nothing: a small random CLIP for fast offline tests"),
    "world": Preset("promptmine-world-rn", None, "promptmine's world (its renderer): a CLIP trained offline, shipped",
                    folder="world", prompt_lm="world"),
    "world-ref": Preset("promptmine-world-ref-rn", None, "promptmine's world: the reference CLIP that scores "
                        "regenerated images (other shape, other seed)", folder="world-ref", prompt_lm="world"),
}
