"""Default PEZ budgets per entry point: one table, each row with the reason it differs from the paper's.

``steps`` is the most a target runs: the default plateau rule (pez_core.stopping) stops most targets
sooner. Data only (no torch import), so command-line front ends and the Serve settings read it instantly.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Budget:
    steps: int  # the most optimisation steps per target (the stopping rule ends most sooner)
    prompt_len: int  # tokens in the hard prompt
    why: str  # why this entry point's default is what it is


PAPER = Budget(3000, 16, "the paper's setting (Algorithm 1: 3000 steps, 16 tokens)")

BUDGETS: dict[str, Budget] = {
    "invert": PAPER,
    "distill": Budget(3000, 8, "distillation wants a prompt shorter than its source; 8 tokens as in the paper's "
                               "distillation examples"),
    "mine": Budget(3000, 16, "the paper's budget as a cap: on the world CLIP the default stopping rule keeps "
                             "99.2% of the 3000-step mean cosine at a mean 1531 steps (README: When PEZ stops); "
                             "continuous batching keeps the batch full while targets stop"),
    "serve": Budget(200, 16, "an online request must answer in seconds; a client may ask for more steps "
                             "up to the server's max_steps"),
    "demo": Budget(60, 8, "the README's first command must finish in under a minute on 2 CPU cores"),
}
