"""`mmrl compress`: train a compressed student of a trained run (distil, prune, factorise) and
report it beside its teacher; a stopped student continues when the same command runs again.
"""

from __future__ import annotations

import sys

from omegaconf import DictConfig

from ..compat import check_compatible
from ..exits import checked
from ..tables import print_compress


def check_compress(cfg: DictConfig, overrides: list[str]) -> None:
    """Everything `mmrl compress` needs settled: a valid config (run_name a plain name), paths the
    filesystem takes, an intact teacher run, a valid student run config (low-rank: something to
    factorise), memory for the report, a writable output directory."""
    from ..compress.run import output_dir, student_config
    from ..compress.settings import validate_compress
    from ..compress.teacher import trained_run
    from ..envs.spec import eval_envs
    from ..preflight import check_episode_results, check_numbers, check_output_dir, check_path

    typed = validate_compress(cfg)
    check_numbers(typed)
    for key in ("teacher", "runs_root", "out_dir"):
        check_path(key, getattr(typed, key))
    teacher = trained_run(typed.teacher, typed.runs_root, "teacher")
    check_compatible(student_config(typed, teacher.typed, teacher.run_dir))
    report = typed.report  # the report evaluates and times every model on these batches
    check_compatible(teacher.typed, evaluating=True,
                     inference_batches={"report.episodes": eval_envs(teacher.typed.data, report.episodes),
                                        "report.latency_batch": report.latency_batch})
    check_episode_results("report.episodes", report.episodes)
    check_output_dir("out_dir" if typed.out_dir else "runs_root", output_dir(typed, teacher.run_dir))


def compress_task(cfg: DictConfig) -> float:
    """Hydra task of `mmrl compress`: train the compressed student, report it beside the teacher."""
    import shlex

    from ..compress.run import CompressStopped, run_compress
    from ..compress.settings import validate_compress

    typed = checked("compress", validate_compress, check_compress, cfg)
    try:
        report = run_compress(typed)
    except CompressStopped as e:
        # run_hydra put this command's arguments in sys.argv: the same command continues the stopped run
        command = shlex.join(["mmrl", "compress", *sys.argv[1:]])
        print(f"mmrl compress: {e}; resume with: {command}", file=sys.stderr)
        raise SystemExit(e.exit_code) from None
    print_compress(report)
    return report["rows"][-1]["success_rate"] or float("nan")
