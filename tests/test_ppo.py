"""PPO: each piece of trlx's algorithm checked where a mutation of it shows, plus a short training run.

Every test that guards against a specific bug names the mutation it catches; each was applied by hand
once and seen to fail (docs/training.md lists them).
"""

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from pez_core.rewrite.optim import seed_everything
from pez_core.rewrite.ppo import (
    AdaptiveKLController,
    PolicyWithValueHead,
    PPOConfig,
    PPOTrainer,
    gae,
    response_logprobs,
    sequence_logprobs,
)

RAWS = ["a cat", "a dog at night", "a castle", "a robot in space"] * 4


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_config_defaults_are_the_papers_and_validated():
    cfg = PPOConfig()
    assert (cfg.init_kl_coef, cfg.target_kl, cfg.kl_horizon) == (0.05, 6.0, 10000)
    assert (cfg.gamma, cfg.lam, cfg.cliprange, cfg.cliprange_value, cfg.vf_coef) == (1.0, 0.95, 0.2, 0.2, 0.5)
    assert (cfg.cliprange_reward, cfg.scale_reward, cfg.top_k, cfg.top_p) == (10.0, "running", 0, 1.0)
    assert (cfg.minibatch_size, cfg.ppo_epochs, cfg.rollouts_per_step, cfg.total_steps) == (4, 4, 64, 5000)
    assert (cfg.weight_decay, tuple(cfg.betas), cfg.num_layers_unfrozen) == (1e-6, (0.9, 0.95), 8)
    assert cfg.updates_per_collection == 64 and cfg.collections == 79  # the paper's 5000 updates
    for bad in ({"lam": 1.5}, {"target_kl": 0}, {"top_p": 0}, {"scale_reward": "ref"}, {"rollouts_per_step": 0},
                {"num_layers_unfrozen": -2}, {"min_lr": 1.0}):
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


def constant_reward(values):
    return lambda batch: torch.tensor(values[:len(batch.raws)], dtype=torch.float32)


def perturbed_ref(tiny_lm_dir, scale=0.05):
    """A reference model that differs from the policy, so log pi - log pi_ref is not 0."""
    ref = AutoModelForCausalLM.from_pretrained(tiny_lm_dir)
    gen = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for p in ref.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * scale)
    return ref


def make_trainer(tiny_lm_dir, tokenizer, reward, ref=None, **kw):
    cfg = PPOConfig(**{"lr": 1e-3, "rollouts_per_step": 8, "chunk_size": 8, "minibatch_size": 4, "ppo_epochs": 2,
                       "max_new_tokens": 6, "num_layers_unfrozen": -1, **kw})
    policy = PolicyWithValueHead.from_pretrained(tiny_lm_dir)
    ref = ref if ref is not None else AutoModelForCausalLM.from_pretrained(tiny_lm_dir)
    return PPOTrainer(policy, ref, tokenizer, reward, cfg)


def test_kl_penalty_is_in_the_rewards_and_the_controller_sees_trlx_kl(tiny_lm_dir, tokenizer):
    """Catches: KL penalty removed from the per-token rewards (rewards = score only); the controller fed
    a response-only KL or the k3 estimator of the other direction instead of trlx's statistic."""
    seed_everything(0)
    ref = perturbed_ref(tiny_lm_dir)
    trainer = make_trainer(tiny_lm_dir, tokenizer, constant_reward([0.0] * 8), ref=ref, target_kl=None,
                           init_kl_coef=0.5, cliprange_reward=0, scale_reward="none")
    exp, stats = trainer.make_experience(RAWS[:8])
    q, mask = exp.query_len, exp.mask
    with torch.no_grad():
        ref_logits = ref(input_ids=exp.tokens, attention_mask=exp.attention_mask).logits
        pol_logits, _ = trainer.policy(exp.tokens, exp.attention_mask)
    log_ratio = (exp.logprobs - response_logprobs(ref_logits, exp.tokens, q)) * mask
    assert log_ratio.abs().sum() > 1e-2  # the models differ, so the penalty is not trivially 0
    torch.testing.assert_close(exp.rewards, -0.5 * log_ratio, atol=1e-5, rtol=1e-4)
    # the controller's KL: sum over query and response tokens of exp(lr) - 1 - lr, mean over rollouts
    lr = (sequence_logprobs(pol_logits, exp.tokens) - sequence_logprobs(ref_logits, exp.tokens))
    lr = lr * exp.attention_mask[:, :-1]  # trlx masks by the predicting position
    expected = float((lr.exp() - 1 - lr).sum(1).mean())
    assert stats["kl"] == pytest.approx(expected, rel=1e-4)
    response_only = float(((log_ratio.exp() - 1 - log_ratio) * mask).sum(1).mean())
    assert stats["kl"] > 1.5 * response_only  # the query tokens count too


def test_rewards_are_clipped_then_scaled_by_the_running_std(tiny_lm_dir, tokenizer):
    """Catches: reward clipping removed; running reward scaling removed; scaling before clipping."""
    seed_everything(0)
    scores = [50.0, -50.0, 3.0, -3.0, 1.0, 0.0, 20.0, -2.0]
    trainer = make_trainer(tiny_lm_dir, tokenizer, constant_reward(scores), target_kl=None, init_kl_coef=0.0)
    exp, stats = trainer.make_experience(RAWS[:8])
    clipped = torch.tensor(scores).clamp(-10, 10)
    expected = clipped / clipped.std()  # the running std after one collection is the sample std
    last = exp.mask.sum(1).long() - 1
    got = exp.rewards[torch.arange(8), last]
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)
    assert stats["score"] == pytest.approx(sum(scores) / 8)  # the logged score is the raw one


def test_ratio_is_one_on_the_first_update_of_every_collection(tiny_lm_dir, tokenizer):
    """Catches: old log-probs not taken from the policy that sampled the rollouts (e.g. from the
    reference model, from the policy in another mode, or shifted by one position)."""
    seed_everything(0)
    trainer = make_trainer(tiny_lm_dir, tokenizer, preferred_token_reward({5, 6, 7}))
    first = [trainer.step(RAWS[:8]) for _ in range(2)]  # the second collection starts from a moved policy
    for stats in first:
        assert stats["first_ratio_dev"] < 1e-4, stats["first_ratio_dev"]
    assert first[1]["ratio_dev"] > 1e-3  # later updates do move the ratio: the check is not vacuous


def test_value_loss_is_clipped_around_the_old_values(tiny_lm_dir, tokenizer):
    """Catches: value clipping removed (vf_loss = plain squared error)."""
    seed_everything(0)
    trainer = make_trainer(tiny_lm_dir, tokenizer, constant_reward([1.0] * 8))
    exp, _ = trainer.make_experience(RAWS[:8])
    trainer.policy.eval()
    with torch.no_grad():
        _, values = trainer.policy(exp.tokens, exp.attention_mask)
    values = values[:, exp.query_len - 1:-1]
    exp.values = (values - 1.0) * exp.mask  # the new values are 1.0 above the old: clipped to old + 0.2
    exp.returns = (values + 0.5) * exp.mask
    _, stats = trainer.loss(exp, torch.arange(8))
    # max(unclipped (0.5)^2, clipped (1.3)^2) = 1.69 per token, times 0.5; without clipping 0.125
    assert stats["vf_loss"] == pytest.approx(0.5 * 1.69, rel=1e-3)


def test_updates_counted_as_trlx_and_controller_fed_per_minibatch(tiny_lm_dir, tokenizer):
    """total_steps counts optimiser updates; the controller updates once per minibatch with its size."""
    seed_everything(0)
    trainer = make_trainer(tiny_lm_dir, tokenizer, preferred_token_reward({5}), total_steps=5, target_kl=6.0,
                           kl_horizon=100)
    assert trainer.cfg.updates_per_collection == 4 and trainer.cfg.collections == 2
    stats = trainer.step(RAWS[:8])
    assert stats["updates"] == 4 and not trainer.done
    err = max(min(stats["kl"] / 6.0 - 1, 0.2), -0.2)
    assert trainer.kl_ctl.value == pytest.approx(0.05 * (1 + err * 4 / 100) ** 2)  # two minibatches of 4
    assert trainer.step(RAWS[:8])["updates"] == 5 and trainer.done  # stops mid-collection, as trlx
    assert trainer.optimizer.param_groups[0]["lr"] == pytest.approx(1e-4)  # cosine annealed to lr / 10


def test_num_layers_unfrozen_trains_only_the_top_blocks(tiny_lm_dir, tokenizer):
    seed_everything(0)
    trainer = make_trainer(tiny_lm_dir, tokenizer, preferred_token_reward({5}), num_layers_unfrozen=1)
    lm = trainer.policy.lm
    before = {n: p.clone() for n, p in trainer.policy.named_parameters()}
    trainer.step(RAWS[:8])
    changed = {n for n, p in trainer.policy.named_parameters() if not torch.equal(before[n], p)}
    assert any(n.startswith("lm.transformer.h.1.") for n in changed) and any(n.startswith("v_head") for n in changed)
    assert not any(n.startswith(("lm.transformer.h.0.", "lm.transformer.word_embeddings")) for n in changed)
    assert not lm.get_input_embeddings().weight.requires_grad
    opt_params = {id(p) for g in trainer.optimizer.param_groups for p in g["params"]}
    assert id(lm.get_input_embeddings().weight) not in opt_params
    group = trainer.optimizer.param_groups[0]
    assert group["weight_decay"] == 1e-6 and group["betas"] == (0.9, 0.95)


def test_ppo_raises_a_synthetic_reward_and_kl_coef_tracks_the_target(tiny_lm_dir, tokenizer):
    seed_everything(0)
    policy = PolicyWithValueHead.from_pretrained(tiny_lm_dir)
    ref = AutoModelForCausalLM.from_pretrained(tiny_lm_dir)
    preferred = set(range(4, len(tokenizer), 8))  # one token in eight
    cfg = PPOConfig(lr=1e-3, min_lr=1e-3, rollouts_per_step=16, chunk_size=16, minibatch_size=4, ppo_epochs=4,
                    max_new_tokens=8, target_kl=4.0, kl_horizon=200, num_layers_unfrozen=-1)
    trainer = PPOTrainer(policy, ref, tokenizer, preferred_token_reward(preferred), cfg)
    ref_before = [p.clone() for p in ref.parameters()]
    history = []
    for _ in range(24):
        coef_before = trainer.kl_ctl.value
        stats = trainer.step(RAWS)
        history.append((stats["score"], stats["kl"], coef_before, trainer.kl_ctl.value))
    first = sum(h[0] for h in history[:4]) / 4
    last = sum(h[0] for h in history[-4:]) / 4
    print("scores", [round(h[0], 3) for h in history], "kl", [round(h[1], 2) for h in history])
    assert last > first + 0.1, (first, last)
    # the controller moves kl_coef toward the target every collection: down when KL < target, up when above
    for score, kl, before, after in history:
        assert (after < before) if kl < cfg.target_kl else (after > before), (kl, before, after)
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
    assert again.kl_ctl.value == trainer.kl_ctl.value and again.steps_done == 1 and again.updates_done == 1
    assert again.moments.std == trainer.moments.std
    assert again.scheduler.state_dict() == trainer.scheduler.state_dict()
