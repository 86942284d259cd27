"""Policies: shapes, the paired actor-critic MLP, and the ViT-GPT2 readouts."""

import pytest
import torch

from mmrl_cli.config import CnnConfig, MlpConfig, VitGpt2Config
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
    assert policy.layers[0].weight.grad[0].abs().sum() == 0 and policy.layers[0].weight.grad[1].abs().sum() > 0


def test_cnn_head_mlps_keep_value_gradients_out_of_the_actor():
    """model.head_hidden gives actor and critic their own MLPs; [] keeps linear heads."""
    spec = {"grid": ((7, 7, 3), torch.uint8), "vector": ((4,), torch.float32)}
    obs = {"grid": torch.randint(0, 11, (5, 7, 7, 3), dtype=torch.uint8), "vector": torch.eye(4)[[0, 1, 2, 3, 0]]}
    linear = build_policy(CnnConfig(channels=[16, 32, 64], kernel_size=2, strides=[1, 1, 1], hidden=128), spec, 7)
    assert isinstance(linear.heads.actor, torch.nn.Linear)
    policy = build_policy(CnnConfig(channels=[16, 32, 64], kernel_size=2, strides=[1, 1, 1], hidden=128,
                                    head_hidden=[64, 64]), spec, 7)
    logits, value = policy(obs)
    assert logits.shape == (5, 7) and value.shape == (5,)
    assert [m.out_features for m in policy.heads.actor if isinstance(m, torch.nn.Linear)] == [64, 64, 7]
    value.sum().backward()
    assert all(p.grad is None for p in policy.heads.actor.parameters())
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in policy.heads.critic.parameters())


def test_vit_separate_heads_keep_value_gradients_out_of_the_actor():
    spec = {"grid": ((7, 7, 3), torch.uint8), "mission": ((16,), torch.int64), "vector": ((4,), torch.float32)}
    obs = {"grid": torch.randint(0, 11, (3, 7, 7, 3), dtype=torch.uint8), "mission": torch.randint(1, 50, (3, 16)),
           "vector": torch.eye(4)[[0, 1, 2]]}
    policy = build_policy(VitGpt2Config(separate_heads=True, head_hidden=32), spec, 7, 1)
    logits, value = policy(obs)
    assert logits.shape == (3, 7) and value.shape == (3,)
    value.sum().backward()
    assert all(p.grad is None for p in policy.heads.actor.parameters())
    assert policy.vit.layers[0].attention.q_proj.weight.grad.abs().sum() > 0  # the transformer is shared


@pytest.mark.parametrize("activation", ["tanh", "relu"])
@pytest.mark.parametrize("hidden,batch", [([16, 8, 12], 9), ([64, 64], 256)])  # small, and a PPO-sized minibatch
def test_mlp_hand_written_backward_equals_autograd(activation, hidden, batch):
    torch.manual_seed(0)
    spec = {"vector": ((3,), torch.float32), "image": ((4, 4, 3), torch.uint8)}
    policy = build_policy(MlpConfig(hidden_sizes=hidden, activation=activation), spec, 5)
    assert policy.analytic_backward
    obs = {"vector": torch.randn(batch, 3), "image": torch.randint(0, 256, (batch, 4, 4, 3), dtype=torch.uint8)}
    d_logits, d_values = torch.randn(batch, 5), torch.randn(batch)
    logits, values = policy(obs)
    torch.autograd.backward((logits, values), (d_logits, d_values))
    expected = {name: p.grad.clone() for name, p in policy.named_parameters()}
    policy.zero_grad(set_to_none=True)
    with torch.no_grad():
        logits_again, values_again, saved = policy.forward_saving_activations(obs)
    policy.backward_from_outputs(saved, d_logits, d_values)
    torch.testing.assert_close(logits_again, logits.detach())
    torch.testing.assert_close(values_again, values.detach())
    for name, p in policy.named_parameters():
        torch.testing.assert_close(p.grad, expected[name], msg=name)
        assert not p.grad.requires_grad


@pytest.mark.parametrize("shape", [(2, 8, 64), (2, 256, 64)])  # below and above the sigmoid route
def test_mlp_tanh_equals_torch_tanh_and_differentiates(shape):
    from mmrl_cli.models.mlp import tanh

    x = (torch.randn(shape) * 3).requires_grad_()
    y = tanh(x)
    torch.testing.assert_close(y, torch.tanh(x), rtol=0, atol=3e-7)
    y.sum().backward()
    torch.testing.assert_close(x.grad, 1 - torch.tanh(x.detach()) ** 2, rtol=0, atol=1e-6)


def test_mlp_with_a_mission_leaves_the_embedding_to_autograd():
    spec = {"vector": ((3,), torch.float32), "mission": ((6,), torch.int64)}
    assert not build_policy(MlpConfig(), spec, 2).analytic_backward


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
    obs["mission"][1] = env.tokenizer.encode_batch(["go to the blue key"], env.mission_tokens)[0]
    policy = build_policy(VitGpt2Config(), env.observation_spec, env.num_actions, 8)
    logits, _ = policy(obs)
    assert not torch.allclose(logits[0], logits[1])  # same image, other instruction
