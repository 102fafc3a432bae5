"""PPO: raises a synthetic reward while the KL to the reference stays bounded and kl_coef adapts."""

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from pez_core.rewrite.optim import seed_everything
from pez_core.rewrite.ppo import AdaptiveKLController, PolicyWithValueHead, PPOConfig, PPOTrainer, gae

RAWS = ["a cat", "a dog at night", "a castle", "a robot in space"] * 4


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_config_defaults_are_the_papers_and_validated():
    cfg = PPOConfig()
    assert (cfg.init_kl_coef, cfg.target_kl, cfg.kl_horizon) == (0.05, 6.0, 10000)
    assert (cfg.gamma, cfg.lam, cfg.cliprange, cfg.cliprange_value, cfg.vf_coef) == (1.0, 0.95, 0.2, 0.2, 0.5)
    assert (cfg.cliprange_reward, cfg.scale_reward, cfg.top_k, cfg.top_p) == (10.0, "running", 0, 1.0)
    for bad in ({"lam": 1.5}, {"target_kl": 0}, {"top_p": 0}, {"scale_reward": "ref"}, {"rollouts_per_step": 0}):
        with pytest.raises(ValueError, match=next(iter(bad))):
            PPOConfig(**bad)


def test_gae_with_gamma_and_lambda_one_gives_reward_to_go():
    rewards = torch.tensor([[0.0, 1.0, 2.0, 9.0], [1.0, 1.0, 0.0, 0.0]])
    values = torch.tensor([[0.5, 0.1, 0.3, 7.0], [0.2, 0.4, 5.0, 5.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0, 1.0], [1.0, 1.0, 0.0, 0.0]])
    _, returns = gae(values, rewards, mask, gamma=1.0, lam=1.0)
    # returns = sum of the future rewards within each rollout; nothing leaks past the end
    expected = torch.tensor([[12.0, 12.0, 11.0, 9.0], [2.0, 1.0, 0.0, 0.0]])
    torch.testing.assert_close(returns * mask, expected)
    adv, _ = gae(values, rewards, mask, gamma=1.0, lam=0.0)  # one-step TD errors, then whitened
    assert adv[1, 2:].abs().sum() == 0 and abs(float(adv[mask.bool()].mean())) < 1e-5


def test_adaptive_kl_controller_moves_toward_target():
    ctl = AdaptiveKLController(0.05, target=6.0, horizon=10000)
    ctl.update(1.0, n_steps=64)  # KL below target: weaker penalty
    assert ctl.value < 0.05
    low = ctl.value
    ctl.update(100.0, n_steps=64)  # far above target: error clipped at +20%
    assert ctl.value == pytest.approx(low * (1 + 0.2 * 64 / 10000))


@pytest.fixture(scope="module")
def tokenizer(tiny_lm_dir):
    return AutoTokenizer.from_pretrained(tiny_lm_dir)


def preferred_token_reward(preferred):
    """Synthetic reward: the share of generated tokens that are in ``preferred``."""
    def reward(batch):
        return torch.tensor([sum(t in preferred for t in ids) / max(len(ids), 1) for ids in batch.response_ids])
    return reward


def test_ppo_raises_a_synthetic_reward_with_bounded_kl(tiny_lm_dir, tokenizer):
    seed_everything(0)
    policy = PolicyWithValueHead.from_pretrained(tiny_lm_dir)
    ref = AutoModelForCausalLM.from_pretrained(tiny_lm_dir)
    preferred = set(range(4, len(tokenizer), 8))  # one token in eight
    cfg = PPOConfig(lr=1e-3, rollouts_per_step=16, chunk_size=16, minibatch_size=8, ppo_epochs=4,
                    max_new_tokens=8, target_kl=2.0, kl_horizon=200)
    trainer = PPOTrainer(policy, ref, tokenizer, preferred_token_reward(preferred), cfg)
    ref_before = [p.clone() for p in ref.parameters()]
    history = []
    for _ in range(24):
        coef_before = trainer.kl_ctl.value
        stats = trainer.step(RAWS)
        history.append((stats["score"], stats["kl"], coef_before, trainer.kl_ctl.value))
    first = sum(h[0] for h in history[:4]) / 4
    last = sum(h[0] for h in history[-4:]) / 4
    assert last > first + 0.1, (first, last)
    assert all(h[1] < 15 for h in history), [round(h[1], 2) for h in history]  # 8 tokens: KL stays bounded
    # the controller moves kl_coef toward the target every step: down when KL < target, up when above
    for score, kl, before, after in history:
        assert (after < before) if kl < cfg.target_kl else (after > before), (kl, before, after)
    assert any(kl > cfg.target_kl for _, kl, _, _ in history)  # both directions were exercised
    assert all(torch.equal(a, b) for a, b in zip(ref_before, ref.parameters()))  # the reference is frozen


def test_state_dict_round_trip_and_saved_value_head(tiny_lm_dir, tokenizer, tmp_path):
    seed_everything(1)
    policy = PolicyWithValueHead.from_pretrained(tiny_lm_dir)
    ref = AutoModelForCausalLM.from_pretrained(tiny_lm_dir)
    cfg = PPOConfig(lr=1e-3, rollouts_per_step=4, chunk_size=4, minibatch_size=4, ppo_epochs=1, max_new_tokens=4)
    trainer = PPOTrainer(policy, ref, tokenizer, preferred_token_reward({5, 6}), cfg)
    stats = trainer.step(RAWS[:4])
    assert stats["response_tokens"] >= 1 and 0 < stats["kl_coef"] <= 0.05
    policy.save_pretrained(tmp_path)
    reloaded = PolicyWithValueHead.from_pretrained(tmp_path)
    for a, b in zip(policy.state_dict().values(), reloaded.state_dict().values()):
        torch.testing.assert_close(a, b)
    again = PPOTrainer(reloaded, ref, tokenizer, preferred_token_reward({5, 6}), cfg)
    again.load_state_dict(trainer.state_dict())
    assert again.kl_ctl.value == trainer.kl_ctl.value and again.steps_done == 1
    assert again.moments.std == trainer.moments.std
