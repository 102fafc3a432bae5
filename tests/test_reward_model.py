"""Reward models: a regression model learns a synthetic score; the combined reward is a delta."""

import random

import pytest
import torch
from transformers import AutoTokenizer

from pez_core.rewrite.optim import make_optimizer, seed_everything, train_step
from pez_core.rewrite.reward_model import (
    CombinedReward,
    RegressionCollator,
    RegressionDataset,
    RewardBatch,
    RewardConfig,
    RewardModel,
    label_stats,
    load_backbone,
    regression_loss,
    reward_text,
)

SUBJECTS = ["a cat", "a dog", "a castle", "a robot", "a fox", "a ship", "a dragon", "a forest", "a knight", "a city"]
STYLES = ["highly detailed", "artstation", "8k", "concept art", "sharp focus", "octane render", "masterpiece"]


pytestmark = pytest.mark.usefixtures("one_torch_thread_module")


def synthetic_rows(n, seed):
    """Prompts with 0..6 style tags; the score grows with the number of tags (plus a little noise)."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        k = rng.randint(0, 6)
        prompt = ", ".join([rng.choice(SUBJECTS), *rng.sample(STYLES, k)])
        rows.append((prompt, 5.0 + 0.4 * k + rng.gauss(0, 0.05)))
    return rows


@pytest.fixture(scope="module")
def trained_aes(tiny_lm_dir, tmp_path_factory):
    """An "aes" reward model trained 4 epochs on 160 synthetic rows, then saved."""
    seed_everything(0)
    tok = AutoTokenizer.from_pretrained(tiny_lm_dir)
    train = synthetic_rows(160, seed=1)
    prompts, scores = [p for p, _ in train], [s for _, s in train]
    mean, std = label_stats(scores)
    model = load_backbone(tiny_lm_dir, tok, mean, std, kind="aes")
    ds = RegressionDataset(tok, "aes", prompts, prompts, scores, mean, std, max_length=64)
    loader = torch.utils.data.DataLoader(ds, batch_size=16, shuffle=True,
                                         collate_fn=RegressionCollator(tok.pad_token_id))
    opt = make_optimizer(model, lr=2e-3)
    losses = []
    for _ in range(4):
        for batch in loader:
            losses.append(train_step(model, regression_loss, batch, opt)["loss"])
    folder = tmp_path_factory.mktemp("r_aes")
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder, losses


def test_reward_model_learns_a_synthetic_score(trained_aes):
    folder, losses = trained_aes
    assert sum(losses[-5:]) / 5 < 0.5 * sum(losses[:5]) / 5
    rm = RewardModel.from_pretrained(folder)  # kind and label scale come from the saved config
    assert rm.kind == "aes"
    held_out = synthetic_rows(64, seed=99)
    prompts = [p for p, _ in held_out]
    pred = rm.score(prompts, prompts)
    truth = torch.tensor([s for _, s in held_out])
    pearson = torch.corrcoef(torch.stack([pred, truth]))[0, 1].item()
    print(f"held-out pearson {pearson:.3f}")
    assert pearson > 0.8, pearson
    assert abs(pred.mean().item() - truth.mean().item()) < 0.5  # scores come back in the original units


def test_config_has_one_label_and_a_pad_token(trained_aes):
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(trained_aes[0])
    assert config.num_labels == 1 and config.problem_type == "regression"
    assert config.pad_token_id is not None and config.reward_kind == "aes"


def test_padding_does_not_change_scores(trained_aes):
    rm = RewardModel.from_pretrained(trained_aes[0], batch_size=8)
    prompts = [p for p, _ in synthetic_rows(8, seed=5)]
    batched = rm.score(prompts, prompts)
    alone = torch.cat([rm.score([p], [p]) for p in prompts])
    torch.testing.assert_close(batched, alone, atol=1e-4, rtol=1e-4)


def test_ps_input_and_combined_reward_is_a_delta(trained_aes, tiny_lm_dir):
    assert reward_text("ps", " a cat ", "a cat, 8k") == "Input: a cat\nOutput: a cat, 8k"
    assert reward_text("aes", "a cat", " a cat, 8k ") == "a cat, 8k"
    with pytest.raises(ValueError, match="valid"):
        RewardConfig(kind="hps")
    tok = AutoTokenizer.from_pretrained(tiny_lm_dir)
    r_ps = RewardModel(load_backbone(tiny_lm_dir, tok, 20.0, 1.0, kind="ps"), tok, "ps")
    r_aes = RewardModel.from_pretrained(trained_aes[0])
    reward = CombinedReward(r_ps, r_aes, alpha=0.7)
    raws = ["a cat", "a dog"]
    refs = ["a cat, highly detailed, 8k", "a dog, artstation"]
    responses = ["a cat", "a dog, highly detailed, 8k, concept art, masterpiece"]
    got = reward(RewardBatch(raws, responses, refs, [[], []]))
    expected = (0.7 * (r_ps.score(raws, responses) - r_ps.score(raws, refs))
                + 0.3 * (r_aes.score(raws, responses) - r_aes.score(raws, refs)))
    torch.testing.assert_close(got, expected)
    same = reward(RewardBatch(raws, refs, refs, [[], []]))
    torch.testing.assert_close(same, torch.zeros(2), atol=1e-5, rtol=0)  # the reference itself scores 0
    aes_delta = r_aes.score(raws, responses) - r_aes.score(raws, refs)
    assert aes_delta[1] > 0 > aes_delta[0]  # more tags than the reference helps r_aes; fewer hurts
    with pytest.raises(ValueError, match="reference"):
        reward(RewardBatch(raws, responses, [None, None], [[], []]))


def test_inputs_end_with_eos_and_are_cut_from_the_left(trained_aes):
    """As the authors' reward models: the head reads an appended EOS; long inputs keep their end."""
    from pez_core.rewrite.reward_model import encode_reward_texts

    rm = RewardModel.from_pretrained(trained_aes[0], max_length=24)
    tok = rm.tokenizer
    [ids] = encode_reward_texts(tok, ["a cat, " * 40 + "8k, artstation"], 24)
    full = tok("a cat, " * 40 + "8k, artstation")["input_ids"] + [tok.eos_token_id]
    assert ids == full[-24:] and ids[-1] == tok.eos_token_id and tok.eos_token_id != tok.pad_token_id
    tail = "highly detailed, 8k, concept art, sharp focus, octane render, masterpiece, artstation, 8k"
    a, b = ("a cat, " * 40 + tail * 2), ("a robot, " * 40 + tail * 2)  # differ only beyond the last 24 tokens
    scores = rm.score([a, b], [a, b])
    assert float(scores[0]) == pytest.approx(float(scores[1]), abs=1e-5)
    short = rm.score(["x"], ["a cat"])
    with_eos = rm.model(input_ids=torch.tensor([tok("a cat")["input_ids"] + [tok.eos_token_id]])).logits
    assert float(short[0]) == pytest.approx(float(with_eos[0, 0]) * rm.std + rm.mean, abs=1e-4)
