"""GAE against hand-computed values; PPO loss terms; one real update."""

import contextlib
import math

import pytest
import torch

from mmrl_cli.algos.ppo import PPO, TERM_NAMES, explained_variance, ppo_losses
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


def named_terms(*args, **kwargs) -> dict[str, float]:
    terms, _, _ = ppo_losses(*args, **kwargs)
    return dict(zip(TERM_NAMES, terms.tolist()))


def test_policy_loss_clips_the_ratio():
    logits = torch.log(torch.tensor([[0.5, 0.5], [0.5, 0.5]]))
    # Old probabilities 0.25 -> ratio 2 for both; one positive, one negative advantage.
    b = batch([0, 1], [math.log(0.25)] * 2, [1.0, -1.0], [0.0, 0.0], [0.0, 0.0])
    terms = named_terms(logits, torch.zeros(2), b, clip_range=0.2, clip_value=None, normalize_advantages=False)
    # A=+1: min(2*1, 1.2*1) = 1.2; A=-1: min(-2, -1.2) = -2 -> mean 0.4 surrogate
    assert terms["loss_policy"] == pytest.approx(-(1.2 - 2.0) / 2)
    assert terms["clipfrac"] == 1.0
    assert terms["loss_entropy"] == pytest.approx(-math.log(2))
    assert terms["approx_kl"] == pytest.approx((2 - 1) - math.log(2))


def test_value_loss_with_and_without_clipping():
    logits = torch.zeros(1, 2)
    b = batch([0], [math.log(0.5)], [0.0], [1.0], [0.0])
    plain = named_terms(logits, torch.tensor([3.0]), b, 0.2, None, False)["loss_value"]
    assert plain == pytest.approx(0.5 * 4.0)
    clipped = named_terms(logits, torch.tensor([3.0]), b, 0.2, 0.5, False)["loss_value"]
    # clipped prediction 0.5 -> error 0.25; the max of (4, 0.25) keeps the pessimistic 4.
    assert clipped == pytest.approx(0.5 * 4.0)
    closer = named_terms(logits, torch.tensor([-0.2]), b, 0.2, 0.1, False)["loss_value"]
    assert closer == pytest.approx(0.5 * max(1.2**2, 0.9**2))


def autograd_ppo_loss(logits, values, b, clip_range, clip_value, normalize, vf_coef, ent_coef):
    """PPO's total loss written the textbook way, for autograd to differentiate."""
    log_p = torch.log_softmax(logits, -1)
    ratio = (log_p.gather(1, b["actions"][:, None]).squeeze(1) - b["logprobs"]).exp()
    adv = b["advantages"]
    if normalize:
        adv = (adv - adv.mean()) / (adv.std() + 1e-8)
    policy = -torch.min(ratio * adv, ratio.clamp(1 - clip_range, 1 + clip_range) * adv).mean()
    value = (values - b["returns"]).pow(2)
    if clip_value is not None:
        clipped = b["values"] + (values - b["values"]).clamp(-clip_value, clip_value)
        value = torch.max(value, (clipped - b["returns"]).pow(2))
    entropy = -(log_p.exp() * log_p).sum(-1).mean()
    return policy + vf_coef * 0.5 * value.mean() - ent_coef * entropy


@pytest.mark.parametrize("clip_value", [None, 0.3])
@pytest.mark.parametrize("ent_coef", [0.0, 0.05])
@pytest.mark.parametrize("normalize", [False, True])
def test_closed_form_loss_gradient_equals_autograd(clip_value, ent_coef, normalize):
    torch.manual_seed(0)
    n, actions = 64, 4
    logits = (torch.randn(n, actions) * 2).requires_grad_()
    values = torch.randn(n).requires_grad_()
    b = {"actions": torch.randint(0, actions, (n,)), "advantages": torch.randn(n), "returns": torch.randn(n),
         "values": values.detach() + 0.5 * torch.randn(n)}
    # old log-probs spread so that ratios fall on both sides of the clip range and inside it
    b["logprobs"] = torch.log_softmax(logits.detach(), -1).gather(1, b["actions"][:, None]).squeeze(1) + 0.4 * torch.randn(n)
    autograd_ppo_loss(logits, values, b, 0.2, clip_value, normalize, 0.7, ent_coef).backward()
    terms, d_logits, d_values = ppo_losses(logits.detach(), values.detach(), b, 0.2, clip_value, normalize, 0.7, ent_coef)
    torch.testing.assert_close(d_logits, logits.grad)
    torch.testing.assert_close(d_values, values.grad)
    named = dict(zip(TERM_NAMES, terms))
    total = named["loss_policy"] + 0.7 * named["loss_value"] + ent_coef * named["loss_entropy"]
    expected = autograd_ppo_loss(logits.detach(), values.detach(), b, 0.2, clip_value, normalize, 0.7, ent_coef)
    torch.testing.assert_close(total, expected)
    assert 0 < named["clipfrac"] < 1


def test_hand_written_and_autograd_updates_agree():
    """PPO with the MLP's own backward lands where the same update through autograd does."""
    spec = {"vector": ((3,), torch.float32)}
    cfg = PPOConfig(n_envs=4, n_steps=8, batch_size=16, n_epochs=3, lr=3e-3, ent_coef=0.01, clip_value=0.2)
    torch.manual_seed(0)
    policies = [build_policy(MlpConfig(), spec, 3) for _ in range(2)]
    policies[1].load_state_dict(policies[0].state_dict())
    buf = RolloutBuffer(8, 4, spec, torch.device("cpu"))
    buf.obs["vector"].normal_()
    buf.actions.random_(0, 3)
    buf.logprobs.normal_(-1.1, 0.3)
    buf.rewards.normal_()
    buf.compute_advantages(torch.zeros(4), 0.99, 0.95)
    results = []
    for policy, analytic in zip(policies, (True, False)):
        ppo = PPO(cfg, policy, total_updates=2, autocast=contextlib.nullcontext)
        ppo.analytic = analytic
        ppo.generator.manual_seed(0)
        results.append(ppo.update(buf))
    for name in TERM_NAMES + ("grad_norm",):
        assert results[0][name] == pytest.approx(results[1][name], rel=1e-4, abs=1e-6), name
    for a, b in zip(policies[0].parameters(), policies[1].parameters()):
        torch.testing.assert_close(a, b)


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
    from mmrl_cli.algos.optim import global_norm, scale_gradients

    torch.manual_seed(0)
    for inputs_scale in (10.0, 1e-3):  # clipped, and left alone
        ours, theirs = torch.nn.Linear(5, 3), torch.nn.Linear(5, 3)
        theirs.load_state_dict(ours.state_dict())
        inputs = torch.randn(7, 5) * inputs_scale
        for model in (ours, theirs):
            model(inputs).pow(2).sum().backward()
        grads = [p.grad for p in ours.parameters()]
        norm = global_norm(grads)
        scale_gradients(grads, float(norm), 0.5)
        expected = torch.nn.utils.clip_grad_norm_(theirs.parameters(), 0.5)
        assert torch.equal(norm, expected)
        for a, b in zip(ours.parameters(), theirs.parameters()):
            torch.testing.assert_close(a.grad, b.grad, rtol=1e-6, atol=0)


def test_lean_adam_step_matches_torch():
    from mmrl_cli.algos.optim import adam_step

    torch.manual_seed(0)
    ours, theirs = torch.nn.Linear(5, 3), torch.nn.Linear(5, 3)
    theirs.load_state_dict(ours.state_dict())
    optimizers = [torch.optim.Adam(m.parameters(), lr=1e-2, eps=1e-5, fused=True) for m in (ours, theirs)]
    for step in range(4):
        inputs = torch.randn(7, 5)
        for model, optimizer in zip((ours, theirs), optimizers):
            optimizer.param_groups[0]["lr"] = 1e-2 / (step + 1)  # annealed, as PPO does
            optimizer.zero_grad()
            model(inputs).pow(2).sum().backward()
        ours.bias.grad = None if step == 2 else ours.bias.grad  # a parameter without a gradient is left alone
        theirs.bias.grad = None if step == 2 else theirs.bias.grad
        adam_step(optimizers[0])
        optimizers[1].step()
        assert all(torch.equal(a, b) for a, b in zip(ours.parameters(), theirs.parameters()))
    for a, b in zip(optimizers[0].state.values(), optimizers[1].state.values()):
        assert all(torch.equal(a[key], b[key]) for key in ("step", "exp_avg", "exp_avg_sq"))


def test_target_kl_stops_the_update_once_the_policy_moved_too_far():
    torch.manual_seed(0)
    spec = {"vector": ((3,), torch.float32)}
    policy = build_policy(MlpConfig(), spec, 2)
    cfg = PPOConfig(n_envs=4, n_steps=8, batch_size=8, n_epochs=4, lr=1e-2, target_kl=1e-6)
    ppo = PPO(cfg, policy, total_updates=2, autocast=contextlib.nullcontext)
    buf = RolloutBuffer(8, 4, spec, torch.device("cpu"))
    buf.obs["vector"].normal_()
    buf.actions.random_(0, 2)
    with torch.no_grad():
        logits, values = policy({"vector": buf.obs["vector"].flatten(0, 1)})
    buf.logprobs = torch.log_softmax(logits, -1).gather(1, buf.actions.view(-1, 1)).view(8, 4)
    buf.values = values.view(8, 4)
    buf.rewards.normal_()
    buf.compute_advantages(torch.zeros(4), 0.99, 0.95)
    metrics = ppo.update(buf)
    # the first minibatch starts at the rollout's policy (KL 0) and steps; the next sees it moved
    assert metrics["stopped_early"] == 1.0 and metrics["minibatches"] == 1
    assert metrics["approx_kl"] == pytest.approx(0.0, abs=1e-6)
