"""`scripts/claims.py`: runs are reused by config (evaluation and output keys aside), a claim is
compared and judged from run directories alone, and a claim without runs is reported as not measured."""

import json
import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from mmrl_cli.compose import compose_train_config

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "scripts"))
import claims  # noqa: E402


def saved_run(root: Path, name: str, overrides: list[str], success: list[float], heldout: float) -> Path:
    """A finished run directory as `mmrl train <overrides>` leaves it (config.yaml, summary.json)."""
    run = root / name
    run.mkdir(parents=True)
    typed = compose_train_config(overrides)
    (run / "config.yaml").write_text(OmegaConf.to_yaml(OmegaConf.structured(typed)))
    evaluations = [{"step": 100 * (i + 1), "wall_seconds": 10.0 * (i + 1), "validation": {"success_rate": s}}
                   for i, s in enumerate(success)]
    (run / "summary.json").write_text(json.dumps({"heldout_success_rate": heldout, "evaluations": evaluations}))
    return run


def test_runs_are_reused_by_config_and_a_claim_is_judged(tmp_path, monkeypatch):
    monkeypatch.setattr(claims, "ROOT", tmp_path)  # figures go to tmp_path/docs/img/claims
    cache = tmp_path / "cache"
    fast, slow = [], []
    for seed in (1, 2, 3):
        # Evaluation and output keys do not change what a run learns: these runs count for their arm.
        fast.append(saved_run(cache, f"a3c-{seed}", ["exp=goto-a3c", f"seed={seed}", "eval.every_steps=100000",
                                                     "run_name=x"], [0.5, 0.95, 0.97], 0.96))
        slow.append(saved_run(cache, f"a2c-{seed}", ["exp=goto-a2c", f"seed={seed}"], [0.2, 0.5, 0.92], 0.95))
    saved_run(cache, "other-lr", ["exp=goto-a2c", "seed=4", "algo.lr=0.5"], [0.1], 0.1)  # a different config
    claim = claims.Claim("actor-critic", "A3C", "wall_seconds", base=["exp=goto-a2c"], tech=["exp=goto-a3c"],
                         names=("a2c", "a3c"))
    store = tmp_path / "docs/bench/claims_runs"
    entry = claims.measure(claim, [1, 2, 3, 4], cache, [cache], store=store)
    # each run used is kept in the store (what compare reads), named by its arm and seed
    assert entry["arms"]["a3c"]["runs"] == [f"docs/bench/claims_runs/exp_goto-a3c/seed{s}" for s in (1, 2, 3)]
    for seed in (1, 2, 3):
        kept = store / "exp_goto-a3c" / f"seed{seed}"
        assert sorted(p.name for p in kept.iterdir()) == ["config.yaml", "summary.json"]
        assert (kept / "summary.json").read_text() == (cache / f"a3c-{seed}" / "summary.json").read_text()
    assert entry["arms"]["a2c"]["missing_seeds"] == [4]  # seed 4 ran with another lr: not this arm's run
    # a3c reaches 0.9 at 20 s on every seed, a2c at 30 s: the intervals do not overlap.
    assert entry["verdict"] == "holds (3 of 4 seeds)" and "a3c 20 [20, 20] vs a2c 30 [30, 30]" in entry["effect"]
    assert (tmp_path / "docs/img/claims/actor-critic.png").is_file()
    held = claims.Claim("final", "A3C", "heldout", base=["exp=goto-a2c"], tech=["exp=goto-a3c"], names=("a2c", "a3c"))
    entry = claims.measure(held, [1, 2, 3], cache, [cache], store=store)
    assert entry["effect"].startswith("P(a3c > a2c) = 1.000") and entry["verdict"] == "holds"
    # the cache gone, the kept runs alone give the same judgement
    import shutil

    shutil.rmtree(cache)
    again = claims.measure(claim, [1, 2, 3, 4], tmp_path / "gone", [store], store=store)
    assert again["verdict"] == "holds (3 of 4 seeds)" and again["arms"]["a3c"]["runs"] == entry["arms"]["a3c"]["runs"]


def test_a_claim_without_runs_is_not_measured(tmp_path):
    claim = claims.Claim("ppo", "PPO", "steps", base=["exp=goto-a2c"], tech=[], names=("a2c", "ppo"))
    entry = claims.measure(claim, [1, 2], tmp_path / "cache", [tmp_path / "cache"], store=tmp_path / "store")
    assert entry["verdict"].startswith("not measured: 4 runs missing") and "--only ppo" in entry["verdict"]
    text = claims.markdown([entry], [1, 2])
    assert "| ppo | PPO | - | not measured" in text


def test_missing_runs_are_listed_once_and_trained_jobs_at_a_time_with_timed_runs_alone(tmp_path, monkeypatch):
    """An arm two claims share is trained once; runs of a wall-time claim train after the others, alone
    and with every core; the rest share the cores; a run already in the cache is not trained again;
    a failed run leaves its seed missing and the others go on."""
    cache = tmp_path / "cache"
    saved_run(cache, "ppo-1", ["seed=1"], [0.5, 0.95], 0.96)
    steps = claims.Claim("ppo", "PPO", "steps", base=["exp=goto-a2c"], tech=[], names=("a2c", "ppo"))
    wall = claims.Claim("actor-critic", "A3C", "wall_seconds", base=["exp=goto-a2c"], tech=["exp=goto-a3c"],
                        names=("a2c", "a3c"))
    todo = claims.missing_runs([steps, wall], [1, 2], [cache])
    listed = sorted((tuple(run.overrides), run.seed, run.timed) for run in todo)
    assert listed == [((), 2, False), (("exp=goto-a2c",), 1, True), (("exp=goto-a2c",), 2, True),
                      (("exp=goto-a3c",), 1, True), (("exp=goto-a3c",), 2, True)]
    calls = []

    def fake_train(overrides, runs_root):  # records the order and the settings of each launch
        calls.append((overrides, runs_root))
        if overrides[0] == "exp=goto-a3c" and "seed=2" in overrides:
            raise RuntimeError("mmrl train failed:\nboom")
        return {"run_dir": str(runs_root / "run")}

    monkeypatch.setattr(claims, "mmrl_train", fake_train)
    monkeypatch.setattr(claims.os, "cpu_count", lambda: 4)
    claims.train_missing(todo, cache, jobs=2)
    assert calls[0] == (["seed=2", "hardware.threads=2"], cache / "ppo" / "ppo" / "seed2")  # a teacher too: to the end
    assert [c[0][-1] for c in calls[1:]] == ["hardware.threads=0"] * 4  # the timed ones, after, alone
    assert all(f"eval.stop_at={claims.TARGET}" in c[0] for c in calls[1:])  # time to 0.9 only: they stop there
    assert len({c[1] for c in calls}) == len(calls)  # one runs root per run


def test_a_run_from_before_a_key_existed_still_counts_for_its_arm(tmp_path):
    old = saved_run(tmp_path, "old", ["exp=goto-curriculum", "seed=2"], [0.5], 0.5)
    config = OmegaConf.load(old / "config.yaml")
    del config.data["min_distractors"]  # a key added to mmrl after this run was made (default: as before)
    OmegaConf.save(config, old / "config.yaml")
    unreadable = saved_run(tmp_path, "unreadable", ["exp=goto-curriculum", "seed=3"], [0.5], 0.5)
    (unreadable / "config.yaml").write_text((unreadable / "config.yaml").read_text() + "no_such_key: 1\n")
    assert [path.name for path, _ in claims.cached_runs([tmp_path])] == ["old"]
    stopped = saved_run(tmp_path, "stopped", ["exp=goto-curriculum", "seed=3"], [0.5], float("nan"))
    (stopped / "summary.json").write_text(json.dumps({**json.loads((stopped / "summary.json").read_text()),
                                                      "stopped_by": "SIGTERM"}))  # cut short: paused, not finished
    assert [path.name for path, _ in claims.cached_runs([tmp_path])] == ["old"]
    claim = claims.Claim("curriculum", "curriculum", "steps", base=["exp=goto-curriculum", "data.curriculum=none"],
                         tech=["exp=goto-curriculum"], names=("hard task only", "curriculum"))
    missing = claims.missing_runs([claim], [2, 3], [tmp_path])
    assert [(m.arm, m.seed) for m in missing] == [("hard task only", 2), ("hard task only", 3), ("curriculum", 3)]


def test_a_wall_time_claim_counts_only_runs_trained_alone_with_every_core(tmp_path):
    """A run trained beside another (`hardware.threads=1`) counts for an env-steps claim, not for a
    wall-time one; where both exist, the one trained alone is kept (it serves both)."""
    cache = tmp_path / "cache"
    for seed in (1, 2):
        saved_run(cache, f"a2c-shared-{seed}", ["exp=goto-a2c", f"seed={seed}", "hardware.threads=1"], [0.95], 0.95)
    alone = saved_run(cache, "a2c-alone-1", ["exp=goto-a2c", "seed=1"], [0.95], 0.95)  # threads=0: every core
    steps = claims.arms_of(claims.Claim("ppo", "PPO", "steps", base=["exp=goto-a2c"], names=("a2c", "ppo")))["a2c"]
    wall = claims.arms_of(claims.Claim("ac", "A3C", "wall_seconds", base=["exp=goto-a2c"], tech=["exp=goto-a3c"],
                                       names=("a2c", "a3c")))["a2c"]
    found = claims.cached_runs([cache])
    assert claims.find_run(steps, 1, found) == alone and claims.find_run(steps, 2, found).name == "a2c-shared-2"
    assert claims.find_run(wall, 1, found) == alone and claims.find_run(wall, 2, found) is None


def student_run(out_dir: Path, teacher: Path, method: str, seed: int, heldout: float, nonzero: int) -> Path:
    """A finished `mmrl compress` student of `teacher` as the command leaves it: the run directory
    (config.yaml, summary.json) and its row in the report beside it."""
    from mmrl_cli.compress.settings import compose_compress_config
    from mmrl_cli.compress.run import student_config

    cfg = compose_compress_config([f"compression={method}", f"seed={seed}", f"teacher={teacher}"])
    typed = student_config(cfg, compose_train_config([f"seed={seed}"]), teacher)
    run = out_dir / f"{method}-s{seed}"
    run.mkdir(parents=True)
    (run / "config.yaml").write_text(OmegaConf.to_yaml(OmegaConf.structured(typed)))
    evaluations = [{"step": 100, "wall_seconds": 10.0, "validation": {"success_rate": heldout}}]
    (run / "summary.json").write_text(json.dumps({"heldout_success_rate": heldout, "evaluations": evaluations}))
    rows = [{"run": str(teacher), "nonzero_parameters": 1000, "success_rate": 0.97},
            {"run": str(run), "nonzero_parameters": nonzero, "success_rate": heldout}]
    (out_dir / "report.json").write_text(json.dumps({"teacher": str(teacher), "rows": rows}))
    return run


def test_a_compression_claim_compares_students_with_their_teachers(tmp_path, monkeypatch):
    """A student counts for its method's arm when its teacher is the teacher arm's run of the same
    seed; the store keeps its teacher's config and report row, so the verdict (success kept within
    the margin, with fewer weights) comes back from the store alone; a missing student is made by
    `mmrl compress` from its teacher's run."""
    monkeypatch.setattr(claims, "ROOT", tmp_path)
    cache, store = tmp_path / "cache", tmp_path / "store"
    teachers = {}
    for seed in (1, 2, 3):
        teachers[seed] = saved_run(cache, f"ppo-{seed}", [f"seed={seed}"], [0.5, 0.95], 0.97 + seed / 1000)
        (teachers[seed] / "checkpoints").mkdir()
        (teachers[seed] / "model.safetensors").write_bytes(b"")  # a finished run's weights: it can teach
        student_run(cache / "compress" / f"t{seed}", teachers[seed], "distill", seed, 0.965 + seed / 1000, 100)
    other = saved_run(cache, "ppo-lr", ["seed=3", "algo.lr=0.5"], [0.1], 0.1)  # another teacher config
    student_run(cache / "compress" / "other", other, "prune", 3, 0.99, 100)
    claim = claims.Claim("distillation", "distil", "kept", base=[], tech=["compression=distill"],
                         names=("teacher", "student"))
    entry = claims.measure(claim, [1, 2, 3], cache, [cache], store=store)
    assert entry["arms"]["student"]["runs"] == [f"store/compress+compression_distill/seed{s}" for s in (1, 2, 3)]
    kept = store / "compress+compression_distill" / "seed2"
    assert sorted(p.name for p in kept.iterdir()) == ["compress_row.json", "config.yaml", "source.yaml",
                                                      "summary.json"]
    assert entry["verdict"] == "holds" and "10.0x fewer non-zero parameters" in entry["effect"]
    prune = claims.Claim("pruning", "prune", "kept", base=[], tech=["compression=prune"], names=("teacher", "pruned"))
    missing = claims.missing_runs([prune], [3], [cache])  # the only pruned run compresses another teacher
    assert [(m.arm, m.seed) for m in missing] == [("pruned", 3)]
    calls = []
    monkeypatch.setattr(claims, "run_mmrl", lambda *args: calls.append(args))
    claims.train_missing(missing, tmp_path / "new", jobs=1, roots=[cache])
    assert calls == [("compress", "compression=prune", f"teacher={teachers[3]}", "seed=3",
                      f"out_dir={tmp_path / 'new' / 'pruning' / 'pruned' / 'seed3'}",
                      f"hardware.threads={claims.os.cpu_count()}")]
    import shutil

    shutil.rmtree(cache)  # the store alone: the same runs and verdict
    again = claims.measure(claim, [1, 2, 3], tmp_path / "gone", [store], store=store)
    assert again["arms"]["student"]["runs"] == entry["arms"]["student"]["runs"] and again["verdict"] == "holds"
    # students that lose more than the margin against their own teachers do not keep success
    for seed in (1, 2, 3):
        path = store / "compress+compression_distill" / f"seed{seed}" / "compress_row.json"
        row = json.loads(path.read_text())
        path.write_text(json.dumps({**row, "student": {**row["student"], "success_rate": 0.9}}))
    assert claims.measure(claim, [1, 2, 3], tmp_path / "gone", [store], store=store)["verdict"] == "does not hold"


def test_bad_arguments_are_one_line_exit_2_and_write_nothing(tmp_path):
    import subprocess

    script = Path(__file__).resolve().parent.parent / "scripts" / "claims.py"
    out = tmp_path / "claims.md"
    for args, key in ((["--jobs", "0"], "--jobs"), (["--json", str(tmp_path)], "--json"),
                      (["--reuse", str(tmp_path / "none")], "--reuse"), (["--cache", "/proc/claims"], "--cache")):
        result = subprocess.run([sys.executable, str(script), "--reuse-only", "--out", str(out), *args],
                                capture_output=True, text=True)
        lines = [line for line in result.stderr.splitlines() if "Warn" not in line]
        assert result.returncode == 2 and len(lines) == 1 and lines[0].startswith(f"claims.py: {key}:"), result.stderr
        assert not out.exists() and result.stdout == ""


def test_an_arm_made_in_stages_is_matched_through_its_sources_and_kept_with_them(tmp_path, monkeypatch):
    """Synthetic data's arm: demos, then BC on them, then RL from the BC run. `make_run` makes the
    stages in order (reusing those already made), the RL run counts for the arm only when its BC run
    and that run's dataset are the arm's of the same seed, and the store keeps both sources' files,
    so the match holds from the store alone."""
    from mmrl_cli import trainer
    from mmrl_cli.compose import compose_command_config
    from mmrl_cli.demos.command import run_demos
    from mmrl_cli.demos.settings import validate_demos

    launched = []

    def run_mmrl(command, *args):  # the real commands, in this process
        launched.append(command)
        assert command == "demos"
        run_demos(validate_demos(compose_command_config("demos", list(args))))

    def mmrl_train(overrides, runs_root):
        launched.append("train")
        return trainer.train(compose_train_config(overrides), runs_root / "run")

    monkeypatch.setattr(claims, "run_mmrl", run_mmrl)
    monkeypatch.setattr(claims, "mmrl_train", mmrl_train)
    quiet = ["eval.episodes=4", "monitor.progress=false", "monitor.tensorboard=false"]
    demos = claims.Arm(("episodes=16",), "demos")
    bc = claims.Arm(("algo=bc", "algo.updates=3", "algo.batch_size=16", *quiet), source=demos, source_key="algo.demos")
    rl = claims.Arm(("algo=a2c", "total_steps=32", "rollout.n_envs=4", "rollout.n_steps=4", "eval.every_steps=32",
                     *quiet), source=bc, source_key="init_from")
    cache, store = tmp_path / "cache", tmp_path / "store"
    made = claims.make_run(rl, 1, cache / "a", 1, [cache], "test")
    assert launched == ["demos", "train", "train"]
    again = claims.make_run(rl, 1, cache / "b", 1, [cache], "test")
    assert launched[3:] == ["train"]  # its demos and BC run are reused
    found = claims.cached_runs([cache])
    assert claims.find_run(rl, 1, found) in (made, again) and claims.find_run(rl, 2, found) is None
    assert claims.find_run(bc, 1, found).parent == cache / "a" / "source"  # the BC run: its arm's, not RL's
    kept = claims.keep(made, store, rl, 1)
    assert sorted(p.name for p in kept.iterdir()) == ["config.yaml", "source.source.json", "source.yaml", "summary.json"]
    assert "16 planner demonstrations" in claims.demos_note(rl, [kept])  # what the runs learned from besides env steps
    import shutil

    shutil.rmtree(cache)  # the store alone: the sources come from the kept files
    assert claims.find_run(rl, 1, claims.cached_runs([store])) == kept
    manifest = json.loads((kept / "source.source.json").read_text())
    manifest["levels"]["seed"] += 1  # BC on another seed's demonstrations: not this arm's run
    (kept / "source.source.json").write_text(json.dumps(manifest))
    assert claims.find_run(rl, 1, claims.cached_runs([store])) is None


def test_the_sampler_claim_is_judged_from_the_kept_sweep_studies(tmp_path):
    """Trials until a study first reaches the target, per sweep (never: infinite), medians with
    bootstrap intervals, judged as a time claim; no studies: not measured, with the command."""
    def study(sampler, seed, first):  # values below the target until trial `first` (None: never)
        values = [100.0] * 30 if first is None else [100.0] * (first - 1) + [480.0] * (31 - first)
        return {"name": f"{sampler}-{seed}", "sampler": sampler, "seed": seed, "pruner": "none", "values": values}

    studies = [study("tpe", s, 3) for s in range(5)] + [study("random", s, f) for s, f in enumerate([20, 22, 25, 28, None])]
    path = tmp_path / "sweep.json"
    path.write_text(json.dumps({"samplers": {"target": 475.0, "trials": 30, "studies": studies}}))
    claim = next(c for c in claims.CLAIMS if c.key == "hpo")
    entry = claims.measure_sweeps(claim, path)
    assert entry["trials_to_target"] == {"tpe": [3] * 5, "random": [20, 22, 25, 28, float("inf")]}
    assert entry["verdict"] == "holds" and entry["effect"].startswith("median trials to 475: tpe 3 [3, 3] vs random 25 [")
    assert claims.measure_sweeps(claim, tmp_path / "none.json")["verdict"].startswith("not measured")


def with_split_results(run: Path, success: float) -> Path:
    """A run with its `mmrl eval split=new-wordings` results beside it, as the study keeps them."""
    results = {"split": "new-wordings", "episodes": 500, "success_rate": success, "return_mean": success}
    (run / "eval_new-wordings.json").write_text(json.dumps(results))
    return run


def test_a_claim_on_another_split_scores_each_run_there(tmp_path, monkeypatch):
    """A heldout claim on the new-wordings split judges the runs by their results there (not by the
    held-out levels of their own summaries), keeps those results with each run, and counts a run
    that has neither those results nor the weights to play them as missing."""
    monkeypatch.setattr(claims, "ROOT", tmp_path)
    cache, store = tmp_path / "cache", tmp_path / "store"
    base, tech = ["data.wordings=paraphrase", "algo.lr=1e-4"], ["data.wordings=paraphrase"]
    for seed in (1, 2, 3):  # own held-out levels: base ahead; held-out wordings: tech ahead
        with_split_results(saved_run(cache, f"base-{seed}", [*base, f"seed={seed}"], [0.9], 0.95), 0.2 + seed / 100)
        with_split_results(saved_run(cache, f"tech-{seed}", [*tech, f"seed={seed}"], [0.9], 0.40), 0.8 + seed / 100)
    saved_run(cache, "base-4", [*base, "seed=4"], [0.9], 0.95)  # no split results, no checkpoints
    with_split_results(saved_run(cache, "tech-4", [*tech, "seed=4"], [0.9], 0.40), 0.85)
    claim = claims.Claim("transfer", "new words", "heldout", base=base, tech=tech, names=("base", "tech"),
                         split="new-wordings")
    entry = claims.measure(claim, [1, 2, 3, 4], cache, [cache], store=store)
    assert entry["arms"]["base"]["missing_seeds"] == [4] and entry["arms"]["tech"]["missing_seeds"] == []
    assert entry["effect"].startswith("P(tech > base) = 1.000") and entry["verdict"] == "holds (3 of 4 seeds)"
    assert "; `new-wordings` IQM tech 0.825 [" in entry["effect"] and " vs base 0.22" in entry["effect"]
    kept = store / claims.arm_slug(tech) / "seed1"
    assert sorted(p.name for p in kept.iterdir()) == ["config.yaml", "eval_new-wordings.json", "summary.json"]
    assert "final `new-wordings` split IQM" in claims.markdown([entry], [1, 2, 3, 4])


@pytest.mark.slow  # ~15 s: a tiny real run, then `mmrl eval split=new-wordings` on it
def test_a_run_is_evaluated_on_its_claims_split_once(tmp_path, monkeypatch):
    from mmrl_cli.trainer import train

    monkeypatch.setattr(claims, "SPLIT_EPISODES", 6)
    overrides = ["data.wordings=paraphrase", "total_steps=128", "rollout.n_envs=4", "rollout.n_steps=16",
                 "algo.batch_size=32", "algo.n_epochs=1", "eval.episodes=2", "monitor.progress=false",
                 "monitor.tensorboard=false"]
    train(compose_train_config(overrides), tmp_path / "run")
    arm = claims.Arm(tuple(overrides), split="new-wordings")
    results = claims.split_results(tmp_path / "run", arm, threads=1)
    assert results["split"] == "new-wordings" and results["episodes"] == 6 and 0 <= results["success_rate"] <= 1
    kept = json.loads((tmp_path / "run" / "eval_new-wordings.json").read_text())
    assert kept == results
    (tmp_path / "run" / "eval").rename(tmp_path / "moved")  # the kept results are read back, not re-evaluated
    assert claims.split_results(tmp_path / "run", arm) == results and not (tmp_path / "run" / "eval").exists()
    assert claims.split_results(tmp_path / "run", claims.Arm(tuple(overrides))) == {}  # its own held-out levels
