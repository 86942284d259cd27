"""GPU path: env, rollouts and updates on CUDA with bf16. Skipped where there is no GPU."""

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


def test_short_train_on_the_gpu(run_mmrl):
    out = run_mmrl("train", "hardware=gpu", "algo.total_steps=4096", "eval.episodes=16", "runs_root=out")
    assert out.returncode == 0, out.stderr
    assert "cuda" in out.stdout
