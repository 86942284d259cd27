"""Record a few evaluation episodes and write them as an annotated GIF.

Each frame shows what the agent saw (upscaled), the instruction on a band above it, and the
episode, step and return so far below it; the last frame of an episode says how it ended.
Built-in envs are drawn from their own state (the goto image, a sketch of the cart and pole);
gymnasium envs through their ``rgb_array`` renderer.
"""

from __future__ import annotations

import contextlib
import math
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from .distributions import act, remember_action
from .checkpoint import publish, temp_path
from .config import TrainConfig
from .envs import make_env, split_seed
from .text import tokenizer_for

MIN_SIDE = 240  # frames are upscaled (nearest neighbour) to at least this many pixels a side
BAND = 22       # height of the text bands above and below the picture
CARTPOLE_SIZE = (160, 240)  # (height, width) of the CartPole sketch


class GifUnavailable(RuntimeError):
    """The env cannot draw frames (e.g. a gymnasium env without an rgb_array renderer)."""


class BuiltinEpisodes:
    """One sub-env of a built-in batched env (goto or CartPole), played episode by episode."""

    def __init__(self, cfg: TrainConfig, device: torch.device, split: str, seed: int):
        self.kind = cfg.data.type
        self.env = make_env(cfg.data, 1, device, seed, split, tokenizer_for(cfg.model))
        self.obs = self.env.reset(seed=split_seed(cfg.data, seed, split))
        self.finished = True

    def new_episode(self) -> None:
        if not self.finished:  # the previous recording stopped early: start afresh
            self.obs = self.env.reset()
        self.finished = False

    def caption(self) -> str:
        if self.kind == "goto":
            return self.env.tokenizer.decode(self.obs["mission"][0])
        return "CartPole-v1: keep the pole upright"

    def picture(self, obs: dict | None = None) -> np.ndarray:
        obs = self.obs if obs is None else obs
        if self.kind == "goto":
            return obs["image"][0].cpu().numpy().copy()
        return draw_cartpole(obs["vector"][0].tolist())

    def step(self, action: torch.Tensor) -> tuple[np.ndarray, float, bool, bool]:
        obs, reward, terminated, truncated, info = self.env.step(action)
        done = bool(terminated[0] | truncated[0])
        picture = self.picture(info["final_obs"] if done else obs)
        self.obs, self.finished = obs, done
        return picture, float(reward[0]), done, bool(info["success"][0]) if done else None


class GymEpisodes:
    """One gymnasium env with its ``rgb_array`` renderer, played episode by episode."""

    def __init__(self, cfg: TrainConfig, device: torch.device, split: str, seed: int):
        import gymnasium as gym

        from .envs.gym_adapter import GymObservations, SUCCESS_RULES, describe_observations, env_family, import_env_packages

        import_env_packages()
        self.env_id = cfg.data.env_id
        try:
            self.env = gym.make(self.env_id, render_mode="rgb_array", **dict(cfg.data.env_kwargs))
            self.raw, _ = self.env.reset(seed=split_seed(cfg.data, seed, split))
            self.env.render()
        except Exception as e:  # no renderer, a missing optional dependency, ...
            raise GifUnavailable(f"{self.env_id} cannot render rgb_array frames ({str(e).splitlines()[0]})") from None
        layout = describe_observations(self.env, cfg.data.image, cfg.data.constant_mission)
        self.converter = GymObservations(layout, cfg.data.mission_tokens, device, tokenizer_for(cfg.model))
        self.success_rule = SUCCESS_RULES.get(env_family(self.env))
        self.finished = True

    @property
    def obs(self) -> dict[str, torch.Tensor]:
        return self.converter.single_to_torch(self.raw)

    def new_episode(self) -> None:
        if not self.finished:
            self.raw, _ = self.env.reset()
        self.finished = False

    def caption(self) -> str:
        if isinstance(self.raw, dict) and "mission" in self.raw:
            return str(self.raw["mission"])
        return self.env_id

    def picture(self) -> np.ndarray:
        return np.asarray(self.env.render(), dtype=np.uint8)

    def step(self, action: torch.Tensor) -> tuple[np.ndarray, float, bool, bool | None]:
        """Frame, reward, episode over, success (None: not over, or the env does not define it)."""
        from .envs.gym_adapter import SUCCESS_INFO_KEYS

        space = self.env.action_space
        # Discrete: an id (offset by the space's start); Box: the action vector, as the policy gives it
        chosen = int(action[0]) + int(space.start) if hasattr(space, "start") else action[0].cpu().numpy()
        self.raw, reward, terminated, truncated, info = self.env.step(chosen)
        picture = self.picture()
        done = bool(terminated or truncated)
        success = None
        if done:
            flags = [bool(info[k]) for k in SUCCESS_INFO_KEYS if k in info]
            if flags:
                success = flags[0]
            elif self.success_rule is not None:
                success = bool(self.success_rule(np.array(terminated), np.array(truncated), np.array(reward)))
            self.raw, _ = self.env.reset()
        self.finished = done
        return picture, float(reward), done, success


def draw_cartpole(state: list[float]) -> np.ndarray:
    """A 240x160 sketch of a CartPole state (x, x_dot, theta, theta_dot)."""
    (height, width), ground = CARTPOLE_SIZE, 120
    image = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(image)
    cart_x = width / 2 + state[0] / 2.4 * (width / 2 - 20)
    draw.line([(0, ground), (width, ground)], fill=(0, 0, 0))
    draw.rectangle([cart_x - 20, ground - 12, cart_x + 20, ground + 4], fill=(40, 40, 40))
    tip = (cart_x + 80 * math.sin(state[2]), ground - 12 - 80 * math.cos(state[2]))
    draw.line([(cart_x, ground - 12), tip], fill=(200, 120, 60), width=6)
    return np.asarray(image)


@torch.inference_mode()
def record_episodes(policy, cfg: TrainConfig, device: torch.device, split: str, episodes: int, deterministic: bool,
                    seed: int, max_steps: int, autocast=contextlib.nullcontext, imagined: int = 0) -> list[dict]:
    """Play `episodes` episodes (at most `max_steps` steps recorded each); keep their frames.

    `imagined` > 0 (a world-model policy: ``imagine_next`` and ``decode_state``, `algo=dreamer`): each
    frame shows the decoder's view beside the real one: for the first `imagined` steps a one-step
    prediction from the state that has seen the real observations, then open loop (the prior alone,
    fed the actions actually taken), so the picture shows what the model imagines the episode becomes.
    """
    session = GymEpisodes(cfg, device, split, seed) if cfg.data.type == "gym" else BuiltinEpisodes(cfg, device, split, seed)
    generator = torch.Generator(device=device)
    generator.manual_seed(seed)
    recorded = []
    recurrent = bool(getattr(policy, "recurrent", False))
    describe = getattr(policy, "describe", None)  # a hierarchical agent names its current sub-goal
    tokenizer = tokenizer_for(cfg.model) if describe is not None else None
    for _ in range(episodes):
        session.new_episode()
        caption, frames, rewards, notes = session.caption(), [session.picture()], [], [""]
        done, success = False, False
        if recurrent:  # a recurrent policy starts each episode from the zero state
            state, starts = policy.initial_state(1, device), torch.ones(1, device=device)
        dream = None  # the world model's imagined state (`imagined`)
        while not done and len(rewards) < max_steps:
            with autocast():
                if recurrent:
                    params, _, state = policy.step(session.obs, state.float(), starts)
                    starts = torch.zeros(1, device=device)
                else:
                    params, _ = policy(session.obs)
            if describe is not None:
                notes.append(describe(session.obs, state, tokenizer))  # the sub-goal this step works towards
            if imagined and len(rewards) == 0:  # the first frame: the decoder's view of the first observation
                frames[0] = beside(frames[0], decoded_picture(policy, state, session, frames[0]))
            dist = policy.distribution(params)
            actions = act(dist, deterministic, generator)
            if recurrent:
                state = remember_action(policy, state.float(), actions)
            picture, reward, done, success = session.step(dist.to_env(actions))
            if imagined:
                source = state if len(rewards) < imagined else remember_action(policy, dream, actions)
                dream = policy.imagine_next(source)
                picture = beside(picture, decoded_picture(policy, dream, session, picture))
            frames.append(picture)
            rewards.append(reward)
        if not done:
            outcome = f"not finished after {max_steps} steps"
        elif success is None:  # the env does not define success
            outcome = f"return {sum(rewards):.2f} in {len(rewards)} steps"
        else:
            outcome = "success" if success else "failed"
        if imagined:
            caption = f"{caption}  |  real : imagined (open loop after {imagined} steps)"
        recorded.append({"caption": caption, "frames": frames, "rewards": rewards, "outcome": outcome,
                         "notes": notes if describe is not None else None})
    return recorded


def decoded_picture(policy, state: torch.Tensor, session, like: np.ndarray) -> np.ndarray:
    """What a world-model policy's decoder makes of `state`, drawn as a picture of `like`'s height:
    CartPole's sketch of the decoded state; a decoded (pooled) RGB image upscaled; a decoded symbolic
    grid's ids as grey levels (the agent's view, not the renderer's picture)."""
    from .models.dreamer import split_target

    spec = {name: (tuple(value.shape[1:]), value.dtype) for name, value in session.obs.items()}
    decoded = split_target(policy.decode_state(state.float()).float(), spec)
    if "image" in decoded:
        picture = (decoded["image"][0].cpu().numpy() * 255).round().astype(np.uint8)
    elif "grid" in decoded:
        ids = decoded["grid"][0].cpu().numpy()
        picture = np.clip(ids / 10.0 * 255, 0, 255).round().astype(np.uint8)[..., :3]
        picture = np.pad(picture, ((0, 0), (0, 0), (0, 3 - picture.shape[2])))
    else:
        picture = draw_cartpole(decoded["vector"][0].tolist())
    height = like.shape[0]
    scale = height / picture.shape[0]
    image = Image.fromarray(picture).resize((max(1, round(picture.shape[1] * scale)), height), Image.NEAREST)
    return np.asarray(image)


def beside(left: np.ndarray, right: np.ndarray) -> np.ndarray:
    """Two pictures of the same height side by side, a white 2-pixel line between them."""
    line = np.full((left.shape[0], 2, 3), 255, dtype=np.uint8)
    return np.concatenate([left[..., :3], line, right[..., :3]], axis=1)


def steps_recorded(data_cfg, max_steps: int) -> int:
    """At most how many steps of one episode are recorded: `max_steps`, or the env's own time limit
    when that is shorter (built-in envs; a gymnasium env's limit is known only once it is made)."""
    limit = getattr(data_cfg, "max_steps", None)
    return min(max_steps, limit) if limit else max_steps


def frame_bytes(data_cfg, observation_spec: dict, imagined: bool = False) -> int:
    """Bytes one recorded frame holds until the GIF is written: the picture as seen (RGB) and as
    drawn by `annotate` (upscaled, two text bands; PIL keeps an RGB pixel in 4 bytes). A gymnasium
    renderer's size is known only once it draws: its image observation's size, else MIN_SIDE.
    `imagined`: the decoder's view stands beside each picture (`beside`), twice as wide."""
    if data_cfg.type == "cartpole":
        height, width = CARTPOLE_SIZE
    elif "image" in observation_spec:
        height, width = observation_spec["image"][0][:2]
    else:
        height = width = MIN_SIDE
    if imagined:
        width = 2 * width + 2
    scale = max(1, math.ceil(MIN_SIDE / max(height, width)))
    return 3 * height * width + 4 * (width * scale) * (height * scale + 3 * BAND)  # up to two lines above


def _font(size: int):
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError):  # Pillow without FreeType: the fixed bitmap font
        return ImageFont.load_default()


def annotate(picture: np.ndarray, top: str, bottom: str, lines: int = 1) -> Image.Image:
    """The picture upscaled to at least MIN_SIDE pixels, with text bands above (`lines` lines of
    text: a hierarchical agent's sub-goal under the instruction) and below."""
    height, width = picture.shape[:2]
    scale = max(1, math.ceil(MIN_SIDE / max(height, width)))
    image = Image.fromarray(picture).resize((width * scale, height * scale), Image.NEAREST)
    top_band = BAND + (lines - 1) * (BAND - 6)
    canvas = Image.new("RGB", (image.width, image.height + top_band + BAND), (24, 24, 24))
    canvas.paste(image, (0, top_band))
    draw = ImageDraw.Draw(canvas)
    font = _font(13)
    draw.multiline_text((6, 4), top, fill=(255, 255, 255), font=font, spacing=3)
    draw.text((6, image.height + top_band + 4), bottom, fill=(220, 220, 120), font=font)
    return canvas


def write_gif(episodes: list[dict], path: Path, fps: int) -> None:
    """Write the recorded episodes one after another as a looping GIF (atomically)."""
    frames = []
    for number, episode in enumerate(episodes, 1):
        total = 0.0
        for step, picture in enumerate(episode["frames"]):
            if step:
                total += episode["rewards"][step - 1]
            bottom = f"episode {number}/{len(episodes)}  step {step}  return {total:.2f}"
            last = step == len(episode["frames"]) - 1
            notes = episode.get("notes")
            top = f"{episode['caption']}\n{notes[step]}" if notes else episode["caption"]  # + the chosen sub-goal
            frame = annotate(picture, top, f"{bottom}  {episode['outcome']}" if last else bottom, lines=2 if notes else 1)
            frames.extend([frame] * (fps if last else 1))  # hold the outcome for a second
    tmp = temp_path(path)
    frames[0].save(tmp, format="GIF", save_all=True, append_images=frames[1:], duration=int(1000 / fps), loop=0)
    publish(tmp, path)
