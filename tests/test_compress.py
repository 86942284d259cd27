"""mmrl compress and the training-time compression methods: pruning masks and schedules,
structured pruning = masked dense, SVD error vs energy, distillation and kickstarting losses,
compact sparse files, compressed runs that eval and resume, and one-line errors."""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path

import pytest
import torch
from torch import nn

from mmrl_cli.algos.distill import distill_loss
from mmrl_cli.builders import build_env_and_policy, policy_for_weights
from mmrl_cli.checkpoint import read_weights, save_weights
from mmrl_cli.compress.kickstart import Kickstart, annealed
from mmrl_cli.compress.lowrank import factorise, factorise_policy, rank_for_energy
from mmrl_cli.compress.structure import STRUCTURE_NOTE
from mmrl_cli.compress.structured import groups_of, mask_units, remove_units, units_to_keep
from mmrl_cli.compress.unstructured import (GradualPruning, cubic_sparsity, magnitude_masks, prunable_weights,
                                            sparsity_of)
from mmrl_cli.compose import compose_train_config
from mmrl_cli.config import KickstartCompression, PruneCompression

TINY = ["model=vit-gpt2-tiny", "rollout.n_envs=16", "rollout.n_steps=16", "algo.batch_size=128", "eval.episodes=10",
        "eval.every_steps=100000", "monitor.progress=false", "monitor.tensorboard=false", "hardware.threads=1"]


def policy_and_obs(overrides: list[str], n: int = 8):
    torch.manual_seed(0)
    cfg = compose_train_config(overrides)
    env, policy = build_env_and_policy(cfg, n, torch.device("cpu"))
    with torch.no_grad():  # non-zero biases everywhere, so a forgotten bias would show
        for p in policy.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return cfg, policy.eval(), env.reset()


# ------------------------------------------------------------------------ unstructured
@pytest.mark.parametrize("scope", ["global", "layer"])
def test_magnitude_masks_reach_the_sparsity(scope):
    _, policy, _ = policy_and_obs(TINY)
    weights = prunable_weights(policy)
    masks = magnitude_masks(weights, 0.9, scope)
    total = sum(m.numel() for m in masks.values())
    dropped = sum(int((~m).sum()) for m in masks.values())
    assert abs(dropped / total - 0.9) < 0.01
    if scope == "layer":
        for name, mask in masks.items():
            assert abs((~mask).float().mean().item() - 0.9) < 1.0 / mask.numel() + 1e-6, name
    kept = torch.cat([w.detach().abs()[m].flatten() for w, m in zip(weights.values(), masks.values())])
    gone = torch.cat([w.detach().abs()[~m].flatten() for w, m in zip(weights.values(), masks.values())])
    if scope == "global":  # one threshold: every kept weight is at least as large as every pruned one
        assert kept.min() >= gone.max()


def test_cubic_schedule_endpoints_and_shape():
    assert cubic_sparsity(0, 10, 110, 0.9) == 0.0
    assert cubic_sparsity(10, 10, 110, 0.9) == 0.0
    assert cubic_sparsity(110, 10, 110, 0.9) == 0.9
    assert cubic_sparsity(500, 10, 110, 0.9) == 0.9
    middle = cubic_sparsity(60, 10, 110, 0.9)
    assert math.isclose(middle, 0.9 * (1 - 0.5**3))  # fast at first: 7/8 of the way at half time


def test_gradual_pruning_keeps_pruned_weights_at_zero_through_optimiser_steps():
    _, policy, obs = policy_and_obs(TINY)
    optimizer = torch.optim.Adam(policy.parameters(), lr=1e-2)
    cfg = PruneCompression(sparsity=0.8, steps=2, start_fraction=0.0, end_fraction=0.5)
    pruning = GradualPruning(cfg, policy, optimizer, total_updates=4)

    class P:
        update = 0
    progress, metrics = P(), {}
    for update in range(1, 5):
        logits, values = policy(obs)
        (logits.square().mean() + values.square().mean()).backward()
        optimizer.step()
        optimizer.zero_grad()
        progress.update = update
        pruning.on_update(progress, metrics)
    assert abs(metrics["sparsity"] - 0.8) < 0.01
    zeros = {n: w == 0 for n, w in prunable_weights(policy).items()}
    logits, values = policy(obs)
    (logits.square().mean() + values.square().mean()).backward()
    optimizer.step()  # the step hook puts the pruned weights back to zero
    assert all(bool((w[zeros[n]] == 0).all()) for n, w in prunable_weights(policy).items())


def test_sparse_weights_file_is_smaller_and_round_trips(tmp_path):
    _, policy, _ = policy_and_obs(TINY)
    save_weights(policy.state_dict(), tmp_path / "dense.safetensors")
    weights = prunable_weights(policy)
    masks = magnitude_masks(weights, 0.9, "global")
    with torch.no_grad():
        for name, w in weights.items():
            w.mul_(masks[name])
    save_weights(policy.state_dict(), tmp_path / "sparse.safetensors")
    assert (tmp_path / "sparse.safetensors").stat().st_size < 0.5 * (tmp_path / "dense.safetensors").stat().st_size
    loaded = read_weights(tmp_path / "sparse.safetensors")
    for name, tensor in policy.state_dict().items():
        assert torch.equal(loaded[name], tensor), name
    assert sparsity_of(weights) > 0.89


# -------------------------------------------------------------------------- structured
@pytest.mark.parametrize("overrides", [TINY, TINY + ["model=cnn", "model.channels=[8,16]", "model.hidden=32",
                                                     "model.head_hidden=[16]"],
                                       ["data=cartpole", "model=mlp", "model.hidden_sizes=[16,8]"]], ids=["vit-gpt2", "cnn", "mlp"])
def test_structured_pruning_equals_the_masked_dense_model(overrides):
    _, policy, obs = policy_and_obs(overrides)
    masked, pruned = copy.deepcopy(policy), copy.deepcopy(policy)
    # Removing residual channels also changes LayerNorm statistics: not a masked dense model (tested below).
    keeps = {g.name: units_to_keep(dict(policy.named_parameters()), g, 0.5) for g in groups_of(policy)
             if g.name != "residual channels"}
    assert len(keeps) >= (2 if "model=mlp" in overrides else 4)
    for group in groups_of(masked):
        if group.name in keeps:
            mask_units(masked, group, keeps[group.name])
    for name, keep in keeps.items():  # a group's own units do not move when another group shrinks
        group = next(g for g in groups_of(pruned) if g.name == name)
        remove_units(pruned, group, keep)
        from mmrl_cli.compress.structure import sync_attention
        sync_attention(pruned)
    assert sum(p.numel() for p in pruned.parameters()) < 0.6 * sum(p.numel() for p in policy.parameters())
    with torch.no_grad():
        for a, b in zip(masked(obs), pruned(obs)):
            assert torch.allclose(a, b, atol=1e-5), (a - b).abs().max()


def test_pruned_and_factorised_models_rebuild_from_their_weights_file(tmp_path):
    from mmrl_cli.compress.structured import prune_structured

    cfg, policy, obs = policy_and_obs(["model=vit-gpt2"])
    rows = {r["group"]: r for r in prune_structured(policy, 0.5)}
    assert rows["residual channels"]["kept"] == 24 and policy.vit.layernorm.normalized_shape == (24,)
    assert rows["gpt.h.0.crossattention heads"]["kept"] == 1 and policy.gpt.h[0].crossattention.num_heads == 1
    factorise_policy(policy, rank=8, energy=1.0, min_size=1024)
    assert any(type(m).__name__ == "LowRankLinear" for m in policy.modules())
    save_weights(policy.state_dict(), tmp_path / "model.safetensors", STRUCTURE_NOTE)
    rebuilt = policy_for_weights(cfg, tmp_path / "model.safetensors", torch.device("cpu"))
    rebuilt.load_state_dict(read_weights(tmp_path / "model.safetensors"))
    with torch.no_grad():
        assert torch.allclose(rebuilt.eval()(obs)[0], policy(obs)[0], atol=1e-6)


# ----------------------------------------------------------------------------- low rank
def test_rank_for_energy_on_a_known_spectrum():
    s = torch.tensor([3.0, 2.0, 1.0, 0.0])  # squares 9, 4, 1: cumulative 9/14, 13/14, 1
    assert rank_for_energy(s, 0.5) == 1
    assert rank_for_energy(s, 0.9) == 2
    assert rank_for_energy(s, 13 / 14) == 2
    assert rank_for_energy(s, 0.99) == 3


@pytest.mark.parametrize("energy", [0.5, 0.8, 0.95])
@pytest.mark.parametrize("kind", ["linear", "conv1d"])
def test_svd_reconstruction_error_is_within_the_energy_bound(energy, kind):
    from transformers.pytorch_utils import Conv1D

    torch.manual_seed(0)
    layer = nn.Linear(96, 64) if kind == "linear" else Conv1D(64, 96)  # Conv1D(nf=out, nx=in)
    with torch.no_grad():  # a decaying spectrum, as trained weights have
        decaying = torch.randn(64, 96) * (0.7 ** torch.arange(96.0))
        layer.weight.copy_(decaying if kind == "linear" else decaying.t())
    x = torch.randn(5, 96)
    low = factorise(layer, None, energy)
    assert low is not None and low.rank < 64
    dense = layer.weight if kind == "linear" else layer.weight.t()
    error = (low.second.weight @ low.first.weight - dense).norm() / dense.norm()
    assert error <= math.sqrt(1 - energy) + 1e-5
    full = factorise(layer, 30, 1.0)  # an explicit rank; layer outputs agree up to the dropped part
    assert full.rank == 30
    with torch.no_grad():
        assert torch.allclose(low(x), layer(x), atol=float(error) * layer(x).norm() + 1e-4)


# -------------------------------------------------------------------------- distillation
def test_the_report_plot_takes_a_student_at_full_success(tmp_path):
    """200 held-out episodes all solved: the interval's upper end is the rate itself, so the plot's
    error bars are never negative (a rounding of 1 - 1e-16 made matplotlib refuse the figure)."""
    from mmrl_cli.compress.report import plot
    from mmrl_cli.evaluation import wilson_interval

    row = {"nonzero_parameters": 1000, "latency_ms": 1.0, "success_rate": 1.0, "success_ci95": wilson_interval(200, 200)}
    plot([{**row, "method": "teacher"}, {**row, "method": "distill (cnn student)"}], tmp_path / "report.png")
    assert (tmp_path / "report.png").stat().st_size > 0


def test_distillation_loss_decreases_on_a_fixed_batch():
    _, student, obs = policy_and_obs(TINY, n=32)
    _, teacher, _ = policy_and_obs(["model=vit-gpt2"], n=32)
    with torch.no_grad():
        teacher_logits, teacher_values = teacher(obs)
        teacher_logits = teacher_logits * 20  # a confident teacher
    optimizer = torch.optim.Adam(student.parameters(), lr=3e-3)
    losses = []
    for _ in range(40):
        terms = distill_loss(*student(obs), teacher_logits, teacher_values, 1.0, 0.5)
        loss = terms["loss_distill"] + terms["loss_value"]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]
    assert terms["agreement"].item() > 0.7  # from about 1 in 4 (4 actions) at the start


def test_kickstart_term_anneals_to_zero():
    _, student, obs = policy_and_obs(TINY)
    _, teacher, _ = policy_and_obs(["model=vit-gpt2"])
    cfg = KickstartCompression(coef=2.0, anneal_steps=1000)
    assert annealed(2.0, 0, 1000) == 2.0 and annealed(2.0, 500, 1000) == 1.0 and annealed(2.0, 5000, 1000) == 0.0
    kick = Kickstart(cfg, teacher, steps_done=250)
    assert kick.coef == 1.5  # a resumed run continues the schedule
    logits, values = student(obs)
    assert kick.loss(logits, values, {"obs": obs})["loss_kickstart"].item() > 0

    class P:
        steps = 1000
    kick.on_update(P(), {})
    terms = kick.loss(logits, values, {"obs": obs})
    assert kick.coef == 0.0 and "loss_kickstart" not in terms and terms["kickstart_coef"].item() == 0.0


# ------------------------------------------------------------------------ CLI, end to end
@pytest.fixture(scope="module")
def teacher_run(tmp_path_factory):
    from mmrl_cli.trainer import train

    run_dir = tmp_path_factory.mktemp("teacher") / "run"
    train(compose_train_config(TINY + ["total_steps=1024"]), run_dir)
    return run_dir


def test_compressed_runs_evaluate_resume_and_share_one_report(teacher_run, tmp_path):
    """In process (the CLI path is the slow test below): a structured and a low-rank student of
    one teacher, one report; the structured run evaluates and resumes from its checkpoint."""
    from hydra import compose, initialize_config_dir

    from mmrl_cli.compose import CONF_DIR
    from mmrl_cli.compress.run import run_compress
    from mmrl_cli.compress.settings import validate_compress
    from mmrl_cli.config import EvalCommandConfig, GifConfig
    from mmrl_cli.evaluation import run_eval
    from mmrl_cli.runs import load_run_checkpoint
    from mmrl_cli.trainer import train

    out = tmp_path / "out"
    common = [f"teacher={teacher_run}", f"out_dir={out}", "total_steps=512", "report.episodes=10",
              "report.latency_repeats=2", "hardware.threads=1"]
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        for method in (["compression=prune", "compression.structured=true"],
                       ["compression=lowrank", "compression.rank=4", "compression.min_size=512"]):
            report = run_compress(validate_compress(compose("compress", overrides=common + method)))
    teacher, *students = report["rows"]
    assert [r["method"] for r in students] == ["lowrank-r4", "prune-structured-0.5"]
    assert all(r["parameters"] < 0.8 * teacher["parameters"] for r in students)
    assert (out / "report.md").read_text().count("\n| ") == 4 and (out / "report.png").stat().st_size > 1000
    for row in students:
        run = load_run_checkpoint(row["run"], "runs", "latest", "run")  # rebuilds the compressed shapes
        results = run_eval(EvalCommandConfig(run=row["run"], episodes=10, gif=GifConfig(episodes=0)), run.run_dir,
                           run.checkpoint_dir, run.typed)
        assert results["episodes"] == 10
    run = load_run_checkpoint(students[1]["run"], "runs", "latest", "resume", ["total_steps=1024"], ignore=("resume",))
    summary = train(run.typed, run.run_dir, resume_from=run.checkpoint_dir)
    assert summary["steps"] == 1024


@pytest.mark.slow
def test_compress_structured_run_evaluates_resumes_and_reports(teacher_run, run_mmrl):
    out = run_mmrl.cwd / "out"
    done = run_mmrl("compress", f"teacher={teacher_run}", "compression=prune", "compression.structured=true",
                    f"out_dir={out}", "total_steps=512", "report.episodes=10", "report.latency_repeats=3", "hardware.threads=1")
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads((out / "report.json").read_text())
    teacher, student = report["rows"]
    assert student["parameters"] < 0.7 * teacher["parameters"] and student["latency_ms"] > 0
    assert (out / "report.md").is_file() and (out / "report.png").stat().st_size > 1000
    run_dir = Path(student["run"])
    assert json.loads((run_dir / "compression.json").read_text())["pruned_groups"]
    evaluated = run_mmrl("eval", f"run={run_dir}", "episodes=10", "gif.episodes=0")
    assert evaluated.returncode == 0, evaluated.stderr[-2000:]
    resumed = run_mmrl("train", f"resume={run_dir}", "total_steps=1024")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert json.loads((run_dir / "summary.json").read_text())["steps"] == 1024


def test_train_with_unstructured_pruning_and_kickstart(teacher_run, tmp_path):
    from mmrl_cli.trainer import train

    pruned_dir = tmp_path / "pruned"
    train(compose_train_config(TINY + ["total_steps=1024", "compression=prune", "compression.sparsity=0.7",
                                       f"init_from={teacher_run}"]), pruned_dir)
    lines = [json.loads(line) for line in (pruned_dir / "metrics.jsonl").read_text().splitlines()]
    assert abs(lines[-1]["sparsity"] - 0.7) < 0.01
    assert (pruned_dir / "model.safetensors").stat().st_size < (teacher_run / "model.safetensors").stat().st_size
    kick_dir = tmp_path / "kick"
    train(compose_train_config(TINY + ["total_steps=1024", "compression=kickstart", f"teacher={teacher_run}",
                                       "compression.anneal_steps=512"]), kick_dir)
    lines = [json.loads(line) for line in (kick_dir / "metrics.jsonl").read_text().splitlines()]
    assert lines[0]["kickstart_coef"] > 0 and lines[-1]["kickstart_coef"] == 0.0
    assert "loss_kickstart" in lines[0]


BAD = [
    (["compress", "teacher=/nonexistent"], "teacher: /nonexistent does not exist"),
    (["compress", "teacher=TEACHER", "compression=prune", "compression.sparsity=1.5"], "compression.sparsity: expected a fraction in (0, 1)"),
    (["compress", "teacher=TEACHER", "compression=prune", "compression.sparsity=nan"], "compression.sparsity"),
    (["compress", "teacher=TEACHER", "compression=lowrank", "compression.rank=0"], "compression.rank: expected"),
    (["compress", "teacher=TEACHER", "compression=lowrank", "compression.energy=0"], "compression.energy: expected a fraction"),
    (["compress", "teacher=TEACHER", "compression=kickstart"], "mmrl train compression=kickstart"),
    (["compress"], "teacher: required"),
    (["compress", "teacher=TEACHER", "compression=prune", "report.latency_batch=50000000"], "report.latency_batch: 50,000,000 observations"),
    (["compress", "teacher=TEACHER", "compression=prune", "report.episodes=2000000000"], "report.episodes: 2,000,000,000 observations"),
    (["compress", "teacher=TEACHER", "compression=prune", "report.latency_threads=100000"], "report.latency_threads: expected"),
    (["compress", "teacher=TEACHER", "compression=prune", "report.latency_batch=100000000000"], "report.latency_batch: expected an integer"),
    (["compress", "teacher=TEACHER", "compression=prune", "out_dir=/proc/mmrl"], "out_dir: /proc/mmrl is not writable"),
    (["compress", "teacher=TEACHER", "compression=distill"], "compression.batch_size: expected at most"),  # the teacher's rollout is 256
    (["train", "compression=kickstart"], "teacher: compression=kickstart learns from a teacher"),
    (["train", "compression=kickstart", "teacher=TEACHER", "data.grid_size=6"], "teacher: "),
    (["train", "compression=lowrank"], "init_from: compression=lowrank shrinks a trained model"),
    (["train", "init_from=TEACHER"], "init_from: "),  # the default model is not the teacher's (vit-gpt2-tiny)
]


@pytest.mark.parametrize("args, needle", BAD, ids=[" ".join(a)[:50] for a, _ in BAD])
def test_bad_compression_input_is_one_line_exit_2_and_creates_nothing(args, needle, teacher_run, tmp_path, monkeypatch,
                                                                        capsys):
    from mmrl_cli.cli import main

    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exit_info:
        main([a.replace("TEACHER", str(teacher_run)) for a in args])
    lines = capsys.readouterr().err.strip().splitlines()
    assert exit_info.value.code == 2
    assert len(lines) == 1 and needle in lines[0], lines
    assert not list(tmp_path.iterdir())


# ------------------------------------------------------------------ stops and re-runs
CARTPOLE = ["data=cartpole", "model=mlp", "rollout.n_envs=4", "rollout.n_steps=32", "algo.batch_size=64",
            "eval.episodes=2", "monitor.progress=false", "monitor.tensorboard=false", "hardware.threads=1"]


@pytest.fixture(scope="module")
def cartpole_teacher(tmp_path_factory):
    """A tiny CartPole MLP run (two updates): a fast teacher."""
    from mmrl_cli.trainer import train

    run_dir = tmp_path_factory.mktemp("cartpole-teacher") / "run"
    train(compose_train_config(CARTPOLE + ["total_steps=256"]), run_dir)
    return run_dir


def signal_at_update(monkeypatch, signum, update: int, run_suffix: str = ""):
    """Make the trainer send `signum` to this process after `update` updates of a run whose
    directory ends with `run_suffix`, as a terminal's Ctrl-C or a scheduler's SIGTERM would."""
    import os

    from mmrl_cli import trainer

    real_train, real_notify = trainer.train, trainer.notify
    current = {}

    def train(cfg, run_dir, *args, **kwargs):
        current["run_dir"] = str(run_dir)
        return real_train(cfg, run_dir, *args, **kwargs)

    def notify(callbacks, event, *args):
        if event == "on_update" and args[0].update == update and current["run_dir"].endswith(run_suffix):
            os.kill(os.getpid(), signum)
        return real_notify(callbacks, event, *args)

    monkeypatch.setattr(trainer, "train", train)
    monkeypatch.setattr(trainer, "notify", notify)


@pytest.mark.parametrize("signum, code, stage", [(15, 143, "distill"), (2, 130, "fine-tune")])
def test_a_stopped_compress_exits_with_the_signal_and_the_same_command_continues_it(
        cartpole_teacher, tmp_path, monkeypatch, capsys, signum, code, stage):
    """A signal stops `mmrl compress` (128 + signal, one line saying how to resume, no report, no
    fine-tune from half-distilled weights); the same command continues the stopped run in its own
    directory, then reports."""
    from mmrl_cli.cli import main

    out = tmp_path / "out"
    args = ["compress", f"teacher={cartpole_teacher}", "compression=distill", "model=mlp", "compression.batch_size=64",
            "compression.finetune_steps=256", f"out_dir={out}", "total_steps=512", "report.episodes=4",
            "report.latency_batch=4", "report.latency_repeats=1", "hardware=cpu", "hardware.threads=1"]
    with monkeypatch.context() as patch:
        signal_at_update(patch, signum, 1, "-rl" if stage == "fine-tune" else "-s1")
        with pytest.raises(SystemExit) as stopped:
            main(list(args))
    assert stopped.value.code == code
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.startswith("mmrl compress: stopped by ") and last.endswith("resume with: mmrl " + " ".join(args)), last
    assert not (out / "report.json").exists()
    distilled = out / "distill-s1"
    summary = json.loads(((distilled / "summary.json") if stage == "distill" else
                          (out / "distill-s1-rl" / "summary.json")).read_text())
    assert summary["stopped_by"] == {15: "SIGTERM", 2: "SIGINT"}[signum] and summary["steps"] == 128
    assert (out / "distill-s1-rl").exists() == (stage == "fine-tune")  # no fine-tune of a half-distilled student

    main(list(args))  # the same command again: continues, then reports
    assert sorted(p.name for p in out.iterdir() if p.is_dir()) == ["distill-s1", "distill-s1-rl"]
    assert "continuing" in capsys.readouterr().err
    for run_dir, steps in ((distilled, 512), (out / "distill-s1-rl", 256)):
        summary = json.loads((run_dir / "summary.json").read_text())
        assert summary["stopped_by"] is None and summary["steps"] == steps
    report = json.loads((out / "report.json").read_text())
    assert [Path(r["run"]).name for r in report["rows"][1:]] == ["distill-s1", "distill-s1-rl"]
