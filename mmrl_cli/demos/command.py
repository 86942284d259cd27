"""`mmrl demos`: record an expert's demonstrations as a resumable dataset (docs/demos.md).

`check_demos` is the pre-flight check (one ConfigError line naming the key, nothing created);
`demos_task` is the Hydra task: pick the expert of the env (goto: the shortest-path planner;
a BabyAI level: minigrid's BabyAI bot), write the missing shards with a live progress bar, and
end with a summary table. Running the same command again continues an interrupted dataset.
"""

from __future__ import annotations

import sys
import time

from omegaconf import DictConfig

from ..config import ConfigError
from .settings import DemosConfig, validate_demos


# ---------------------------------------------------------------------------- experts
def make_expert(typed: DemosConfig):
    """The expert of `typed.data`: `GotoExpert` or `BabyAIExpert`; ConfigError where there is none."""
    from .dataset import DemoError

    if typed.data.type == "goto":
        from .planner import GotoExpert

        return GotoExpert(typed.data, typed.split, typed.seed)
    if typed.data.type == "gym":
        from .babyai import BabyAIExpert

        try:
            return BabyAIExpert(typed.data, typed.split, typed.seed)
        except DemoError as e:
            raise ConfigError(str(e)) from None
    raise ConfigError(f"data: no expert for data={typed.data.type}")


def dataset_identity(typed: DemosConfig, expert) -> dict:
    """What makes a dataset what it is (see dataset.IDENTITY_KEYS): env, expert, spec, actions, levels."""
    from .dataset import data_dict, spec_to_json

    return {"env": data_dict(typed.data), "expert": expert.description,
            "observation_spec": spec_to_json(expert.observation_spec), "num_actions": expert.num_actions,
            "levels": expert.levels()}


# -------------------------------------------------------------------------- pre-flight
def check_demos(cfg: DictConfig, overrides: list[str]) -> None:
    """Everything `mmrl demos` needs settled before it starts: a valid config, an env with an
    expert, a writable output directory that is empty or holds part of this same dataset, and
    room in memory for a shard."""
    from ..envs.spec import observation_spec_of
    from ..preflight import check_numbers, check_output_dir
    from .dataset import DemoError, check_resumable

    typed = validate_demos(cfg)
    check_numbers(typed)
    spec, _ = observation_spec_of(typed.data)  # gymnasium ids: registered, makeable, spaces mmrl takes
    expert = make_expert(typed)
    try:
        identity = dataset_identity(typed, expert)
    finally:
        expert.close()
    check_output_dir("out", typed.directory)
    try:
        check_resumable(typed.directory, identity)
    except DemoError as e:
        raise ConfigError(f"out: {e}") from None
    check_shard_memory(typed, spec, episode_steps(typed))


def episode_steps(typed: DemosConfig) -> int:
    """The most steps an episode of `typed.data` can take (its time limit)."""
    if typed.data.type == "goto":
        return typed.data.max_steps
    import gymnasium as gym

    from .babyai import quiet

    env = gym.make(typed.data.env_id, **dict(typed.data.env_kwargs))
    try:
        with quiet():
            env.reset(seed=typed.seed)  # BabyAI levels set their time limit when they lay out a level
        return int(getattr(env.unwrapped, "max_steps", 0) or env.spec.max_episode_steps or 1000)
    finally:
        env.close()


def check_shard_memory(typed: DemosConfig, spec: dict, max_steps: int) -> None:
    """A shard at its largest (every episode at the time limit), held twice while it is assembled,
    fits in the memory available."""
    from ..preflight import _gib, available_memory, observation_bytes

    per_step = observation_bytes(spec) + 8 + 4 + 1 + 1 + 8  # + action, reward, done, truncated, episode id
    needed = 2 * min(typed.shard_episodes, typed.episodes) * max_steps * per_step
    available = available_memory()
    if needed > available:
        raise ConfigError(f"shard_episodes: a shard of {typed.shard_episodes} episodes of up to {max_steps} steps may need "
                          f"{_gib(needed)}, more than the {_gib(available)} of memory available")


# ---------------------------------------------------------------------------- progress
class Progress:
    """A rich progress bar (episodes, episodes/s, the expert's success rate); plain lines per
    shard when the output is not a terminal, nothing when off."""

    def __init__(self, total: int, done: int, successes: int, label: str, enabled: bool = True):
        from rich.console import Console

        # Bound to the real stdout now: BabyAI's prints are redirected while envs step.
        self.console = Console(file=sys.stdout)
        self.total, self.done, self.successes, self.new = total, done, successes, 0
        self.start = time.perf_counter()
        self.live = enabled and self.console.is_terminal
        self.plain = enabled and not self.live
        self.bar = None
        if self.live:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress as RichProgress, TextColumn, \
                TimeElapsedColumn, TimeRemainingColumn

            self.bar = RichProgress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                                    TextColumn("{task.fields[rate]}"), TextColumn("{task.fields[success]}"),
                                    TimeElapsedColumn(), TimeRemainingColumn(), console=self.console)
            self.task = self.bar.add_task(label, total=total, completed=done, **self.fields())
            self.bar.start()

    @property
    def rate(self) -> float:
        """Episodes recorded per second in this session."""
        return self.new / max(time.perf_counter() - self.start, 1e-9)

    def fields(self) -> dict[str, str]:
        """The text columns: episodes/s and the success rate so far."""
        success = f"success {self.successes / self.done:.3f}" if self.done else "success -"
        return {"rate": f"{self.rate:,.0f} episodes/s", "success": success}

    def advance(self, episodes: int, successes: int) -> None:
        """Count `episodes` more recorded episodes, `successes` of them successful."""
        self.done += episodes
        self.new += episodes
        self.successes += successes
        if self.bar is not None:
            self.bar.update(self.task, completed=self.done, **self.fields())

    def shard_written(self, name: str) -> None:
        """A shard is on disk (a plain line when there is no live bar)."""
        if self.plain:
            fields = self.fields()
            print(f"mmrl demos: {name}: {self.done:,}/{self.total:,} episodes, {fields['rate']}, {fields['success']}",
                  flush=True)

    def close(self) -> None:
        """Stop the live display."""
        if self.bar is not None:
            self.bar.stop()


# ------------------------------------------------------------------------------- run
def run_demos(typed: DemosConfig) -> dict:
    """Write (or continue) the dataset `typed` describes; return the summary."""
    import torch

    from .dataset import DemoWriter

    expert = make_expert(typed)
    writer = DemoWriter(typed.directory, dataset_identity(typed, expert), typed.episodes, typed.shard_episodes)
    for note in writer.notes:
        print(f"mmrl demos: {note}", file=sys.stderr)
    writer.start()
    kept = writer.done["episodes"]
    if kept:
        print(f"mmrl demos: resuming {typed.directory}: {kept:,} episodes already written", file=sys.stderr)
    progress = Progress(typed.episodes, kept, writer.done["successes"], f"{expert.name} on {typed.data_name}",
                        typed.progress)
    threads = torch.get_num_threads()
    # The experts' tensor ops are small: on a busy machine, intra-op threads cost more than they
    # bring (goto, 2 cores under load: 3,200 episodes/s on one thread, 550 on two).
    torch.set_num_threads(1)
    try:
        for index, first, count in writer.pending:
            entry = writer.write(index, expert.record(first, count, progress.advance))
            progress.shard_written(entry["file"])
    finally:
        torch.set_num_threads(threads)
        progress.close()
        expert.close()
    seconds = time.perf_counter() - progress.start
    return {**writer.done, "expert": expert.name, "data": typed.data_name, "resumed_episodes": kept,
            "new_episodes": progress.new, "seconds": seconds, "episodes_per_second": progress.new / max(seconds, 1e-9),
            "path": str(typed.directory)}


def print_demos(summary: dict) -> None:
    """The table `mmrl demos` ends with."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"mmrl demos: {summary['expert']} on {summary['data']}", show_header=False)
    table.add_column()
    table.add_column(overflow="fold")
    resumed = f" ({summary['resumed_episodes']:,} from an earlier run)" if summary["resumed_episodes"] else ""
    table.add_row("episodes", f"{summary['episodes']:,}{resumed}")
    table.add_row("transitions", f"{summary['transitions']:,}")
    table.add_row("expert success rate", f"{summary['success_rate']:.4f}")
    table.add_row("mean episode length", f"{summary['mean_length']:.2f}")
    table.add_row("time", f"{summary['seconds']:.1f} s ({summary['episodes_per_second']:,.0f} episodes/s)")
    table.add_row("saved to", summary["path"])
    Console().print(table)


def demos_task(cfg: DictConfig) -> float:
    """Hydra task of `mmrl demos`: check, write or continue the dataset, summarise; returns the
    expert's success rate."""
    from ..exits import checked, interrupted_status

    typed = checked("demos", validate_demos, check_demos, cfg)
    try:
        summary = run_demos(typed)
    except KeyboardInterrupt:
        print(f"\nmmrl demos: stopped; the complete shards are kept in {typed.directory} (run the same command "
              "again to continue)", file=sys.stderr)
        raise SystemExit(interrupted_status()) from None
    print_demos(summary)
    return summary["success_rate"]
