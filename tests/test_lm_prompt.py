"""Hard prompts for LM classifiers (the PEZ paper's section 5), on a task where the right prompt matters.

Two tiny GPT-2s (same tokenizer, different seeds) are trained here on world-like lines in which a task
word decides the answer: "family : a red star = warm" (the colour's family) and "invert : a red star =
cool" (the opposite), and, without a task word, the opposite too. Asked "a red star =" with no prompt,
an LM answers wrong; a prompt that says "family" makes it right.
"""

import json
import random

import pytest
import torch

from pez_core.lm_prompt import LMClassifier, LMPromptConfig, learn_lm_prompt, verbalizer_ids

WARM, COOL = ("red", "orange"), ("blue", "green")
SHAPES = ("star", "circle", "square", "heart", "cross", "diamond")
FILLERS = ("the", "so", "now", "please", "then")
VERBALIZERS = {"warm": "warm", "cool": "cool"}


def _example(rng):
    colour = rng.choice(WARM + COOL)
    return f"a {colour} {rng.choice(SHAPES)}", "warm" if colour in WARM else "cool"


def _lines(n, seed):
    rng, out = random.Random(seed), []
    for _ in range(n):
        text, family = _example(rng)
        other = "cool" if family == "warm" else "warm"
        prefix = " ".join(rng.sample(FILLERS, rng.randint(0, 3)))
        task = rng.random()
        if task < 0.5:
            line = f"family : {text} = {family}"
        elif task < 0.75:
            line = f"invert : {text} = {other}"
        else:  # unprompted, the answer is the opposite: only a prompt that says "family" helps
            line = f"{text} = {other}"
        out.append(f"{prefix} {line}".strip())
    return out


def _train_lm(folder, seed):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from pez_core.rewrite.tiny import build_tiny_lm

    corpus = _lines(3000, seed=100 + seed)
    build_tiny_lm(folder, arch="gpt2", seed=seed, vocab_size=600, corpus=_lines(500, seed=1), max_positions=32)
    tok = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder)
    torch.manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    ids = [tok.encode(" " + line, add_special_tokens=False) for line in corpus]
    model.train()
    for step in range(800):
        batch = [ids[(step * 64 + i) % len(ids)] for i in range(64)]
        width = max(map(len, batch))
        x = torch.full((64, width), tok.pad_token_id)
        mask = torch.zeros(64, width, dtype=torch.long)
        labels = torch.full((64, width), -100)
        for i, b in enumerate(batch):  # the loss on the answer and the task word: what the task is about
            x[i, :len(b)], mask[i, :len(b)] = torch.tensor(b), 1
            labels[i, len(b) - 1] = b[-1]
        loss = model(input_ids=x, attention_mask=mask, labels=labels).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
        if step % 200 == 0:
            print("lm loss", step, float(loss.detach()))
    model.eval().save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def lms(tmp_path_factory, one_torch_thread_module):
    return [_train_lm(tmp_path_factory.mktemp(f"lm{s}"), seed=s) for s in (0, 1)]


def _data(n, seed):
    rng = random.Random(seed)
    return [list(x) for x in zip(*(_example(rng) for _ in range(n)))]


def _load(folder):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    return AutoModelForCausalLM.from_pretrained(folder), AutoTokenizer.from_pretrained(folder)


def test_learned_prompt_beats_no_prompt_and_transfers(lms):
    """Catches: the gradient not reaching the prompt, the projection skipped (ids never change), or the
    kept prompt not the best one: the learned prompt would then be no better than a random one."""
    model, tok = _load(lms[0])
    texts, labels = _data(200, seed=5)
    held_texts, held_labels = _data(200, seed=6)
    clf = LMClassifier(model, tok, VERBALIZERS, suffix=" =")
    no_prompt = clf.accuracy(None, held_texts, held_labels)
    rng = torch.Generator().manual_seed(3)
    random_prompt = clf.accuracy(torch.randint(5, len(tok), (4,), generator=rng).tolist(), held_texts, held_labels)
    result = learn_lm_prompt(model, tok, texts, labels, VERBALIZERS,
                             LMPromptConfig(prompt_len=4, steps=80, suffix=" =", lr=0.3, eval_every=5))
    learned = clf.accuracy(result.token_ids, held_texts, held_labels)
    assert learned >= no_prompt + 0.2 and learned >= random_prompt + 0.2, (learned, no_prompt, random_prompt, result)
    other, _ = _load(lms[1])
    clf2 = LMClassifier(other, tok, VERBALIZERS, suffix=" =")
    transfer, transfer_none = (clf2.accuracy(ids, held_texts, held_labels) for ids in (result.token_ids, None))
    assert transfer > transfer_none
    print(f"prompt {result.text!r}: held-out accuracy {learned} (no prompt {no_prompt}, random prompt "
          f"{random_prompt}); on the second LM {transfer} (no prompt {transfer_none})")  # shown with pytest -s


def test_fluency_term_lowers_the_prompt_nll(lms):
    """Catches: the fluency term not in the loss (its weight would change nothing)."""
    model, tok = _load(lms[0])
    texts, labels = _data(100, seed=7)
    clf = LMClassifier(model, tok, VERBALIZERS, suffix=" =")
    nll = {}
    for lam in (0.0, 3.0):
        r = learn_lm_prompt(model, tok, texts, labels, VERBALIZERS,
                            LMPromptConfig(prompt_len=4, steps=40, suffix=" =", lr=0.3, fluency=lam, seed=1))
        ids = torch.tensor(r.token_ids)
        nll[lam] = float(clf.prompt_nll(clf.table[ids], ids))
    assert nll[3.0] < nll[0.0]


def test_bad_inputs_are_clear_errors(lms):
    model, tok = _load(lms[0])
    with pytest.raises(ValueError, match="verbalizer warm='warm blooded' is"):
        verbalizer_ids(tok, {"warm": "warm blooded", "cool": "cool"})
    with pytest.raises(ValueError, match="labels without a verbalizer: hot"):
        learn_lm_prompt(model, tok, ["a red star"], ["hot"], VERBALIZERS, LMPromptConfig(steps=1))
    with pytest.raises(ValueError, match="optimizer must be adamw or adafactor"):
        LMPromptConfig(optimizer="sgd")


def test_cli_learns_reports_and_transfers(lms, tmp_path, capsys):
    import pandas as pd

    from pipelines.cli import main

    texts, labels = _data(120, seed=8)
    pd.DataFrame({"text": texts, "label": labels}).to_parquet(tmp_path / "train.parquet")
    held_texts, held_labels = _data(100, seed=9)
    pd.DataFrame({"text": held_texts, "label": held_labels}).to_parquet(tmp_path / "held.parquet")
    assert main(["lm-prompt", "--model", str(lms[0]), "--data", str(tmp_path / "train.parquet"),
                 "--eval-data", str(tmp_path / "held.parquet"), "--verbalizer", "warm=warm",
                 "--verbalizer", "cool=cool", "--suffix", " =", "--prompt-len", "4", "--steps", "40",
                 "--lr", "0.3", "--transfer-model", str(lms[1]), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert set(out) >= {"prompt", "token_ids", "accuracy", "transfer"}
    assert set(out["accuracy"]) == {"no_prompt", "prompt"} and 0 <= out["accuracy"]["prompt"] <= 1
    assert set(out["transfer"]) == {"model", "no_prompt", "prompt"}
    assert main(["lm-prompt", "--model", str(lms[0]), "--data", str(tmp_path / "train.parquet"),
                 "--verbalizer", "warm"]) == 2
    assert "--verbalizer warm: expected LABEL=WORD" in capsys.readouterr().err
