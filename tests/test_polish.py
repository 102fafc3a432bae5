"""The polish after PEZ with the fluency prior (pez_core.polish): it raises the loop's own objective, keeps
to the run's candidate tokens, is batch-independent, runs inside invert / the CLI, and makes world prompts
more readable; and the text tidy that attaches punctuation (pez.tidy_punctuation)."""

import json

import pytest
import torch

from tests.fixtures_lm import one_torch_thread_module  # noqa: F401,F811
from tests.test_fluency import _world_targets

W = 0.03  # the world's default fluency


@pytest.fixture(scope="module")
def world(one_torch_thread_module):  # noqa: F811
    from pez_core import load_clip
    from pez_core.prompt_lm import PromptLM

    return load_clip("world", device="cpu"), PromptLM.load("world")


def _stack(targets):
    from pez_core.pez import stack_targets

    return stack_targets(targets, "cpu")


def _objective(clip, lm, ids, feats, weights, w=W):
    from pez_core.pez import similarity

    return similarity(clip.encode_ids(ids), feats, weights) - w * lm.nll(ids)


def test_polish_raises_the_objective_and_is_batch_independent(world):
    """Catches a polish that scores proposals by cosine alone or by NLL alone (either lowers the other term
    enough that the objective of some row falls), and one whose rows interact."""
    from pez_core import Vocabulary
    from pez_core.polish import polish

    clip, lm = world
    targets = _world_targets(clip, 6)
    feats, weights = _stack(targets)
    vocab = Vocabulary(clip)
    start = torch.stack([vocab.random_ids(8, torch.Generator().manual_seed(i)) for i in range(6)])
    before = _objective(clip, lm, start, feats, weights)
    out = polish(clip, lm, vocab, start, feats, weights, W, proposals=8, sweeps=3)
    after = _objective(clip, lm, out.ids, feats, weights)
    assert (after >= before - 1e-5).all(), (before, after)
    assert (after > before + 0.05).all() and all(m > 0 for m in out.moves), (before, after, out.moves)
    assert torch.allclose(out.cosine - W * out.nll, after, atol=1e-4)  # what it reports is the prompt's
    assert torch.allclose(out.nll, lm.nll(out.ids), atol=1e-4)
    for i in (0, 3):  # alone, a row reaches the same prompt
        alone = polish(clip, lm, vocab, start[i:i + 1], feats[i:i + 1], weights[i:i + 1], W, 8, 3)
        assert torch.equal(alone.ids[0], out.ids[i])
    with pytest.raises(ValueError, match="proposals >= 1"):
        polish(clip, lm, vocab, start, feats, weights, W, proposals=0)


def test_polish_proposes_only_the_runs_candidate_tokens(world):
    """Catches proposals taken from the whole LM vocabulary: the colour words and "a" are the LM's
    likeliest tokens in many places, and here they are banned or outside the bank."""
    from pez_core import PEZConfig, Vocabulary
    from pez_core.polish import polish

    clip, lm = world
    targets = _world_targets(clip, 6)
    feats, weights = _stack(targets)
    banned = ["red", "blue", "green", "a", "the", "background"]
    vocab = Vocabulary.from_config(clip, PEZConfig(ban=tuple(banned)))
    start = torch.stack([vocab.random_ids(8, torch.Generator().manual_seed(i)) for i in range(6)])
    out = polish(clip, lm, vocab, start, feats, weights, W, proposals=16, sweeps=2)
    words = {w for t in out.ids.tolist() for w in clip.decode(t).split()}
    assert not words & set(banned), words & set(banned)
    assert set(out.ids.flatten().tolist()) <= set(vocab.ids.tolist())
    bank = ["circle", "square", "star", "diamond", "large", "small", "striped", "blurry", ","]
    vocab = Vocabulary.from_config(clip, PEZConfig(allow=tuple(bank)))
    start = torch.stack([vocab.random_ids(6, torch.Generator().manual_seed(i)) for i in range(6)])
    out = polish(clip, lm, vocab, start, feats, weights, W, proposals=16, sweeps=2)
    assert {w.strip(",") for t in out.ids.tolist() for w in clip.decode(t).split()} - {""} <= set(bank)


def test_invert_polishes_with_the_fluency_prior_and_the_world_prompts_read_better(world):
    """Through invert: the polished run's objective is at least the unpolished one's for every target
    (same seeds, same loop), its reported cosine and NLL are its prompt's, and over the scenes its word
    bigrams occur more often in the world's captions. Catches the polish not being called (no
    polish_moves, equal prompts) and stale best cosines after it (the rescored cosine differs)."""
    from pez_core import PEZConfig, invert

    from pez_core.world.metrics import caption_bigrams, readability

    clip, lm = world
    targets = _world_targets(clip, 8)
    feats, weights = _stack(targets)
    common = dict(steps=60, prompt_len=10, early_stop=False, fluency=W, prompt_lm="world")
    raw = invert(clip, targets, PEZConfig(**common, polish_sweeps=0))
    polished = invert(clip, targets, PEZConfig(**common))
    ids = lambda rs: torch.tensor([r.token_ids for r in rs])  # noqa: E731
    o_raw, o_pol = (_objective(clip, lm, ids(rs), feats, weights) for rs in (raw, polished))
    assert (o_pol >= o_raw - 1e-4).all(), (o_raw, o_pol)
    assert sum(r.extra["polish_moves"] for r in polished) > 0 and "polish_moves" not in raw[0].extra
    for r, f, w in zip(polished, feats, weights):
        assert r.cosine == pytest.approx(float((f @ clip.encode_ids(torch.tensor([r.token_ids]))[0] * w).sum()), abs=1e-4)
        assert r.extra["nll"] == pytest.approx(float(lm.nll([r.token_ids])[0]), abs=1e-3)
        assert clip.tokenize(r.text) == r.token_ids  # the round trip holds with the tidied text
    language = caption_bigrams(4000)
    assert readability([r.text for r in polished], language) > readability([r.text for r in raw], language) + 0.05


def test_tidy_attaches_punctuation_only_when_the_round_trip_holds(world):
    """Catches a tidy that leaves "red , circle" as the decoder spells it or that touches a run of marks
    (",," is one token). The round-trip guard itself is defence only: under CLIP's pre-tokenizer a mark
    attached to a word is split off again, so no world text makes it refuse (removing it fails nothing)."""
    from pez_core.pez import tidy_punctuation

    clip, _ = world
    for text, want in [("red , circle , blue", "red, circle, blue"), ("a red circle .", "a red circle."),
                       ("hi ,, there", "hi ,, there"), ("( blue", "( blue")]:
        ids = clip.tokenize(text)
        got = tidy_punctuation(clip, clip.decode(ids), ids)
        assert got == want and clip.tokenize(got) == ids


def test_cli_polish_flag(world, tmp_path, capsys):
    from PIL import Image

    from pipelines.cli import main

    Image.new("RGB", (64, 64), (200, 30, 30)).save(tmp_path / "red.png")
    assert main(["invert", str(tmp_path / "red.png"), "--steps", "10", "--prompt-len", "4", "--json"]) == 0
    [row] = json.loads(capsys.readouterr().out)
    assert row["nll"] is not None and row.get("polish_moves") is not None  # world: fluency and polish on
    assert main(["invert", str(tmp_path / "red.png"), "--steps", "10", "--prompt-len", "4", "--json",
                 "--polish", "0"]) == 0
    [row] = json.loads(capsys.readouterr().out)
    assert row.get("polish_moves") is None
    assert main(["invert", str(tmp_path / "red.png"), "--steps", "2", "--polish", "-1"]) == 2
    assert "polish_sweeps must be >= 0" in capsys.readouterr().err
