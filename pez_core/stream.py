"""The PEZ loop with continuous batching: a fixed number of slots, each finished target's slot refilled
from the queue, so the batch stays full while targets stop at very different steps.

Every slot holds one target's whole state: its continuous prompt, AdamW moments, its OWN step count
(AdamW's bias correction uses it), its best prompt so far and its features. Nothing in a step mixes
rows, so a target's result does not depend on which targets share the batch or when it joined (up to
the float rounding of batched matrix products, which in practice leaves the ids identical).
``pez.invert`` is this loop with as many slots as targets.

The queue is either a plain iterable (read with ``next``; the first StopIteration means exhausted for
good: ``invert``, mining) or a live :class:`~pez_core.feed.TargetFeed` (an online server; feed.py). The
stream polls a feed without waiting while any slot is occupied (a new target joins at the next step) and
waits on it only when every slot is empty.

With the fluency prior on, the targets that stop together are polished together (polish.py) before their
results are returned; the polish scores every row on its own, so that too leaves results batch-independent.

Shapes: B slots, a occupied slots, n prompt tokens, d text width, k feature vectors per target, e joint width.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator

import torch

from .clip import ClipModel
from .feed import _NOTHING_NOW, TargetFeed
from .pez import PEZConfig, PEZResult, Target, _AdamW, _result, lr_factor, similarity
from .projection import ST_TOP_K, Vocabulary
from .polish import polish
from .prompt_lm import PromptLM
from .stopping import can_stop_early, stopped


class _Slots:
    """Per-slot state tensors (B, ...) on the model's device, and which target sits in each slot."""

    def __init__(self, clip: ClipModel, vocab: Vocabulary, cfg: PEZConfig, slots: int):
        dev, n = clip.device, cfg.prompt_len
        self.clip, self.vocab, self.cfg = clip, vocab, cfg
        self.table = clip.token_embedding.detach()
        self.prompts = torch.zeros(slots, n, self.table.shape[1], device=dev)
        self.opt = _AdamW(self.prompts, cfg.lr, cfg.weight_decay)
        self.t = torch.zeros(slots, dtype=torch.long, device=dev)  # each slot's own steps done
        # restarts (restart_patience): steps of the current run (AdamW's bias correction), that run's best
        self.run_t = torch.zeros(slots, dtype=torch.long, device=dev)
        self.run_best = torch.full((slots,), -math.inf, device=dev)
        self.run_best_t = torch.zeros(slots, dtype=torch.long, device=dev)
        self.seeds, self.restarts = [0] * slots, [0] * slots
        self.best_cos = torch.full((slots,), -math.inf, device=dev)  # cosine of the best prompt
        self.best_obj = torch.full((slots,), -math.inf, device=dev)  # its objective: cosine - fluency x NLL
        self.best_nll = torch.zeros(slots, device=dev)  # its NLL under the prompt LM (fluency > 0)
        self.best_ids = torch.zeros(slots, n, dtype=torch.long, device=dev)
        self.best_step = torch.zeros(slots, dtype=torch.long, device=dev)
        self.stop_t = torch.zeros(slots, dtype=torch.long, device=dev)  # steps run, set when it stops
        self.done = torch.zeros(slots, dtype=torch.bool, device=dev)  # stopped, awaiting removal
        self.feats: torch.Tensor | None = None  # (B, k, e), zero-padded
        self.weights = torch.zeros(slots, 1, device=dev)  # (B, k), each occupied row sums to one
        self.who: list[tuple[int, Target] | None] = [None] * slots
        self.soft = cfg.method == "soft"
        if self.soft:  # the best continuous prompt is the result itself
            self.best_emb = torch.zeros_like(self.prompts)
        self.noise: list[torch.Generator | None] = [None] * slots  # fluentprompt: each target's own noise
        # the table's std is a pass over every row: only the method that uses it pays for it
        self.noise_std = cfg.langevin_noise * float(self.table.float().std()) if cfg.method == "fluentprompt" else 0.0
        self.lm = PromptLM.cached(cfg.prompt_lm, dev) if cfg.fluency else None  # the fluency prior
        self.polish_moves = [0] * slots

    def load(self, slot: int, index: int, target: Target) -> None:
        """Start ``target`` (the ``index``-th of the queue) from scratch in ``slot``."""
        cfg, dev = self.cfg, self.prompts.device
        f = target.features.to(dev, torch.float32)
        k, e = f.shape
        if self.feats is None:
            self.feats = torch.zeros(len(self.who), k, e, device=dev)
        if e != self.feats.shape[2]:
            raise ValueError(f"target {index} has features of width {e}, expected {self.feats.shape[2]}")
        if k > self.feats.shape[1]:  # pad every slot to the widest feature set (zero weights)
            grow = k - self.feats.shape[1]
            self.feats = torch.cat([self.feats, self.feats.new_zeros(len(self.who), grow, e)], dim=1)
            self.weights = torch.cat([self.weights, self.weights.new_zeros(len(self.who), grow)], dim=1)
        seed = target.seed if target.seed is not None else cfg.seed + index
        ids = self.vocab.random_ids(cfg.prompt_len, torch.Generator().manual_seed(seed))
        self.prompts[slot] = self.table[ids].float()
        self.opt.m[slot] = 0
        self.opt.v[slot] = 0
        self.t[slot] = 0
        self.seeds[slot], self.restarts[slot] = seed, 0
        self.run_t[slot], self.run_best[slot], self.run_best_t[slot] = 0, -math.inf, 0
        self.best_cos[slot], self.best_obj[slot], self.best_ids[slot], self.best_step[slot] = -math.inf, -math.inf, 0, 0
        self.done[slot] = False
        self.feats[slot] = 0
        self.feats[slot, :k] = f
        self.weights[slot] = 0
        self.weights[slot, :k] = 1.0 / k
        self.who[slot] = (index, target)
        if cfg.method == "fluentprompt":
            self.noise[slot] = torch.Generator().manual_seed(seed * 7919 + 1)

    def step(self, active: torch.Tensor, check: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """One PEZ step for the occupied slots ``active`` (a,); returns their loop cosines and own 0-based
        steps. Slots already stopped keep computing until removed but never change their best."""
        if self.soft:
            ids, leaf = None, self.prompts[active].clone().requires_grad_(True)  # no projection at all
        else:
            prompts = self.prompts[active]  # (a, n, d), a copy
            if self.lm is None:
                ids = self.vocab.project(prompts)  # (a, n)
            else:  # and each position's nearest candidates, for the fluency term's relaxation
                ids, near = self.vocab.project(prompts, neighbours=ST_TOP_K)
            leaf = self.table[ids].float().requires_grad_(True)  # (a, n, d), the straight-through leaf
        feats, weights = self.feats[active], self.weights[active]
        sim = similarity(self.clip.encode_embeds(leaf), feats, weights)  # (a,)
        loss, objective, nll = 1 - sim, sim, None
        if self.lm is None:
            (grad,) = torch.autograd.grad(loss.sum(), leaf)
        else:  # the fluency term: its gradient reaches the continuous prompt through the projection's relaxation
            cont = prompts.requires_grad_(True)
            nll = self.lm.nll_soft(*self.vocab.straight_through(cont, ids, near))  # (a,), exact at the projected ids
            loss = loss + self.cfg.fluency * nll
            objective = sim - self.cfg.fluency * nll
            at_leaf, at_prompt = torch.autograd.grad(loss.sum(), [leaf, cont])
            grad = at_leaf + at_prompt
        t = self.t[active] + 1
        self.t[active] = t
        run_t = self.run_t[active] + 1
        self.run_t[active] = run_t
        self.opt.step(active, grad, run_t, lr_factor(self.cfg, t))  # the schedule on the target's own step
        if self.cfg.method in ("autoprompt-sgd", "fluentprompt"):  # project after the update
            moved = self.prompts[active]
            if self.cfg.method == "fluentprompt":
                moved = moved + self._langevin(active, t)
            self.prompts[active] = self.table[self.vocab.project(moved)].float()

        sim, objective = sim.detach(), objective.detach()
        live = ~self.done[active]
        better = (objective > self.best_obj[active]) & live
        rows = active[better]
        self.best_cos[rows], self.best_obj[rows], self.best_step[rows] = sim[better], objective[better], t[better] - 1
        if nll is not None:
            self.best_nll[rows] = nll.detach()[better]
        if self.soft:
            self.best_emb[rows] = leaf.detach()[better]
        else:
            self.best_ids[rows] = ids[better]
        if self.cfg.restart_patience is not None:
            self._restart_stale(active, objective, run_t, live)
        if check:
            now = stopped(self.cfg, t, self.best_step[active], self.best_cos[active]) & live
            self.stop_t[active[now]] = t[now]
            self.done[active] |= now
        return sim, t - 1

    def _restart_stale(self, active, objective, run_t, live) -> None:
        """Re-seed in place each live target whose current run has gone ``restart_patience`` steps without
        beating its own best: a new random prompt (from the target's seed and restart count), fresh AdamW
        moments and bias correction; its overall best, step count and schedule carry on."""
        better = objective > self.run_best[active]
        self.run_best[active[better]], self.run_best_t[active[better]] = objective[better], run_t[better]
        stale = live & (run_t - self.run_best_t[active] >= self.cfg.restart_patience)
        for slot in active[stale].tolist():  # a device-to-host read, only with restarts on
            self.restarts[slot] += 1
            gen = torch.Generator().manual_seed((self.seeds[slot] * 1_000_003 + self.restarts[slot]) % 2**63)
            self.prompts[slot] = self.table[self.vocab.random_ids(self.cfg.prompt_len, gen)].float()
            self.opt.m[slot], self.opt.v[slot] = 0, 0
            self.run_t[slot], self.run_best[slot], self.run_best_t[slot] = 0, -math.inf, 0

    def _langevin(self, active: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """FluentPrompt's Langevin noise (a, n, d): each target's own generator, so its noise does not depend
        on the batch; the std anneals linearly from langevin_noise x the token table's std to 0 at the budget."""
        shape = self.prompts.shape[1:]
        z = torch.stack([torch.randn(shape, generator=self.noise[i]) for i in active.tolist()])
        scale = (1 - (t.to(torch.float32) - 1) / self.cfg.steps).clamp_(min=0) * self.noise_std
        return z.to(self.prompts.device) * scale.view(-1, 1, 1)

    def polish(self, slots: list[int]) -> None:
        """Polish the best prompts of the stopped ``slots`` together (polish.py), with the fluency prior on."""
        cfg = self.cfg
        if self.lm is None or self.soft or not cfg.polish_sweeps or not slots:
            return
        rows = torch.tensor(slots, device=self.prompts.device)
        out = polish(self.clip, self.lm, self.vocab, self.best_ids[rows], self.feats[rows], self.weights[rows],
                     cfg.fluency, cfg.polish_proposals, cfg.polish_sweeps)
        self.best_ids[rows], self.best_cos[rows], self.best_nll[rows] = out.ids, out.cosine, out.nll
        self.best_obj[rows] = out.cosine - cfg.fluency * out.nll
        for slot, moves in zip(slots, out.moves):
            self.polish_moves[slot] = moves

    def finish(self, slot: int, steps_run: int) -> tuple[int, PEZResult]:
        index, target = self.who[slot]
        self.who[slot] = None
        self.noise[slot] = None
        k = target.features.shape[0]
        if self.soft:
            return index, self._soft_result(target, slot, steps_run, k)
        result = _result(self.clip, target, self.best_ids[slot].tolist(), float(self.best_cos[slot]),
                         int(self.best_step[slot]), steps_run, self.feats[slot, :k], self.weights[slot, :k])
        if self.cfg.restart_patience is not None:
            result.extra["restarts"] = self.restarts[slot]
        if self.lm is not None:  # the returned prompt's NLL (nats/token; re-scored if the round trip changed it)
            result.extra["nll"] = float(self.lm.nll([result.token_ids])[0]) if "optimised_ids" in result.extra \
                else float(self.best_nll[slot])
            if self.cfg.polish_sweeps:
                result.extra["polish_moves"] = self.polish_moves[slot]
        return index, result

    def _soft_result(self, target: Target, slot: int, steps_run: int, k: int) -> PEZResult:
        """A soft prompt has no text: ``text`` is empty, ``extra`` holds its embedding (n, d) and, for a
        text-only consumer, its nearest tokens (``nearest_text``) with the cosine those reach."""
        emb = self.best_emb[slot]
        nearest = _result(self.clip, target, self.vocab.project(emb[None])[0].tolist(), math.nan, 0, steps_run,
                          self.feats[slot, :k], self.weights[slot, :k])
        rescored = self.clip.encode_ids(torch.tensor([nearest.token_ids], device=emb.device))[0]
        ncos = float((self.feats[slot, :k] @ rescored * self.weights[slot, :k]).sum())
        extra = {"soft": True, "embedding": emb.tolist(), "nearest_text": nearest.text,
                 "nearest_ids": nearest.token_ids, "nearest_cosine": ncos}
        return PEZResult("", [], float(self.best_cos[slot]), int(self.best_step[slot]), steps_run, target.kind, extra)


class Stream:
    """Iterator of ``(index, PEZResult)`` in the order targets finish; ``index`` is the target's position
    in the queue. ``occupancy`` = occupied slots / slots, averaged over the steps run so far."""

    def __init__(self, clip, targets, cfg, slots, vocab, on_step, trace, sync_every, on_start=None):
        if slots < 1:
            raise ValueError(f"slots must be >= 1, got {slots}")
        self.cfg = cfg
        self.vocab = vocab or Vocabulary.from_config(clip, cfg)
        self.slots = _Slots(clip, self.vocab, cfg, slots)
        self.feed = targets if isinstance(targets, TargetFeed) else None
        self.queue = None if self.feed is not None else enumerate(targets)
        self.on_step, self.trace, self.on_start = on_step, trace, on_start
        self.sync_every = sync_every or (1 if clip.device.type == "cpu" else 8)
        self.global_steps = 0  # batch steps run
        self.slot_steps = 0  # sum over steps of occupied slots
        self.cancelled = 0  # running targets whose slot a cancel freed

    @property
    def occupancy(self) -> float:
        return self.slot_steps / (self.global_steps * len(self.slots.who)) if self.global_steps else 0.0

    @property
    def occupied(self) -> int:
        """Slots holding a target now (readable from another thread)."""
        return sum(w is not None for w in self.slots.who)

    def _next(self, wait: bool):
        """The queue's next ``(index, target)``, ``_NOTHING_NOW``, or None when exhausted for good."""
        if self.feed is not None:
            return self.feed._take(wait)
        return next(self.queue, None)

    def _free_cancelled(self) -> None:
        s = self.slots
        gone = self.feed._cancelled()
        for slot, w in enumerate(s.who):
            if w is not None and w[0] in gone:
                s.who[slot], s.noise[slot] = None, None
                self.cancelled += 1

    def __iter__(self) -> Iterator[tuple[int, PEZResult]]:
        s, cfg = self.slots, self.cfg
        t_host = [0] * len(s.who)  # own steps per slot, known on the host without reading the device
        exhausted = False
        early = can_stop_early(cfg)
        occupied: list[int] = []
        while True:
            if self.feed is not None:
                self._free_cancelled()
            started = []
            for slot in range(len(s.who)):  # refill free slots from the queue
                if s.who[slot] is None and not exhausted:
                    # wait for a live feed only when the batch is empty: else run the next step now
                    nxt = self._next(wait=all(w is None for w in s.who))
                    if nxt is None:
                        exhausted = True
                    elif nxt is not _NOTHING_NOW:
                        s.load(slot, *nxt)
                        t_host[slot] = 0
                        started.append(nxt[0])
            now = [i for i, w in enumerate(s.who) if w is not None]
            if not now:
                if exhausted:
                    return
                continue  # everything queued was cancelled before it ran: wait again
            if started and self.on_start is not None:
                self.on_start(started, len(now))
            if now != occupied:  # a new index tensor only when the occupied slots change
                occupied, active = now, torch.tensor(now, device=s.prompts.device)
            check = early or any(t_host[i] + 1 >= cfg.steps for i in occupied)
            sim, own = s.step(active, check)
            for i in occupied:
                t_host[i] += 1
            self.global_steps += 1
            self.slot_steps += len(occupied)
            if self.trace is not None:
                self.trace([s.who[i][0] for i in occupied], own, sim)
            if self.on_step is not None:
                self.on_step(self.global_steps - 1, len(occupied))
            at_budget = any(t_host[i] >= cfg.steps for i in occupied)
            if at_budget or (early and self.global_steps % self.sync_every == 0):
                done = s.done[active].tolist()  # the one device-to-host read
                stopped_now = [i for i, d in zip(occupied, done) if d]
                s.polish(stopped_now)
                for i in stopped_now:
                    yield s.finish(i, int(s.stop_t[i]))


def invert_stream(
    clip: ClipModel,
    targets: Iterable[Target],
    config: PEZConfig | None = None,
    slots: int = 32,
    vocab: Vocabulary | None = None,
    on_step: Callable[[int, int], None] | None = None,
    trace: Callable[[list[int], torch.Tensor, torch.Tensor], None] | None = None,
    sync_every: int | None = None,
    on_start: Callable[[list[int], int], None] | None = None,
) -> Stream:
    """Optimise one hard prompt per target of ``targets`` (any iterable, read lazily as slots free up, or a
    live :class:`TargetFeed`), at most ``slots`` at a time; iterate the returned :class:`Stream` for
    ``(index, PEZResult)``.

    ``on_step(step, occupied)`` is called after every batch step; ``trace(indices, own_steps, cosines)``
    gets every occupied slot's target index, own 0-based step and loop cosine (for benchmarks).
    ``sync_every``: batch steps between reads of which targets stopped (default 1 on CPU, 8 on a GPU);
    it changes only how soon a slot is refilled, never a result. ``on_start(indices, occupied)`` is called
    before a step in which targets start: their indices and the occupied slots in that step."""
    return Stream(clip, targets, config or PEZConfig(), slots, vocab, on_step, trace, sync_every, on_start)
