"""Model deployments: concurrent requests share the model.

``RewriteModel``: each request's prompts join one batch, counted in prompts (``batch_size_fn``), and
each group of requests with the same generation options is one ``Rewriter.rewrite_detailed`` call.
``InvertModel``: continuous batching (serve/invert_engine.py): each request is one image, decoded and
encoded on its own, whose target joins the running PEZ batch of its group (the same steps, prompt_len,
ban lists, early_stop, method and fluency) at the batch's next step and leaves it when it stops. Every
target carries its request's seed, so a prompt does not depend on which requests shared its batch.

Model calls run in a worker thread, so the replica keeps accepting requests (and the next batch
fills) while a batch computes. Input problems only the model can see come back as
``{"error": {...}}`` values rather than exceptions, so the ingress can answer them as 4xx JSON.
Rewrite requests whose deadline passed before their batch ran are skipped; an invert request whose
deadline passes is cancelled, which frees its PEZ slot at the next step.
"""

from __future__ import annotations

import asyncio
import logging
import tempfile
import threading
import time
from collections import Counter, OrderedDict
from concurrent.futures import Future
from dataclasses import dataclass

from ray import serve

from .invert_engine import IDLE_EXIT_S, Expired, GroupsBusy, InvertEngine
from .settings import BatchSettings

log = logging.getLogger(__name__)


class BatchStats:
    """How many items (prompts or images) each model call served, as a histogram."""

    def __init__(self):
        self.histogram: Counter[int] = Counter()
        self.requests = 0

    def record(self, items: int, requests: int) -> None:
        self.histogram[items] += 1
        self.requests += requests

    def snapshot(self) -> dict:
        hist = {str(k): v for k, v in sorted(self.histogram.items())}
        return {"batches": sum(self.histogram.values()), "requests": self.requests,
                "items": sum(k * v for k, v in self.histogram.items()),
                "max_batch_size_seen": max(self.histogram, default=0), "batch_size_histogram": hist}


def error(status: int, message: str, field: str | None = None, type: str | None = None) -> dict:
    return {"error": {"status": status, "message": message, "field": field, "type": type}}


def _expired() -> dict:
    return error(504, "the request's time limit passed before the model got to it", type="timeout")


def _set_threads(n: int) -> None:
    import torch

    torch.set_num_threads(n)


class _Batched:
    """Shared by both models: runtime batch settings (user_config) and stats."""

    batch_method_name = ""

    def reconfigure(self, config: dict) -> None:
        s = BatchSettings(**config)
        method = getattr(self, self.batch_method_name)
        method.set_max_batch_size(s.max_batch_size)
        method.set_batch_wait_timeout_s(s.batch_wait_timeout_s)
        self.settings = s
        log.info("%s: max_batch_size=%d batch_wait_timeout_s=%s", type(self).__name__, s.max_batch_size,
                 s.batch_wait_timeout_s)

    def describe(self) -> dict:
        """What GET /v1/models shows: the model, its batch settings and the batch sizes it served."""
        return {**self.info(), "stats": {**self.batch_stats.snapshot(), **self.settings.model_dump()}}


# ---- rewrite -------------------------------------------------------------------------------------
@dataclass
class _RewriteItem:
    prompts: list[str]
    generation: object  # pez_core GenerationConfig
    deadline: float  # time.time() after which nobody waits for the answer


def _count_prompts(items: list[_RewriteItem]) -> int:
    return sum(len(item.prompts) for item in items)


@serve.deployment(name="RewriteModel")
class RewriteModel(_Batched):
    batch_method_name = "_rewrite_batch"

    def __init__(self, model: str, template: str = "v1", device: str | None = None, torch_threads: int = 1):
        from pez_core.rewrite.rewriter import Rewriter

        _set_threads(torch_threads)
        if model == "tiny":  # a random tiny BLOOM built offline, for demos and tests
            from pez_core.rewrite.tiny import build_tiny_lm

            self._tmp = tempfile.TemporaryDirectory(prefix="promptmine-tiny-lm-")
            path = str(build_tiny_lm(self._tmp.name, arch="bloom", seed=0))
        elif model.startswith(("s3://", "s3a://")):  # e.g. a `promptmine train ppo` output: its best/ model
            from pipelines.train.best import fetch_model

            path = fetch_model(model)
        else:  # a hub id or local folder; a training output folder loads its best/ (else model/) model
            path = model
        self.rewriter = Rewriter.from_pretrained(path, template=template, device=device)
        self.model_name = model
        self.batch_stats = BatchStats()
        self.settings = BatchSettings(max_batch_size=32, batch_wait_timeout_s=0.02)

    def info(self) -> dict:
        return {"model": self.model_name, "template": self.rewriter.template,
                "architecture": type(self.rewriter.model).__name__, "device": str(self.rewriter.device)}

    async def rewrite(self, prompts: list[str], generation: dict, deadline: float) -> dict:
        """Rewritten prompts or ``{"error": ...}``; requests larger than a batch are split."""
        from pez_core.rewrite.rewriter import GenerationConfig

        try:
            cfg = GenerationConfig(**generation)
        except (TypeError, ValueError) as e:
            return error(422, str(e), type="validation_error")
        for i, reason in enumerate(self.rewriter.problems(prompts, cfg.max_new_tokens)):
            if reason:  # the library's reasons quote the request's numbers; the API repeats no values
                why = ("its templated tokens plus max_new_tokens exceed the model's positions"
                       if "positions" in reason else "cannot be rewritten (empty or too long)")
                return error(400, f"prompts[{i}]: {why}", f"prompts[{i}]")
        size = self.settings.max_batch_size
        chunks = [prompts[i:i + size] for i in range(0, len(prompts), size)]
        parts = await asyncio.gather(*(self._rewrite_batch(_RewriteItem(c, cfg, deadline)) for c in chunks))
        for part in parts:
            if "error" in part:
                return part
        return {"model": self.model_name, "results": [r for p in parts for r in p["results"]],
                "batch_size": max(p["batch_size"] for p in parts)}

    @serve.batch(max_batch_size=32, batch_wait_timeout_s=0.02, batch_size_fn=_count_prompts)
    async def _rewrite_batch(self, items: list[_RewriteItem]) -> list[dict]:
        now = time.time()
        live = [i for i, item in enumerate(items) if item.deadline > now]
        out: list[dict] = [_expired()] * len(items)
        size = sum(len(items[i].prompts) for i in live)
        groups: dict[tuple, list[int]] = {}
        for i in live:  # one generate call per distinct set of options
            groups.setdefault(tuple(sorted(vars(items[i].generation).items())), []).append(i)
        for members in groups.values():
            prompts = [p for i in members for p in items[i].prompts]
            cfg = items[members[0]].generation
            try:
                rewrites = await asyncio.to_thread(self.rewriter.rewrite_detailed, prompts, cfg,
                                                   batch_size=len(prompts))
            except Exception as e:  # a model failure fails this group only, and is logged here
                log.exception("rewrite of %d prompts failed", len(prompts))
                for i in members:
                    out[i] = error(500, f"model error: {type(e).__name__}", type="internal_error")
                continue
            start = 0
            for i in members:
                n = len(items[i].prompts)
                out[i] = {"batch_size": size, "results": [
                    {"prompt": r.raw_prompt, "text": r.text, "prompt_tokens": r.prompt_tokens,
                     "new_tokens": r.new_tokens} for r in rewrites[start:start + n]]}
                start += n
        if live:
            self.batch_stats.record(size, len(live))
        return out


# ---- invert --------------------------------------------------------------------------------------
@serve.deployment(name="InvertModel")
class InvertModel(_Batched):
    """PEZ with continuous batching (serve/invert_engine.py): ``max_batch_size`` is the slots of each
    group's batch; ``batch_wait_timeout_s`` is not used (a request joins the running batch at its next step)."""

    def __init__(self, clip: str = "tiny", pretrained: str | None = None, device: str | None = None,
                 torch_threads: int = 1, vocab_cache: int = 8, prompt_lm: str | None = None, fluency: float = 0.0,
                 idle_s: float = IDLE_EXIT_S, max_groups: int = 4):
        from pez_core import load_clip
        from pez_core.prompt_lm import PromptLM

        _set_threads(torch_threads)
        self.clip = load_clip(clip, pretrained=pretrained, device=device)
        self.prompt_lm, self.fluency = prompt_lm, (fluency if prompt_lm else 0.0)  # the default of a request
        if prompt_lm:
            PromptLM.cached(prompt_lm, self.clip.device)  # load (and check) it now, not on the first request
        self.vocab_cache_size = vocab_cache
        self._vocabs: OrderedDict[tuple, object] = OrderedDict()
        self._vocab_lock = threading.Lock()  # requests prepare in worker threads
        self._vocab_building: dict[tuple, Future] = {}  # ban lists whose table a thread is building
        self.settings = BatchSettings(max_batch_size=8, batch_wait_timeout_s=0.05)
        self.engine = InvertEngine(self.clip, slots=self.settings.max_batch_size, idle_s=idle_s, max_groups=max_groups)
        self._vocabulary(((), ()))  # build the default candidate table now, not on the first request

    def reconfigure(self, config: dict) -> None:
        self.settings = BatchSettings(**config)
        self.engine.slots = self.settings.max_batch_size  # groups started from now on
        log.info("InvertModel: %d slots per group", self.settings.max_batch_size)

    def describe(self) -> dict:
        return {**self.info(), "stats": {**self.engine.snapshot(), **self.settings.model_dump()}}

    def info(self) -> dict:
        return {"model": self.clip.name, "device": str(self.clip.device),
                "context_length": self.clip.context_length, "prompt_lm": self.prompt_lm, "fluency": self.fluency}

    def _vocabulary(self, ban: tuple[tuple[str, ...], tuple[str, ...]]):
        """The candidate table for (whole-word ban list, substring ban list) (cached: building one scans
        the whole vocabulary). A table is built outside the lock, once: requests for other ban lists (or
        cached ones) do not wait for it, a second request for the same new list waits for the first's."""
        from pez_core import Vocabulary

        with self._vocab_lock:
            if ban in self._vocabs:
                self._vocabs.move_to_end(ban)
                return self._vocabs[ban]
            building, mine = self._vocab_building.get(ban), False
            if building is None:
                building, mine = self._vocab_building.setdefault(ban, Future()), True
        if not mine:
            return building.result()
        try:
            table = Vocabulary(self.clip, safe=True, ban=ban[0], ban_substring=ban[1])
        except BaseException as e:
            with self._vocab_lock:
                del self._vocab_building[ban]
            building.set_exception(e)
            raise
        with self._vocab_lock:
            self._vocabs[ban] = table
            if len(self._vocabs) > self.vocab_cache_size:
                self._vocabs.popitem(last=False)
            del self._vocab_building[ban]
        building.set_result(table)
        return table

    async def invert(self, image: bytes, steps: int, prompt_len: int, ban: list[str], seed: int,
                     deadline: float, max_pixels: int, ban_substring: list[str] = (), early_stop: bool = True,
                     pez_method: str = "pez", fluency: float | None = None) -> dict:
        """A learned prompt or ``{"error": ...}``. ``batch_size`` in the answer: the occupied slots of its
        group's batch in the step its target started."""
        from pez_core.projection import ban_words

        fluency = self.fluency if fluency is None else fluency
        if fluency and not self.prompt_lm:
            return error(422, "fluency: this server has no prompt LM (start it with --prompt-lm)", "fluency",
                         type="validation_error")
        bans = (tuple(sorted(set(ban_words(ban)))), tuple(sorted(set(ban_words(ban_substring)))))
        group = (steps, prompt_len, bans, early_stop, pez_method, fluency)
        if deadline <= time.time():
            return _expired()
        ready = await asyncio.to_thread(self._prepare, image, max_pixels, seed, group)
        if "error" in ready:
            return ready
        try:
            result, batch_size = await self.engine.run(group, ready["cfg"], ready["vocab"], ready["target"], deadline)
        except GroupsBusy as e:
            return error(503, f"every PEZ group of this replica (invert_max_groups={e.max_groups}) stayed busy with "
                              "other settings (steps, prompt_len, ban, ban_substring, early_stop, method, fluency) "
                              "until the time limit; retry, or use the settings of a running group",
                         type="overloaded")
        except Expired:
            return _expired()
        except Exception as e:  # logged by the worker
            return error(500, f"model error: {type(e).__name__}", type="internal_error")
        return {"model": self.clip.name, "prompt": result.text, "token_ids": result.token_ids,
                "cosine": result.cosine, "best_step": result.best_step, "steps_run": result.steps_run,
                "nll": result.extra.get("nll"), "image_size": ready["size"], "batch_size": batch_size}

    def _prepare(self, image: bytes, max_pixels: int, seed: int, group: tuple) -> dict:
        """Decode and encode the image, find the group's candidate table and config (in a worker thread)."""
        from pez_core import ImageError, PEZConfig, Target, decode_image

        steps, prompt_len, ban, early_stop, method, fluency = group
        try:
            decoded = decode_image(image, "image", max_pixels=max_pixels)
        except ImageError as e:
            return error(400, e.reason, "image", type="invalid_image")
        try:
            vocab = self._vocabulary(ban)  # a new ban list scans the vocabulary: inside the deadline
        except ValueError as e:  # the ban list left no candidate tokens
            return error(422, f"ban: {e}", "ban", type="validation_error")
        try:
            cfg = PEZConfig(steps=steps, prompt_len=prompt_len, ban=ban[0], ban_substring=ban[1],
                            early_stop=early_stop, method=method, fluency=fluency,
                            prompt_lm=self.prompt_lm if fluency else None)
            target = Target(self.clip.encode_images([decoded]), "image", seed=seed)
        except Exception as e:
            log.exception("preparing a PEZ target failed")
            return error(500, f"model error: {type(e).__name__}", type="internal_error")
        return {"cfg": cfg, "vocab": vocab, "target": target, "size": list(decoded.size)}
