"""Candidate tokens and the nearest-vocabulary projection."""

import pytest
import torch

from pez_core import Vocabulary
from pez_core.projection import PAD_ID, nearest_ids_bruteforce


def _queries(clip, seed=0, b=8, n=16):
    gen = torch.Generator().manual_seed(seed)
    table = clip.token_embedding
    near = table[torch.randint(0, table.shape[0], (b // 2, n), generator=gen)]
    near = near + 0.3 * table.std() * torch.randn(near.shape, generator=gen)
    far = torch.randn((b - b // 2, n, table.shape[1]), generator=gen) * table.std()
    return torch.cat([near, far])


@pytest.mark.parametrize("mode", ["exact", "fast"])
def test_projection_equals_bruteforce_nearest_neighbour(tiny_clip, mode):
    vocab = Vocabulary(tiny_clip, projection=mode)
    for seed in range(3):
        q = _queries(tiny_clip, seed)
        want = nearest_ids_bruteforce(q, tiny_clip.token_embedding[vocab.ids], vocab.ids)
        assert torch.equal(vocab.project(q), want)


@pytest.mark.parametrize("mode", ["exact", "fast"])
def test_tied_rows_are_searched_once_and_the_tied_word_stands_for_them(tiny_clip_dir, tmp_path, mode):
    """A world CLIP ties every token it never trained to one row ("unknown"): the projection searches each
    distinct row once, returns the rows brute force finds, and names a tied row by the tied word (saved
    with the CLIP), or else by its lowest id. Fails if tied tokens stay separate candidates (the count),
    if the representative is any other member, or if the tied word is lost on the way through disk."""
    from pez_core import load_clip, save_clip
    from pez_core.presets import TINY_MODEL

    clip = load_clip(str(tiny_clip_dir), device="cpu")  # a private copy: its rows are edited below
    tok = clip.tokenizer
    known = [tok.encode(w)[0] for w in ("sunset", "forest", "red", "circle", "dog")]
    [unknown] = tok.encode("unknown")
    emb = clip.model.token_embedding.weight
    others = torch.ones(emb.shape[0], dtype=torch.bool)
    others[known] = False
    emb[others] = emb[unknown].clone()  # the special tokens too: never candidates anyway
    clip.tied_word = "unknown"
    clip = load_clip(str(save_clip(clip, tmp_path / "tied", TINY_MODEL)), device="cpu")
    assert clip.tied_word == "unknown"

    vocab = Vocabulary(clip, projection=mode)
    assert len(vocab.stands_for) == len(known) + 1
    q = torch.cat([_queries(clip, seed) for seed in range(3)])
    got = vocab.project(q)
    want = nearest_ids_bruteforce(q, clip.token_embedding[vocab.ids], vocab.ids)
    assert torch.equal(clip.token_embedding[got], clip.token_embedding[want])
    assert set(got.unique().tolist()) <= set(known) | {unknown}
    assert (got == unknown).any() and set(known) & set(got.unique().tolist())

    clip.tied_word = None
    lowest = min(i for i in vocab.ids.tolist() if i not in known)
    assert (Vocabulary(clip, projection=mode).project(q) == torch.where(got == unknown, lowest, got)).all()


def test_special_tokens_are_never_candidates(tiny_clip):
    for safe in (True, False):
        ids = set(Vocabulary(tiny_clip, safe=safe).ids.tolist())
        assert not ids & {tiny_clip.sot_id, tiny_clip.eot_id, PAD_ID}
    # projecting the start token's own embedding must not return it
    start = tiny_clip.token_embedding[tiny_clip.sot_id].reshape(1, 1, -1)
    assert Vocabulary(tiny_clip, safe=False).project(start).item() != tiny_clip.sot_id


def test_safe_vocabulary_round_trips_random_prompts(tiny_clip):
    vocab = Vocabulary(tiny_clip)
    gen = torch.Generator().manual_seed(0)
    failures = 0
    for _ in range(3000):
        ids = vocab.random_ids(16, gen).tolist()
        failures += tiny_clip.tokenize(tiny_clip.decode(ids)) != ids
    assert failures == 0


def test_whole_vocabulary_does_not_round_trip(tiny_clip):
    """The reason the safe set exists: the authors' unrestricted vocabulary often breaks."""
    vocab = Vocabulary(tiny_clip, safe=False)
    gen = torch.Generator().manual_seed(0)
    same = sum(tiny_clip.tokenize(tiny_clip.decode(ids)) == ids
               for ids in (vocab.random_ids(16, gen).tolist() for _ in range(300)))
    assert same < 150


def test_ban_list_excludes_every_token_containing_a_banned_substring(tiny_clip):
    vocab = Vocabulary(tiny_clip, ban_substring=["Cat", "red sky"])
    texts = [tiny_clip.decode([i]).lower() for i in vocab.ids.tolist()]
    assert not any("cat" in t or "red" in t or "sky" in t for t in texts)
    # and nothing else was removed
    full = Vocabulary(tiny_clip)
    removed = set(full.ids.tolist()) - set(vocab.ids.tolist())
    assert all(any(w in tiny_clip.decode([i]).lower() for w in ("cat", "red", "sky")) for i in removed)
    assert len(removed) > 50


def test_allow_list_restricts_candidates_to_its_words(tiny_clip):
    words = ["painting", "oil", "sunset", "portrait", "cyberpunk"]
    vocab = Vocabulary(tiny_clip, allow=words)
    allowed = {i for w in words for i in tiny_clip.tokenize(w)}
    assert set(vocab.ids.tolist()) <= allowed
    assert {tiny_clip.decode([i]) for i in vocab.ids.tolist()} >= {"painting", "oil", "sunset", "portrait"}


def test_no_candidates_left_is_a_clear_error(tiny_clip):
    with pytest.raises(ValueError, match="no candidate tokens"):
        Vocabulary(tiny_clip, allow=["cat"], ban=["cat"])


def test_unknown_projection_mode(tiny_clip):
    with pytest.raises(ValueError, match="projection"):
        Vocabulary(tiny_clip, projection="approx")


def test_fast_projection_with_fewer_candidates_than_the_rerank_width(tiny_clip):
    vocab = Vocabulary(tiny_clip, allow=["sunset", "forest", "red"], projection="fast", rerank=8)
    assert len(vocab) == 3
    q = _queries(tiny_clip, 5, b=4, n=4)
    assert torch.equal(vocab.project(q), nearest_ids_bruteforce(q, tiny_clip.token_embedding[vocab.ids], vocab.ids))
