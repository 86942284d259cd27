"""Faults from outside: `kill -9` and SIGTERM of `mmrl train`, `sweep`, `compress` and `eval` at
random moments, then the same command again; checks that no work is lost and that the exit
codes are the documented ones.

    python scripts/faults.py [--trials 10] [--commands train,sweep,compress,eval] [--seed 0]

For each command and each signal, `--trials` times: start the command on a tiny CartPole config
(`data=cartpole model=mlp`), send the signal at a random moment (uniform over an uninterrupted
run's duration, start-up included), check the exit code, run the command again (train:
`resume=<run dir>`, or the same command if the run had no checkpoint yet; the others resume by
themselves), and check that nothing was lost:

- train: the resumed run reaches total_steps, logs every update once, and its final weights are
  bit-identical to an uninterrupted run's (the README's promise on CPU);
- sweep: the study ends with the trials asked for (hpo.budget.trials) in its results.json;
- compress: the report (report.md, report.json) exists and has the student's row;
- eval: eval/results.json is valid and has the episodes asked for.

Exit codes expected (README, "Stopping, crashing, resuming"): SIGKILL: -9, the process has no
say; SIGTERM: 143 (train and compress after a checkpoint, sweep after stopping its workers, eval
writing nothing half-done); -15 (143 in a shell) when it lands outside mmrl's handlers, while
Python is still starting (importing torch) or exiting after the work is done (counted as
"default death"); 0 when the command had finished before the signal. A trial is "ok" when the
exit code is one of these and nothing was lost.

Writes docs/bench/faults.json.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from _common import ROOT, print_table, write_json
from safetensors.torch import load_file

MMRL = [sys.executable, "-m", "mmrl_cli.cli"]
TINY = ["data=cartpole", "model=mlp", "rollout.n_envs=4", "rollout.n_steps=32", "algo.batch_size=64", "algo.n_epochs=4",
        "eval.episodes=4", "monitor.progress=false", "monitor.tensorboard=false", "hardware.threads=1"]
TRAIN_STEPS = 32768
TRAIN = [*TINY, f"total_steps={TRAIN_STEPS}", "eval.every_steps=16384", "checkpoint.every_updates=8"]
TRIAL = ["exp=cartpole-ppo", "total_steps=2048", "eval.every_steps=1024", "eval.episodes=4", "monitor.tensorboard=false",
         "checkpoint.every_updates=4", "hardware.threads=1"]
SWEEP_TRIALS = 4
SWEEP = ["hpo=cartpole-ppo", "hpo.study_name=faults", "hpo.train=[" + ",".join(f"'{o}'" for o in TRIAL) + "]",
         f"hpo.budget.trials={SWEEP_TRIALS}", "hpo.retrain.top_k=0", "hpo.pruner.type=none", "hpo.heartbeat_seconds=1",
         "hpo.grace_seconds=3"]
COMPRESS = ["compression=prune", "total_steps=16384", "report.episodes=16", "report.latency_repeats=3"]
EVAL_EPISODES = 4000
EVAL = [f"episodes={EVAL_EPISODES}", "gif.episodes=1", "hardware.threads=1"]
SIGNALS = {"SIGKILL": signal.SIGKILL, "SIGTERM": signal.SIGTERM}
EXPECTED = {"SIGKILL": {-9}, "SIGTERM": {143}}  # or 0: finished before the signal
# SIGTERM while Python is still starting (importing torch, before mmrl's handler is installed) or
# exiting (after the work) ends the process the default way: -15 here, 143 in a shell.
DEFAULT_DEATH = -15
TIMEOUT_S = 600


def run(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    """Run `mmrl <args>` in `cwd` to the end."""
    return subprocess.run([*MMRL, *args], cwd=cwd, capture_output=True, text=True, timeout=TIMEOUT_S,
                          env={**os.environ, "PYTHONUNBUFFERED": "1"})


def interrupted(args: list[str], cwd: Path, signum: int, delay: float) -> tuple[int, str]:
    """Start `mmrl <args>`, send `signum` after `delay` seconds; its exit code and stderr."""
    process = subprocess.Popen([*MMRL, *args], cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                               env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        process.wait(timeout=delay)
    except subprocess.TimeoutExpired:
        process.send_signal(signum)
    _, stderr = process.communicate(timeout=TIMEOUT_S)
    return process.returncode, stderr


# ------------------------------------------------------------------ the commands and their checks
class Command:
    """One command under test: how to start it, resume it and check its result in a work dir."""

    name = ""

    def __init__(self, shared: Path) -> None:
        self.shared = shared  # the uninterrupted runs and the trained teacher

    def prepare(self, work: Path) -> None:
        """Set up a fresh work dir for one trial."""

    def args(self, work: Path) -> list[str]:
        raise NotImplementedError

    def resume_args(self, work: Path) -> list[str]:
        """The command that continues after the fault (by default: the same one again)."""
        return self.args(work)

    def check(self, work: Path) -> str | None:
        """What is lost or wrong after the resumed command, or None."""
        raise NotImplementedError


class Train(Command):
    name = "train"

    def args(self, work: Path) -> list[str]:
        return ["train", *TRAIN, f"runs_root={work}/runs", "run_name=faults"]

    def run_dir(self, work: Path) -> Path | None:
        found = sorted(work.glob("runs/*/*-faults"))
        return found[0] if found else None

    def resume_args(self, work: Path) -> list[str]:
        run_dir = self.run_dir(work)
        if run_dir is None or not (run_dir / "checkpoints" / "latest").exists():
            shutil.rmtree(work / "runs", ignore_errors=True)  # killed before its first checkpoint: start again
            return self.args(work)
        return ["train", f"resume={run_dir}"]

    def check(self, work: Path) -> str | None:
        run_dir, reference = self.run_dir(work), self.shared / "train"
        summary = json.loads((run_dir / "summary.json").read_text())
        if summary["steps"] < TRAIN_STEPS:
            return f"stopped at {summary['steps']} steps"
        updates = [json.loads(line)["update"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
        if updates != list(range(1, len(updates) + 1)):
            return "metrics.jsonl does not have every update once"
        mine, theirs = load_file(str(run_dir / "model.safetensors")), load_file(str(reference / "model.safetensors"))
        if mine.keys() != theirs.keys() or not all(torch.equal(mine[k], theirs[k]) for k in mine):
            return "final weights differ from the uninterrupted run's"
        return None


class Sweep(Command):
    name = "sweep"

    def args(self, work: Path) -> list[str]:
        return ["sweep", *SWEEP, f"runs_root={work}/runs", f"sweep_dir={work}/sweep"]

    def check(self, work: Path) -> str | None:
        results = json.loads((work / "sweep" / "results.json").read_text())
        finished = sum(n for state, n in results["counts"].items() if state.upper() in ("COMPLETE", "PRUNED"))
        return None if finished == SWEEP_TRIALS else f"{finished} trials finished, {SWEEP_TRIALS} asked ({results['counts']})"


class Compress(Command):
    name = "compress"

    def args(self, work: Path) -> list[str]:
        return ["compress", f"teacher={self.shared / 'teacher'}", *COMPRESS, f"out_dir={work}/out", "hardware.threads=1"]

    def check(self, work: Path) -> str | None:
        report = work / "out" / "report.json"
        if not report.is_file() or not (work / "out" / "report.md").is_file():
            return "no report"
        rows = json.loads(report.read_text())["rows"]
        return None if any(r["method"] != "teacher" for r in rows) else "the report has no student row"


class Eval(Command):
    name = "eval"

    def prepare(self, work: Path) -> None:
        shutil.copytree(self.shared / "teacher", work / "run")

    def args(self, work: Path) -> list[str]:
        return ["eval", f"run={work}/run", *EVAL]

    def check(self, work: Path) -> str | None:
        results = json.loads((work / "run" / "eval" / "results.json").read_text())
        return None if results["episodes"] == EVAL_EPISODES else f"{results['episodes']} episodes, {EVAL_EPISODES} asked"


COMMANDS = {c.name: c for c in (Train, Sweep, Compress, Eval)}


# -------------------------------------------------------------------------------- the trials
def uninterrupted(shared: Path) -> dict[str, float]:
    """Train the teacher and the reference run; time every command's uninterrupted run (seconds)."""
    durations = {}
    start = time.perf_counter()
    reference = run(["train", *TRAIN, f"runs_root={shared}/runs", "run_name=reference"], shared)
    assert reference.returncode == 0, reference.stderr[-3000:]
    durations["train"] = time.perf_counter() - start
    (run_dir,) = shared.glob("runs/*/*-reference")
    shutil.copytree(run_dir, shared / "train")
    shutil.copytree(run_dir, shared / "teacher")
    for name in ("sweep", "compress", "eval"):
        command, work = COMMANDS[name](shared), shared / f"timing-{name}"
        work.mkdir()
        command.prepare(work)
        start = time.perf_counter()
        result = run(command.args(work), work)
        assert result.returncode == 0, result.stderr[-3000:]
        durations[name] = time.perf_counter() - start
        problem = command.check(work)
        assert problem is None, f"{name} uninterrupted: {problem}"
    return durations


def one_trial(command: Command, work: Path, signame: str, delay: float) -> dict:
    """Signal the command at `delay`, resume it, check it."""
    command.prepare(work)
    code, stderr = interrupted(command.args(work), work, SIGNALS[signame], delay)
    resumed = run(command.resume_args(work), work)
    problem = None
    default_death = signame == "SIGTERM" and code == DEFAULT_DEATH
    if code not in EXPECTED[signame] | {0} and not default_death:
        problem = f"exit code {code}, expected {sorted(EXPECTED[signame])}: {stderr.strip().splitlines()[-1:] or ''}"
    elif "Traceback" in stderr and signame == "SIGTERM":
        problem = "a traceback after SIGTERM"
    elif resumed.returncode != 0:
        problem = f"the resumed command failed ({resumed.returncode}): {resumed.stderr.strip().splitlines()[-1:]}"
    else:
        try:
            problem = command.check(work)
        except (OSError, ValueError, KeyError) as e:
            problem = f"{type(e).__name__}: {e}"
    return {"signal": signame, "delay_s": round(delay, 2), "exit_code": code, "problem": problem,
            "finished_before_signal": code == 0, "default_death": default_death}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=10, help="trials per command and signal")
    parser.add_argument("--commands", default=",".join(COMMANDS), help="comma-separated subset of train,sweep,compress,eval")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random moments")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "bench" / "faults.json")
    args = parser.parse_args()
    names = [n for n in args.commands.split(",") if n]
    chooser = random.Random(args.seed)
    shared = Path(tempfile.mkdtemp(prefix="mmrl-faults-"))
    trials: dict[str, list[dict]] = {}
    try:
        durations = uninterrupted(shared)
        for name in names:
            command = COMMANDS[name](shared)
            trials[name] = []
            for signame in SIGNALS:
                for i in range(args.trials):
                    work = shared / f"{name}-{signame}-{i}"
                    work.mkdir()
                    trial = one_trial(command, work, signame, chooser.uniform(0, durations[name]))
                    trials[name].append(trial)
                    print(f"{name} {signame} #{i}: exit {trial['exit_code']} at {trial['delay_s']} s: "
                          f"{trial['problem'] or 'ok'}", flush=True)
                    shutil.rmtree(work, ignore_errors=True)
    finally:
        shutil.rmtree(shared, ignore_errors=True)
    rows = []
    for name, results in trials.items():
        for signame in SIGNALS:
            mine = [t for t in results if t["signal"] == signame]
            codes = sorted({t["exit_code"] for t in mine})
            rows.append([name, signame, len(mine), sum(t["finished_before_signal"] for t in mine),
                         sum(t["default_death"] for t in mine), ", ".join(map(str, codes)),
                         sum(t["problem"] is None for t in mine), f"{durations[name]:.1f}"])
    print_table("faults: signal at a random moment, then the same command again",
                ["command", "signal", "trials", "finished first", "default death", "exit codes", "ok", "uninterrupted s"],
                rows)
    failed = [(name, t) for name, results in trials.items() for t in results if t["problem"]]
    write_json(args.out, {"trials_per_signal": args.trials, "seed": args.seed, "durations_s": durations,
                          "trials": trials, "failed": len(failed)})
    if failed:
        raise SystemExit(f"{len(failed)} trials lost work or ended with an undocumented exit code")


if __name__ == "__main__":
    main()
