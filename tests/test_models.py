"""Policies: shapes, the paired actor-critic MLP, and the ViT-GPT2 readouts."""

import pytest
import torch

from mmrl_cli.config import MlpConfig, VitGpt2Config
from mmrl_cli.envs import GotoEnv
from mmrl_cli.models import build_policy
from mmrl_cli.models.mlp import PairedLinear


def test_paired_linear_equals_two_separate_linears():
    layer = PairedLinear(5, 3)
    x = torch.randn(4, 5)
    out = layer(x)
    for member in range(2):
        expected = x @ layer.weight[member] + layer.bias[member]
        torch.testing.assert_close(out[member], expected)


def test_mlp_actor_and_critic_do_not_share_parameters():
    policy = build_policy(MlpConfig(), {"vector": ((4,), torch.float32)}, 2)
    obs = {"vector": torch.randn(8, 4)}
    logits, value = policy(obs)
    value.sum().backward()
    assert policy.heads.actor.weight.grad is None or policy.heads.actor.weight.grad.abs().sum() == 0
    # the critic's loss reaches only the critic member of each paired layer
    assert policy.trunk[0].weight.grad[0].abs().sum() == 0 and policy.trunk[0].weight.grad[1].abs().sum() > 0


@pytest.mark.parametrize("readout", ["spatial", "flatten", "both"])
def test_vit_gpt2_readouts(readout):
    env = GotoEnv(3)
    obs = env.reset(seed=0)
    policy = build_policy(VitGpt2Config(readout=readout, keypoints=4), env.observation_spec, env.num_actions, 8)
    logits, value = policy(obs)
    assert logits.shape == (3, 4) and value.shape == (3,)
    (logits.sum() + value.sum()).backward()
    assert policy.gpt.h[0].crossattention.c_attn.weight.grad.abs().sum() > 0  # text reads the image


def test_vit_gpt2_uses_the_instruction():
    env = GotoEnv(2)
    obs = env.reset(level_ids=torch.tensor([5, 5]))
    obs = {k: v.clone() for k, v in obs.items()}
    obs["mission"][1] = env.tokenizer.encode_batch(["go to the blue key"])[0]
    policy = build_policy(VitGpt2Config(), env.observation_spec, env.num_actions, 8)
    logits, _ = policy(obs)
    assert not torch.allclose(logits[0], logits[1])  # same image, other instruction
