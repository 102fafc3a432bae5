"""Load a frozen open_clip model and encode text from prompt embeddings over the shortest exact context.

Shapes: b batch, n prompt tokens, d text width, e joint embedding width, L context length.

The CLIP text transformer is causal and pools the features at the end token, and its positional
embedding is absolute. So [start, prompt, end] alone gives the same features as open_clip's padded
77-token ``encode_text``; the padding after the end token can never change the result. Two more exact
savings: the start token attends only to itself, so its activations are computed once per model; and
the last layer computes only the end token's row, the one that is read.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Sequence

import torch
import torch.nn.functional as F

from .presets import CONFIG_DIR, PRESETS, TINY_SEED, WORLD_DIR

log = logging.getLogger(__name__)
PROMPTMINE_KEY = "promptmine"  # save_clip's own entries in open_clip_config.json (open_clip ignores them)

def _register_configs() -> None:
    import open_clip

    known = set(open_clip.list_models())
    for path in sorted(CONFIG_DIR.glob("*.json")):  # promptmine-tiny, promptmine-world, ...
        if path.stem not in known:
            open_clip.add_model_config(path)


@dataclass
class ClipModel:
    """A frozen open_clip CLIP with its tokenizer and image preprocessing."""

    model: torch.nn.Module
    preprocess: object  # PIL image -> tensor (open_clip's eval transform)
    tokenizer: object  # open_clip SimpleTokenizer
    name: str  # "preset" or "model/pretrained", for reports
    device: torch.device
    tied_word: str | None = None  # the word whose embedding tokens the model never trained share (world CLIPs)

    @property
    def token_embedding(self) -> torch.Tensor:  # (v, d)
        return self.model.token_embedding.weight

    @property
    def image_size(self) -> int:
        """The side in pixels the image preprocessing resizes to (what a renderer should draw at)."""
        size = self.preprocess.transforms[0].size
        return size if isinstance(size, int) else size[0]

    @property
    def sot_id(self) -> int:
        return self.tokenizer.sot_token_id

    @property
    def eot_id(self) -> int:
        return self.tokenizer.eot_token_id

    @property
    def context_length(self) -> int:
        return self.model.context_length

    # ---- token ids <-> text -------------------------------------------------------------------
    def tokenize(self, text: str) -> list[int]:
        """Token ids of ``text`` without start/end tokens (open_clip's cleaning and BPE)."""
        return self.tokenizer.encode(text)

    def decode(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode(list(ids)).strip()

    # ---- encoders (no grad) -------------------------------------------------------------------
    @torch.no_grad()
    def encode_images(self, images: Sequence) -> torch.Tensor:
        """Normalised image features (k, e) of PIL images."""
        pixels = torch.stack([self.preprocess(im) for im in images]).to(self.device)
        return F.normalize(self.model.encode_image(pixels).float(), dim=-1)

    @torch.no_grad()
    def encode_texts(self, texts: Sequence[str]) -> torch.Tensor:
        """Normalised features (k, e) through open_clip's own padded ``encode_text``."""
        ids = self.tokenizer(list(texts), context_length=self.context_length).to(self.device)
        return F.normalize(self.model.encode_text(ids).float(), dim=-1)

    @torch.no_grad()
    def encode_ids(self, ids: torch.Tensor) -> torch.Tensor:
        """Normalised features (b, e) of prompt ids (b, n) over the short context."""
        return F.normalize(self.encode_embeds(self.token_embedding[ids.to(self.device)]), dim=-1)

    def encode_embeds(
        self, prompt: torch.Tensor, context: Literal["short", "full"] = "short"
    ) -> torch.Tensor:
        """Unnormalised text features (b, e) of prompt embeddings (b, n, d) placed as
        [start, prompt, end] (``short``) or padded with id 0 to the model's full context (``full``,
        as the authors' code and open_clip's ``encode_text`` run it).

        ``short`` skips work that cannot change the result: under the causal mask the start token's
        activations are the same for every prompt (computed once per model, :meth:`_start_rows`), and in
        the last layer only the end token's row is read."""
        m = self.model
        b, n, _ = prompt.shape
        if n + 2 > self.context_length:
            raise ValueError(f"prompt of {n} tokens does not fit the context of {self.context_length}")
        dtype = m.transformer.get_cast_dtype()
        emb = m.token_embedding.weight
        eot = emb[self.eot_id].expand(b, 1, -1)
        if context == "full":
            L = self.context_length
            parts = [emb[self.sot_id].expand(b, 1, -1), prompt.to(emb.dtype), eot, emb[0].expand(b, L - n - 2, -1)]
            x = torch.cat(parts, dim=1).to(dtype) + m.positional_embedding[:L].to(dtype)
            mask = m.attn_mask[:L, :L] if m.attn_mask is not None else None
            x = m.ln_final(m.transformer(x, attn_mask=mask))[:, n + 1]  # the end token, as open_clip pools
        else:
            L = n + 2
            x = torch.cat([prompt.to(emb.dtype), eot], dim=1).to(dtype) + m.positional_embedding[1:L].to(dtype)
            start = self._start_rows(dtype)  # (layers, d): each layer's input at position 0
            mask = m.attn_mask[1:L, :L].to(dtype) if m.attn_mask is not None else None
            blocks = m.transformer.resblocks
            for i, block in enumerate(blocks):
                kv = torch.cat([start[i].expand(b, 1, -1), x], dim=1)  # (b, L, d)
                last = i == len(blocks) - 1
                x = _block_rows(block, x[:, -1:] if last else x, kv, None if last else mask)
            x = m.ln_final(x[:, -1])
        if m.text_projection is not None:
            x = m.text_projection(x) if isinstance(m.text_projection, torch.nn.Linear) else x @ m.text_projection
        return x.float()

    def _start_rows(self, dtype: torch.dtype) -> torch.Tensor:
        """The start token's input to every text layer (layers, d): it attends only to itself, so it is
        the same for every prompt; computed once per model and dtype."""
        cache = self.__dict__.setdefault("_start_cache", {})
        if dtype not in cache:
            m = self.model
            x = (m.token_embedding.weight[self.sot_id].to(dtype) + m.positional_embedding[0].to(dtype)).view(1, 1, -1)
            rows = []
            with torch.no_grad():
                for block in m.transformer.resblocks:
                    rows.append(x[0, 0])
                    x = block(x)
            cache[dtype] = torch.stack(rows).detach()
        return cache[dtype]


def _block_rows(block, q: torch.Tensor, kv: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """One open_clip ResidualAttentionBlock for the rows ``q`` (b, m, d), the last m rows of ``kv``
    (b, L, d), attending over all of ``kv``: the same arithmetic as ``block(kv)[:, -m:]``."""
    h = block.ln_1(kv)
    attn = block.attn(h[:, -q.shape[1]:], h, h, need_weights=False, attn_mask=mask)[0]
    x = q + block.ls_1(attn)
    return x + block.ls_2(block.mlp(block.ln_2(x)))


@contextlib.contextmanager
def _quiet_random_init_warning():
    """open_clip warns on the root logger when it builds random weights; here that is intended."""

    def drop(record: logging.LogRecord) -> bool:
        return "No pretrained weights loaded" not in record.getMessage()

    root = logging.getLogger()
    root.addFilter(drop)
    try:
        yield
    finally:
        root.removeFilter(drop)


def _check_supported(model: torch.nn.Module, name: str) -> None:
    if not hasattr(model, "token_embedding") or not hasattr(model, "transformer"):
        raise ValueError(
            f"{name}: PEZ needs a CLIP whose text tower is open_clip's own transformer "
            "(CustomTextCLIP / Hugging Face text towers are not supported)"
        )
    pool = getattr(model, "text_pool_type", "argmax")
    if pool not in ("argmax", "eos", "last"):
        raise ValueError(f"{name}: text pooling {pool!r} is not supported (need end-token pooling)")


def load_clip(
    spec: str = "tiny",
    pretrained: str | None = None,
    device: str | torch.device | None = None,
    precision: str = "fp32",
) -> ClipModel:
    """Load a frozen CLIP.

    ``spec`` is a preset (``sd15``, ``sd2``, ``sdxl``, ``sdxl-g``, ``tiny``, ...), an open_clip model name (then
    ``pretrained`` is its tag, a local checkpoint file, or None/"random" for random weights), or a
    folder holding ``open_clip_config.json`` and weights (as :func:`save_clip` writes it; also
    accepted with open_clip's ``local-dir:`` prefix). Online users get real weights through
    open_clip's own loader. A joint preset (``sdxl``) or several specs joined by ``+`` (``world+world-ref``)
    give a :class:`pez_core.joint.JointClip`: their text encoders read one prompt at once.
    """
    import open_clip

    _register_configs()
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    parts = PRESETS[spec].parts if spec in PRESETS else ()
    if not parts and "+" in spec and not os.path.isdir(spec.removeprefix("local-dir:")):
        parts = tuple(s.strip() for s in spec.split("+"))
    if parts:
        from .joint import JointClip

        if pretrained is not None:
            raise ValueError(f"{spec!r} joins several CLIPs: give each its weights as a preset or folder, "
                             "not one pretrained tag")
        return JointClip([load_clip(p, device=device, precision=precision) for p in parts], name=spec)
    seed = None
    if spec in PRESETS and PRESETS[spec].folder:
        path = WORLD_DIR / PRESETS[spec].folder
        if not (path / "open_clip_config.json").is_file():
            raise FileNotFoundError(f"preset {spec!r}: its weights are missing from {path} "
                                    f"(`promptmine world train --kind {spec} --output DIR` trains them)")
        model_name, tag, label = f"local-dir:{path}", None, spec
    elif spec in PRESETS:
        preset = PRESETS[spec]
        model_name, tag, label = preset.model, pretrained or preset.pretrained, spec
        seed = TINY_SEED if tag is None else None
    elif spec.startswith("local-dir:") or os.path.isdir(spec):
        path = spec.removeprefix("local-dir:")
        if not (Path(path) / "open_clip_config.json").is_file():
            raise FileNotFoundError(f"CLIP folder {path!r} has no open_clip_config.json")
        model_name, tag, label = f"local-dir:{path}", None, spec
    elif spec in open_clip.list_models():
        model_name, tag = spec, pretrained
        if tag in ("random", "none"):
            tag = None
        if tag is not None and not os.path.isfile(tag):
            known = [t for m, t in open_clip.list_pretrained() if m == spec]
            if tag not in known:
                raise ValueError(
                    f"pretrained {tag!r} is neither a file nor a tag of {spec}; tags: {', '.join(known) or 'none'}"
                )
        label = f"{spec}/{tag or 'random'}"
        seed = 0 if tag is None else None
    else:
        raise ValueError(
            f"unknown CLIP {spec!r}: use a preset ({', '.join(PRESETS)}), a folder with "
            f"open_clip_config.json, or an open_clip model name: {', '.join(open_clip.list_models())}"
        )
    if seed is not None:
        torch.manual_seed(seed)
    with _quiet_random_init_warning():
        model, _, preprocess = open_clip.create_model_and_transforms(
            model_name, pretrained=tag, device=device, precision=precision
        )
    model.eval().requires_grad_(False)
    _check_supported(model, label)
    tokenizer = open_clip.get_tokenizer(model_name if not model_name.startswith("local-dir:") else "ViT-B-32")
    log.info("loaded CLIP %s on %s", label, device)
    tied_word = None
    if model_name.startswith("local-dir:"):  # what save_clip wrote beside open_clip's keys
        config = json.loads((Path(model_name.removeprefix("local-dir:")) / "open_clip_config.json").read_text())
        tied_word = config.get(PROMPTMINE_KEY, {}).get("tied_word")
    return ClipModel(model=model, preprocess=preprocess, tokenizer=tokenizer, name=label, device=device,
                     tied_word=tied_word)


def save_clip(clip: ClipModel, folder: str | os.PathLike, model_name: str, dtype: torch.dtype | None = None) -> Path:
    """Write ``open_clip_config.json`` and weights so that ``load_clip(folder)`` loads them back.

    ``dtype`` (e.g. torch.float16) stores floating-point weights in that type (half the size); loading
    casts them back to the model's precision. ``clip.tied_word`` is kept beside open_clip's keys."""
    import open_clip
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    cfg = {"model_cfg": open_clip.get_model_config(model_name), "preprocess_cfg": {}}
    if clip.tied_word is not None:
        cfg[PROMPTMINE_KEY] = {"tied_word": clip.tied_word}
    (folder / "open_clip_config.json").write_text(json.dumps(cfg))
    state = {k: (v.to(dtype) if dtype is not None and v.is_floating_point() else v).contiguous()
             for k, v in clip.model.state_dict().items()}
    save_file(state, str(folder / "open_clip_model.safetensors"))
    return folder
