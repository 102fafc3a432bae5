"""Ban-lists mean whole words (substrings on request) and the keyword bank reports what it cannot keep."""

import json
import random
import re

import pytest

from pez_core import PEZConfig, Vocabulary, image_target, invert
from pez_core.projection import ban_words

# ~50 words: short ones that hide inside many others (cat, art, on, red), ones in any case or with spaces,
# ones CLIP reads as several tokens (photorealistic), and ones no token spells (qqxz).
WORDS = ["cat", "art", "on", "red", "sky", "dog", "man", "war", "gun", "sex", "nude", "blood", "kill", "ass", "hat",
         "eye", "sun", "ice", "age", "ant", "bee", "car", "cow", "fox", "owl", "pig", "rat", "tea", "toy", "van",
         "ink", "oil", "gold", "fire", "rose", "moon", "star", "tree", "bird", "fish", "girl", "boy", "king",
         " Queen ", "CASTLE", "Paint", "photorealistic", "trending", "qqxz", "4k", "in"]


def word_of(tok, i: int) -> str:
    """A token's word straight from the BPE table: its piece without '</w>', bytes decoded, lower, stripped."""
    piece = tok.decoder[i]
    raw = bytearray(tok.byte_decoder[c] for c in piece.removesuffix("</w>"))
    return raw.decode("utf-8", errors="replace").strip().lower()


def removed(clip, **kw) -> set[int]:
    safe = kw.pop("safe", True)
    return set(Vocabulary(clip, safe=safe).ids.tolist()) - set(Vocabulary(clip, safe=safe, **kw).ids.tolist())


def test_whole_word_bans_remove_exactly_the_tokens_of_those_words(tiny_clip):
    tok = tiny_clip.tokenizer
    banned = {w.strip().lower() for w in WORDS}
    full = Vocabulary(tiny_clip).ids.tolist()
    expected = {i for i in full if word_of(tok, i) in banned}
    assert removed(tiny_clip, ban=WORDS) == expected
    assert 40 <= len(expected) <= len(WORDS)  # one token per word that is a token, and no other
    # the conservative mode removes every token containing one of them
    substring = removed(tiny_clip, ban_substring=WORDS)
    assert substring == {i for i in full if any(w in word_of(tok, i) for w in banned)}
    assert len(substring) > 20 * len(expected)


def test_banning_cat_keeps_education_and_cats_in_any_case_or_spacing(tiny_clip):
    tok = tiny_clip.tokenizer
    for spelling in ["cat", "CAT", " Cat ", "cat,"]:
        assert removed(tiny_clip, ban=[spelling]) == {tok.encoder["cat</w>"]}
    kept = set(Vocabulary(tiny_clip, ban=["cat"]).ids.tolist())
    assert {tok.encoder[w + "</w>"] for w in ("education", "cats", "location", "vacation")} <= kept
    assert len(removed(tiny_clip, ban_substring=[" Cat "])) == 126  # today's count in the conservative mode
    assert ban_words(["Cat,", " DOG ", "red sky", "!!"]) == ["cat", "dog", "red", "sky", "!!"]


def _letter_runs(text: str) -> list[str]:
    return re.findall(r"[^\W\d_]+", text.lower())


@pytest.mark.parametrize("word", ["cat", "art", "sky"])
def test_all_tokens_mode_cannot_spell_a_banned_word_from_pieces(tiny_clip, word):
    """Outside the safe vocabulary sub-word pieces glue: 'ca' + 't' decodes as 'cat'. Random sequences of
    the pieces that could spell the word (and its neighbours) never show it, as a word or as a substring."""
    tok = tiny_clip.tokenizer
    near = f"{word} {word}s bob{word} {word}alog s{word} {word}tle"
    pool_whole = [i for i in Vocabulary(tiny_clip, safe=False).ids.tolist() if word_of(tok, i) and word_of(tok, i) in near]
    for mode, check in [("ban", lambda t: word not in _letter_runs(t)), ("ban_substring", lambda t: word not in t)]:
        ids = set(Vocabulary(tiny_clip, safe=False, **{mode: [word]}).ids.tolist())
        pool = [i for i in pool_whole if i in ids]
        rng = random.Random(0)
        for _ in range(3000):
            seq = [rng.choice(pool) for _ in range(rng.randint(1, 4))]
            text = tiny_clip.decode(seq)
            assert check(text), (mode, [tok.decoder[i] for i in seq], text)
    # whole-word mode removes only pieces that could start the word (in either case: 'C' + 'at' shows 'Cat')
    pieces = removed(tiny_clip, safe=False, ban=[word])
    assert {word_of(tok, i) for i in pieces} == {word[:k] for k in range(1, len(word) + 1)}
    assert len(pieces) <= 2 * len(word) + 2


def test_bank_reports_fragments_and_missing_words(tiny_clip):
    tok = tiny_clip.tokenizer
    bank = ["painting", "oil painting", "photorealistic", "4k", "sunset", "qqxz"]
    vocab = Vocabulary(tiny_clip, allow=bank, ban=["sunset"])
    assert vocab.bank_report == {"photorealistic": ["realistic"], "sunset": [],
                                 "qqxz": [word_of(tok, i) for i in tok.encode("qqxz") if i in set(vocab.ids.tolist())]}
    assert {tiny_clip.decode([i]) for i in vocab.ids.tolist()} >= {"painting", "oil", "realistic", "4", "k"}
    # with the whole vocabulary the pieces survive, but still only as pieces
    assert Vocabulary(tiny_clip, safe=False, allow=["photorealistic"]).bank_report == {
        "photorealistic": ["photo", "realistic"]}


def test_cli_warns_of_the_bank_report_and_puts_it_in_the_json(tmp_path, capsys, caplog, tiny_clip_dir):
    from pipelines.cli import main
    from pipelines.io.samples import write_sample_images

    [image] = write_sample_images(tmp_path / "imgs", 1)
    bank = tmp_path / "bank.txt"
    bank.write_text("painting\nphotorealistic\nsunset\n")
    args = ["invert", str(image), "--model", str(tiny_clip_dir), "--steps", "5", "--prompt-len", "4",
            "--allow-file", str(bank), "--ban", "Sunset"]
    assert main([*args, "--json"]) == 0
    [row] = json.loads(capsys.readouterr().out)
    assert row["bank"] == {"photorealistic": ["realistic"], "sunset": []}
    assert "2 of 3 entries only as fragments or not at all: photorealistic -> only 'realistic'; sunset -> no token" \
        in caplog.text
    assert set(row["prompt"].split()) <= {"painting", "realistic"}


def test_invert_with_substring_and_word_bans_through_the_config(tiny_clip, sample_images):
    targets = [image_target(tiny_clip, [im]) for im in sample_images[:2]]
    free = invert(tiny_clip, targets, PEZConfig(prompt_len=8, steps=15))
    words = tuple({w for r in free for w in r.text.split()})
    for r in invert(tiny_clip, targets, PEZConfig(prompt_len=8, steps=15, ban=tuple(w.upper() for w in words))):
        assert not set(words) & set(r.text.split())
    cfg = PEZConfig(prompt_len=8, steps=15, ban_substring=words[:3])
    assert Vocabulary.from_config(tiny_clip, cfg).banned_substrings == list(words[:3])
