"""Transfer learning on the built-in goto task: a pretrained instruction encoder on held-out
wordings, LoRA and full fine-tuning from another setting, and RL started from another setting's
policy against RL from scratch.

    python scripts/bench_transfer.py --part wordings [--seeds 1 2 3] [--steps 200000]
        [--wordings synonyms] [--distractors 2]
    python scripts/bench_transfer.py --part finetune [--seeds 1 2 3]
    python scripts/bench_transfer.py --part probe [--seeds 1 2 3]
    python scripts/bench_transfer.py --part speed [--seeds 1 2 3] [--steps 40000]
    python scripts/bench_transfer.py --merge a.json b.json [--out ...]   # one report from parallel processes

``wordings``: `mmrl train exp=goto-minilm` (paraphrased instructions, the pretrained MiniLM text
encoder, frozen) against the same run with ``model.tower_weights=random`` (MiniLM's architecture,
fresh weights, frozen the same way: only the initialisation differs) and against the default
policy (GPT-2 over the built-in word tokenizer, trained from scratch), all at equal env steps;
then each run's final weights play 500 held-out levels in held-out wordings (`split=new-wordings`)
and 500 in training wordings (`heldout`). Steps/s of each arm are the cost of each text tower.
``--wordings synonyms`` words every held-out instruction with held-out words only (no canonical
colour or object word gives the target away) and ``--distractors N`` sets the objects besides the
target (chance success ~ 1 / (N + 1) for a policy that cannot read the instruction).

The ``-names`` arms put the naming bottleneck (``model.text_readout=names``, models/naming.py)
between each tower and the policy: classifiers trained on the training wordings name the target's
colour and object, and the policy reads their one-hot names (``-name-probabilities``: their class
probabilities); the pretrained-minus-random difference of each pair is reported.

``finetune``: a source policy trained with PPO on another setting (``data.num_distractors=0``: any
object is the goal, so it never needs to read the instruction), then on the default task (one
distractor: it must read) three PPO arms: from scratch, full fine-tuning (``init_from``) and LoRA
fine-tuning (``init_from`` + ``finetune.lora_rank``: the adapters alone train); and A2C
(``exp=goto-a2c``, which needs >= 400k env steps from scratch) from scratch and from the source.
Every arm evaluates 200 validation levels every 25k env steps and stops at the first success
>= 0.9 (budget: each preset's own run, 400k env steps for PPO, 1M for A2C; a miss counts with its whole budget, so a mean
over misses is a lower bound); steps and wall time to that point (the source's own training reported beside it), then
500 held-out levels (``--whole-run``: every arm trains its whole budget, the first 0.9 is still
recorded, and the final weights play the held-out levels).

``probe``: what the text tower alone knows, without RL: a small classifier (384 -> 96 -> 18) trained
on the frozen sentence vectors of every training wording to name the target (colour x object),
then scored on every held-out wording (of ``--wordings``); pretrained MiniLM against the same architecture with
random weights. It bounds what the RL arms of ``wordings`` can transfer.

``speed``: the pretrained tower's cost: training steps/s (evaluations excluded) of the default
policy and of `exp=goto-minilm`, in paraphrased wordings, ``--steps`` env steps each, the two arms
alternating in one process per seed (so both see the same machine load).

Writes docs/bench/transfer_<part>.json (after every run) and, for the RL parts, a PNG beside it.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import ROOT, FirstSuccess, heldout_success, latest_runs, print_table, read_result_files, write_json  # noqa: E402

from mmrl_cli.builders import load_policy, pick_device  # noqa: E402
from mmrl_cli.compose import compose_train_config  # noqa: E402
from mmrl_cli.trainer import train  # noqa: E402

TARGET = 0.9
COMMON = ["monitor.progress=false", "monitor.tensorboard=false", "checkpoint.every_updates=100000"]
WORDINGS_ARMS = {
    "minilm": ["exp=goto-minilm"],
    "random-minilm": ["exp=goto-minilm", "model.tower_weights=random"],
    "default": ["data.wordings=paraphrase"],
    # The same two towers behind the naming bottleneck (models/naming.py): FiLM reads the target's
    # colour and object as named by classifiers on the sentence vector.
    "minilm-names": ["exp=goto-minilm", "model.text_readout=names"],
    "random-minilm-names": ["exp=goto-minilm", "model.tower_weights=random", "model.text_readout=names"],
    # The same, FiLM reading the classifiers' probabilities rather than their one-hot names.
    "minilm-name-probabilities": ["exp=goto-minilm", "model.text_readout=names", "model.name_readout=probabilities"],
    "random-minilm-name-probabilities": ["exp=goto-minilm", "model.tower_weights=random", "model.text_readout=names",
                                         "model.name_readout=probabilities"],
}
SOURCE = ["data.num_distractors=0", "total_steps=150000", "eval.every_steps=150000", "eval.episodes=200"]
# Each arm's budget is its preset's own total_steps (the run stops earlier at 0.9), so its learning rate
# anneals as in the preset: PPO the default 400k, A2C exp=goto-a2c's 1M (it needs 400k-1M from scratch).
STOPPING = ["eval.every_steps=25000", "eval.episodes=200"]
SPEED_ARMS = {"default": ["data.wordings=paraphrase"], "minilm": ["exp=goto-minilm"]}
FINETUNE_ARMS = {
    "ppo scratch": [],
    "ppo full fine-tune": ["init_from={source}"],
    "ppo LoRA fine-tune": ["init_from={source}", "finetune.lora_rank=8", "algo.lr=3e-3"],
    "a2c scratch": ["exp=goto-a2c"],
    # RMSprop's first steps move every weight by ~10x lr (docs/a3c.md): warm the rate up over 20k steps
    # so they do not undo the source's policy.
    "a2c from source": ["exp=goto-a2c", "init_from={source}", "algo.lr_warmup=0.02"],
}


def wording_breakdown(run_dir: Path, overrides: list[str], episodes: int = 500) -> dict:
    """Success on `new-wordings` levels split by what the instruction names the target with: a
    held-out synonym (`wordings.held_out_synonyms` of the run's wordings, e.g. orb, crimson: words no
    training instruction contains) or only canonical words (a held-out template around "blue key";
    none under ``wordings=synonyms``). Argmax actions."""
    from mmrl_cli.distributions import act
    from mmrl_cli.envs import make_env, split_seed
    from mmrl_cli.envs.wordings import held_out_synonyms
    from mmrl_cli.text import tokenizer_for

    cfg = compose_train_config(overrides)
    held_out_words = {w for words in held_out_synonyms(cfg.data.wordings).values() for w in words}
    device = pick_device(cfg.hardware)
    policy = load_policy(cfg, run_dir / "model.safetensors", device).eval()
    tokenizer, num_envs = tokenizer_for(cfg.model), 50
    env = make_env(cfg.data, num_envs, device, cfg.seed + 10_000, "new-wordings", tokenizer)
    obs = env.reset(seed=split_seed(cfg.data, cfg.seed + 10_000, "new-wordings"))
    texts = [tokenizer.decode(ids) for ids in obs["mission"]]
    outcomes = {"held-out word": [], "canonical words": []}
    with torch.no_grad():
        while sum(len(v) for v in outcomes.values()) < episodes:
            params, _ = policy(obs)
            dist = policy.distribution(params)
            obs, _, _, _, info = env.step(dist.to_env(act(dist, True)))
            for slot, i in enumerate(info["done_index"].tolist()):
                kind = "held-out word" if set(texts[i].split()) & held_out_words else "canonical words"
                outcomes[kind].append(bool(info["success"][slot]))
                texts[i] = tokenizer.decode(obs["mission"][i])
    return {kind: {"episodes": len(v), "success_rate": sum(v) / max(len(v), 1)} for kind, v in outcomes.items()}


def save_partial(out: Path, rows: list[dict], part: str, data: list[str] | None = None, steps: int | None = None) -> None:
    """Every finished run lands on disk at once, with what `--merge` needs to report it: an
    interrupted benchmark loses nothing."""
    write_json(out, {"command": " ".join(sys.argv), "partial": True, "part": part, "data": data or [], "steps": steps,
                     "runs": rows})


def wordings_part(seeds: list[int], steps: int, root: Path, arms: list[str], out: Path,
                  data: list[str]) -> list[dict]:
    """Each arm of WORDINGS_ARMS per seed: held-out-wording success at equal steps (`data`: the
    task's settings, ``data.<key>=<value>`` overrides that replace an arm's own)."""
    rows = []
    keys = {d.split("=", 1)[0] for d in data}
    for seed in seeds:
        for arm in arms:
            own = [o for o in WORDINGS_ARMS[arm] if o.split("=", 1)[0] not in keys]
            overrides = [*own, *data, *COMMON, f"seed={seed}", f"total_steps={steps}", f"eval.every_steps={steps // 4}",
                         "eval.episodes=200"]
            run_dir = root / f"{arm}-{seed}"
            curve = FirstSuccess(TARGET, stop=False)
            summary = train(compose_train_config(overrides), run_dir, callbacks=[curve])
            rows.append({"arm": arm, "seed": seed, "steps": summary["steps"], "overrides": overrides,
                         "steps_per_second": summary["steps_per_second"], "wall_seconds": summary["wall_seconds"],
                         "parameters_trainable": summary["parameters_trainable"],
                         "parameters_total": summary["parameters_total"], "curve": curve.curve,
                         "new_wordings": heldout_success(run_dir, overrides, split="new-wordings"),
                         "heldout": heldout_success(run_dir, overrides),
                         "new_wordings_by_words": wording_breakdown(run_dir, overrides)})
            print(arm, seed, rows[-1]["new_wordings"], rows[-1]["heldout"], rows[-1]["new_wordings_by_words"], flush=True)
            save_partial(out, rows, "wordings", data, steps)
    return rows


def probe_part(seeds: list[int], wordings: str) -> list[dict]:
    """Held-out-wording accuracy of a classifier on frozen sentence vectors (see the docstring)."""
    from mmrl_cli.envs.wordings import COLORS, OBJECT_TYPES, instructions
    from mmrl_cli.models.towers import load_text_tower
    from mmrl_cli.text import PretrainedTokenizer, local_model_dir

    tokenizer = PretrainedTokenizer(local_model_dir("minilm", "probe"))

    def labelled(held_out: bool) -> tuple[torch.Tensor, torch.Tensor]:
        texts, labels = [], []
        for c, color in enumerate(COLORS):
            for o, object_type in enumerate(OBJECT_TYPES):
                for text in instructions(wordings, held_out, color, object_type):
                    texts.append(text)
                    labels.append(c * len(OBJECT_TYPES) + o)
        return torch.tensor([tokenizer.encode(t, 24) for t in texts]), torch.tensor(labels)

    (train_ids, train_y), (test_ids, test_y) = labelled(False), labelled(True)
    rows = []
    for weights in ("pretrained", "random"):
        for seed in seeds:
            torch.manual_seed(seed)
            tower = load_text_tower("minilm", "probe", tokenizer.pad_id, weights)
            with torch.no_grad():
                train_x, test_x = tower.encode(train_ids), tower.encode(test_ids)
            classes = len(COLORS) * len(OBJECT_TYPES)
            head = torch.nn.Sequential(torch.nn.Linear(train_x.shape[1], 96), torch.nn.ReLU(), torch.nn.Linear(96, classes))
            optimizer = torch.optim.Adam(head.parameters(), 3e-4)
            for _ in range(600):
                loss = torch.nn.functional.cross_entropy(head(train_x), train_y)
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
            with torch.no_grad():
                rows.append({"arm": "minilm" if weights == "pretrained" else "random-minilm", "seed": seed,
                             "train_accuracy": (head(train_x).argmax(1) == train_y).float().mean().item(),
                             "new_wordings_accuracy": (head(test_x).argmax(1) == test_y).float().mean().item(),
                             "train_wordings": len(train_y), "new_wordings": len(test_y)})
    return rows


def finetune_part(seeds: list[int], arms: list[str], root: Path, out: Path, whole_run: bool = False) -> list[dict]:
    """Per seed: the source run, then every arm of FINETUNE_ARMS to the first validation success >= 0.9
    (`whole_run`: through its whole budget, the first 0.9 still recorded; held-out success is then the
    final weights')."""
    rows = []
    needs_source = any("{source}" in o for arm in arms for o in FINETUNE_ARMS[arm])
    for seed in seeds:
        source = root / f"source-{seed}"
        if needs_source:
            start = time.perf_counter()
            summary = train(compose_train_config([*SOURCE, *COMMON, f"seed={seed}"]), source)
            rows.append({"arm": "source (0 distractors)", "seed": seed, "steps_to_target": None,
                         "wall_seconds": time.perf_counter() - start, "steps": summary["steps"],
                         "source_validation": summary["validation_success_rate"], "curve": []})
        for arm in arms:
            overrides = [o.format(source=source) for o in FINETUNE_ARMS[arm]] + [*STOPPING, *COMMON, f"seed={seed}"]
            run_dir = root / f"{arm.replace(' ', '-')}-{seed}"
            stop = FirstSuccess(TARGET, stop=not whole_run)
            cfg = compose_train_config(overrides)
            summary = train(cfg, run_dir, callbacks=[stop])
            steps, wall = stop.reached if stop.reached else (None, None)
            rows.append({"arm": arm, "seed": seed, "steps_to_target": steps, "wall_to_target": wall, "budget": cfg.total_steps,
                         "whole_run": whole_run, "steps": summary["steps"], "wall_seconds": summary["wall_seconds"],
                         "curve": stop.curve, "overrides": overrides,
                         "parameters_trainable": summary["parameters_trainable"],
                         "parameters_total": summary["parameters_total"],
                         "heldout": heldout_success(run_dir, overrides)})
            print(arm, seed, steps, wall, rows[-1]["heldout"], flush=True)
            save_partial(out, rows, "finetune")
    return rows


def speed_part(seeds: list[int], steps: int, root: Path) -> list[dict]:
    """Training steps/s of each arm of SPEED_ARMS, alternating within each seed."""
    rows = []
    for seed in seeds:
        for arm, own in SPEED_ARMS.items():
            overrides = [*own, *COMMON, f"seed={seed}", f"total_steps={steps}", f"eval.every_steps={steps}", "eval.episodes=10"]
            summary = train(compose_train_config(overrides), root / f"speed-{arm}-{seed}")
            rows.append({"arm": arm, "seed": seed, "steps": summary["steps"], "overrides": overrides,
                         "train_steps_per_second": summary["train_steps_per_second"],
                         "parameters_trainable": summary["parameters_trainable"],
                         "parameters_total": summary["parameters_total"]})
            print(arm, seed, rows[-1]["train_steps_per_second"], flush=True)
    return rows


def plot(rows: list[dict], path: Path, x_index: int, xlabel: str, title: str) -> None:
    """Validation success curves of every run, one colour per arm."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    arms = list(dict.fromkeys(r["arm"] for r in rows if r["curve"]))
    colours = dict(zip(arms, plt.rcParams["axes.prop_cycle"].by_key()["color"]))
    fig, ax = plt.subplots(figsize=(7, 4))
    for r in rows:
        if r["curve"]:
            ax.plot([c[x_index] for c in r["curve"]], [c[2] for c in r["curve"]], "o-", color=colours[r["arm"]], alpha=0.7,
                    label=r["arm"] if r["seed"] == rows[0]["seed"] else None)
    ax.axhline(TARGET, color="grey", linestyle="--", linewidth=1)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("validation success")
    ax.set_title(title)
    ax.legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)


def mean(values: list) -> float:
    values = [v for v in values if v is not None]
    return sum(values) / len(values) if values else float("nan")


def report(part: str, rows: list[dict], data: list[str], steps: int, out: Path) -> dict:
    """Print the part's table, draw its PNG beside `out` (RL parts) and return its summary."""
    if part == "probe":
        print_table("frozen sentence vectors -> target (18 classes), trained on training wordings",
                    ["text tower", "seed", "training wordings", "new wordings"],
                    [[r["arm"], r["seed"], r["train_accuracy"], r["new_wordings_accuracy"]] for r in rows])
        return {arm: mean([r["new_wordings_accuracy"] for r in rows if r["arm"] == arm]) for arm in ("minilm", "random-minilm")}
    arms = list(dict.fromkeys(r["arm"] for r in rows))
    if part == "speed":
        print_table(f"goto, paraphrased wordings: training steps/s over {steps:,} env steps", ["arm", "seed", "steps/s",
                    "trainable / total"], [[r["arm"], r["seed"], r["train_steps_per_second"],
                                            f"{r['parameters_trainable']:,} / {r['parameters_total']:,}"] for r in rows])
        speed = {arm: mean([r["train_steps_per_second"] for r in rows if r["arm"] == arm]) for arm in arms}
        return {"train_steps_per_second_mean": speed, "minilm_over_default": speed["minilm"] / speed["default"]}
    if part == "wordings":
        table = [[r["arm"], r["seed"], r["new_wordings"], r["heldout"], r["steps_per_second"],
                  f"{r['parameters_trainable']:,} / {r['parameters_total']:,}"] for r in rows]
        print_table(f"goto, {' '.join(data)}, {steps:,} PPO steps", ["arm", "seed", "new wordings",
                    "training wordings (held-out levels)", "steps/s", "trainable / total"], table)
        means = {arm: mean([r["new_wordings"] for r in rows if r["arm"] == arm]) for arm in arms}
        speed = {arm: mean([r["steps_per_second"] for r in rows if r["arm"] == arm]) for arm in arms}
        plot(rows, out.with_suffix(".png"), 0, "env steps", "validation success (training wordings)")
        # Each pretrained arm against its random-weights twin: pretrained_minus_random[_names, ...].
        differences = {"pretrained_minus_random" + arm.removeprefix("minilm").replace("-", "_"):
                       means.get(arm, float("nan")) - means.get(f"random-{arm}", float("nan"))
                       for arm in WORDINGS_ARMS if f"random-{arm}" in WORDINGS_ARMS}
        return {"new_wordings_mean": means, "steps_per_second_mean": speed, **differences}
    table = [[r["arm"], r["seed"], r.get("steps_to_target") or r.get("steps"), r.get("wall_to_target") or
              r.get("wall_seconds"), r.get("heldout", r.get("source_validation")),
              f"{r['parameters_trainable']:,} / {r['parameters_total']:,}" if "parameters_total" in r else ""]
             for r in rows]
    print_table("goto: env steps and wall time to 0.9 validation success", ["arm", "seed", "steps",
                "wall s", "held-out", "trainable / total"], table)
    rl_arms = [arm for arm in arms if arm in FINETUNE_ARMS]
    # A run that never reached 0.9 counts with its whole budget: the mean is then a lower bound.
    to_target = lambda r: r["steps_to_target"] if r["steps_to_target"] is not None else r["budget"]  # noqa: E731
    steps_mean = {arm: mean([to_target(r) for r in rows if r["arm"] == arm]) for arm in rl_arms}
    summary = {"steps_to_target_mean": steps_mean,
               "missed_target": [[r["arm"], r["seed"]] for r in rows if r["arm"] in rl_arms and r["steps_to_target"] is None]}
    if "a2c scratch" in steps_mean and "a2c from source" in steps_mean:
        summary["a2c_from_source_over_scratch_steps"] = steps_mean["a2c from source"] / steps_mean["a2c scratch"]
    plot(rows, out.with_suffix(".png"), 0, "env steps", "default task after a source on 0 distractors")
    return summary


def merge(loaded: list[dict], paths: list[Path], out: Path, part: str | None) -> None:
    """One report from result files of one part run as several processes (e.g. one arm or seed each):
    rows by seed then arm; where two files hold the same arm and seed, the later file's row wins.
    `part`: the files' part where they do not name it."""
    parts = {data.get("part", part) for data in loaded}
    if len(parts) != 1:
        raise SystemExit(f"--merge: the files hold different parts {sorted(parts)}; merge one part at a time")
    order = {arm: i for i, arm in enumerate(dict.fromkeys(r["arm"] for data in loaded for r in data["runs"]))}
    rows = sorted(latest_runs(loaded, lambda r: (r["arm"], r["seed"])), key=lambda r: (r["seed"], order[r["arm"]]))
    part = parts.pop()
    summary = report(part, rows, loaded[0].get("data", []), loaded[0].get("steps", 0), out)
    print(summary)
    write_json(out, {"command": "; ".join(data["command"] for data in loaded), "merged_from": [str(p) for p in paths],
                     "part": part, "data": loaded[0].get("data", []), "steps": loaded[0].get("steps"),
                     "target": TARGET, "summary": summary, "runs": rows})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--part", choices=["wordings", "finetune", "probe", "speed"])
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--steps", type=int, default=None, help="wordings (default 200k), speed (default 40k): env steps of every arm")
    parser.add_argument("--arms", nargs="+", default=None,
                        help=f"which arms to run (wordings: {list(WORDINGS_ARMS)}; finetune: {list(FINETUNE_ARMS)})")
    parser.add_argument("--wordings", choices=["paraphrase", "synonyms"], default="paraphrase",
                        help="wordings, probe: data.wordings (synonyms: held-out instructions use held-out words only)")
    parser.add_argument("--distractors", type=int, default=None, help="wordings: data.num_distractors (default: the task's 1)")
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--threads", type=int, default=2, help="torch threads")
    parser.add_argument("--whole-run", action="store_true",
                        help="finetune: every arm trains its whole budget (held-out success of the final weights)")
    parser.add_argument("--merge", type=Path, nargs="+", default=None,
                        help="merge these result files of one part (e.g. one per arm or seed) into --out")
    args = parser.parse_args()
    if args.merge:
        loaded = read_result_files(parser, args.merge)
        part = loaded[0].get("part", args.part)
        merge(loaded, args.merge, args.out or ROOT / "docs" / "bench" / f"transfer_{part}.json", args.part)
        return
    if args.part is None:
        parser.error("--part is required (or --merge)")
    torch.set_num_threads(args.threads)
    args.steps = args.steps or {"speed": 40_000}.get(args.part, 200_000)
    out = args.out or ROOT / "docs" / "bench" / f"transfer_{args.part}.json"
    data = [f"data.wordings={args.wordings}"]
    if args.distractors is not None:
        data.append(f"data.num_distractors={args.distractors}")
    with tempfile.TemporaryDirectory(prefix="mmrl-transfer-") as tmp:
        if args.part == "probe":
            rows = probe_part(args.seeds, args.wordings)
        elif args.part == "speed":
            rows = speed_part(args.seeds, args.steps, Path(tmp))
        elif args.part == "wordings":
            rows = wordings_part(args.seeds, args.steps, Path(tmp), args.arms or list(WORDINGS_ARMS), out, data)
        else:
            rows = finetune_part(args.seeds, args.arms or list(FINETUNE_ARMS), Path(tmp), out, args.whole_run)
    summary = report(args.part, rows, data, args.steps, out)
    print(summary)
    write_json(out, {"command": " ".join(sys.argv), "part": args.part, "data": data, "steps": args.steps,
                     "target": TARGET, "summary": summary, "runs": rows})


if __name__ == "__main__":
    main()
