"""ViT-GPT2 policy: transformers' ViT over image patches, GPT-2 over the instruction.

Data flow for one observation (P patches, L instruction tokens, width d):

1. ViT patch embedding (+ CLS and position embeddings) turns the image into P + 1 tokens.
2. GPT-2 reads the instruction with causal self-attention and *cross-attends to the patch
   tokens*, so its last instruction token summarises "what is asked, and where it is".
3. That summary modulates every patch token (FiLM, Perez et al. 2018: ``x * (1 + g) + b`` with
   g, b from the summary), so "is this cell the named object" is a product, not something a
   later layer must learn to compute; then the ViT encoder layers mix the patches.
4. The readout keeps position. ``spatial`` (default): a spatial soft-argmax (Levine et al.
   2016): each of `keypoints` learned maps is a softmax over the patches whose expected (row,
   col) is a feature, so "where is the agent" and "where is the named object" become
   coordinates and the direction between them is linear; each keypoint also reads a 3x3
   neighbourhood feature (a conv over the patch grid), so at the agent it sees which moves
   would run into an object; plus the mean patch state.
   ``flatten``: all patch states, flattened (the design prototype's readout). ``both``.

Pretrained towers (`towers.py`, docs/transfer.md): ``model.vision_pretrained`` (ViT or CLIP
vision) replaces the ViT, its width becoming the policy's; ``model.text_pretrained`` (GPT-2,
BERT/MiniLM, CLIP text) replaces the GPT-2, which then reads the instruction alone (pretrained
layers have no cross-attention) and its sentence vector drives the FiLM of step 3;
``model.pretrained`` (a CLIP directory) gives both. The instruction's ids then come from that
tower's own tokenizer (``model.tokenizer=auto``). ``model.text_readout=names`` puts classifiers
between that sentence vector and the FiLM (naming.py): the policy reads what the instruction names.

Why this shape (measured in the design prototype): pooling a single token (CLS or GPT-2's last
token) learned "go to an object" but not "which object"; small position-embedding init (0.02)
stalled too. Position embeddings therefore start at `pos_init_std` (1.0 by default).
"""

from __future__ import annotations

import torch
from torch import nn

from ..distributions import ActionSpace
from ..text import tokenizer_for
from .heads import ActorCritic, ActorCriticHeads, ImageInput, actor_gain, memory_of, orthogonal, vector_size
from .naming import NamingHead


class VitGpt2Policy(ActorCritic):
    """Actor-critic over (image, instruction) built from config: random, or with pretrained towers."""

    # Parts that fine-tuning settings name (models/finetune.py); the rest is "heads".
    PARTS = {"vision": ("vit", "vision", "pixels"), "text": ("gpt", "text")}

    def __init__(self, cfg, observation_spec: dict, action_space: ActionSpace | int, patch_size: int = 8):
        super().__init__()
        from transformers import GPT2Config, GPT2Model, ViTConfig, ViTModel  # ~2 s import: only when used

        self.pixels = ImageInput(observation_spec, cfg.grid_embed)  # a symbolic grid: one patch per cell
        height, width, channels = self.pixels.height, self.pixels.width, self.pixels.channels
        if height % patch_size or width % patch_size:
            raise ValueError(f"image {height}x{width} is not a whole number of {patch_size}-pixel patches")
        tokenizer = tokenizer_for(cfg)
        self.pad_id = tokenizer.pad_id
        vision_source, text_source = cfg.vision_pretrained or cfg.pretrained, cfg.text_pretrained or cfg.pretrained
        self.vit = self.vision = None
        if vision_source:  # a pretrained ViT / CLIP vision encoder; the policy takes its width
            from .towers import load_vision_tower

            key = "model.vision_pretrained" if cfg.vision_pretrained else "model.pretrained"
            self.vision = load_vision_tower(vision_source, key, patch_size, channels, cfg.tower_weights)
            d = self.vision.width
        else:
            d = cfg.hidden_size
            self.vit = ViTModel(
                ViTConfig(
                    hidden_size=d, num_hidden_layers=cfg.vit_layers, num_attention_heads=cfg.heads,
                    intermediate_size=cfg.ff_size, image_size=(height, width), patch_size=patch_size,
                    num_channels=channels, hidden_act=cfg.activation, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
                    attn_implementation="eager",
                ),
                add_pooling_layer=False,
            )
            nn.init.normal_(self.vit.embeddings.position_embeddings, std=cfg.pos_init_std)
        self.gpt = self.text = self.names = None
        if "mission" in observation_spec and text_source:  # a pretrained text encoder: a sentence vector
            from .towers import load_text_tower

            key = "model.text_pretrained" if cfg.text_pretrained else "model.pretrained"
            self.text = load_text_tower(text_source, key, tokenizer.pad_id, cfg.tower_weights)
            if cfg.text_readout == "names":  # FiLM reads what the instruction names, not its vector (naming.py)
                self.names = NamingHead(self.text.width, list(cfg.name_classes), cfg.name_readout == "onehot")
                self.film = nn.Linear(self.names.size, 2 * d)
            else:
                self.film = nn.Linear(self.text.width, 2 * d)
        elif "mission" in observation_spec:
            self.gpt = GPT2Model(
                GPT2Config(
                    vocab_size=tokenizer.vocab_size, n_positions=observation_spec["mission"][0][0], n_embd=d,
                    n_layer=cfg.gpt_layers, n_head=cfg.heads, n_inner=cfg.ff_size, add_cross_attention=True, activation_function=cfg.activation,
                    resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, bos_token_id=None, eos_token_id=None,
                    pad_token_id=tokenizer.pad_id, attn_implementation="eager",
                )
            )
            self.film = nn.Linear(d, 2 * d)
        rows, cols = height // patch_size, width // patch_size
        self.grid_shape = (rows, cols)
        self.readout = cfg.readout
        features = 0
        if self.readout in ("spatial", "both"):
            self.keypoints = nn.Linear(d, cfg.keypoints)
            grid = torch.stack(torch.meshgrid(torch.linspace(-1, 1, rows), torch.linspace(-1, 1, cols), indexing="ij"), -1)
            self.register_buffer("patch_coords", grid.reshape(rows * cols, 2), persistent=False)
            # Each cell's 3x3 neighbourhood, read at each keypoint: at the agent's keypoint this
            # says which neighbouring cells hold what, i.e. which moves would hit an object.
            self.neighbourhood = nn.Conv2d(d, d, kernel_size=3, padding=1)
            features += 2 * cfg.keypoints + cfg.keypoints * d + d
        if self.readout in ("flatten", "both"):
            features += rows * cols * d
        self.has_vector = "vector" in observation_spec  # e.g. MiniGrid's direction, joined to the readout
        features += vector_size(observation_spec)
        # model.memory: a recurrent core between the trunk (or, with separate heads, the readout) and the heads
        if cfg.separate_heads:  # actor and critic each get their own tanh MLP (value gradients stay out of the actor's)
            self.trunk = nn.Sequential()
            self.memory, width = memory_of(cfg, features)
            self.heads = ActorCriticHeads(width, action_space, [cfg.head_hidden] * cfg.head_layers, actor_gain(self.memory))
        else:  # one shared ReLU MLP, then linear actor and critic
            layers = []
            for _ in range(cfg.head_layers):
                layers += [orthogonal(nn.Linear(features, cfg.head_hidden)), nn.ReLU()]
                features = cfg.head_hidden
            self.trunk = nn.Sequential(*layers)
            self.memory, width = memory_of(cfg, cfg.head_hidden)
            self.heads = ActorCriticHeads(width, action_space, actor_gain=actor_gain(self.memory))

    def naming_logits(self, obs: dict[str, torch.Tensor]) -> list[torch.Tensor]:
        """Each named label's logits for the instructions of `obs` (``model.text_readout=names``)."""
        ids = obs["mission"]
        return self.names(self.text(ids.reshape(-1, ids.shape[-1])))

    def features(self, obs: dict[str, torch.Tensor]) -> torch.Tensor:
        pixels = self.pixels(obs)
        tokens = self.vit.embeddings(pixels) if self.vit is not None else self.vision.embed(pixels)  # (B, 1 + P, d)
        summary = None
        if self.gpt is not None:
            ids = obs["mission"]
            valid = ids != self.pad_id
            text = self.gpt(input_ids=ids, attention_mask=valid.long(), encoder_hidden_states=tokens).last_hidden_state
            last = (valid.sum(1) - 1).clamp(min=0)
            summary = text[torch.arange(len(ids), device=ids.device), last]
        elif self.text is not None:
            summary = self.text(obs["mission"])
            if self.names is not None:
                summary = self.names.readout(summary)
        if summary is not None:
            scale, shift = self.film(summary).unsqueeze(1).chunk(2, dim=-1)
            tokens = tokens * (1 + scale) + shift
        if self.vit is not None:
            for layer in self.vit.layers:
                tokens = layer(tokens)
            patches = self.vit.layernorm(tokens)[:, 1:]  # (B, P, d)
        else:
            patches = self.vision.norm(self.vision.run_layers(tokens))[:, 1:]
        features = []
        if self.readout in ("spatial", "both"):
            attention = torch.softmax(self.keypoints(patches), dim=1)  # (B, P, K): a map per keypoint
            coords = torch.einsum("bpk,pc->bkc", attention, self.patch_coords)  # expected (row, col)
            grid = patches.transpose(1, 2).reshape(len(patches), -1, *self.grid_shape)
            local = torch.relu(self.neighbourhood(grid)).flatten(2).transpose(1, 2)  # (B, P, d)
            local_at_keypoints = torch.einsum("bpk,bpc->bkc", attention, local)
            features += [coords.flatten(1), local_at_keypoints.flatten(1), patches.mean(1)]
        if self.readout in ("flatten", "both"):
            features.append(patches.flatten(1))
        if self.has_vector:
            features.append(obs["vector"])
        return self.trunk(torch.cat(features, dim=1))
