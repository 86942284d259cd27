"""What a gymnasium observation becomes, what success means per env, and episode ends."""

import contextlib

import gymnasium as gym
import numpy as np
import pytest
import torch

from mmrl_cli.config import CnnConfig, MlpConfig, VitGpt2Config
from mmrl_cli.envs.gym_adapter import GymObservations, GymVectorEnv, UnsupportedEnvError, describe_observations
from mmrl_cli.models import build_policy
from mmrl_cli.models.heads import GRID_VALUES, ImageInput

minigrid = pytest.importorskip("minigrid")


class HandMade(gym.Env):
    """A tiny env whose observation space the test chooses; ends when told to."""

    def __init__(self, space: gym.Space, end_at: int = 3, info: dict | None = None):
        self.observation_space, self.action_space = space, gym.spaces.Discrete(2)
        self.end_at, self.info, self.t = end_at, info or {}, 0

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.t = 0
        return self.observation_space.sample(), {}

    def step(self, action):
        self.t += 1
        done = self.t >= self.end_at
        return self.observation_space.sample(), 1.0, done, False, dict(self.info) if done else {}


IMAGE_U8 = gym.spaces.Box(0, 255, (7, 7, 3), np.uint8)


def test_a_uint8_image_is_pixels_and_other_integer_images_are_symbolic():
    assert describe_observations(HandMade(IMAGE_U8)).keys == {"image"}
    assert describe_observations(HandMade(IMAGE_U8), "symbolic").keys == {"grid"}
    assert describe_observations(HandMade(gym.spaces.Box(0, 10, (5, 5, 2), np.int16))).keys == {"grid"}
    with pytest.raises(UnsupportedEnvError, match="float images"):
        describe_observations(HandMade(gym.spaces.Box(0.0, 1.0, (8, 8, 3), np.float32)))
    with pytest.raises(UnsupportedEnvError, match=r"must lie in \[0, 255\]"):
        describe_observations(HandMade(gym.spaces.Box(0, 1000, (5, 5, 2), np.int32)))


def test_minigrid_views_are_symbolic_and_its_rgb_wrapper_is_pixels():
    from minigrid.wrappers import FullyObsWrapper, RGBImgPartialObsWrapper

    env = gym.make("MiniGrid-DoorKey-5x5-v0")
    layout = describe_observations(env, constant_mission="keep")
    assert layout.image_as == "grid" and layout.mission_key == "mission"
    assert [key for key, _ in layout.vector_parts] == ["direction"] and layout.vector_size == 4
    assert describe_observations(FullyObsWrapper(env)).image_as == "grid"
    assert describe_observations(RGBImgPartialObsWrapper(env)).image_as == "image"


def test_a_constant_mission_is_left_out_and_a_varying_one_kept():
    """DoorKey's mission is always the same string (no placeholders); BabyAI's and Fetch's vary."""
    door_key = gym.make("MiniGrid-DoorKey-5x5-v0")
    dropped = describe_observations(door_key)
    assert dropped.mission_key is None and dropped.keys == {"grid", "vector"}
    assert dropped.dropped_mission == "use the key to open the door and then get to the goal"
    assert describe_observations(door_key, constant_mission="keep").keys == {"grid", "mission", "vector"}
    for env_id in ("BabyAI-GoToLocalS6N4-v0", "MiniGrid-Fetch-5x5-N2-v0"):
        layout = describe_observations(gym.make(env_id))
        assert layout.mission_key == "mission" and layout.dropped_mission is None
    text = HandMade(gym.spaces.Dict({"image": IMAGE_U8, "mission": gym.spaces.Text(20)}))
    assert describe_observations(text).keys == {"image", "mission"}  # gymnasium Text: never constant


def test_every_dict_key_reaches_the_observation():
    space = gym.spaces.Dict({
        "image": IMAGE_U8, "direction": gym.spaces.Discrete(4), "flags": gym.spaces.MultiBinary(3),
        "speed": gym.spaces.Box(-1.0, 1.0, (2,), np.float32), "mission": gym.spaces.Text(20),
    })
    layout = describe_observations(HandMade(space))
    observations = GymObservations(layout, 6, torch.device("cpu"))
    batch = {"image": np.zeros((2, 7, 7, 3), np.uint8), "direction": np.array([1, 3]),
             "flags": np.array([[1, 0, 1], [0, 0, 0]], np.int8), "speed": np.array([[0.5, -0.5], [0.0, 1.0]], np.float32),
             "mission": ("go to the red ball", "go to the red ball")}
    obs = observations.to_torch(batch, 2)
    assert set(obs) == {"image", "mission", "vector"} and obs["vector"].shape == (2, 4 + 3 + 2)
    # sorted Dict keys: direction (one-hot), flags, speed
    assert obs["vector"][0].tolist() == [0, 1, 0, 0, 1, 0, 1, 0.5, -0.5]
    assert obs["vector"][1].tolist() == [0, 0, 0, 1, 0, 0, 0, 0.0, 1.0]
    assert observations.mission_cache.keys() == {"go to the red ball"}  # tokenized once


def test_symbolic_ids_are_embedded_not_scaled():
    spec = {"grid": ((2, 2, 3), torch.uint8)}
    inputs = ImageInput(spec, grid_embed=4)
    grid = torch.zeros(1, 2, 2, 3, dtype=torch.uint8)
    grid[0, 0, 0, 0] = 5
    features = inputs({"grid": grid})
    assert features.shape == (1, 12, 2, 2)
    table = inputs.grid.embed.weight
    assert torch.equal(features[0, :4, 0, 0], table[5]) and torch.equal(features[0, :4, 1, 1], table[0])
    assert torch.equal(features[0, 4:8, 0, 0], table[GRID_VALUES])  # channel 1 has a table of its own


def test_symbolic_ids_can_be_fed_raw():
    """grid_embed=0 (the MiniGrid docs' SB3 recipe): the ids as numbers, channels first, not divided by 255."""
    inputs = ImageInput({"grid": ((2, 2, 3), torch.uint8)}, grid_embed=0)
    grid = torch.tensor([[[[5, 1, 0], [10, 0, 2]], [[0, 0, 0], [1, 1, 1]]]], dtype=torch.uint8)
    features = inputs({"grid": grid})
    assert inputs.channels == 3 and inputs.grid is None and features.dtype == torch.float32
    assert torch.equal(features, grid.permute(0, 3, 1, 2).float())


@pytest.mark.parametrize("model_cfg", [CnnConfig(), VitGpt2Config(), MlpConfig()], ids=lambda c: c.type)
def test_the_direction_reaches_every_policy(model_cfg):
    env = GymVectorEnv("MiniGrid-Empty-5x5-v0", 2, torch.device("cpu"), seed=0)
    obs = env.reset()
    env.close()
    torch.manual_seed(0)
    policy = build_policy(model_cfg, env.observation_spec, env.num_actions, 1)
    for p in policy.heads.parameters():  # the heads start near zero: give them weight so outputs differ visibly
        torch.nn.init.normal_(p)
    same = {k: v[:1].repeat(2, *[1] * (v.dim() - 1)) for k, v in obs.items()}
    same["vector"] = torch.eye(4)[[0, 2]]  # only the direction differs
    logits, values = policy(same)
    assert not torch.allclose(logits[0], logits[1]) and not torch.allclose(values[0], values[1])


def run_until_done(env: GymVectorEnv, action: int, limit: int = 1000) -> dict:
    env.reset()
    for _ in range(limit):
        _, _, terminated, truncated, info = env.step(torch.full((env.num_envs,), action))
        if len(info["done_index"]):
            return {"info": info, "terminated": terminated, "truncated": truncated}
    raise AssertionError("no episode ended")


def test_cartpole_success_is_balancing_until_the_time_limit():
    fallen = run_until_done(GymVectorEnv("CartPole-v1", 1, torch.device("cpu"), seed=0), action=1)
    assert bool(fallen["terminated"][0]) and fallen["info"]["success"].tolist() == [False]
    limited = GymVectorEnv("CartPole-v1", 1, torch.device("cpu"), seed=0, env_kwargs={"max_episode_steps": 3})
    balanced = run_until_done(limited, action=0)
    assert bool(balanced["truncated"][0]) and balanced["info"]["success"].tolist() == [True]


def test_minigrid_success_is_completing_the_mission():
    env = GymVectorEnv("MiniGrid-Empty-5x5-v0", 1, torch.device("cpu"), seed=0)
    env.reset()
    for action in (2, 2, 1, 2):  # forward, forward, turn right, forward ...
        _, reward, _, _, info = env.step(torch.tensor([action]))
    _, reward, terminated, _, info = env.step(torch.tensor([2]))  # ... onto the goal
    assert bool(terminated[0]) and float(reward[0]) > 0 and info["success"].tolist() == [True]
    limited = GymVectorEnv("MiniGrid-Empty-5x5-v0", 1, torch.device("cpu"), seed=0, env_kwargs={"max_steps": 3})
    out = run_until_done(limited, action=0)  # turning on the spot until the time limit
    assert bool(out["truncated"][0]) and out["info"]["success"].tolist() == [False]


def register(name: str, **kwargs) -> str:
    env_id = f"mmrl-test/{name}-v0"
    if env_id not in gym.registry:
        gym.register(env_id, entry_point=HandMade, kwargs=kwargs)
    return env_id


def test_the_envs_own_success_flag_wins_and_no_flag_means_undefined():
    box = gym.spaces.Box(-1.0, 1.0, (3,), np.float32)
    flagged = GymVectorEnv(register("Flagged", space=box, info={"is_success": False}), 2, torch.device("cpu"))
    assert run_until_done(flagged, 0)["info"]["success"].tolist() == [False, False]  # reward 1 but the env says no
    plain = GymVectorEnv(register("Plain", space=box), 2, torch.device("cpu"))
    assert "success" not in run_until_done(plain, 0)["info"]


def test_evaluation_reports_no_success_rate_where_undefined():
    from mmrl_cli.config import GymDataConfig, TrainConfig
    from mmrl_cli.evaluation import evaluate

    box = gym.spaces.Box(-1.0, 1.0, (3,), np.float32)
    cfg = TrainConfig(model=MlpConfig(), data=GymDataConfig(env_id=register("Plain", space=box)))
    env = GymVectorEnv(cfg.data.env_id, 1, torch.device("cpu"))
    policy = build_policy(cfg.model, env.observation_spec, env.num_actions)
    results = evaluate(policy, cfg, torch.device("cpu"), "validation", 6, True)
    assert results["success_rate"] is None and results["success_ci95"] is None
    assert results["episodes"] == 6 and results["return_mean"] == 3.0


def test_a_termination_on_the_time_limits_step_is_not_bootstrapped():
    from mmrl_cli.rollout import Collector

    box = gym.spaces.Box(-1.0, 1.0, (3,), np.float32)
    # HandMade terminates at step 3; TimeLimit truncates at step 3 too: the episode really ended.
    env = GymVectorEnv(register("EndsAt3", space=box), 2, torch.device("cpu"), env_kwargs={"max_episode_steps": 3})
    policy = build_policy(MlpConfig(), env.observation_spec, env.num_actions)
    collector = Collector(env, policy, 4, torch.device("cpu"), 0, contextlib.nullcontext)
    buffer = collector.collect()
    assert bool(buffer.dones[2].all())
    assert torch.count_nonzero(buffer.truncation_values) == 0
    cut = GymVectorEnv(register("EndsAt3", space=box), 2, torch.device("cpu"), env_kwargs={"max_episode_steps": 2})
    cut_buffer = Collector(cut, policy, 4, torch.device("cpu"), 0, contextlib.nullcontext).collect()
    assert bool((cut_buffer.truncation_values[1] != 0).all())  # cut by the limit alone: bootstrapped


def test_each_split_evaluates_on_its_own_env_seeds(monkeypatch):
    """Validation and held-out episodes of a gymnasium env start from different seed ranges."""
    from mmrl_cli import evaluation
    from mmrl_cli.config import GymDataConfig, TrainConfig
    from mmrl_cli.envs import SPLIT_SEED_OFFSETS

    seeds = {}
    original = GymVectorEnv.reset

    def recording_reset(self, seed=None):
        seeds.setdefault(current_split, []).append(self.seed if seed is None else seed)
        return original(self, seed)

    monkeypatch.setattr(GymVectorEnv, "reset", recording_reset)
    cfg = TrainConfig()
    cfg.data = GymDataConfig(env_id="CartPole-v1")
    policy = build_policy(MlpConfig(), {"vector": ((4,), torch.float32)}, 2, 1)
    for current_split in ("validation", "heldout"):
        evaluation.evaluate(policy, cfg, torch.device("cpu"), current_split, 2, True, seed=7)
    assert seeds == {"validation": [7 + SPLIT_SEED_OFFSETS["validation"]], "heldout": [7 + SPLIT_SEED_OFFSETS["heldout"]]}


def test_async_vectorization_handles_text_missions():
    """MiniGrid's MissionSpace has no shared-memory form: async runs without it, same observations."""
    sync = GymVectorEnv("MiniGrid-DoorKey-5x5-v0", 2, torch.device("cpu"), seed=3)
    parallel = GymVectorEnv("MiniGrid-DoorKey-5x5-v0", 2, torch.device("cpu"), seed=3, vectorization="async")
    try:
        for a, b in [(sync.reset(), parallel.reset()), (sync.step(torch.tensor([2, 1]))[0], parallel.step(torch.tensor([2, 1]))[0])]:
            assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    finally:
        sync.close()
        parallel.close()
