"""The best PPO policy of a run by held-out reward, kept in ``OUTPUT/best/`` while training runs.

Ray's checkpoints rotate (``--keep-checkpoints``), so the best model cannot live in one of them: rank 0
writes it straight to the output folder (local or S3) whenever a held-out evaluation beats the best so
far. The model files are written first and ``best.json`` last, so ``best.json`` marks a complete copy and
tells a resumed attempt the reward to beat. ``Rewriter.from_pretrained(OUTPUT)`` (and so
``promptmine serve --rewrite-model OUTPUT``) loads ``OUTPUT/best`` when it exists, else ``OUTPUT/model``.
"""

from __future__ import annotations

import json
import logging
import tempfile
from pathlib import Path

from pipelines.io.storage import StorageOptions

log = logging.getLogger(__name__)

BEST_DIR, BEST_FILE = "best", "best.json"  # OUTPUT/best/best.json: {"eval_reward", "step", "updates"}


def read_best(output: str, options: StorageOptions) -> float | None:
    """The held-out reward of OUTPUT/best from an earlier attempt of this run (None when there is none)."""
    loc = options.resolve(output).child(BEST_DIR, BEST_FILE)
    if not loc.exists():
        return None
    return float(json.loads(loc.read_bytes())["eval_reward"])


def save_best(output: str, options: StorageOptions, policy, tokenizer, eval_reward: float, step: int,
              updates: int) -> None:
    """Write the policy (LM, value head, tokenizer) to OUTPUT/best, then best.json."""
    from pez_core.rewrite.ppo import unwrap

    out = options.resolve(output).child(BEST_DIR)
    with tempfile.TemporaryDirectory(prefix="promptmine-best-") as d:
        unwrap(policy).save_pretrained(d)
        tokenizer.save_pretrained(d)
        for path in sorted(Path(d).rglob("*")):
            if path.is_file():
                out.child(str(path.relative_to(d))).write_bytes(path.read_bytes())
    out.child(BEST_FILE).write_text(json.dumps({"eval_reward": eval_reward, "step": step, "updates": updates}))
    log.info("new best held-out reward %.4f after %d updates: saved to %s", eval_reward, updates, out.uri)


def fetch_model(uri: str, options: StorageOptions | None = None) -> str:
    """A local copy of the model at an ``s3://`` URI, for serving: the training output's ``best/`` when
    it has one, else its ``model/``, else the folder itself (a plain saved model)."""
    options = options or StorageOptions.from_env(forward_credentials=False)
    root = options.resolve(uri)
    for loc in (root.child(BEST_DIR), root.child("model"), root):
        if loc.child("config.json").exists():
            break
    else:
        raise FileNotFoundError(f"{uri}: no config.json there, nor in best/ or model/ (not a saved model)")
    folder = Path(tempfile.mkdtemp(prefix="promptmine-model-"))
    for path, _ in loc.list_files():
        target = folder / path.relative_to(loc)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(path.read_bytes())
    log.info("copied %s to %s", loc.uri, folder)
    return str(folder)
