"""The papers' scoring models (data only, no torch import: the CLI lists them in --help instantly)."""

PEZ_GENERATOR = "stabilityai/stable-diffusion-2-1-base"  # PEZ section 4.1: SD 2, guidance 9, 25 steps
BEAUTIFULPROMPT_GENERATOR = "stable-diffusion-v1-5/stable-diffusion-v1-5"  # BeautifulPrompt: SD 1.5, 20 steps
DEFAULT_REFERENCE_CLIP = "ViT-g-14/laion2b_s34b_b88k"  # PEZ's reference CLIP (OpenCLIP ViT-g), open_clip name/tag
DEFAULT_CLIP_SCORE_MODEL = "ViT-L-14/openai"  # the usual CLIP-score model (torchmetrics' default is ViT-L/14)
DEFAULT_PICKSCORE = "yuvalkirstain/PickScore_v1"  # transformers CLIPModel
DEFAULT_PICKSCORE_PROCESSOR = "laion/CLIP-ViT-H-14-laion2B-s32B-b79K"  # the CLIP PickScore was fine-tuned from
DEFAULT_AESTHETIC_CLIP = "ViT-L-14/openai"  # the LAION aesthetic MLP reads ViT-L/14 image embeddings
