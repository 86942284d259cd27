"""Pre-flight checks of a train config that need more than its schema: devices, the env's
observations against the model, memory, and the runs it names (teacher, init_from). Builds
nothing big: the env is described (`envs.spec`), the model is built on torch's meta device.
"""

from __future__ import annotations

from .config import ConfigError, TrainConfig
from .envs.spec import observation_spec_of, patch_size_of
from .text import tokenizer_for, tokenizer_source


def check_compatible(cfg: TrainConfig, resuming: bool = False, evaluating: bool = False,
                     inference_batches: dict[str, int] | None = None) -> None:
    """Checks that need more than the schema: numbers by kind, devices, gymnasium ids, model vs
    observations, memory (also of `inference_batches`: key -> observations at once), the teacher
    run (not to evaluate) and the init_from run (only for a fresh start). Builds nothing big: the
    env's observations are described, the model is built on torch's meta device."""
    import torch

    from .compress.teacher import source_run

    from .preflight import check_inference_memory, check_memory, check_name, check_numbers

    check_numbers(cfg)
    if cfg.hardware.device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"hardware.device: {cfg.hardware.device} requested but no CUDA device is available (use hardware=cpu)")
    on_cpu = cfg.hardware.device == "cpu" or (cfg.hardware.device == "auto" and not torch.cuda.is_available())
    if cfg.hardware.distributed and cfg.hardware.backend == "nccl" and on_cpu:
        raise ConfigError("hardware.backend: nccl needs CUDA devices, but the ranks would run on the CPU "
                          f"(hardware.device={cfg.hardware.device}{', no CUDA device is available' if cfg.hardware.device == 'auto' else ''}); "
                          "use hardware.backend=gloo or auto")
    check_name("run_name", cfg.run_name)
    spec, action_space = observation_spec_of(cfg.data, tokenizer_for(cfg.model))
    if cfg.model.type in ("vit-gpt2", "cnn") and not spec.keys() & {"image", "grid"}:
        raise ConfigError(f"model: model={cfg.model.type} needs image observations, but data gives {sorted(spec)} (try model=mlp)")
    patch = patch_size_of(cfg.data, spec) if cfg.model.type == "vit-gpt2" else 1

    from .models import build_agent

    def measure_model() -> tuple[int, int]:
        from .preflight import activation_elements_per_sample

        try:
            with torch.device("meta"):
                policy = build_agent(cfg, spec, action_space, patch)
        except ValueError as e:
            raise ConfigError(str(e) if str(e).startswith("model") else f"model: {e}") from None
        return sum(p.numel() for p in policy.parameters()), activation_elements_per_sample(policy, spec)

    if cfg.algo.type == "bc":  # before memory: a dataset that cannot fill one minibatch is the first problem
        check_demos_fit(cfg, spec, action_space)
    check_memory(cfg, spec, measure_model)
    if cfg.algo.type == "dreamer":  # the replay buffer: allocated in full when the run starts
        from .algos.dreamer import check_replay_fits

        check_replay_fits(cfg, spec, action_space)
    check_finetune_names(cfg.finetune, lambda: build_agent(cfg, spec, action_space, patch))
    if inference_batches:
        check_inference_memory(cfg, spec, measure_model, inference_batches)
    if cfg.teacher is not None and not evaluating:
        source_run(cfg, "teacher")
    if getattr(cfg.algo, "low_init_from", None) is not None and not resuming and not evaluating:
        check_low_init_from(cfg, lambda: build_agent(cfg, spec, action_space, patch).low)
    if cfg.init_from is not None and not resuming and not evaluating:
        check_init_from_fits(source_run(cfg, "init_from"), lambda: build_agent(cfg, spec, action_space, patch))


def check_finetune_names(settings, build) -> None:
    """ConfigError naming the `finetune` key whose part or pattern selects nothing of the policy
    `build()` makes (on torch's meta device: nothing is allocated)."""
    import torch

    from .models.finetune import lora_targets, selected

    if not (settings.freeze or settings.lr_scale or settings.lora_rank):
        return
    with torch.device("meta"):
        policy = build()
    for selection in settings.freeze:
        selected(policy, selection, "finetune.freeze")
    for selection in settings.lr_scale:
        selected(policy, selection, f"finetune.lr_scale.{selection}")
    if settings.lora_rank:
        lora_targets(policy, list(settings.lora_targets))
        for selection in settings.lora_train_also:
            selected(policy, selection, "finetune.lora_train_also")


def check_low_init_from(cfg: TrainConfig, build_low) -> None:
    """ConfigError (naming `algo.low_init_from`) unless it names a trained run whose policy fits the
    hierarchical agent's low level (`build_low()`, on torch's meta device): a data=goto run of the same
    model, grid, tile size and wordings."""
    import torch

    from .checkpoint import CheckpointError, check_model_fits
    from .runs import load_run_checkpoint

    run = load_run_checkpoint(cfg.algo.low_init_from, cfg.runs_root, "latest", "algo.low_init_from")
    if run.typed.algo.type == "hierarchical" or getattr(run.typed.data, "sequence_steps", None):
        raise ConfigError(f"algo.low_init_from: {run.run_dir} is a run on the sequential task; give a data=goto run "
                          f"(its policy becomes the low level)")
    with torch.device("meta"):
        low = build_low()
    try:
        check_model_fits(run.checkpoint_dir / "model.safetensors", low)
    except CheckpointError as e:
        raise ConfigError(f"algo.low_init_from: {e}; train it with data=goto and this run's model, grid_size, "
                          f"tile_size and wordings") from None


def check_init_from_fits(run, build) -> None:
    """ConfigError unless the weights of the `init_from` run fit the policy this run builds
    (`build()`, here on torch's meta device): the same model config on another env may still
    differ in its input or output layers."""
    import torch

    from .checkpoint import CheckpointError, check_model_fits
    from .compress.structure import adopt_saved_structure

    from .builders import tower_tensors_fit

    weights = run.checkpoint_dir / "model.safetensors"
    policy = None
    try:
        with torch.device("meta"):
            policy = build()
            adopt_saved_structure(policy, weights)
        check_model_fits(weights, policy)
    except CheckpointError as e:
        if policy is not None and tower_tensors_fit(weights, policy):
            return  # only the heads differ (another action space, another readout size): the towers transfer
        raise ConfigError(f"init_from: {e}; its env must give the same observations and actions as this run's "
                          f"(or at least towers of the same shapes)") from None


def check_demos_fit(cfg: TrainConfig, spec: dict, action_space) -> None:
    """ConfigError (naming `algo.demos`) unless behaviour cloning can train from the dataset: it
    exists, is complete and intact in size, was recorded on this env, and holds one minibatch."""
    from .demos.dataset import DemoError, check_trainable
    from .preflight import check_path

    check_path("algo.demos", cfg.algo.demos)
    try:
        check_trainable(cfg.algo.demos, cfg.algo.fraction, cfg.algo.batch_size, cfg.data, spec, action_space)
    except DemoError as e:
        raise ConfigError(f"algo.demos: {e}") from None
    reads = tokenizer_source(cfg.model)
    if "mission" in spec and reads != "words":
        raise ConfigError(f"algo.demos: demonstrations record instructions as ids of the built-in word tokenizer, "
                          f"but this model reads those of {reads} (use a model with model.tokenizer=words)")
