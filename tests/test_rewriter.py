"""Rewriter: templates, batched generation equal to one-at-a-time, exact decoding, clear errors.

Models are tiny BLOOM / GPT-2 folders built offline and loaded with from_pretrained(path). The
transformers default init (std 0.02) makes every prompt continue with the same token, which would make
"batched equals single" trivially true, so the comparison models use std 1.0: greedy text then depends
on the prompt (and the right-padding control below shows the comparison can fail).
"""

import pytest
import torch

from pez_core.rewrite.rewriter import GenerationConfig, PromptError, Rewriter
from pez_core.rewrite.templates import TEMPLATES, format_prompt, sft_texts
from pez_core.rewrite.tiny import build_tiny_lm

PROMPTS = [
    "a cat",
    "a castle on a hill at sunset, highly detailed",
    "dog",
    "an old man in the rain by the river with a hat and a very long coat",
    "a robot",
    "x",
    "a dragon over a city at night",
]


@pytest.fixture(scope="module", params=["bloom", "gpt2"])
def varied_lm_dir(request, tmp_path_factory):
    return build_tiny_lm(tmp_path_factory.mktemp(f"varied_{request.param}"), arch=request.param, seed=1,
                         init_std=1.0)


def reference_greedy(model, tok, raw: str, max_new_tokens: int, template: str = "v1") -> str:
    """One prompt, no padding, plain HF generate, decode the new ids: what batching must reproduce."""
    ids = tok(format_prompt(raw, template), return_tensors="pt")["input_ids"]
    with torch.no_grad():
        out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens,
                             do_sample=False, pad_token_id=tok.pad_token_id)
    return tok.decode(out[0, ids.shape[1]:], skip_special_tokens=True).strip()


# --- templates --------------------------------------------------------------------------------------

def test_v1_template_is_the_papers_and_ends_where_the_completion_starts():
    assert format_prompt("a cat") == (
        "Instruction: Give a simple description of the image to generate a drawing prompt.\n"
        "Input: a cat\nOutput:"
    )
    v2 = format_prompt("a cat", "v2")
    assert v2.endswith("### Input: a cat\n### Output:") and len(v2) > len(format_prompt("a cat"))
    # SFT: one space after "Output:", then the target; surrounding whitespace of the input is dropped,
    # inner line breaks (the template's field separator) become spaces.
    context, completion = sft_texts("  a\ncat ", "a cat, highly detailed")
    assert context.endswith("Input: a cat\nOutput:") and completion == " a cat, highly detailed"


@pytest.mark.parametrize("raw, version, match", [
    ("a cat", "v3", "unknown template version 'v3'; valid versions: v1, v2"),
    ("", "v1", "empty prompt"),
    ("  \n ", "v1", "only whitespace"),
    ("a" * 1001, "v1", "1001 characters, more than the maximum 1000"),
])
def test_format_prompt_rejects_bad_input_clearly(raw, version, match):
    with pytest.raises(ValueError, match=match):
        format_prompt(raw, version)


def test_every_template_has_one_slot():
    for t in TEMPLATES.values():
        assert "{raw_prompt}" not in format_prompt("z", t.name) and "z" in format_prompt("z", t.name)


# --- batched generation -----------------------------------------------------------------------------

def test_loads_bloom_from_a_folder(tiny_lm_dir):
    rw = Rewriter.from_pretrained(tiny_lm_dir)
    assert type(rw.model).__name__ == "BloomForCausalLM" and rw.template == "v1"
    assert rw.tokenizer.padding_side == "left" and rw.device.type == "cpu"


def test_batched_greedy_equals_one_at_a_time(varied_lm_dir):
    rw = Rewriter.from_pretrained(varied_lm_dir)
    # batch 3 over 7 prompts of different lengths: sorting, several padded batches, order restored.
    batched = rw.rewrite(PROMPTS, max_new_tokens=12, batch_size=3)
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(varied_lm_dir)
    model = AutoModelForCausalLM.from_pretrained(varied_lm_dir).eval()
    singles = [reference_greedy(model, tok, p, 12) for p in PROMPTS]
    assert batched == singles
    assert len(set(singles)) >= 5, "the model must give prompt-dependent text for this test to mean anything"


def test_right_padding_would_break_the_batch(varied_lm_dir):
    """Control: the comparison above detects a padding bug (right padding without care)."""
    rw = Rewriter.from_pretrained(varied_lm_dir)
    singles = rw.rewrite(PROMPTS, max_new_tokens=8, batch_size=1)
    rw.tokenizer.padding_side = "right"
    texts = rw.format_all(PROMPTS, 8)
    enc = rw.tokenizer(texts, return_tensors="pt", padding=True)
    with torch.no_grad():
        out = rw.model.generate(**enc, max_new_tokens=8, do_sample=False, pad_token_id=rw.tokenizer.pad_token_id)
    wrong = [rw.decode(row) for row in out[:, enc["input_ids"].shape[1]:].tolist()]
    assert wrong != singles


def test_beam_and_sampling_options_reach_generate(varied_lm_dir):
    rw = Rewriter.from_pretrained(varied_lm_dir)
    greedy = rw.rewrite(PROMPTS[:4], max_new_tokens=10)
    # top_k=1 sampling is greedy whatever the seed.
    assert rw.rewrite(PROMPTS[:4], max_new_tokens=10, mode="sample", top_k=1, seed=5) == greedy
    a = rw.rewrite(PROMPTS[:4], max_new_tokens=10, mode="sample", seed=1)
    assert a == rw.rewrite(PROMPTS[:4], max_new_tokens=10, mode="sample", seed=1)
    assert a != rw.rewrite(PROMPTS[:4], max_new_tokens=10, mode="sample", seed=2)
    assert a != greedy
    # beam search: batched equals one prompt at a time, and never scores below greedy's sequence.
    beam = rw.rewrite(PROMPTS[:4], max_new_tokens=6, mode="beam", num_beams=3)
    assert beam == [rw.rewrite([p], max_new_tokens=6, mode="beam", num_beams=3)[0] for p in PROMPTS[:4]]
    assert beam != rw.rewrite(PROMPTS[:4], max_new_tokens=6)


def test_token_counts_for_throughput(varied_lm_dir):
    rw = Rewriter.from_pretrained(varied_lm_dir)
    res = rw.rewrite_detailed(PROMPTS[:3], max_new_tokens=9, min_new_tokens=9)
    assert [r.prompt_tokens for r in res] == rw.count_tokens([format_prompt(p) for p in PROMPTS[:3]])
    assert [r.prompt_tokens for r in res] == [len(rw.tokenizer(format_prompt(p))["input_ids"]) for p in PROMPTS[:3]]
    assert [r.new_tokens for r in res] == [9, 9, 9]  # EOS suppressed: every row generates exactly 9
    assert [r.raw_prompt for r in res] == PROMPTS[:3]


# --- exact decoding ---------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def hats_lm_dir(tmp_path_factory):
    """A tiny BLOOM fine-tuned until it answers every prompt with ' red hats' + EOS."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = build_tiny_lm(tmp_path_factory.mktemp("hats"), arch="bloom", seed=0)
    tok = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder)
    rows = []
    for raw in ("a cat", "a castle", "dog", "a robot in the rain"):
        context, completion = sft_texts(raw, "red hats")
        c = tok(context, add_special_tokens=False)["input_ids"]
        t = tok(completion, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
        rows.append((torch.tensor([c + t]), torch.tensor([[-100] * len(c) + t])))
    torch.manual_seed(0)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for step in range(60):
        ids, labels = rows[step % len(rows)]
        model(input_ids=ids, labels=labels).loss.backward()
        opt.step()
        opt.zero_grad()
    model.save_pretrained(folder)
    return folder


def test_completion_ending_in_s_keeps_its_s(hats_lm_dir):
    rw = Rewriter.from_pretrained(hats_lm_dir)
    res = rw.rewrite_detailed(["a cat", "a castle", "a robot in the rain"], max_new_tokens=20)
    assert [r.text for r in res] == ["red hats"] * 3
    # ' red hats' + EOS, counted up to the EOS: generation stopped there.
    n = len(rw.tokenizer(" red hats", add_special_tokens=False)["input_ids"]) + 1
    assert [r.new_tokens for r in res] == [n] * 3
    # the public code's decoding would have eaten the "s":
    assert rw.tokenizer.decode(rw.tokenizer(" red hats</s>")["input_ids"]).strip().strip("</s>") == "red hat"


def test_text_is_exactly_the_decoded_new_ids(hats_lm_dir):
    rw = Rewriter.from_pretrained(hats_lm_dir)
    eos, pad = rw.tokenizer.eos_token_id, rw.tokenizer.pad_token_id
    body = rw.tokenizer("  ends with s </s>", add_special_tokens=False)["input_ids"]
    assert rw.decode(body + [eos, pad, pad]) == rw.tokenizer.decode(body, skip_special_tokens=True).strip()
    assert rw.decode(body + [eos]) == "ends with s"


# --- errors -----------------------------------------------------------------------------------------

def test_bad_inputs_are_named_by_index(tiny_lm_dir):
    rw = Rewriter.from_pretrained(tiny_lm_dir)
    with pytest.raises(PromptError, match=r"prompts\[2\]: empty prompt") as e:
        rw.rewrite(["a cat", "a dog", ""], max_new_tokens=2)
    assert e.value.index == 2
    with pytest.raises(PromptError, match=r"prompts\[1\]: prompt has 1200 characters"):
        rw.rewrite(["a cat", "b" * 1200], max_new_tokens=2)
    with pytest.raises(PromptError, match=r"prompts\[0\]: not a string but int"):
        rw.rewrite([3], max_new_tokens=2)
    with pytest.raises(TypeError, match="list of strings, not one string"):
        rw.rewrite("a cat")
    with pytest.raises(TypeError, match="unknown generation option"):
        rw.rewrite(["a cat"], max_tokens=3)
    # batch jobs ask for every reason at once and reject rows instead of failing
    assert rw.problems(["a cat", "", "b" * 1200, " "], 4) == [
        None, "empty prompt", "prompt has 1200 characters, more than the maximum 1000", "prompt is only whitespace"]


def test_prompt_plus_new_tokens_must_fit_gpt2_positions(tmp_path):
    folder = build_tiny_lm(tmp_path / "short_gpt2", arch="gpt2", max_positions=80)
    rw = Rewriter.from_pretrained(folder)
    room = 80 - rw.context_lengths([format_prompt("a cat")])[0]
    assert rw.rewrite(["a cat"], max_new_tokens=room)  # exactly fills the 80 positions
    with pytest.raises(PromptError, match=rf"prompts\[1\]: templated prompt has \d+ tokens; with "
                                          rf"max_new_tokens={room} it exceeds the model's 80 positions"):
        rw.rewrite(["a cat", "a castle on a hill"], max_new_tokens=room)
    assert rw.problems(["a cat", "a castle on a hill"], room)[0] is None


@pytest.mark.slow
def test_published_model_rewrites_a_prompt():
    """Real weights (network or HF cache): HF_HUB_OFFLINE=0 python -m pytest -m slow tests/test_rewriter.py"""
    rw = Rewriter.from_pretrained()  # alibaba-pai/pai-bloom-1b1-text2prompt-sd
    [out] = rw.rewrite(["a cat sitting on a sofa"], max_new_tokens=96)
    assert "cat" in out.lower() and "," in out and len(out) > len("a cat sitting on a sofa")


@pytest.mark.parametrize("kwargs, match", [
    (dict(mode="nucleus"), "mode 'nucleus' is unknown; valid modes: greedy, sample, beam"),
    (dict(max_new_tokens=0), "max_new_tokens must be a positive integer"),
    (dict(top_p=0.0), "top_p must be in"),
    (dict(temperature=0), "temperature must be > 0"),
    (dict(mode="beam", num_beams=1), "num_beams must be an integer >= 2"),
    (dict(min_new_tokens=9, max_new_tokens=4), "min_new_tokens must be in"),
])
def test_generation_config_validates(kwargs, match):
    with pytest.raises(ValueError, match=match):
        GenerationConfig(**kwargs)


def test_load_errors_are_clear(tmp_path):
    with pytest.raises(FileNotFoundError, match="no config.json"):
        Rewriter.from_pretrained(str(tmp_path))
    with pytest.raises(ValueError, match="unknown template version 'v9'"):
        Rewriter.from_pretrained(str(tmp_path), template="v9")
    with pytest.raises(ValueError, match="cannot load causal LM 'nobody/no-such-model'"):
        Rewriter.from_pretrained("nobody/no-such-model")  # HF_HUB_OFFLINE=1: fails at once


def test_tokenizers_that_add_a_bos_get_it_as_in_sft(tmp_path):
    """Llama-style tokenizers prepend BOS; the rewriter encodes contexts as SFT does (tokenizer defaults)."""
    from tokenizers.processors import TemplateProcessing
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = build_tiny_lm(tmp_path / "bos", arch="bloom", seed=2, init_std=1.0)
    tok = AutoTokenizer.from_pretrained(folder)
    tok._tokenizer.post_processor = TemplateProcessing(single="<s> $A", special_tokens=[("<s>", tok.bos_token_id)])
    model = AutoModelForCausalLM.from_pretrained(folder)
    rw = Rewriter(model, tok)
    res = rw.rewrite_detailed(PROMPTS[:3], max_new_tokens=8)
    assert [r.prompt_tokens for r in res] == [n + 1 for n in rw.count_tokens([format_prompt(p) for p in PROMPTS[:3]])]
    assert [r.text for r in res] == [reference_greedy(model, tok, p, 8) for p in PROMPTS[:3]]
