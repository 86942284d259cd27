"""GPU path: env, rollouts and updates on CUDA with bf16. Skipped where there is no GPU."""

import json

import pytest
import torch

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def test_goto_env_steps_on_the_gpu():
    from mmrl_cli.envs import GotoEnv

    env = GotoEnv(256, device="cuda")
    obs = env.reset(seed=0)
    for _ in range(50):
        obs, reward, *_ = env.step(torch.randint(0, 4, (256,), device="cuda"))
    assert obs["image"].is_cuda and reward.is_cuda
    assert torch.equal(env.image, env.render(env.cells, env.agent))


@pytest.mark.parametrize("algo", ["ppo", "a2c"])
def test_short_train_on_the_gpu(run_mmrl, algo):
    out = run_mmrl("train", f"algo={algo}", "hardware=gpu", "total_steps=4096", "eval.episodes=16", "runs_root=out")
    assert out.returncode == 0, out.stderr
    (summary,) = list(run_mmrl.cwd.glob("out/*/*/summary.json"))
    summary = json.loads(summary.read_text())
    assert summary["device"].startswith("cuda") and summary["steps"] == 4096 and summary["skipped_steps"] == 0
    assert 0.0 <= summary["heldout_success_rate"] <= 1.0
