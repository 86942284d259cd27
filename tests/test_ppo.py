"""GAE against hand-computed values; PPO loss terms; one real update."""

import contextlib
import math

import pytest
import torch

from mmrl_cli.algos.ppo import PPO, explained_variance, ppo_losses
from mmrl_cli.config import MlpConfig, PPOConfig
from mmrl_cli.models import build_policy
from mmrl_cli.rollout import RolloutBuffer


def buffer_with(rewards, values, dones):
    buf = RolloutBuffer(len(rewards), 1, {"vector": ((2,), torch.float32)}, torch.device("cpu"))
    buf.rewards[:, 0] = torch.tensor(rewards)
    buf.values[:, 0] = torch.tensor(values)
    buf.dones[:, 0] = torch.tensor(dones)
    return buf


def test_gae_matches_hand_computation():
    gamma, lam = 0.9, 0.8
    buf = buffer_with([1.0, 0.0, 2.0], [0.5, 0.4, 0.3], [0.0, 1.0, 0.0])
    buf.compute_advantages(torch.tensor([0.7]), gamma, lam)
    # t=2: delta = 2 + 0.9*0.7 - 0.3 = 2.33; A2 = 2.33
    # t=1: episode ends here: delta = 0 - 0.4 = -0.4; A1 = -0.4
    # t=0: delta = 1 + 0.9*0.4 - 0.5 = 0.86; A0 = 0.86 + 0.9*0.8*(-0.4) = 0.572
    assert buf.advantages[:, 0].tolist() == pytest.approx([0.572, -0.4, 2.33])
    assert buf.returns[:, 0].tolist() == pytest.approx([1.072, 0.0, 2.63])


def test_gae_with_lambda_one_is_discounted_return_minus_value():
    buf = buffer_with([1.0, 1.0, 1.0], [0.0, 0.0, 0.0], [0.0, 0.0, 1.0])
    buf.compute_advantages(torch.tensor([5.0]), 0.5, 1.0)
    assert buf.advantages[:, 0].tolist() == pytest.approx([1.75, 1.5, 1.0])


def batch(actions, old_logprobs, advantages, returns, old_values):
    return {"actions": torch.tensor(actions), "logprobs": torch.tensor(old_logprobs),
            "advantages": torch.tensor(advantages), "returns": torch.tensor(returns), "values": torch.tensor(old_values)}


def test_policy_loss_clips_the_ratio():
    logits = torch.log(torch.tensor([[0.5, 0.5], [0.5, 0.5]]))
    # Old probabilities 0.25 -> ratio 2 for both; one positive, one negative advantage.
    b = batch([0, 1], [math.log(0.25)] * 2, [1.0, -1.0], [0.0, 0.0], [0.0, 0.0])
    terms = ppo_losses(logits, torch.zeros(2), b, clip_range=0.2, clip_value=None, normalize_advantages=False)
    # A=+1: min(2*1, 1.2*1) = 1.2; A=-1: min(-2, -1.2) = -2 -> mean 0.4 surrogate
    assert terms["loss_policy"].item() == pytest.approx(-(1.2 - 2.0) / 2)
    assert terms["clipfrac"].item() == 1.0
    assert terms["loss_entropy"].item() == pytest.approx(-math.log(2))
    assert terms["approx_kl"].item() == pytest.approx((2 - 1) - math.log(2))


def test_value_loss_with_and_without_clipping():
    logits = torch.zeros(1, 2)
    b = batch([0], [math.log(0.5)], [0.0], [1.0], [0.0])
    plain = ppo_losses(logits, torch.tensor([3.0]), b, 0.2, None, False)["loss_value"]
    assert plain.item() == pytest.approx(0.5 * 4.0)
    clipped = ppo_losses(logits, torch.tensor([3.0]), b, 0.2, 0.5, False)["loss_value"]
    # clipped prediction 0.5 -> error 0.25; the max of (4, 0.25) keeps the pessimistic 4.
    assert clipped.item() == pytest.approx(0.5 * 4.0)
    closer = ppo_losses(logits, torch.tensor([-0.2]), b, 0.2, 0.1, False)["loss_value"]
    assert closer.item() == pytest.approx(0.5 * max(1.2**2, 0.9**2))


def test_explained_variance():
    target = torch.tensor([1.0, 2.0, 3.0])
    assert explained_variance(target, target) == pytest.approx(1.0)
    assert explained_variance(torch.zeros(3) + 2.0, target) == pytest.approx(0.0)


def test_update_moves_towards_advantaged_action_and_anneals_lr():
    torch.manual_seed(0)
    spec = {"vector": ((3,), torch.float32)}
    policy = build_policy(MlpConfig(), spec, 2)
    cfg = PPOConfig(n_envs=4, n_steps=8, batch_size=16, n_epochs=4, lr=3e-3, ent_coef=0.0)
    ppo = PPO(cfg, policy, total_updates=2, autocast=contextlib.nullcontext)
    buf = RolloutBuffer(8, 4, spec, torch.device("cpu"))
    buf.obs["vector"].normal_()
    buf.actions.fill_(1)
    with torch.no_grad():
        logits, values = policy({"vector": buf.obs["vector"].flatten(0, 1)})
    buf.logprobs = torch.log_softmax(logits, -1)[:, 1].view(8, 4)
    buf.values = values.view(8, 4)
    buf.rewards.fill_(1.0)
    buf.compute_advantages(torch.zeros(4), 0.99, 0.95)
    before = buf.logprobs.mean().item()
    metrics = ppo.update(buf)
    with torch.no_grad():
        after = torch.log_softmax(policy({"vector": buf.obs["vector"].flatten(0, 1)})[0], -1)[:, 1].mean().item()
    assert metrics["learning_rate"] == pytest.approx(3e-3)
    assert ppo.progress_remaining() == pytest.approx(0.5)
    assert set(metrics) >= {"loss_policy", "loss_value", "loss_entropy", "approx_kl", "clipfrac", "grad_norm"}
    assert math.isfinite(metrics["loss_value"])
    assert after != before


def test_sampled_actions_follow_the_policy_distribution():
    from mmrl_cli.actions import sample_actions

    probs = torch.tensor([0.1, 0.6, 0.3])
    logits = probs.log().expand(40_000, 3)
    generator = torch.Generator().manual_seed(0)
    actions, logprobs = sample_actions(logits, generator=generator)
    frequencies = torch.bincount(actions, minlength=3).float() / len(actions)
    assert torch.allclose(frequencies, probs, atol=0.01)
    assert torch.allclose(logprobs, probs.log()[actions])
    again = sample_actions(logits, generator=torch.Generator().manual_seed(0))[0]
    assert torch.equal(actions, again)  # reproducible from the generator alone


def test_lean_gradient_clipping_matches_torch():
    from mmrl_cli.algos.ppo import clip_grad_norm

    torch.manual_seed(0)
    ours, theirs = torch.nn.Linear(5, 3), torch.nn.Linear(5, 3)
    theirs.load_state_dict(ours.state_dict())
    inputs = torch.randn(7, 5) * 10
    for model in (ours, theirs):
        model(inputs).pow(2).sum().backward()
    norm = clip_grad_norm(list(ours.parameters()), 0.5)
    expected = torch.nn.utils.clip_grad_norm_(theirs.parameters(), 0.5)
    assert torch.equal(norm, expected)
    assert all(torch.equal(a.grad, b.grad) for a, b in zip(ours.parameters(), theirs.parameters()))
