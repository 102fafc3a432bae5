"""SFT: the loss mask covers exactly the completion, and training lowers the completion loss."""

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from pez_core.rewrite.optim import cosine_schedule, make_optimizer, seed_everything, train_step
from pez_core.rewrite.sft import IGNORE_INDEX, PadCollator, PairDataset, SFTConfig, encode_pair, evaluate_loss, sft_loss
from pez_core.rewrite.templates import format_prompt

PAIRS = [
    ("a cat", "a cat sitting on a windowsill, highly detailed, digital painting, artstation"),
    ("a dog in the rain", "a dog in the rain, cinematic lighting, sharp focus, 8k"),
    ("a castle", "a castle on a hill at sunset, matte painting, by greg rutkowski"),
    ("a robot", "a robot in a cyberpunk city at night, octane render, unreal engine"),
    ("a fox", "a fox in a misty forest, (intricate:1.2), elegant, illustration"),
    ("a ship", "a sailing ship under the sea, concept art, volumetric light, 4k"),
    ("an old man", "portrait of an old man, oil on canvas, masterpiece, best quality"),
    ("a dragon", "a dragon in space, trending on artstation, [smooth], photorealistic"),
]

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def tokenizer(tiny_lm_dir):
    return AutoTokenizer.from_pretrained(tiny_lm_dir)


def test_mask_covers_exactly_the_completion(tokenizer):
    raw, prompt = PAIRS[0]
    ex = encode_pair(tokenizer, raw, prompt)
    ids, labels = ex["input_ids"], ex["labels"]
    context = tokenizer(format_prompt(raw))["input_ids"]
    n_ctx = len(context)
    assert ids[:n_ctx] == context  # the model sees the same context as at generation time
    assert labels[:n_ctx] == [IGNORE_INDEX] * n_ctx  # no loss on instruction and input
    completion = labels[n_ctx:]
    assert IGNORE_INDEX not in completion and completion == ids[n_ctx:]
    assert completion[-1] == tokenizer.eos_token_id
    assert tokenizer.decode(completion[:-1]) == " " + prompt  # one space after "Output:", then the prompt


def test_collator_pads_labels_with_ignore_and_masks_attention(tokenizer):
    examples = [encode_pair(tokenizer, r, p) for r, p in PAIRS[:3]]
    batch = PadCollator(tokenizer.pad_token_id)(examples)
    lengths = [len(e["input_ids"]) for e in examples]
    assert batch["input_ids"].shape == (3, max(lengths))
    assert batch["attention_mask"].sum(1).tolist() == lengths
    pad = batch["attention_mask"] == 0
    assert (batch["labels"][pad] == IGNORE_INDEX).all()
    assert (batch["input_ids"][pad] == tokenizer.pad_token_id).all()
    # labels hold exactly the completion tokens of each example
    for i, e in enumerate(examples):
        assert (batch["labels"][i] != IGNORE_INDEX).sum() == sum(lab != IGNORE_INDEX for lab in e["labels"])


def test_long_completion_is_cut_and_long_context_is_skipped(tokenizer):
    raw, prompt = PAIRS[0]
    n_ctx = len(tokenizer(format_prompt(raw))["input_ids"])
    cut = encode_pair(tokenizer, raw, prompt * 10, max_length=n_ctx + 5)
    assert len(cut["input_ids"]) == n_ctx + 5 and sum(lab != IGNORE_INDEX for lab in cut["labels"]) == 5
    assert encode_pair(tokenizer, raw, prompt, max_length=n_ctx) is None
    ds = PairDataset(tokenizer, [raw, "x " * 200], [prompt, prompt], max_length=n_ctx + 40)
    assert len(ds) == 1 and ds.skipped == 1
    with pytest.raises(ValueError, match="empty"):
        encode_pair(tokenizer, raw, "   ")


def test_config_validation():
    with pytest.raises(ValueError, match="lr"):
        SFTConfig(lr=0)
    with pytest.raises(ValueError, match="template"):
        SFTConfig(template="v9")
    assert SFTConfig().lr == 2e-5 and SFTConfig().max_length == 384  # the paper's defaults


def test_sft_lowers_the_completion_loss(tiny_lm_dir, tokenizer):
    seed_everything(0)
    model = AutoModelForCausalLM.from_pretrained(tiny_lm_dir)
    ds = PairDataset(tokenizer, [r for r, _ in PAIRS], [p for _, p in PAIRS])
    collate = PadCollator(tokenizer.pad_token_id)
    loader = torch.utils.data.DataLoader(ds, batch_size=4, shuffle=True, collate_fn=collate)
    eval_loader = torch.utils.data.DataLoader(ds, batch_size=8, collate_fn=collate)
    before = evaluate_loss(model, eval_loader)
    steps = 40
    opt = make_optimizer(model, lr=3e-3)
    sched = cosine_schedule(opt, steps, warmup_ratio=0.05)
    done = 0
    while done < steps:
        for batch in loader:
            stats = train_step(model, sft_loss, batch, opt, sched)
            done += 1
            if done == steps:
                break
    after = evaluate_loss(model, eval_loader)
    assert after < 0.5 * before, (before, after)
    assert stats["lr"] < 3e-3 * 0.05  # the cosine schedule decayed the rate


def test_length_filter_as_the_papers_sft_code(tokenizer):
    """Off by default; on: drop targets under min_prompt_tokens, and short_drop of those under short_prompt_tokens."""
    from pez_core.rewrite.sft import length_filter

    prompts = ["a cat"] * 50 + ["a cat, " + "highly detailed, " * k for k in range(1, 40)] * 5
    lengths = [len(tokenizer(p, add_special_tokens=False)["input_ids"]) for p in prompts]
    assert length_filter(tokenizer, prompts, SFTConfig()) == list(range(len(prompts)))
    cfg = SFTConfig(min_prompt_tokens=25, short_prompt_tokens=35, short_drop=0.3)
    keep = length_filter(tokenizer, prompts, cfg, seed=0)
    assert all(lengths[i] >= 25 for i in keep)
    assert all(i in keep for i, n in enumerate(lengths) if n >= 35)  # long rows always stay
    short = [i for i, n in enumerate(lengths) if 25 <= n < 35]
    kept_short = sum(i in keep for i in short) / len(short)
    assert len(short) >= 20 and 0.45 < kept_short < 0.9, (len(short), kept_short)  # about 70% kept
    assert keep == length_filter(tokenizer, prompts, cfg, seed=0)  # reproducible
    with pytest.raises(ValueError, match="short_drop"):
        SFTConfig(short_drop=1.5)
