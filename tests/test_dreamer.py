"""algo=dreamer: the world model learns, imagination has the configured shape, the replay buffer keeps
episodes apart, a CLI run checkpoints and resumes exactly, and `mmrl eval` plays the agent."""

from __future__ import annotations

import contextlib
import copy
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from mmrl_cli.algos.dreamer import Dreamer, imagine, lambda_returns, replay_returns, world_model_loss
from mmrl_cli.algos.replay import SequenceReplay
from mmrl_cli.builders import build_env_and_policy
from mmrl_cli.cli import main
from mmrl_cli.compose import compose_train_config
from mmrl_cli.distributions import ActionSpace
from mmrl_cli.models.dreamer import DreamerAgent, TwoHot, symexp, symlog

SMALL = ["algo.hidden_size=32", "algo.deter_size=32", "algo.stoch_size=4", "algo.classes=4", "algo.seq_len=8",
         "algo.batch_size=4", "algo.replay_size=2048", "algo.learning_starts=64", "algo.train_ratio=0.0625",
         "algo.horizon=5"]
TINY_RUN = ["algo=dreamer", "data=cartpole", "model=mlp", *SMALL, "rollout.n_envs=2", "rollout.n_steps=16",
            "eval.episodes=2", "monitor.progress=false", "monitor.tensorboard=false", "hardware.threads=1",
            "checkpoint.every_updates=2"]


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models: one torch thread is fastest (and several are very slow on a busy machine)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def small_setup(*overrides, seed: int = 0):
    """A Dreamer algorithm on 2 CartPole envs (or what `overrides` say) with a tiny agent."""
    torch.manual_seed(seed)
    cfg = compose_train_config(["algo=dreamer", "data=cartpole", "model=mlp", *SMALL, "rollout.n_envs=2",
                                "rollout.n_steps=16", *overrides])
    env, agent = build_env_and_policy(cfg, cfg.rollout.n_envs, torch.device("cpu"))
    return cfg, Dreamer(cfg, env, agent, torch.device("cpu"), seed, contextlib.nullcontext)


def test_symlog_and_two_hot_round_trip():
    x = torch.tensor([-300.0, -1.5, 0.0, 0.3, 42.0])
    assert torch.allclose(symexp(symlog(x)), x, rtol=1e-5, atol=1e-5)
    head = TwoHot(4, 8)
    # logits that put all mass on the two-hot encoding decode back to the target
    target = torch.tensor([3.7, -12.0])
    loss_at_zero = head.loss(torch.zeros(2, head.bins.numel()), target)
    assert torch.isfinite(loss_at_zero).all() and loss_at_zero.shape == (2,)


def test_world_model_losses_decrease_on_a_fixed_dataset():
    cfg, algo = small_setup("algo.lr=3e-3", seed=1)
    while not algo.replay.ready(cfg.algo.seq_len) or len(algo.replay) < 64:
        algo.play()
    batch = algo.replay.sample(8, cfg.algo.seq_len)
    agent = algo.policy
    generator = torch.Generator().manual_seed(0)
    losses = []
    for _ in range(30):
        terms, _ = world_model_loss(agent, batch, cfg.algo, generator)
        losses.append({k: float(v.detach()) for k, v in terms.items()})
        algo.world_gradient.step(terms, None)
    assert losses[-1]["loss_reconstruction"] < 0.5 * losses[0]["loss_reconstruction"]
    assert losses[-1]["loss_reward"] < 0.5 * losses[0]["loss_reward"]
    assert losses[-1]["loss_continuation"] < losses[0]["loss_continuation"]
    total = [sum(v for k, v in terms.items() if k.startswith("loss_")) for terms in losses]
    assert total[-1] < 0.5 * total[0]


def test_replay_returns_follow_the_real_sequence_and_stop_at_episode_ends():
    """One env, rows 0..5: an episode that terminates at row 2 (reward 5 on arriving there), a new one
    from row 3 that a time limit ends at row 4, a third from row 5. gamma 0.5, lambda 1: the return of
    row t is the discounted real rewards up to the episode's end, bootstrapped where the real
    sequence stops (a time limit, the last row) from the imagined returns."""
    rewards = torch.tensor([0.0, 1.0, 5.0, 0.0, 2.0, 0.0]).unsqueeze(1)
    is_terminal = torch.tensor([0, 0, 1, 0, 0, 0]).unsqueeze(1)
    is_first = torch.tensor([1, 0, 0, 1, 0, 1]).unsqueeze(1)
    values = torch.full((6, 1), 100.0)  # unused at lambda 1 but through the bootstrap
    bootstrap = torch.tensor([0.0, 0.0, 0.0, 0.0, 7.0, 9.0]).unsqueeze(1)
    returns = replay_returns(rewards, is_terminal, is_first, values, bootstrap, 0.5, 1.0)
    # row 1: 5 (terminal next); row 0: 1 + 0.5 * 5; row 2 (terminal): row 3 starts another episode, so
    # its own bootstrap; row 3: 2 + 0.5 * 7 (row 4's time-limit bootstrap); row 4: its bootstrap 7
    assert returns.squeeze(1).tolist() == [3.5, 5.0, 0.0, 5.5, 7.0]
    # lambda 0: one real step, then the critic's value (where the next row goes on)
    one_step = replay_returns(rewards, is_terminal, is_first, values, bootstrap, 0.5, 0.0).squeeze(1)
    assert one_step.tolist() == [1.0 + 50.0, 5.0, 0.0, 2.0 + 50.0, 7.0]


def test_the_replay_value_loss_is_logged_only_when_weighted():
    for coef in (0.0, 0.3):
        cfg, algo = small_setup(f"algo.replay_value_coef={coef}", seed=4)
        while not algo.replay.ready(cfg.algo.seq_len) or len(algo.replay) < 64:
            algo.play()
        metrics = algo.update()
        assert ("loss_replay_value" in metrics) == (coef > 0)
        assert coef == 0 or 0 < metrics["loss_replay_value"] < float("inf")


def test_the_critic_is_regularised_towards_the_slow_critic():
    """The update logs the regulariser (weight `algo.slow_critic_reg`; 0 turns it off) and the returns
    bootstrap from the critic: with the slow critic's weights far off, the regularised critic ends
    closer to the slow critic's values than the unregularised one."""
    def critic_gap(reg: float) -> tuple[float, dict]:
        cfg, algo = small_setup(f"algo.slow_critic_reg={reg}", "algo.critic_lr=1e-2", "algo.slow_critic_tau=0", seed=3)
        while not algo.replay.ready(cfg.algo.seq_len) or len(algo.replay) < 64:
            algo.play()
        agent = algo.policy
        with torch.no_grad():
            target_bin = int(torch.bucketize(torch.tensor(3.0), agent.slow_critic.bins))  # symlog 3: a value of ~19
            agent.slow_critic.net[-1].bias.fill_(-10.0)[target_bin] = 10.0
        for _ in range(60):
            metrics = algo.update()
        probe = torch.randn(64, agent.critic.net[0].in_features, generator=torch.Generator().manual_seed(0))
        with torch.no_grad():
            gap = (agent.critic.mean(agent.critic(probe)) - agent.slow_critic.mean(agent.slow_critic(probe))).abs().mean()
        return float(gap), metrics

    gap_off, metrics_off = critic_gap(0.0)
    gap_on, metrics_on = critic_gap(1.0)
    assert metrics_off["loss_slow_critic"] == 0.0 and metrics_on["loss_slow_critic"] > 0.0
    assert gap_on < 0.75 * gap_off


def test_several_critic_updates_step_the_critic_that_often_and_leave_the_rest_alone():
    """`algo.critic_updates=3`: three critic optimiser steps (and slow-critic steps) per update, one
    world-model and one actor step; the critic moves further from where it started than with one."""
    moved = {}
    for k in (1, 3):
        cfg, algo = small_setup(f"algo.critic_updates={k}", seed=6)
        while not algo.replay.ready(cfg.algo.seq_len) or len(algo.replay) < 64:
            algo.play()
        before = [p.detach().clone() for p in algo.policy.critic.parameters()]
        metrics = algo.update()
        steps = {name: int(next(iter(g.optimizer.state.values()))["step"]) for name, g in
                 (("world", algo.world_gradient), ("actor", algo.actor_gradient), ("critic", algo.critic_gradient))}
        assert steps == {"world": 1, "actor": 1, "critic": k} and metrics["skipped_steps"] == 0
        moved[k] = sum(float((p.detach() - b).abs().sum()) for p, b in zip(algo.policy.critic.parameters(), before))
    assert moved[3] > 1.5 * moved[1]


def collected_rollouts(n_steps: int, count: int) -> list:
    """`count` rollouts of `n_steps` steps of a memoryless student on 2 CartPole envs (fixed seeds)."""
    from mmrl_cli.rollout import Collector

    torch.manual_seed(0)
    cfg = compose_train_config(["data=cartpole", "model=mlp", "rollout.n_envs=2", "algo.batch_size=16"])
    env, student = build_env_and_policy(cfg, 2, torch.device("cpu"))
    collector = Collector(env, student, n_steps, torch.device("cpu"), seed=5, autocast=contextlib.nullcontext)
    return [copy.deepcopy(collector.collect()) for _ in range(count)]


def test_a_recurrent_teacher_is_replayed_along_the_students_episodes():
    """Distilling a dreamer agent: its labels follow each env's episodes across rollouts (labelling two
    rollouts of 16 steps equals labelling one of 32 over the same steps), restart where episodes start
    (the first state of an episode gets the teacher's output from a fresh state), and its state resumes."""
    from mmrl_cli.algos.distill import TeacherLabels

    _, algo = small_setup(seed=2)
    teacher = algo.policy.eval()
    with torch.no_grad():  # output layers start at zero: give the actor and critic some opinion
        for head in (teacher.actor[-1], teacher.critic.net[-1]):
            head.weight.normal_(0.0, 0.5, generator=torch.Generator().manual_seed(0))
    long_run = collected_rollouts(32, 1)[0]
    short_runs = collected_rollouts(16, 2)
    assert torch.equal(long_run.dones, torch.cat([r.dones for r in short_runs]))  # the same episodes
    whole = TeacherLabels(teacher, 2, torch.device("cpu"))
    whole.label(long_run)
    parts = TeacherLabels(teacher, 2, torch.device("cpu"))
    parts.label(short_runs[0])
    saved = {k: v.clone() for k, v in parts.state_dict().items()}
    parts.label(short_runs[1])
    joined = torch.cat([r.labels["teacher_logits"] for r in short_runs])
    assert torch.allclose(whole_logits := long_run.labels["teacher_logits"], joined, atol=1e-6)
    assert torch.allclose(long_run.labels["teacher_values"], torch.cat([r.labels["teacher_values"] for r in short_runs]),
                          atol=1e-5)
    # where an episode starts, the teacher reads the observation from a fresh state
    step, env = (long_run.dones[:-1] > 0).nonzero()[0].tolist()
    obs = {k: v[step + 1, env:env + 1] for k, v in long_run.obs.items()}
    fresh, _, _ = teacher.step(obs, teacher.initial_state(1), torch.ones(1))
    assert torch.allclose(whole_logits.reshape(32, 2, -1)[step + 1, env], fresh[0], atol=1e-6)
    # a memory-less replay would differ: the labels carry the episode's history
    mid = teacher.step({k: v[3] for k, v in long_run.obs.items()}, teacher.initial_state(2), torch.ones(2))[0]
    assert not torch.allclose(whole_logits.reshape(32, 2, -1)[3], mid)
    # resumed from its saved state, it labels the second rollout as before
    resumed = TeacherLabels(teacher, 2, torch.device("cpu"))
    resumed.load_state_dict(saved)
    again = copy.deepcopy(short_runs[1])
    resumed.label(again)
    assert torch.equal(again.labels["teacher_logits"], short_runs[1].labels["teacher_logits"])


@pytest.mark.parametrize("space", [ActionSpace.discrete(3), ActionSpace.box((2,), -1.0, 1.0)])
def test_imagination_has_the_configured_horizon_and_shapes(space):
    cfg = compose_train_config(["algo=dreamer", "data=cartpole", "model=mlp", *SMALL, "algo.horizon=7"])
    spec = {"vector": ((4,), torch.float32)}
    from mmrl_cli.models import build_policy

    agent = DreamerAgent(cfg.algo, build_policy(cfg.model, spec, space), spec, space)
    n = 6
    h, z = torch.randn(n, cfg.algo.deter_size), torch.zeros(n, cfg.algo.stoch_size * cfg.algo.classes)
    features, actions = imagine(agent, h, z, cfg.algo.horizon, torch.Generator().manual_seed(0))
    width = cfg.algo.deter_size + cfg.algo.stoch_size * cfg.algo.classes
    assert features.shape == (cfg.algo.horizon + 1, n, width)
    assert actions.shape == ((cfg.algo.horizon, n) if space.is_discrete else (cfg.algo.horizon, n, 2))
    # every imagined stochastic state is one-hot per latent variable
    z_part = features[1:, :, cfg.algo.deter_size:].reshape(-1, cfg.algo.stoch_size, cfg.algo.classes)
    assert torch.allclose(z_part.sum(-1), torch.ones(())) and torch.equal((z_part > 0.5).sum(-1), torch.ones_like(z_part[..., 0]).long())
    # the acting contract: a state of the documented width, the action written in
    obs = {"vector": torch.randn(n, 4)}
    params, value, state = agent.step(obs, agent.initial_state(n), torch.ones(n))
    assert state.shape == (n, agent.state_size) and value.shape == (n,)
    action = agent.distribution(params).sample()
    remembered = agent.remember_action(state, action)
    assert torch.equal(agent.split_state(remembered)[2], agent.action_input(action))
    returns = lambda_returns(torch.ones(7, n), torch.full((7, n), 0.9), torch.zeros(8, n), 0.95)
    assert returns.shape == (7, n) and torch.all(returns[0] > returns[-1])


def test_replay_sequences_never_cross_an_episode_boundary_unless_masked():
    """Env e's observation holds (episode number, step in episode); episodes end at random steps.
    In every sampled sequence, where the episode changes the row is marked is_first (the mask); within
    an episode steps are consecutive, and an episode's final observation is a row of its own."""
    num_envs, generator = 3, torch.Generator().manual_seed(0)
    replay = SequenceReplay(3 * 50, num_envs, {"vector": ((2,), torch.float32)}, 2, torch.device("cpu"), seed=0)
    episode, step = torch.zeros(num_envs), torch.zeros(num_envs)
    replay.add_first({"vector": torch.stack([episode, step], 1)}, 2)
    for _ in range(400):
        step += 1
        done = torch.rand(num_envs, generator=generator) < 0.15
        final = torch.stack([episode, step], 1)[done]
        terminated, truncated = done & (step % 2 == 0), done & (step % 2 == 1)
        episode, step = episode + done.float(), torch.where(done, torch.zeros_like(step), step)
        info = {"done_index": done.nonzero().squeeze(1), "final_obs": {"vector": final}} if done.any() else \
            {"done_index": torch.zeros(0, dtype=torch.int64)}
        replay.add_step(torch.ones(num_envs, 2), {"vector": torch.stack([episode, step], 1)}, torch.ones(num_envs),
                        terminated, truncated, info)
    crossings = 0
    for _ in range(20):
        batch = replay.sample(16, 10)
        obs, first = batch["obs"]["vector"], batch["is_first"]
        assert first[0].all()
        for t in range(1, 10):
            same = obs[t, :, 0] == obs[t - 1, :, 0]
            assert torch.equal(first[t], ~same)  # a new episode is exactly where the mask is
            assert torch.equal(obs[t, same, 1], obs[t - 1, same, 1] + 1)  # consecutive steps within an episode
            assert torch.all(obs[t, ~same, 1] == 0) and torch.all(batch["prev_action"][t, ~same] == 0)
            crossings += int((~same).sum())
    assert crossings > 0  # the test did see sequences running over an episode's end
    assert len(replay) == 150  # bounded: each env's ring holds 50 rows


def run_dirs(root: Path) -> list[Path]:
    return sorted(p.parent for p in root.rglob("config.yaml") if (p.parent / "checkpoints").is_dir())


def test_a_cli_run_checkpoints_resumes_exactly_and_evaluates(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    main(["train", *TINY_RUN, "total_steps=160", "runs_root=full", "run_name=full"])
    main(["train", *TINY_RUN, "total_steps=96", "runs_root=half", "run_name=half"])
    (half,) = run_dirs(tmp_path / "half")
    assert (half / "checkpoints" / "00000002" / "state.safetensors").exists()
    main(["train", f"resume={half}", "total_steps=160"])
    (full,) = run_dirs(tmp_path / "full")
    a, b = load_file(full / "model.safetensors"), load_file(half / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    full_metrics = [json.loads(line) for line in (full / "metrics.jsonl").read_text().splitlines()]
    half_metrics = [json.loads(line) for line in (half / "metrics.jsonl").read_text().splitlines()]
    assert full_metrics == half_metrics
    assert any("loss_kl_dynamics" in row and "loss_policy" in row for row in full_metrics)
    # mmrl eval plays the agent, carrying its latent state through episodes
    main(["eval", f"run={full}", "episodes=3", "gif.episodes=1", "gif.max_steps=5", "gif.imagined=2"])
    results = json.loads((full / "eval" / "results.json").read_text())
    assert results["episodes"] == 3 and results["return_mean"] > 0 and (full / "eval" / "episodes.gif").exists()
    from PIL import Image

    with Image.open(full / "eval" / "episodes.gif") as gif:  # the decoder's view beside the real frame
        assert gif.width > 2 * 240 and gif.n_frames >= 2
    # distilled into a memoryless student (the teacher replayed along its episodes), with the report
    main(["compress", "compression=distill", f"teacher={full}", "model=mlp", "total_steps=2048", "out_dir=distilled",
          "report.episodes=3", "report.latency_repeats=2", "hardware.threads=1"])
    report = json.loads((tmp_path / "distilled" / "report.json").read_text())
    assert [row["method"] for row in report["rows"]][0] == "teacher" and len(report["rows"]) == 2
    (student,) = run_dirs(tmp_path / "distilled")
    student_metrics = [json.loads(line) for line in (student / "metrics.jsonl").read_text().splitlines()]
    assert student_metrics and all("loss_distill" in row for row in student_metrics)
    # other methods would compress the world model itself: one line, exit 2
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        main(["compress", "compression=prune", f"teacher={full}", "out_dir=pruned"])
    assert exit_info.value.code == 2 and "only compression=distill takes it" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        main(["train", "compression=kickstart", f"teacher={full}", "data=cartpole", "model=mlp", "runs_root=k"])
    assert exit_info.value.code == 2 and "compression=kickstart needs a memoryless teacher" in capsys.readouterr().err


def test_save_replay_false_refills_and_says_so(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    main(["train", *TINY_RUN, "algo.save_replay=false", "total_steps=96", "runs_root=r", "run_name=x"])
    (run,) = run_dirs(tmp_path / "r")
    main(["train", f"resume={run}", "total_steps=128"])
    assert "the replay buffer refills from empty" in capsys.readouterr().err
