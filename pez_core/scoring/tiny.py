"""Tiny offline stand-ins for the scoring models, saved the way the real ones are published.

- ``build_tiny_sd(folder)``: a StableDiffusionPipeline (2-level UNet, 4-level VAE, DDIM, 2-layer CLIP
  text encoder, no safety checker) saved with ``save_pretrained``, fp32; 2 steps at 32-64 px take tens
  of milliseconds. ``Generator(GenerationConfig(model=folder))`` loads it as it loads a Hub id.
- ``build_tiny_sdxl(folder)``: the same for StableDiffusionXLPipeline (two text encoders), so the
  pipeline-class choice of ``Generator`` is exercised offline.
- ``build_tiny_pickscore(folder)``: a transformers CLIPModel + CLIPProcessor (the stand-in for
  yuvalkirstain/PickScore_v1 and its processor), loaded by ``PickScorer(folder, folder)``.
- ``build_tiny_aesthetic(path, input_dim)``: the LAION MLP with random weights, in the released layout.
- ``clip_tokenizer()``: a transformers CLIPTokenizer built from open_clip's bundled BPE vocabulary
  (the real 49408 tokens; ``model_max_length`` 77 so pipelines truncate like the real ones).

The weights are random: images and scores mean nothing, but every code path is the real one.
"""

from __future__ import annotations

import gzip
import logging
import os
from pathlib import Path

import torch

log = logging.getLogger(__name__)


def clip_tokenizer():
    """A transformers CLIPTokenizer over open_clip's bundled BPE vocabulary (same ids as open_clip)."""
    from open_clip.tokenizer import bytes_to_unicode, default_bpe
    from transformers import CLIPTokenizer

    merges = gzip.open(default_bpe()).read().decode("utf-8").split("\n")[1: 49152 - 256 - 2 + 1]
    merges = [tuple(m.split()) for m in merges]
    chars = list(bytes_to_unicode().values())
    vocab = chars + [c + "</w>" for c in chars] + ["".join(m) for m in merges] + ["<|startoftext|>", "<|endoftext|>"]
    return CLIPTokenizer(vocab={t: i for i, t in enumerate(vocab)}, merges=merges, model_max_length=77)


def _text_config(width: int = 32):
    from transformers import CLIPTextConfig

    return CLIPTextConfig(bos_token_id=49406, eos_token_id=49407, pad_token_id=49407, hidden_size=width,
                          intermediate_size=2 * width, num_attention_heads=4, num_hidden_layers=2,
                          vocab_size=49408, max_position_embeddings=77, projection_dim=width)


def build_tiny_sd(folder: str | os.PathLike, seed: int = 0) -> Path:
    """A random tiny StableDiffusionPipeline saved to ``folder`` (fp32)."""
    from diffusers import DDIMScheduler, StableDiffusionPipeline
    from transformers import CLIPTextModel

    folder = Path(folder)
    torch.manual_seed(seed)
    unet = _tiny_unet(cross_attention_dim=32)
    vae = _tiny_vae()
    scheduler = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
                              set_alpha_to_one=False, steps_offset=1)
    text_encoder = CLIPTextModel(_text_config(32))
    tokenizer = clip_tokenizer()
    pipe = StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                                   scheduler=scheduler, safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)
    pipe.save_pretrained(folder, safe_serialization=True)
    log.info("tiny Stable Diffusion pipeline saved to %s", folder)
    return folder


def _tiny_unet(**extra):
    """The tiny two-level UNet of both pipelines; ``extra``: SD's or SDXL's conditioning."""
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(16, 32),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=4, norm_num_groups=8, **extra)


def _tiny_vae():
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(8, 8, 16, 16), layers_per_block=1,
        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4, norm_num_groups=4,
        sample_size=64)


def build_tiny_sdxl(folder: str | os.PathLike, seed: int = 0) -> Path:
    """A random tiny StableDiffusionXLPipeline (two text encoders, text_time conditioning) saved to ``folder``."""
    from diffusers import EulerDiscreteScheduler, StableDiffusionXLPipeline
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    folder = Path(folder)
    torch.manual_seed(seed)
    unet = _tiny_unet(use_linear_projection=True, addition_embed_type="text_time", addition_time_embed_dim=8,
                      projection_class_embeddings_input_dim=6 * 8 + 32, cross_attention_dim=64)
    scheduler = EulerDiscreteScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                       timestep_spacing="leading", steps_offset=1)
    pipe = StableDiffusionXLPipeline(
        vae=_tiny_vae(), text_encoder=CLIPTextModel(_text_config(32)),
        text_encoder_2=CLIPTextModelWithProjection(_text_config(32)), tokenizer=clip_tokenizer(),
        tokenizer_2=clip_tokenizer(), unet=unet, scheduler=scheduler)
    pipe.save_pretrained(folder, safe_serialization=True)
    return folder


def build_tiny_pickscore(folder: str | os.PathLike, seed: int = 0, image_size: int = 32) -> Path:
    """A random tiny transformers CLIPModel + CLIPProcessor saved to ``folder`` (PickScore stand-in)."""
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor, CLIPVisionConfig

    folder = Path(folder)
    torch.manual_seed(seed)
    vision = CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_attention_heads=4, num_hidden_layers=2,
                              image_size=image_size, patch_size=8, projection_dim=32)
    config = CLIPConfig(text_config=_text_config(32).to_dict(), vision_config=vision.to_dict(), projection_dim=32,
                        logit_scale_init_value=4.6052)  # exp = 100, as trained CLIPs and PickScore
    model = CLIPModel(config)
    tokenizer = clip_tokenizer()
    images = CLIPImageProcessor(size={"shortest_edge": image_size},
                                crop_size={"height": image_size, "width": image_size})
    CLIPProcessor(image_processor=images, tokenizer=tokenizer).save_pretrained(folder)
    model.save_pretrained(folder)
    log.info("tiny PickScore stand-in saved to %s", folder)
    return folder


def build_tiny_aesthetic(path: str | os.PathLike, input_dim: int = 64, seed: int = 0) -> Path:
    """The LAION aesthetic MLP with random weights over ``input_dim`` features, saved as a .pth state dict."""
    from .aesthetic import AestheticMLP

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    torch.save(AestheticMLP(input_dim).state_dict(), path)
    return path
