"""Typed settings of the Serve app: build-time ``AppArgs`` and the runtime-tunable parts.

``AppArgs`` is what ``build_app`` takes, so ``serve run serve.app:build_app preset=tiny`` and the
``args:`` block of serve/config.yaml mean the same thing (flat fields, so every one can be given on
the command line as ``key=value``). ``Limits`` and ``BatchSettings`` are the parts that can change
while the app runs: they travel as ``user_config`` and reach the replicas through ``reconfigure``.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, model_validator

from pez_core.presets import DEFAULT_FLUENCY, PRESETS

OFFLINE_PRESETS = ("tiny", "world", "world-ref")  # built or shipped offline: rewrite with the tiny BLOOM


class Limits(BaseModel):
    """Bounds on one request and the time it may take (the ingress' user_config)."""

    model_config = ConfigDict(extra="forbid")

    max_prompts: int = Field(16, ge=1, le=1024, description="prompts in one rewrite request")
    max_prompt_chars: int = Field(1000, ge=1, le=100_000, description="characters in one raw prompt")
    max_new_tokens: int = Field(256, ge=1, le=4096, description="cap on a rewrite's max_new_tokens")
    max_beams: int = Field(8, ge=2, le=64, description="cap on num_beams for beam search")
    max_image_bytes: int = Field(10_000_000, ge=1_000, description="encoded bytes of one uploaded image")
    max_image_pixels: int = Field(40_000_000, ge=1, description="width x height of one image (decompression bombs)")
    max_steps: int = Field(1000, ge=1, description="cap on PEZ optimisation steps of one invert request")
    max_prompt_len: int = Field(32, ge=1, le=75, description="cap on tokens of a learned prompt (CLIP: <= 75)")
    max_ban_words: int = Field(64, ge=0, le=1024, description="words in one invert request's ban list (entries "
                               "split on spaces; each word costs one scan of the vocabulary)")
    max_ban_entry_words: int = Field(8, ge=1, le=64, description="words in one ban entry")
    max_ban_entry_chars: int = Field(64, ge=1, le=1024, description="characters in one ban entry")
    max_ban_chars: int = Field(1024, ge=1, le=100_000, description="characters in the whole ban list")
    body_timeout_s: float = Field(20.0, gt=0, le=600, description="answer 408 when a request body is not "
                                  "fully received this long after its first read (stalled or trickling clients)")
    rewrite_timeout_s: float = Field(30.0, gt=0, description="answer 504 when a rewrite takes longer")
    invert_timeout_s: float = Field(120.0, gt=0, description="answer 504 when an invert takes longer")
    retry_after_s: int = Field(1, ge=1, description="Retry-After header of a 503 when a model queue is full")

    @property
    def max_body_bytes(self) -> int:
        """Largest request body: a base64 image (4/3 of its bytes) plus room for the other fields."""
        return self.max_image_bytes * 4 // 3 + 65_536


class BatchSettings(BaseModel):
    """How a model deployment batches concurrent requests (its user_config)."""

    model_config = ConfigDict(extra="forbid")

    max_batch_size: int = Field(ge=1, le=1024, description="prompts in one model call; invert: PEZ slots per group")
    batch_wait_timeout_s: float = Field(ge=0, le=10, description="wait this long for a batch to fill")


class AppArgs(Limits):
    """Arguments of ``build_app``: models, batching, queue bounds, limits (flat), authentication."""

    preset: str = Field("world", description="CLIP preset and default rewrite model: " + ", ".join(PRESETS)
                        + " (world: the shipped world CLIP; world and tiny rewrite with the tiny random BLOOM "
                          "until a world rewriter ships)")
    rewrite_model: str | None = Field(None, description="causal LM: Hugging Face id, local folder, 'tiny', or a "
                                      "`promptmine train` output folder (local or s3://; PPO: its best/ model); "
                                      "default: 'tiny' for presets tiny, world and world-ref, else BeautifulPrompt's bloom-1b1")
    rewrite_template: str = Field("v1", description="instruction template of the rewrite model")
    clip_model: str | None = Field(None, description="open_clip model name or folder (overrides the preset's)")
    clip_pretrained: str | None = Field(None, description="with clip_model: a pretrained tag or checkpoint file")
    prompt_lm: str | None = Field(None, description="the fluency prior of /v1/invert: a prompt LM preset (world) or "
                                  "a `promptmine train prompt-lm` model folder; default: the preset's (world "
                                  "presets: world), 'none' for none")
    fluency: float = Field(DEFAULT_FLUENCY, ge=0, le=10, description="the default fluency weight of an invert "
                           "request (with a prompt LM); a request's `fluency` overrides it")
    device: str | None = Field(None, description="torch device of the models (default: cuda if present, else cpu)")
    torch_threads: int = Field(1, ge=1, le=256, description="torch threads per model replica")
    model_num_cpus: float = Field(0.5, gt=0, description="Ray CPUs reserved by each model replica")
    num_replicas: int = Field(1, ge=1, description="replicas of each model deployment")
    rewrite_max_batch_size: int = Field(64, ge=1, le=1024, description="prompts in one generate call")
    rewrite_batch_wait_s: float = Field(0.1, ge=0, le=10, description="wait for a rewrite batch to fill "
                                        "(0.1 s: under load a batch fills before the previous call returns)")
    invert_max_batch_size: int = Field(8, ge=1, le=1024, description="PEZ slots of each group of compatible "
                                       "invert requests (continuous batching: a request joins at the next step)")
    invert_max_groups: int = Field(4, ge=1, le=64, description="PEZ batches a model replica runs at once, one per "
                                   "group of settings; a request for another group waits for one to go idle "
                                   "(then 503 at its time limit)")
    invert_batch_wait_s: float = Field(0.05, ge=0, le=10, description="not used by /v1/invert (a request never "
                                       "waits for a batch to fill); kept in the shared user_config schema")
    max_ongoing_requests: int = Field(64, ge=1, description="requests a model replica holds at once; "
                                      ">= the max batch sizes, or batches cannot fill")
    max_queued_requests: int = Field(128, ge=1, description="requests waiting for a model replica beyond "
                                     "max_ongoing_requests; more get 503 + Retry-After")
    ingress_max_ongoing_requests: int = Field(512, ge=1, description="requests the HTTP ingress holds at once")
    ingress_max_queued_requests: int = Field(1024, ge=1, description="requests Serve's proxy queues for the "
                                             "ingress beyond that; more get a 503 (JSON with serve/proxy.py)")
    auth_token_env: str = Field("PROMPTMINE_API_TOKEN", description="environment variable holding the bearer "
                                "token; unset or empty (and no auth_token_file) = no authentication")
    auth_token_file: str | None = Field(None, description="file holding the bearer token (e.g. a mounted secret)")

    @model_validator(mode="after")
    def _check(self):
        if self.preset not in PRESETS and not (self.clip_model and self.rewrite_model):
            raise ValueError(f"preset {self.preset!r} is unknown; valid: {', '.join(PRESETS)}")
        for name in ("rewrite_max_batch_size", "invert_max_batch_size"):
            if getattr(self, name) > self.max_ongoing_requests:
                raise ValueError(f"{name}={getattr(self, name)} exceeds max_ongoing_requests="
                                 f"{self.max_ongoing_requests}: Serve never batches more than a replica holds")
        if self.clip_pretrained and not self.clip_model:
            raise ValueError("clip_pretrained needs clip_model")
        return self

    def limits(self) -> Limits:
        return Limits(**self.model_dump(include=set(Limits.model_fields)))

    def rewrite_batch(self) -> BatchSettings:
        return BatchSettings(max_batch_size=self.rewrite_max_batch_size, batch_wait_timeout_s=self.rewrite_batch_wait_s)

    def invert_batch(self) -> BatchSettings:
        return BatchSettings(max_batch_size=self.invert_max_batch_size, batch_wait_timeout_s=self.invert_batch_wait_s)

    def resolved_rewrite_model(self) -> str:
        from pez_core.rewrite.rewriter import DEFAULT_MODEL_ID

        return self.rewrite_model or ("tiny" if self.preset in OFFLINE_PRESETS else DEFAULT_MODEL_ID)

    def resolved_prompt_lm(self) -> str | None:
        if self.prompt_lm:
            return None if self.prompt_lm == "none" else self.prompt_lm
        return None if self.clip_model else PRESETS[self.preset].prompt_lm

    def resolved_clip(self) -> tuple[str, str | None]:
        return (self.clip_model, self.clip_pretrained) if self.clip_model else (self.preset, None)
