"""Policies: encoders (ViT + GPT-2, CNN, MLP) with actor and critic heads.

`MODELS` maps each `model.type` to its class; `build_policy` builds one for an environment's
observation spec and action space. Every policy maps an observation dict to ``(actor output,
value)``, and `policy.distribution(actor output)` is the action distribution (categorical logits or
Gaussian means; see `mmrl_cli.distributions`). Every model also takes ``model.memory`` (lstm or
gru: a recurrent core between its features and its heads) and then carries a state: see
`heads.ActorCritic` for the contract (``recurrent``, ``initial_state``, ``step``, ``sequence``).
"""

from __future__ import annotations

import torch

from ..distributions import ActionSpace

from .mlp import MlpPolicy
from .cnn import CnnPolicy
from .vit_gpt2 import VitGpt2Policy
from .dreamer import DreamerAgent
from .hierarchical import HierarchicalPolicy

MODELS = {"vit-gpt2": VitGpt2Policy, "cnn": CnnPolicy, "mlp": MlpPolicy}


def build_policy(model_cfg, observation_spec: dict, action_space: ActionSpace | int, patch_size: int = 8) -> torch.nn.Module:
    """Build (random init) the policy `model_cfg.type` for this observation spec and action space
    (an `ActionSpace`, or a number of discrete actions).

    `patch_size` matters to ViT policies only: the built-in env's tile size, so a patch is a cell.
    """
    if model_cfg.type == "vit-gpt2":
        return VitGpt2Policy(model_cfg, observation_spec, action_space, patch_size)
    return MODELS[model_cfg.type](model_cfg, observation_spec, action_space)


def build_agent(cfg, observation_spec: dict, action_space: ActionSpace | int, patch_size: int = 8) -> torch.nn.Module:
    """The policy a run of train config `cfg` acts with: under ``algo=hierarchical`` the two levels of
    `HierarchicalPolicy` (each a `build_policy` of ``cfg.model``); under ``algo=dreamer`` the Dreamer
    agent (world model, actor, critic) reading observations with ``cfg.model``'s encoder; else
    `build_policy` of ``cfg.model``."""
    if cfg.algo.type == "dreamer":
        encoder = build_policy(cfg.model, observation_spec, action_space, patch_size)
        return DreamerAgent(cfg.algo, encoder, observation_spec, action_space)
    if cfg.algo.type == "hierarchical":
        return HierarchicalPolicy(cfg.model, observation_spec, action_space, patch_size, cfg.algo.option_steps,
                                  build_policy, cfg.algo.high_head)
    return build_policy(cfg.model, observation_spec, action_space, patch_size)
