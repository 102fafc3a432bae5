"""Request and response bodies of the HTTP API (pydantic; they are also the OpenAPI docs).

Static shape checks live here (types, ranges that never change); checks across fields and the
operator's limits, which can change at runtime, are ``check_*`` in serve/ingress.py (so each error
names its field).
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from pez_core.budgets import BUDGETS

SEED_MAX = 2**32 - 1  # seeds are 32-bit: numpy / torch generators would alias larger ones


def _encodable(text: str) -> str:
    """Refuse strings that cannot be UTF-8 (a lone surrogate, JSON "\\ud800"): nothing downstream can use them."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("not valid Unicode text (a lone surrogate)") from None
    return text


Text = Annotated[str, AfterValidator(_encodable)]
# JSON bodies are validated strictly (true is not 1, "5" is not 5, 1.0 is not an int); floats must be finite.
STRICT = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)


class RewriteRequest(BaseModel):
    """One prompt (``prompt``) or several (``prompts``), and generation options."""

    model_config = ConfigDict(**STRICT, json_schema_extra={
        "examples": [{"prompt": "a cat in the rain", "max_new_tokens": 64},
                     {"prompts": ["a castle", "a fox at night"], "mode": "beam", "num_beams": 4}]})

    prompt: Text | None = Field(None, description="one raw prompt")
    prompts: list[Text] | None = Field(None, description="several raw prompts (rewritten in one batch)")
    mode: Literal["greedy", "sample", "beam"] = Field("greedy", description="decoding")
    max_new_tokens: int = Field(128, ge=1, description="cap on generated tokens")
    min_new_tokens: int = Field(0, ge=0, description="suppress the end token until this many tokens")
    temperature: float = Field(1.0, gt=0, le=10, description="sample: softmax temperature")
    top_p: float = Field(1.0, gt=0, le=1, description="sample: nucleus mass")
    top_k: int = Field(0, ge=0, description="sample: keep the k best tokens (0 = off)")
    num_beams: int = Field(4, ge=2, description="beam: beams per prompt")
    repetition_penalty: float = Field(1.0, gt=0, le=10, description="> 1 discourages repeats")
    seed: int | None = Field(None, ge=0, le=SEED_MAX, description="sample: generator seed, 0 to 2**32 - 1 "
                             "(results also depend on batching)")

    def prompt_list(self) -> list[str]:
        return [self.prompt] if self.prompt is not None else list(self.prompts or [])

    def generation(self) -> dict:
        """The fields of pez_core's GenerationConfig this request sets."""
        return self.model_dump(exclude={"prompt", "prompts"})


class RewriteResult(BaseModel):
    prompt: str = Field(description="the raw prompt, unchanged")
    text: str = Field(description="the rewritten prompt")
    prompt_tokens: int = Field(description="tokens of the templated input")
    new_tokens: int = Field(description="generated tokens (up to and including the end token)")


class RewriteResponse(BaseModel):
    model: str = Field(description="the rewrite model")
    results: list[RewriteResult]
    batch_size: int = Field(description="prompts in the largest model batch this request was part of")
    latency_ms: float


class InvertOptions(BaseModel):
    """PEZ options of an invert request (JSON fields, or form fields beside a multipart upload)."""

    model_config = STRICT  # form fields (strings) are validated with strict=False

    steps: int = Field(BUDGETS["serve"].steps, ge=1, description="optimisation steps (default: pez_core.budgets)")
    prompt_len: int = Field(BUDGETS["serve"].prompt_len, ge=1, le=75, description="tokens in the learned prompt (paper: 16)")
    ban: list[Text] = Field(default_factory=list, description="words the prompt may not use, in any case "
                            "(whole words: 'cat' keeps 'education')")
    ban_substring: list[Text] = Field(default_factory=list, description="text no token of the prompt may contain "
                                      "(the conservative mode for safety filters: 'cat' also bans 'education')")
    seed: int = Field(0, ge=0, le=SEED_MAX, description="seed of the initial prompt, 0 to 2**32 - 1 "
                      "(results do not depend on batching)")
    early_stop: bool = Field(True, description="stop once the best prompt has plateaued (pez_core.stopping); "
                             "false: run all `steps`")
    method: Literal["pez", "autoprompt-sgd", "fluentprompt"] = Field(
        "pez", description="pez, or one of the PEZ paper's baselines that return text (pez_core.pez.METHODS)")
    fluency: float | None = Field(None, ge=0, le=10, description="weight of the fluency prior (the prompt's "
                                  "NLL under the server's prompt LM, /v1/models); 0: off; default: the server's")


class InvertJSONRequest(InvertOptions):
    """The JSON form of an invert request: the image as base64 (a data: URL prefix is accepted)."""

    model_config = ConfigDict(**STRICT, json_schema_extra={
        "examples": [{"image_base64": "iVBORw0KGgo...", "steps": 200, "prompt_len": 16, "ban": ["nsfw"]}]})

    image_base64: str = Field(min_length=1, description="the encoded image (PNG, JPEG, WebP, ...) in base64")


class InvertResponse(BaseModel):
    model: str = Field(description="the CLIP the prompt was optimised against")
    prompt: str = Field(description="the learned hard prompt; tokenises back to token_ids")
    token_ids: list[int]
    cosine: float = Field(description="mean cosine of the prompt's text features to the image's")
    best_step: int
    steps_run: int
    nll: float | None = Field(None, description="the prompt's NLL per token under the prompt LM (when fluency > 0)")
    image_size: list[int] = Field(description="[width, height] of the decoded image")
    batch_size: int = Field(description="occupied slots of the PEZ batch in the step this request's target started, "
                            "itself included (requests with the same steps, prompt_len, ban, ban_substring, "
                            "early_stop, method and fluency share a batch; others join it as slots free up)")
    latency_ms: float


class ErrorBody(BaseModel):
    type: str = Field(description="invalid_request | malformed_json | validation_error | invalid_image | "
                      "unauthorized | not_found | unsupported_media_type | payload_too_large | request_timeout | "
                      "overloaded | timeout | internal_error ...")
    message: str
    field: str | None = Field(None, description="the input at fault, e.g. 'prompts[2]' or 'image'")
    errors: list[dict] | None = Field(None, description="every field error, for validation errors")


class ErrorResponse(BaseModel):
    error: ErrorBody
