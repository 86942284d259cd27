"""Recurrent memory (`model.memory=lstm|gru`): the core's gates, the state contract (resets at
episode starts, sequence = step by step), the collector's stored state (a replay of the rollout
reproduces what was sampled), PPO and A2C training, evaluation and GIFs carrying the state,
bit-identical resume of a memory run, and one-line errors for bad settings."""

import contextlib
import json
import subprocess
import sys

import pytest
import torch
from hydra import compose, initialize_config_dir
from test_lifecycle import metrics, same_model, same_numbers, signal_on_call

from mmrl_cli import rollout as rollout_module
from mmrl_cli import trainer
from mmrl_cli.algos.a2c import A2C
from mmrl_cli.algos.ppo import PPO
from mmrl_cli.checkpoint import find_checkpoint, load_state
from mmrl_cli.cli import main
from mmrl_cli.compose import CONF_DIR
from mmrl_cli.config import (
    A2CConfig,
    CartPoleDataConfig,
    CnnConfig,
    MlpConfig,
    PPOConfig,
    TrainConfig,
    VitGpt2Config,
    validate,
)
from mmrl_cli.envs import CartPoleEnv
from mmrl_cli.evaluation import evaluate
from mmrl_cli.gif import record_episodes
from mmrl_cli.models import build_policy
from mmrl_cli.models.heads import RecurrentCore
from mmrl_cli.rollout import Collector

CPU = torch.device("cpu")
GRID = {"grid": ((7, 7, 3), torch.uint8), "vector": ((4,), torch.float32)}
CARTPOLE_SPEC = {"vector": ((4,), torch.float32)}
MODELS = {
    "cnn-lstm": CnnConfig(channels=[8], strides=[1], hidden=16, grid_embed=2, memory="lstm", memory_size=8),
    "mlp-gru": MlpConfig(hidden_sizes=[16], grid_embed=2, memory="gru", memory_size=8),
    "vit-lstm": VitGpt2Config(hidden_size=8, heads=2, ff_size=8, head_hidden=8, keypoints=2, grid_embed=2,
                              memory="lstm", memory_size=8),
    "vit-separate-gru": VitGpt2Config(hidden_size=8, heads=2, ff_size=8, head_hidden=8, keypoints=2, grid_embed=2,
                                      separate_heads=True, memory="gru", memory_size=8),
}


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """One torch thread: these tiny models only lose to thread synchronisation on a shared machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def config(*overrides):
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return validate(compose("train", overrides=list(overrides)))


def grid_obs(steps: int, batch: int) -> dict:
    return {"grid": torch.randint(0, 11, (steps, batch, 7, 7, 3), dtype=torch.uint8), "vector": torch.randn(steps, batch, 4)}


# ---------------------------------------------------------------------------------- the core
@pytest.mark.parametrize("kind,reference", [("lstm", torch.nn.LSTM), ("gru", torch.nn.GRU)])
def test_the_core_computes_torch_lstm_and_gru(kind, reference):
    torch.manual_seed(0)
    core, torch_rnn = RecurrentCore(kind, 5, 6), reference(5, 6)
    with torch.no_grad():
        for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
            getattr(core, name).copy_(torch.randn_like(getattr(core, name)))
            getattr(torch_rnn, f"{name}_l0").copy_(getattr(core, name))
    x, state = torch.randn(7, 3, 5), torch.randn(3, core.state_size)
    x_torch = x.clone().requires_grad_()
    x.requires_grad_()
    h0 = state[:, :6].unsqueeze(0).contiguous()
    expected, _ = torch_rnn(x_torch, (h0, state[:, 6:].unsqueeze(0).contiguous()) if kind == "lstm" else h0)
    outputs, _ = core.sequence(x, state, torch.zeros(7, 3))
    torch.testing.assert_close(outputs, expected, rtol=1e-5, atol=1e-6)
    (outputs[-1].square().sum()).backward()
    (expected[-1].square().sum()).backward()
    torch.testing.assert_close(x.grad, x_torch.grad, rtol=1e-4, atol=1e-6)  # gradients through time too
    torch.testing.assert_close(core.weight_hh.grad, torch_rnn.weight_hh_l0.grad, rtol=1e-4, atol=1e-6)


def test_the_state_is_zeroed_where_an_episode_starts():
    torch.manual_seed(0)
    policy = build_policy(MODELS["cnn-lstm"], GRID, 7)
    obs = {k: v[0] for k, v in grid_obs(1, 4).items()}
    carried = torch.randn(4, policy.initial_state(1).shape[1])
    starts = torch.tensor([1.0, 0.0, 1.0, 0.0])
    params, _, state = policy.step(obs, carried, starts)
    fresh_params, _, fresh_state = policy.step(obs, policy.initial_state(4), torch.zeros(4))
    started = starts.bool()
    assert torch.equal(params[started], fresh_params[started]) and torch.equal(state[started], fresh_state[started])
    assert not torch.allclose(params[~started], fresh_params[~started])  # the others remember
    assert torch.equal(policy(obs)[0], fresh_params)  # forward: one step from the zero state


@pytest.mark.parametrize("name", list(MODELS))
def test_a_sequence_call_equals_step_by_step_calls(name):
    torch.manual_seed(0)
    policy = build_policy(MODELS[name], GRID, 7, patch_size=1)
    assert policy.recurrent
    steps, batch = 6, 3
    obs = grid_obs(steps, batch)
    starts = torch.zeros(steps, batch)
    starts[0, 0] = starts[3, 1] = starts[4, 2] = 1.0
    state = torch.randn(batch, policy.initial_state(1).shape[1])
    params, values, final = policy.sequence(obs, state, starts)
    step_params, step_values = [], []
    for t in range(steps):
        p, v, state = policy.step({k: x[t] for k, x in obs.items()}, state, starts[t])
        step_params.append(p)
        step_values.append(v)
    torch.testing.assert_close(params, torch.cat(step_params), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(values, torch.cat(step_values), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(final, state, rtol=1e-5, atol=1e-6)


def test_a_memoryless_policy_has_no_state_and_keeps_its_parameters():
    memoryless = build_policy(MlpConfig(), CARTPOLE_SPEC, 2)
    assert not memoryless.recurrent and memoryless.initial_state(3).shape == (3, 0)
    assert not any(name.startswith("memory") for name in memoryless.state_dict())
    assert memoryless.analytic_backward  # the MLP fast path stays for memoryless policies
    recurrent = build_policy(MlpConfig(memory="lstm", memory_size=8), CARTPOLE_SPEC, 2)
    assert recurrent.initial_state(3).shape == (3, 16) and not recurrent.analytic_backward


# ------------------------------------------------------------------------------- collection
def test_the_collector_resets_at_episode_ends_and_its_stored_state_replays_the_rollout():
    torch.manual_seed(0)
    env = CartPoleEnv(4, max_steps=3, seed=0)  # every episode ends after 3 steps (too short to fall)
    policy = build_policy(MlpConfig(memory="lstm", memory_size=8), CARTPOLE_SPEC, 2)
    collector = Collector(env, policy, 5, CPU, 0, contextlib.nullcontext)
    for rollout_index in range(3):  # the state is carried from one rollout to the next
        rollout = collector.collect()
        step0 = 5 * rollout_index
        expected = torch.tensor([float((step0 + t) % 3 == 0) for t in range(5)]).unsqueeze(1).expand(5, 4)
        assert torch.equal(rollout.episode_starts, expected)
        if rollout_index == 0:
            assert torch.equal(rollout.initial_state, torch.zeros(4, 16))
        else:
            assert rollout.initial_state.abs().sum() > 0
        batch = rollout.sequence_batch()
        with torch.no_grad():
            params, values, final = policy.sequence(batch["obs"], batch["initial_state"], batch["episode_starts"])
        # the replay from the stored state reproduces what the collector sampled from
        torch.testing.assert_close(policy.distribution(params).log_prob(batch["actions"]), batch["logprobs"])
        torch.testing.assert_close(values, batch["values"])
        torch.testing.assert_close(final, collector.state)


def test_minibatches_of_a_recurrent_rollout_are_whole_env_sequences():
    env = CartPoleEnv(6, max_steps=4, seed=0)
    policy = build_policy(MlpConfig(memory="gru", memory_size=4), CARTPOLE_SPEC, 2)
    rollout = Collector(env, policy, 5, CPU, 0, contextlib.nullcontext).collect()
    rollout.compute_advantages(0.99, 0.95)
    seen = []
    for batch in rollout.sequences(2, torch.Generator().manual_seed(0)):
        assert batch["obs"]["vector"].shape == (5, 2, 4) and batch["initial_state"].shape == (2, 4)
        assert batch["episode_starts"].shape == (5, 2) and batch["actions"].shape == (10,)
        # row t * 2 + j is env j's step t: the same env's transitions, in time order
        envs = [int((rollout.obs["vector"][0] == batch["obs"]["vector"][0, j]).all(-1).nonzero()) for j in range(2)]
        seen += envs
        assert torch.equal(batch["advantages"], rollout.advantages[:, envs].flatten())
    assert sorted(seen) == list(range(6))


# -------------------------------------------------------------------------------- training
@pytest.mark.parametrize("algo", ["ppo", "a2c"])
def test_ppo_and_a2c_train_a_memory_policy(algo):
    torch.manual_seed(0)
    env = CartPoleEnv(4, seed=0)
    policy = build_policy(MlpConfig(memory="lstm", memory_size=8), CARTPOLE_SPEC, 2)
    if algo == "ppo":
        learner = PPO(PPOConfig(batch_size=32, n_epochs=2), policy, 4, contextlib.nullcontext)
        learner.seed(0)
    else:
        learner = A2C(A2CConfig(), policy, 4, contextlib.nullcontext)
    learner.collector = Collector(env, policy, 16, CPU, 0, contextlib.nullcontext)
    learner.rollout_hooks = []
    assert not learner.gradient.fast  # the closed-form path is for memoryless MLPs only
    before = {k: v.clone() for k, v in policy.state_dict().items()}
    for _ in range(4):
        _, step_metrics = learner.train_step()
        assert all(torch.isfinite(torch.tensor(v)) for k, v in step_metrics.items() if k != "grad_norm")
        assert step_metrics.get("minibatches", 4) == 4  # PPO: 2 epochs x 2 minibatches of 2 envs' 16 steps
    after = policy.state_dict()
    for name in ("memory.weight_ih", "memory.weight_hh", "memory.bias_hh"):
        assert not torch.equal(before[name], after[name]), name
    assert learner.skipped_steps == 0


# ------------------------------------------------------------------- evaluation and the GIF
class StepSpy:
    """Records the episode-start flags a recurrent policy's `step` is given."""

    def __init__(self, policy):
        self.starts, self.step = [], policy.step
        policy.step = self

    def __call__(self, obs, state, starts):
        self.starts.append(starts.clone())
        return self.step(obs, state, starts)


def test_evaluation_and_gifs_carry_the_state_and_reset_it_at_episode_ends():
    cfg = TrainConfig(data=CartPoleDataConfig(max_steps=3), model=MlpConfig(memory="gru", memory_size=4))
    policy = build_policy(cfg.model, CARTPOLE_SPEC, 2)
    spy = StepSpy(policy)
    results = evaluate(policy, cfg, CPU, "validation", 4, True)
    assert results["episodes"] == 4 and results["length_mean"] == 3
    assert [bool(s.all()) for s in spy.starts] == [True, False, False]  # 4 envs, one 3-step episode each
    assert not any(bool(s.any()) for s in spy.starts[1:])
    spy.starts.clear()
    episodes = record_episodes(policy, cfg, CPU, "heldout", 2, True, 0, 10)
    assert [len(e["rewards"]) for e in episodes] == [3, 3]
    assert [float(s) for s in spy.starts] == [1.0, 0.0, 0.0, 1.0, 0.0, 0.0]


# ------------------------------------------------------------------------------- resume
MEMORY_RUNS = {
    "ppo-lstm": ["exp=cartpole-ppo", "model.memory=lstm", "model.memory_size=16", "total_steps=768", "rollout.n_envs=4",
                 "rollout.n_steps=32", "algo.n_epochs=2", "algo.batch_size=64", "eval.every_steps=384", "eval.episodes=4",
                 "checkpoint.every_updates=2", "monitor.progress=false", "monitor.tensorboard=false"],
    "a2c-gru": ["exp=cartpole-a2c", "model.memory=gru", "model.memory_size=16", "total_steps=640",
                "eval.every_steps=320", "eval.episodes=4", "checkpoint.every_updates=5", "monitor.progress=false",
                "monitor.tensorboard=false"],
}


@pytest.fixture(scope="module")
def memory_references(tmp_path_factory):
    runs = {}
    for name, overrides in MEMORY_RUNS.items():
        runs[name] = tmp_path_factory.mktemp(f"memory-{name}")
        trainer.train(config(*overrides), runs[name])
    return runs


@pytest.mark.parametrize("name,call", [("ppo-lstm", 70), ("a2c-gru", 47)])
def test_a_stopped_memory_run_resumes_bit_identically(memory_references, tmp_path, monkeypatch, name, call):
    signal_on_call(rollout_module, "sample_actions", call, monkeypatch)  # mid-rollout: the state is not zero
    stopped = trainer.train(config(*MEMORY_RUNS[name]), tmp_path)
    reference = json.loads((memory_references[name] / "summary.json").read_text())
    assert stopped["stopped_by"] == "SIGTERM" and 0 < stopped["updates"] < reference["updates"]
    monkeypatch.undo()
    checkpoint, _ = find_checkpoint(tmp_path)
    assert load_state(checkpoint)["collector"]["memory"]["state"].abs().sum() > 0  # the carried state is saved
    finished = trainer.train(config(*MEMORY_RUNS[name]), tmp_path, resume_from=checkpoint)
    assert finished["stopped_by"] is None
    assert same_numbers(metrics(tmp_path), metrics(memory_references[name]))
    assert same_model(tmp_path / "model.safetensors", memory_references[name] / "model.safetensors")
    assert finished["heldout_return"] == reference["heldout_return"]


def test_mmrl_eval_works_on_a_memory_run(memory_references, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    run = memory_references["ppo-lstm"]
    main(["eval", f"run={run}", "episodes=4", "gif.episodes=1", "gif.max_steps=5"])
    results = json.loads((run / "eval" / "results.json").read_text())
    assert results["episodes"] == 4 and results["return_mean"] > 0 and "gif" in results


# --------------------------------------------------------------------- the benchmark's env
@pytest.mark.parametrize("shuffle_ends", [True, False])
def test_the_memory_cue_env_shows_the_cue_in_the_first_view_only(shuffle_ends):
    pytest.importorskip("minigrid")
    import gymnasium as gym

    import mmrl_cli.envs  # noqa: F401  (registers mmrl/MemoryCue-v0)

    env = gym.make("mmrl/MemoryCue-v0", size=7, shuffle_ends=shuffle_ends)
    seen_cues, tops = set(), set()
    for seed in range(8):
        env.reset(seed=seed)
        game = env.unwrapped
        cue = (1, game.height // 2 - 1)
        seen_cues.add(type(game.grid.get(*cue)).__name__)
        tops.add(type(game.grid.get(game.width - 2, game.height // 2 - 2)).__name__)
        visible = [game.in_view(*cue)]
        for _ in range(game.width - 3):  # walk to the split
            env.step(2)
            visible.append(game.in_view(*cue))
        assert visible[0] and not any(visible[1:])
        assert tuple(game.agent_pos) == (game.width - 2, game.height // 2)
        env.step(0 if game.success_pos[1] < game.height // 2 else 1)  # turn towards the matching object
        _, reward, terminated, _, _ = env.step(2)
        assert terminated and reward > 0
    assert seen_cues == {"Key", "Ball"}
    assert tops == ({"Key", "Ball"} if shuffle_ends else {"Key"})


# ------------------------------------------------------------------------------ bad input
@pytest.mark.parametrize("args,needle", [
    (["exp=cartpole-ppo", "model.memory=foo"], "model.memory: expected one of none, lstm, gru, got 'foo'"),
    (["model=cnn", "model.memory=lstm", "model.memory_size=0"], "model.memory_size: expected an integer in [1, 65536], got 0"),
    (["model.memory=gru", "model.memory_size=-3"], "model.memory_size"),
    (["exp=cartpole-ppo", "model.memory=lstm", "algo.batch_size=100"],
     "algo.batch_size: with model.memory=lstm a minibatch is whole env sequences: expected a multiple of rollout.n_steps=32"),
    (["model.memory=lstm", "algo=bc", "algo.demos=nowhere"], "model.memory: algo=bc"),
    (["model.memory=lstm", "compression=kickstart", "teacher=nowhere"], "model.memory: compression=kickstart"),
    (["model.memory=gru", "compression=prune", "compression.structured=true", "init_from=nowhere"],
     "model.memory: compression=prune structured"),
])
def test_bad_memory_settings_are_one_line_exit_2(tmp_path, monkeypatch, capsys, args, needle):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exit_info:
        main(["train", *args])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0] and "Traceback" not in err, err
    assert not list(tmp_path.iterdir())


def test_a_bad_memory_kind_through_the_console_is_exit_2(tmp_path):
    out = subprocess.run([sys.executable, "-m", "mmrl_cli.cli", "train", "model.memory=foo"], cwd=tmp_path,
                         capture_output=True, text=True, timeout=120, check=False)
    assert out.returncode == 2 and out.stderr.strip().count("\n") == 0 and "model.memory" in out.stderr
