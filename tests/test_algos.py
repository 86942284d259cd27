"""Algorithms: GAE and time-limit bootstrapping, PPO and A2C loss terms against hand-computed
values, the fast path against plain autograd, extra loss terms, gradient norms before clipping."""

import contextlib
import math

import pytest
import torch

from mmrl_cli.algos import ALGOS
from mmrl_cli.algos.a2c import A2C, a2c_loss
from mmrl_cli.distributions import Categorical, sample_actions
from mmrl_cli.algos.gradient import TrainingClock, total_loss
from mmrl_cli.algos.ppo import PPO, normalized, ppo_loss, ppo_loss_and_output_gradients
from mmrl_cli.config import A2CConfig, MlpConfig, PPOConfig
from mmrl_cli.envs import CartPoleEnv
from mmrl_cli.models import build_policy
from mmrl_cli.rollout import Collector, RolloutBuffer

SPEC = {"vector": ((3,), torch.float32)}


def buffer_with(rewards, values, dones, truncation_values=None, last_value=0.0):
    buf = RolloutBuffer(len(rewards), 1, {"vector": ((2,), torch.float32)}, torch.device("cpu"))
    buf.rewards[:, 0] = torch.tensor(rewards)
    buf.values[:, 0] = torch.tensor(values)
    buf.dones[:, 0] = torch.tensor(dones)
    if truncation_values is not None:
        buf.truncation_values[:, 0] = torch.tensor(truncation_values)
    buf.last_value.fill_(last_value)
    return buf


def test_gae_matches_hand_computation():
    gamma, lam = 0.9, 0.8
    buf = buffer_with([1.0, 0.0, 2.0], [0.5, 0.4, 0.3], [0.0, 1.0, 0.0], last_value=0.7)
    buf.compute_advantages(gamma, lam)
    # t=2: delta = 2 + 0.9*0.7 - 0.3 = 2.33; A2 = 2.33
    # t=1: episode ends here: delta = 0 - 0.4 = -0.4; A1 = -0.4
    # t=0: delta = 1 + 0.9*0.4 - 0.5 = 0.86; A0 = 0.86 + 0.9*0.8*(-0.4) = 0.572
    assert buf.advantages[:, 0].tolist() == pytest.approx([0.572, -0.4, 2.33])
    assert buf.returns[:, 0].tolist() == pytest.approx([1.072, 0.0, 2.63])


def test_gae_with_lambda_one_is_discounted_return_minus_value():
    buf = buffer_with([1.0, 1.0, 1.0], [0.0, 0.0, 0.0], [0.0, 0.0, 1.0], last_value=5.0)
    buf.compute_advantages(0.5, 1.0)
    assert buf.advantages[:, 0].tolist() == pytest.approx([1.75, 1.5, 1.0])


def test_a_time_limit_cut_bootstraps_from_the_value_of_the_last_observation():
    # The episode is cut by a time limit at t=1 in a state worth 10: A1 = 0 + 0.9 * 10 - 0.4.
    buf = buffer_with([1.0, 0.0, 2.0], [0.5, 0.4, 0.3], [0.0, 1.0, 0.0], truncation_values=[0.0, 10.0, 0.0],
                      last_value=0.7)
    buf.compute_advantages(0.9, 1.0)
    assert buf.advantages[1, 0].item() == pytest.approx(0.9 * 10.0 - 0.4)
    assert buf.advantages[0, 0].item() == pytest.approx(1 + 0.9 * (0.9 * 10.0) - 0.5)


class ConstantValue(torch.nn.Module):
    """Uniform logits; the value of an observation is its first coordinate plus 100."""

    def distribution(self, logits):
        return Categorical(logits)

    def forward(self, obs):
        x = obs["vector"]
        return torch.zeros(len(x), 2), x[:, 0] + 100.0


@pytest.mark.parametrize("bootstrap", [True, False])
def test_collector_stores_the_value_of_time_limit_cuts_and_never_of_real_ends(bootstrap):
    env = CartPoleEnv(16, max_steps=3, seed=0)
    collector = Collector(env, ConstantValue(), 6, torch.device("cpu"), 0, contextlib.nullcontext, bootstrap)
    rollout = collector.collect()
    for t in range(6):
        cut = rollout.dones[t].bool() & (t % 3 == 2)  # every episode reaches the 3-step limit at t = 2, 5
        stored = rollout.truncation_values[t]
        if bootstrap:
            assert torch.all(stored[cut] > 99.0) and torch.all(stored[~cut] == 0.0)
        else:
            assert torch.all(stored == 0.0)
    assert rollout.dones[2].all() and rollout.dones[5].all()


def test_a_step_that_is_both_terminated_and_truncated_is_not_bootstrapped():
    env = CartPoleEnv(4, max_steps=1, seed=0)
    policy = ConstantValue()
    collector = Collector(env, policy, 1, torch.device("cpu"), 0, contextlib.nullcontext, True)
    terminated = torch.tensor([True, False, True, False])
    truncated = torch.tensor([True, True, False, False])
    info = {"done_index": torch.tensor([0, 1, 2]), "final_obs": {"vector": torch.zeros(3, 4)}}
    collector.store_truncation_values(0, terminated, truncated, info)
    assert collector.buffer.truncation_values[0].tolist() == [0.0, 100.0, 0.0, 0.0]


def batch(actions, old_logprobs, advantages, returns, old_values):
    return {"actions": torch.tensor(actions), "logprobs": torch.tensor(old_logprobs),
            "advantages": torch.tensor(advantages), "returns": torch.tensor(returns), "values": torch.tensor(old_values)}


def test_ppo_policy_loss_clips_the_ratio():
    logits = torch.log(torch.tensor([[0.5, 0.5], [0.5, 0.5]]))
    # Old probabilities 0.25 -> ratio 2 for both; one positive, one negative advantage.
    b = batch([0, 1], [math.log(0.25)] * 2, [1.0, -1.0], [0.0, 0.0], [0.0, 0.0])
    terms = ppo_loss(Categorical(logits), torch.zeros(2), b, clip_range=0.2, clip_value=None, normalize_advantages=False,
                     vf_coef=0.5, ent_coef=0.1)
    # A=+1: min(2*1, 1.2*1) = 1.2; A=-1: min(-2, -1.2) = -2 -> mean surrogate -0.4
    assert terms["loss_policy"].item() == pytest.approx(0.4)
    assert terms["clipfrac"].item() == 1.0
    assert terms["entropy"].item() == pytest.approx(math.log(2))
    assert terms["loss_entropy"].item() == pytest.approx(-0.1 * math.log(2))
    assert terms["approx_kl"].item() == pytest.approx((2 - 1) - math.log(2))


def test_ppo_value_loss_with_and_without_clipping():
    logits = torch.zeros(1, 2)
    b = batch([0], [math.log(0.5)], [0.0], [1.0], [0.0])
    value = lambda v, clip: ppo_loss(Categorical(logits), torch.tensor([v]), b, 0.2, clip, False, 0.5, 0.0)["loss_value"].item()  # noqa: E731
    assert value(3.0, None) == pytest.approx(0.5 * 4.0)  # vf_coef * MSE
    # clipped prediction 0.5 -> error 0.25; the max of (4, 0.25) keeps the pessimistic 4.
    assert value(3.0, 0.5) == pytest.approx(0.5 * 4.0)
    assert value(-0.2, 0.1) == pytest.approx(0.5 * max(1.2**2, 0.9**2))


def test_a2c_loss_terms_match_hand_computation():
    probs = torch.tensor([[0.25, 0.75], [0.5, 0.5]])
    b = batch([1, 0], [0.0, 0.0], [2.0, -1.0], [1.0, 3.0], [0.0, 0.0])
    terms = a2c_loss(Categorical(probs.log()), torch.tensor([0.5, 1.0]), b, normalize_advantages=False, vf_coef=0.5, ent_coef=0.01)
    assert terms["loss_policy"].item() == pytest.approx(-(2.0 * math.log(0.75) + -1.0 * math.log(0.5)) / 2)
    assert terms["loss_value"].item() == pytest.approx(0.5 * ((0.5 - 1.0) ** 2 + (1.0 - 3.0) ** 2) / 2)
    entropy = (-(0.25 * math.log(0.25) + 0.75 * math.log(0.75)) + math.log(2)) / 2
    assert terms["entropy"].item() == pytest.approx(entropy)
    assert terms["loss_entropy"].item() == pytest.approx(-0.01 * entropy)
    assert total_loss(terms).item() == pytest.approx(sum(terms[k].item() for k in ("loss_policy", "loss_value", "loss_entropy")))


@pytest.mark.parametrize("clip_value", [None, 0.3])
@pytest.mark.parametrize("ent_coef", [0.0, 0.05])
@pytest.mark.parametrize("normalize", [False, True])
def test_ppo_closed_form_equals_autograd_of_the_loss(clip_value, ent_coef, normalize):
    torch.manual_seed(0)
    n, actions = 64, 4
    logits = (torch.randn(n, actions) * 2).requires_grad_()
    values = torch.randn(n).requires_grad_()
    b = {"actions": torch.randint(0, actions, (n,)), "advantages": torch.randn(n), "returns": torch.randn(n),
         "values": values.detach() + 0.5 * torch.randn(n)}
    # old log-probs spread so that ratios fall on both sides of the clip range and inside it
    b["logprobs"] = torch.log_softmax(logits.detach(), -1).gather(1, b["actions"][:, None]).squeeze(1) + 0.4 * torch.randn(n)
    reference = ppo_loss(Categorical(logits), values, b, 0.2, clip_value, normalize, 0.7, ent_coef)
    total_loss(reference).backward()
    terms, (d_logits, d_values) = ppo_loss_and_output_gradients(logits.detach(), values.detach(), b, 0.2, clip_value,
                                                                normalize, 0.7, ent_coef)
    torch.testing.assert_close(d_logits, logits.grad)
    torch.testing.assert_close(d_values, values.grad)
    assert set(terms) == set(reference)
    for name in terms:
        torch.testing.assert_close(terms[name], reference[name].detach(), msg=name)
    assert 0 < terms["clipfrac"] < 1


def random_rollout(n_steps=8, n_envs=4, actions=3, seed=0) -> RolloutBuffer:
    torch.manual_seed(seed)
    buf = RolloutBuffer(n_steps, n_envs, SPEC, torch.device("cpu"))
    buf.obs["vector"].normal_()
    buf.actions.random_(0, actions)
    buf.logprobs.normal_(-1.1, 0.3)
    buf.rewards.normal_()
    buf.values.normal_()
    return buf


@pytest.mark.parametrize("name,cfg", [
    ("ppo", PPOConfig(batch_size=16, n_epochs=3, lr=3e-3, ent_coef=0.01, clip_value=0.2)),
    ("ppo", PPOConfig(batch_size=32, n_epochs=2, lr=3e-3, ent_coef=0.0)),
    ("a2c", A2CConfig(ent_coef=0.01, lr=3e-3)),
    ("a2c", A2CConfig(optimizer="adam", normalize_advantages=True)),
])
def test_fast_path_and_plain_autograd_updates_agree(name, cfg):
    """The MLP's hand-written backward (+ closed-form PPO gradient, direct Adam) lands where autograd does."""
    torch.manual_seed(0)
    policies = [build_policy(MlpConfig(), SPEC, 3) for _ in range(2)]
    policies[1].load_state_dict(policies[0].state_dict())
    results = []
    for policy, fast in zip(policies, (True, False)):
        algo = ALGOS[name](cfg, policy, 5, contextlib.nullcontext, fast_path=fast)
        assert algo.gradient.fast is fast
        algo.seed(0)
        for update in range(2):
            metrics = algo.update(random_rollout(seed=update))
        results.append(metrics)
    for key, value in results[0].items():
        assert value == pytest.approx(results[1][key], rel=1e-4, abs=1e-6), key
    for a, b in zip(policies[0].parameters(), policies[1].parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def advantaged_rollout(policy, action: int, advantage_sign: float) -> RolloutBuffer:
    """A rollout of the policy's own data where action `action` was always taken with reward sign `advantage_sign`."""
    buf = random_rollout(n_steps=8, n_envs=4, actions=2)
    buf.actions.fill_(action)
    with torch.no_grad():
        logits, values = policy({"vector": buf.obs["vector"].flatten(0, 1)})
    buf.logprobs = torch.log_softmax(logits, -1)[:, action].view(8, 4)
    buf.values = values.view(8, 4)
    buf.rewards.fill_(advantage_sign)
    buf.dones.fill_(1.0)  # one-step episodes: the advantage is the reward minus the value
    return buf


@pytest.mark.parametrize("name", ["ppo", "a2c"])
@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_an_update_moves_the_policy_towards_advantaged_actions_and_away_from_others(name, sign):
    torch.manual_seed(0)
    policy = build_policy(MlpConfig(), SPEC, 2)
    cfg = {"ppo": PPOConfig(batch_size=16, n_epochs=4, lr=3e-3, ent_coef=0.0, normalize_advantages=False),
           "a2c": A2CConfig(lr=3e-3)}[name]
    algo = ALGOS[name](cfg, policy, 2, contextlib.nullcontext)
    buf = advantaged_rollout(policy, action=1, advantage_sign=sign)
    buf.values.fill_(0.0)  # advantage = reward exactly
    before = buf.logprobs.mean().item()
    algo.update(buf)
    with torch.no_grad():
        after = torch.log_softmax(policy({"vector": buf.obs["vector"].flatten(0, 1)})[0], -1)[:, 1].mean().item()
    assert (after - before) * sign > 0.02, (before, after)


def test_ppo_anneals_lr_and_clip_range_linearly():
    policy = build_policy(MlpConfig(), SPEC, 2)
    cfg = PPOConfig(batch_size=32, n_epochs=1, lr=1e-3, lr_schedule="linear", clip_range=0.2, clip_schedule="linear")
    ppo = PPO(cfg, policy, 4, contextlib.nullcontext)
    seen = [(m["learning_rate"], m["clip_range"]) for m in (ppo.update(random_rollout(actions=2, seed=i)) for i in range(4))]
    assert seen == [pytest.approx((1e-3 * f, 0.2 * f)) for f in (1.0, 0.75, 0.5, 0.25)]


def test_a2c_warms_its_learning_rate_up_from_0_then_anneals_it():
    policy = build_policy(MlpConfig(), SPEC, 2)
    cfg = A2CConfig(lr=1e-3, lr_schedule="linear", lr_warmup=0.25)  # 8 updates: 2 of warm-up
    a2c = A2C(cfg, policy, 8, contextlib.nullcontext)
    start = [p.detach().clone() for p in policy.parameters()]
    first = a2c.update(random_rollout(actions=2, seed=0))["learning_rate"]
    # the first update (lr 0) moves no weight; it only fills RMSprop's squared-gradient averages
    assert first == 0.0 and all(torch.equal(p, w) for p, w in zip(policy.parameters(), start))
    assert all(state["square_avg"].abs().sum() > 0 for state in a2c.gradient.optimizer.state.values())
    seen = [a2c.update(random_rollout(actions=2, seed=i))["learning_rate"] for i in range(1, 8)]
    # progress 1/8, 2/8, ...: the warm-up factor min(1, progress / 0.25) times the linear decay 1 - progress
    assert seen == pytest.approx([1e-3 * 0.5 * 7 / 8] + [1e-3 * (8 - i) / 8 for i in range(2, 8)])
    assert not all(torch.equal(p, w) for p, w in zip(policy.parameters(), start))


def test_a_resumed_run_given_another_length_continues_its_schedules_smoothly():
    clock = TrainingClock(100)
    for _ in range(40):
        clock.tick()
    assert clock.remaining() == pytest.approx(0.6)
    longer = TrainingClock(200)  # resumed with total_steps doubled
    longer.load_state_dict(clock.state_dict())
    assert longer.remaining() == pytest.approx(0.6)  # no jump at the resume point
    for _ in range(80):
        longer.tick()
    assert longer.remaining() == pytest.approx(0.3)  # halfway from the resume point to the new end
    for _ in range(80):
        longer.tick()
    assert longer.remaining() == pytest.approx(0.0)
    same = TrainingClock(100)
    same.load_state_dict(clock.state_dict())  # same length: the plain linear schedule
    assert same.remaining() == pytest.approx(0.6)


def test_gradient_norms_are_measured_before_clipping():
    torch.manual_seed(0)
    policy = build_policy(MlpConfig(), SPEC, 3)
    reference = build_policy(MlpConfig(), SPEC, 3)
    reference.load_state_dict(policy.state_dict())
    cfg = A2CConfig(max_grad_norm=1e-6)  # clipping scales almost everything away
    algo = A2C(cfg, policy, 2, contextlib.nullcontext, fast_path=False)
    buf = random_rollout()
    metrics = algo.update(buf)
    batch_ = buf.flat()
    params, values = reference(batch_["obs"])
    total_loss(a2c_loss(reference.distribution(params), values, batch_, False, cfg.vf_coef, cfg.ent_coef)).backward()
    expected = torch.nn.utils.clip_grad_norm_(reference.parameters(), float("inf")).item()
    assert metrics["grad_norm"] == pytest.approx(expected, rel=1e-5) and expected > 1e-3
    norms = algo.gradient.module_grad_norms()
    assert set(norms) == {"layers", "heads"}
    assert math.hypot(*norms.values()) == pytest.approx(expected, rel=1e-5)


def test_an_extra_loss_term_goes_through_autograd_and_switches_the_fast_path_off():
    torch.manual_seed(0)
    policy = build_policy(MlpConfig(), SPEC, 2)
    ppo = PPO(PPOConfig(batch_size=32, n_epochs=4, lr=1e-2, ent_coef=0.0), policy, 2, contextlib.nullcontext)
    assert ppo.gradient.fast
    # A behaviour-cloning term that pulls every state towards action 0, much stronger than the RL terms.
    ppo.gradient.extra_losses.append(
        lambda logits, values, batch: {"loss_bc": 10 * torch.nn.functional.cross_entropy(
            logits, torch.zeros(len(logits), dtype=torch.int64))})
    assert not ppo.gradient.fast
    buf = random_rollout(actions=2)
    obs = {"vector": buf.obs["vector"].flatten(0, 1)}
    before = torch.softmax(policy(obs)[0], -1)[:, 0].mean().item()
    metrics = ppo.update(buf)
    after = torch.softmax(policy(obs)[0], -1)[:, 0].mean().item()
    assert metrics["loss_bc"] > 0 and after > before + 0.1


def test_explained_variance():
    from mmrl_cli.algos.gradient import explained_variance

    target = torch.tensor([1.0, 2.0, 3.0])
    assert explained_variance(target, target) == pytest.approx(1.0)
    assert explained_variance(torch.zeros(3) + 2.0, target) == pytest.approx(0.0)


def test_normalized_advantages():
    x = normalized(torch.tensor([1.0, 2.0, 3.0, 6.0]))
    assert x.mean().item() == pytest.approx(0.0, abs=1e-6) and x.std().item() == pytest.approx(1.0, rel=1e-4)
    assert normalized(torch.tensor([5.0])).item() == 5.0  # a single sample is left alone


def test_sampled_actions_follow_the_policy_distribution():
    probs = torch.tensor([0.1, 0.6, 0.3])
    logits = probs.log().expand(40_000, 3)
    generator = torch.Generator().manual_seed(0)
    actions, logprobs = sample_actions(Categorical(logits), generator=generator)
    frequencies = torch.bincount(actions, minlength=3).float() / len(actions)
    assert torch.allclose(frequencies, probs, atol=0.01)
    assert torch.allclose(logprobs, probs.log()[actions])
    again = sample_actions(Categorical(logits), generator=torch.Generator().manual_seed(0))[0]
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


def test_lean_adam_step_matches_torch_and_steps_aside_for_hooks():
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
    calls = []
    optimizers[0].register_step_post_hook(lambda *args: calls.append(1))  # e.g. re-applying a pruning mask
    ours(torch.randn(7, 5)).pow(2).sum().backward()
    adam_step(optimizers[0])
    assert calls == [1]


def test_target_kl_stops_the_update_once_the_policy_moved_too_far():
    torch.manual_seed(0)
    policy = build_policy(MlpConfig(), SPEC, 2)
    cfg = PPOConfig(batch_size=8, n_epochs=4, lr=1e-2, target_kl=1e-6)
    ppo = PPO(cfg, policy, 2, contextlib.nullcontext)
    buf = random_rollout(actions=2)
    with torch.no_grad():
        logits, values = policy({"vector": buf.obs["vector"].flatten(0, 1)})
    buf.logprobs = torch.log_softmax(logits, -1).gather(1, buf.actions.view(-1, 1)).view(8, 4)
    buf.values = values.view(8, 4)
    metrics = ppo.update(buf)
    # the first minibatch starts at the rollout's policy (KL 0) and steps; the next sees it moved
    assert metrics["stopped_early"] == 1.0 and metrics["minibatches"] == 1
    assert metrics["approx_kl"] == pytest.approx(0.0, abs=1e-6)
