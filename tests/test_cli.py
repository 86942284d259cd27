"""The `mmrl` command line: help, config printing, real short runs, and bad input."""

import json
import subprocess
import sys

import pytest
import yaml
from safetensors.torch import load_file

TINY = ["total_steps=1024", "rollout.n_envs=8", "rollout.n_steps=16", "algo.batch_size=64", "algo.n_epochs=1",
        "eval.episodes=8", "eval.every_steps=512", "hardware.threads=1"]


def test_help_lists_commands_and_every_group_option(run_mmrl):
    out = run_mmrl("--help")
    assert out.returncode == 0
    for word in ("train", "eval", "sweep", "compress", "compare", "algo", "ppo", "a2c", "model", "vit-gpt2", "cnn", "mlp", "data", "goto", "cartpole", "gym",
                 "hardware", "auto", "cpu", "gpu", "compression", "none", "exp", "cartpole-ppo", "cartpole-a2c"):
        assert word in out.stdout


def test_help_config_printing_and_completion_do_not_load_torch(run_mmrl):
    """`mmrl --help`, `mmrl <command> --help`, `--cfg job`, tab completion and a mistyped option or value
    of `mmrl train` answer without loading torch (~2 s of every answer otherwise; completion runs on
    each TAB)."""
    script = (
        "import contextlib, io, os, sys\n"
        "from mmrl_cli.cli import main\n"
        "os.environ['COMP_LINE'] = 'mmrl train mod'\n"
        "for argv in (['--help'], ['train', '--help'], ['eval', '--help'], ['train', '--cfg', 'job'],\n"
        "             ['-sc', 'query=bash'], ['train', 'model=transformerxl'], ['train', 'algo.lr=-1']):\n"
        "    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()), \\\n"
        "            contextlib.suppress(SystemExit):\n"
        "        main(argv)\n"
        "print(sorted(m for m in ('torch', 'transformers') if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", script], cwd=run_mmrl.cwd, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]", out.stdout


@pytest.mark.parametrize("command", ["demos", "eval", "train"])
def test_a_commands_help_lists_only_the_groups_it_takes(run_mmrl, command):
    from mmrl_cli.compose import COMMAND_GROUPS

    out = run_mmrl(command, "--help")
    assert out.returncode == 0, out.stderr
    groups_part = out.stdout.split("== Config ==")[0].split("(group=option)")[1]
    listed = [line.split(":")[0] for line in groups_part.splitlines() if line.strip()]
    assert listed == list(COMMAND_GROUPS[command])  # demos: data alone (no exp, which it refuses)
    assert "seed:" in out.stdout  # the composed config follows


def test_cfg_job_prints_the_composed_config(run_mmrl):
    out = run_mmrl("train", "--cfg", "job", "model=cnn", "algo.lr=0.01")
    assert out.returncode == 0, out.stderr
    cfg = yaml.safe_load(out.stdout)
    assert cfg["model"]["type"] == "cnn" and cfg["algo"]["lr"] == 0.01
    assert not list(run_mmrl.cwd.iterdir())  # printing the config creates nothing


def test_short_train_run_writes_a_complete_run_directory(run_mmrl):
    out = run_mmrl("train", *TINY, "runs_root=out", "run_name=smoke")
    assert out.returncode == 0, out.stderr
    (run_dir,) = list((run_mmrl.cwd / "out").glob("*/*-smoke"))
    assert "held-out success rate" in out.stdout and str(run_dir.name) in out.stdout
    assert yaml.safe_load((run_dir / "config.yaml").read_text())["total_steps"] == 1024
    weights = load_file(str(run_dir / "model.safetensors"))
    assert any(name.startswith("vit.") for name in weights) and any(name.startswith("gpt.") for name in weights)
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["steps"] == 1024 and 0.0 <= summary["heldout_success_rate"] <= 1.0
    assert list((run_dir / "tb").glob("events.out.tfevents.*"))


def test_tensorboard_has_the_documented_tags(run_mmrl):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = run_mmrl("train", *TINY, "model=cnn", "runs_root=out", "data.num_train_levels=20")
    assert out.returncode == 0, out.stderr
    (tb,) = list(run_mmrl.cwd.glob("out/*/*/tb"))
    tags = set(EventAccumulator(str(tb)).Reload().Tags()["scalars"])
    expected = {"charts/episodic_return", "charts/success_rate", "charts/episode_length", "losses/policy",
                "losses/value", "losses/entropy", "losses/approx_kl", "losses/clipfrac", "policy/entropy",
                "losses/explained_variance", "perf/sps", "perf/update_seconds", "grad/global_norm",
                "grad/conv_norm", "grad/heads_norm", "eval/success_rate", "eval/validation_success_rate",
                "eval/heldout_success_rate", "eval/generalization_gap", "numerics/skipped_steps"}
    assert expected <= tags, expected - tags


def test_a2c_trains_through_the_cli_with_the_same_run_directory(run_mmrl):
    out = run_mmrl("train", "algo=a2c", *TINY[:3], "eval.episodes=8", "eval.every_steps=512", "hardware.threads=1",
                   "runs_root=out")
    assert out.returncode == 0, out.stderr
    (run_dir,) = list((run_mmrl.cwd / "out").glob("*/*"))
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 1024 // (8 * 16) and {"loss_policy", "loss_value", "loss_entropy", "entropy"} <= set(rows[0])
    assert yaml.safe_load((run_dir / "config.yaml").read_text())["algo"]["type"] == "a2c"
    assert (run_dir / "checkpoints" / "latest").is_file() and (run_dir / "model.safetensors").is_file()


@pytest.mark.slow  # a learning check (~12 s): run with -m slow; the adapter itself is tested in process
def test_gymnasium_cartpole_learns_through_the_gym_adapter(run_mmrl):
    """gymnasium's own CartPole-v1 (numpy, SyncVectorEnv) through `data=gym`: it must learn, not only run.

    A uniformly random policy keeps the pole up ~22 steps; 30k steps of rl-zoo3's PPO get far beyond.
    """
    out = run_mmrl("train", "exp=cartpole-ppo", "data=gym", "data.env_id=CartPole-v1", "total_steps=30000",
                   "eval.episodes=16", "runs_root=out", "hardware.threads=1", "monitor.tensorboard=false")
    assert out.returncode == 0, out.stderr
    (summary,) = list(run_mmrl.cwd.glob("out/*/*/summary.json"))
    assert json.loads(summary.read_text())["heldout_return"] > 150


def test_multirun_makes_one_run_per_seed(run_mmrl):
    out = run_mmrl("train", "-m", "seed=1,2", *TINY, "model=mlp", "runs_root=out")
    assert out.returncode == 0, out.stderr
    summaries = list(run_mmrl.cwd.glob("out/multirun/*/*/*/summary.json"))
    assert len(summaries) == 2
    seeds = sorted(yaml.safe_load((s.parent / "config.yaml").read_text())["seed"] for s in summaries)
    assert seeds == [1, 2]


@pytest.mark.slow  # a second process or a kill/restart cycle: run with -m slow
def test_shell_completion(run_mmrl):
    out = run_mmrl("-sc", "install=bash")
    assert out.returncode == 0 and "complete" in out.stdout
    out = run_mmrl("-sc", "query=bash", env={"COMP_LINE": "mmrl tr"})
    assert out.stdout.split() == ["train"]
    out = run_mmrl("-sc", "query=bash", env={"COMP_LINE": "mmrl train mod"})
    assert "model=" in out.stdout.split() or "model." in out.stdout


# A few cases through a real process (the console path end to end); the full table of hostile
# inputs runs in-process in test_hostile_input.py.
@pytest.mark.parametrize(
    "args,needle",
    [
        (["train", "algo.lr=-0.1"], "algo.lr"),
        (["train", "model=transformerxl"], "model=transformerxl"),
        (["trian"], "unknown command"),
        (["train", "-m", "seed=1,x"], "seed"),
        (["eval", "run=nowhere"], "run: nowhere does not exist"),
        (["train", "--cfg", "nonsense"], "--cfg/-c: invalid choice: 'nonsense'"),
        (["train", "hydra.run.dir=elsewhere"], "hydra.run.dir: cannot be overridden"),
        (["train", "data=cartpole", "model=mlp", "hardware=ddp", "hardware.device=cpu", "hardware.backend=nccl"],
         "hardware.backend: nccl needs CUDA devices"),
    ],
)
def test_bad_input_is_one_line_exit_2_and_creates_nothing(run_mmrl, args, needle):
    out = run_mmrl(*args, "runs_root=out") if args[0] == "train" and len(args) > 1 and not args[1].startswith("--") else run_mmrl(*args)
    assert out.returncode == 2, (out.stdout, out.stderr)
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1, out.stderr
    assert needle in lines[0] and "Traceback" not in out.stderr
    assert not list(run_mmrl.cwd.iterdir())


@pytest.mark.slow
def test_cartpole_is_solved_with_rl_zoo_settings(run_mmrl):
    out = run_mmrl("train", "exp=cartpole-ppo", "runs_root=out", "hardware.threads=1", timeout=600)
    assert out.returncode == 0, out.stderr
    (summary,) = list(run_mmrl.cwd.glob("out/*/*/summary.json"))
    assert json.loads(summary.read_text())["heldout_return"] >= 475


@pytest.mark.slow
def test_the_default_goto_run_learns(run_mmrl):
    """Half the default run (200k steps, ~3.5 minutes on 2 cores): validation success far above chance (~0.1)."""
    out = run_mmrl("train", "total_steps=200000", "runs_root=out", timeout=900)
    assert out.returncode == 0, out.stderr
    (summary,) = list(run_mmrl.cwd.glob("out/*/*/summary.json"))
    assert json.loads(summary.read_text())["validation_success_rate"] >= 0.8


def test_a_node_other_than_0_checks_that_the_rendezvous_answers(monkeypatch):
    """nnodes > 1, node_rank > 0: node 0's rendezvous store must answer within a few seconds
    (otherwise torchrun would wait silently for minutes); node 0 and single machines do not ask."""
    import socket
    from types import SimpleNamespace

    from torch.distributed import TCPStore

    from mmrl_cli import launcher as cli
    from mmrl_cli.config import ConfigError

    monkeypatch.setattr(cli, "RENDEZVOUS_TIMEOUT_S", 1)
    for variable in ("LOCAL_RANK", cli.RUN_DIR_VARIABLE):
        monkeypatch.delenv(variable, raising=False)
    server = TCPStore("localhost", 0, is_master=True, wait_for_workers=False)
    cli.check_rendezvous(SimpleNamespace(nnodes=2, node_rank=1, rdzv_endpoint=f"localhost:{server.port}"))
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("localhost", 0))
        closed = probe.getsockname()[1]
    with pytest.raises(ConfigError, match=f"hardware.rdzv_endpoint: no rendezvous answers at localhost:{closed} within 1 s"):
        cli.check_rendezvous(SimpleNamespace(nnodes=2, node_rank=1, rdzv_endpoint=f"localhost:{closed}"))
    cli.check_rendezvous(SimpleNamespace(nnodes=2, node_rank=0, rdzv_endpoint=f"localhost:{closed}"))  # hosts it
    cli.check_rendezvous(SimpleNamespace(nnodes=1, node_rank=0, rdzv_endpoint=f"localhost:{closed}"))


def test_hydra_search_path_and_launcher_overrides_are_still_accepted(tmp_path):
    """Only Hydra's output settings are refused; the search path and the launcher are not."""
    from mmrl_cli.cli import COMMANDS
    from mmrl_cli.compose import check_overrides

    check_overrides("train", ["data=cartpole", "model=mlp", "hydra/launcher=basic", f"hydra.searchpath=[file://{tmp_path}]",
                              "hydra.verbose=true"], COMMANDS["train"].check)


def test_env_prints_to_stdout_do_not_reach_the_console(capfd):
    """BabyAI prints "Sampling rejected: ..." for rejected level draws (about one reset in ten):
    mmrl's gymnasium adapter drops what envs print to stdout (in sync and async vector envs)."""
    pytest.importorskip("minigrid")
    import gymnasium as gym
    import torch

    from mmrl_cli.envs.gym_adapter import GymVectorEnv, import_env_packages

    import_env_packages()
    raw = gym.make("BabyAI-GoToLocal-v0")
    for seed in range(100):
        raw.reset(seed=seed)
    assert "Sampling rejected" in capfd.readouterr().out  # the env does print
    for vectorization in ("sync", "async"):
        env = GymVectorEnv("BabyAI-GoToLocal-v0", 4, torch.device("cpu"), vectorization=vectorization)
        for seed in range(25):
            env.reset(seed=4 * seed)
        for _ in range(50):
            env.step(torch.randint(0, env.num_actions, (4,)))
        env.close()
        assert "Sampling rejected" not in capfd.readouterr().out, vectorization
