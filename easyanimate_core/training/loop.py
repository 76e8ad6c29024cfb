"""The LoRA training loop on Hugging Face accelerate (``accelerate launch`` scales it to several GPUs unchanged).

Order of work, so that the big models never share the GPU: read and check the dataset, encode captions (text
encoder, then freed) and clips (VAE) into the cache, then load the transformer, attach the LoRA branches and train
it alone. Every random draw of a micro-step comes from a generator seeded by (seed, micro-step, process), and the
batch order is a function of (seed, epoch): a run resumed from a checkpoint continues the loss curve of the
uninterrupted run exactly.
"""

from __future__ import annotations

import json
import logging
import math
import threading
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import torch

from ..atomic_files import write_text
from ..config import TransformerConfig
from ..loading import inspect_transformer, load_scheduler, load_transformer
from ..lora import read_lora, save_lora
from . import checkpoints
from .buckets import BatchSchedule, bucket_for, seeded_generator
from .config import BASE_DTYPE, SAVE_DTYPES, TrainingConfig, lr_factor
from .data import TrainingData, prepare_data
from .dataset import load_dataset
from .layers import export_layers, gradient_checkpointing, load_layers, lora_branches, target_linears
from .objective import flow_matching_loss

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class StepReport:
    step: int
    total: int
    loss: float
    lr: float
    seconds: float


@dataclass(frozen=True)
class TrainingResult:
    lora_path: Path
    steps: int
    losses: tuple[float, ...]  # of the steps run by this call


class TrainingStopped(Exception):
    """Raised at a step boundary after a stop was requested; the last checkpoint is intact."""

    def __init__(self, step: int):
        super().__init__(f"training stopped at step {step}; continue it with --resume")
        self.step = step


def _model_folder(config: TrainingConfig, accelerator) -> Path:
    if config.model != "demo":
        return Path(config.model).expanduser()
    from ..demo import write_demo_model

    folder = config.output / "demo-model"
    if accelerator.is_main_process and not (folder / "model_index.json").is_file():
        logger.warning("Training the built-in tiny DEMO model (random weights) in %s: this proves the pipeline, "
                       "the LoRA is of no use on a real model.", folder)
        write_demo_model(folder, variant="t2v", seed=0)
    accelerator.wait_for_everyone()
    return folder


def _variant(model_dir: Path) -> TransformerConfig:
    variant = inspect_transformer(model_dir)  # variant and size, as the loader node and the CLI see them
    if variant.family == "V5":
        raise ValueError(f"{model_dir} is an {variant.variant_description}: LoRA training supports the V5.1 models "
                         f"only for now (V5 trains against its DDPM scheduler's epsilon or v target with Bert and "
                         f"mT5 captions, which this trainer does not build yet). Train on an EasyAnimate V5.1 model.")
    if variant.variant not in ("t2v", "inp"):
        raise ValueError(f"{model_dir} is a {variant.variant_description}: LoRA training needs control videos that "
                         f"this trainer does not read. Train on the T2V or InP model of the same size; the LoRA "
                         f"loads on every variant of that size.")
    return variant


def _validate(config: TrainingConfig, data: TrainingData, transformer, scheduler, step: int, device) -> None:
    from ..generation import DEFAULT_NEGATIVE_PROMPT, GenerationRequest, decode_latents, sample_latents
    from ..video import write_mp4, write_png

    width, height, frames = config.validation_size
    folder = config.output / checkpoints.VALIDATION_FOLDER
    vae = data.vae.to(device)
    try:
        for i, prompt in enumerate(config.validation_prompts):
            request = GenerationRequest(width=width, height=height, frames=frames, steps=config.validation_steps,
                                        guidance=config.validation_guidance, seed=config.seed + i)
            latents = sample_latents(transformer, vae, scheduler, request, data.prompts[prompt][None],
                                     data.prompts[DEFAULT_NEGATIVE_PROMPT][None])
            video = decode_latents(vae, latents)
            path = write_mp4(folder / f"step-{step:06d}-{i}.mp4", video)
            write_png(path.with_suffix(".png"), video[0])
            logger.info("validation %d at step %d: %s", i, step, path)
    finally:
        if config.cache:
            data.vae.to("cpu")


def _resume_point(config: TrainingConfig) -> checkpoints.Checkpoint | None:
    latest = checkpoints.latest_checkpoint(config.output)
    if latest is None:
        if config.resume:
            logger.warning("--resume: no checkpoint in %s yet; starting from step 0.", config.output)
        return None
    if not config.resume:
        raise ValueError(f"{config.output} holds checkpoints of an earlier run (last: step {latest.step}): pass "
                         f"--resume to continue it, or choose another output folder.")
    saved = latest.state().get("curve", {})
    current = config.curve_fingerprint()
    changed = sorted(k for k in set(saved) | set(current) if saved.get(k) != current.get(k))
    if changed:
        raise ValueError(f"cannot resume {latest.path}: these options differ from the interrupted run: "
                         + ", ".join(f"{k} (was {saved.get(k)!r}, now {current.get(k)!r})" for k in changed)
                         + ". Use the same values, or another output folder for a new run.")
    return latest


def _write_losses(path: Path, rows: list[str]) -> None:
    write_text(path, "step,loss,lr\n" + "".join(rows))


def _kept_loss_rows(path: Path, last_step: int) -> list[str]:
    if not path.is_file():
        return []
    rows = path.read_text(encoding="utf-8").splitlines(keepends=True)[1:]
    return [r for r in rows if r.split(",")[0].isdigit() and int(r.split(",")[0]) <= last_step]


def train(config: TrainingConfig, *, on_step: Callable[[StepReport], None] | None = None,
          stop: threading.Event | None = None) -> TrainingResult:
    """Train a LoRA as ``config`` says; returns the path of the final LoRA (the official format).

    ``on_step`` is called after every optimizer step on the main process. When ``stop`` is set the run ends at the
    next step boundary with :class:`TrainingStopped`, leaving its last checkpoint for ``resume``.
    """
    from accelerate import Accelerator, DistributedDataParallelKwargs

    config = config.checked()
    # The last block's text-stream layers feed nothing, so their branches get no gradient: DDP must allow that.
    # cpu: without it accelerate ignores torchrun's ranks on a machine without CUDA, and every process would train
    # the whole run alone into the same files; with it several CPU processes train together over gloo.
    accelerator = Accelerator(cpu=not torch.cuda.is_available(), mixed_precision=config.mixed_precision,
                              gradient_accumulation_steps=config.gradient_accumulation,
                              step_scheduler_with_optimizer=False,
                              kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=True)])
    main, device = accelerator.is_main_process, accelerator.device
    dtype = BASE_DTYPE[config.mixed_precision]
    config.output.mkdir(parents=True, exist_ok=True)
    if main:
        checkpoints.remove_partials(config.output)
    resume_from = _resume_point(config)

    # 1. Dataset, checked file by file, and its buckets.
    entries, report = load_dataset(config.data, config.data_root, config.default_caption)
    buckets = [bucket_for(e, config.buckets) for e in entries]
    if main:
        write_text(config.output / "dataset_report.json", json.dumps(report.to_json(), indent=2))
        counts: dict[str, int] = {}
        for b in buckets:
            counts[str(b)] = counts.get(str(b), 0) + 1
        logger.info("%s; buckets (WxHxF: items): %s", report.summary(), counts)

    # 2. Captions and clips encoded (and cached) before the transformer is loaded.
    model_dir = _model_folder(config, accelerator)
    inpaint_model = _variant(model_dir).variant == "inp"
    data = prepare_data(config, accelerator, model_dir, entries, buckets, inpaint_model, dtype)

    # 3. The transformer with trainable branches.
    # fp8 base: converted block by block while loading, before the branches attach (quanto replaces the linears)
    transformer = load_transformer(model_dir, dtype=dtype, device=device, fp8="qfloat8" if config.fp8_base else None)
    names = target_linears(transformer, config.target_modules)
    schedule = BatchSchedule(tuple(buckets), config.batch_size, config.seed, accelerator.process_index,
                             accelerator.num_processes)
    with lora_branches(transformer, names, config.rank, config.alpha, seed=config.seed) as branches:
        params = [p for branch in branches.values() for p in branch.parameters()]
        logger.info("training %d LoRA layers (rank %d, alpha %g): %d parameters", len(branches), config.rank,
                    config.alpha, sum(p.numel() for p in params))
        optimizer = torch.optim.AdamW(params, lr=config.learning_rate, betas=(0.9, 0.999),
                                      weight_decay=config.weight_decay, eps=config.adam_epsilon)
        lr_schedule = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lr_factor(config.lr_schedule, config.lr_warmup_steps, config.steps))
        with gradient_checkpointing(transformer) if config.gradient_checkpointing else nullcontext():
            model, optimizer, lr_schedule = accelerator.prepare(transformer, optimizer, lr_schedule)
            _register_lora_state(accelerator, branches)
            start = 0
            if resume_from is not None:
                accelerator.load_state(str(resume_from.path))
                load_layers(branches, read_lora(resume_from.lora, transformer))
                start = resume_from.step
                logger.info("resumed from %s (step %d)", resume_from.path, start)
            return _loop(config, accelerator, model, transformer, optimizer, lr_schedule, params, branches, data,
                         schedule, start, model_dir, on_step, stop)


def _register_lora_state(accelerator, branches) -> None:
    """accelerate saves optimizer, schedule and RNG states; the LoRA goes in its own file instead of the model."""

    def save_hook(models, weights, output_dir):
        weights.clear()  # never the frozen base model
        if accelerator.is_main_process:
            save_lora(Path(output_dir) / checkpoints.LORA_FILE, export_layers(branches, torch.float32))

    def load_hook(models, input_dir):
        models.clear()  # the LoRA is loaded from lora.safetensors by the caller

    accelerator.register_save_state_pre_hook(save_hook)
    accelerator.register_load_state_pre_hook(load_hook)


def _loop(config, accelerator, model, transformer, optimizer, lr_schedule, params, branches, data, schedule,
          start, model_dir, on_step, stop) -> TrainingResult:
    main, device = accelerator.is_main_process, accelerator.device
    dtype = transformer.dtype
    losses_file = config.output / "losses.csv"
    if main:
        _write_losses(losses_file, _kept_loss_rows(losses_file, start))
    sampler = load_scheduler(model_dir) if config.validation_prompts else None
    micro = start * config.gradient_accumulation
    losses = []
    model.train()
    for step in range(start + 1, config.steps + 1):
        started = time.perf_counter()
        step_losses = []
        for _ in range(config.gradient_accumulation):
            epoch, indices = schedule.micro_batch(micro)
            generator = seeded_generator(config.seed, micro, accelerator.process_index)
            latents, states, inpaint = data.batch(indices, epoch, generator)
            with accelerator.accumulate(model):
                loss = flow_matching_loss(model, latents.to(device), states, generator=generator,
                                          inpaint_latents=inpaint, dtype=dtype)
                accelerator.backward(loss)
                if accelerator.sync_gradients and config.max_grad_norm > 0:
                    accelerator.clip_grad_norm_(params, config.max_grad_norm)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
            step_losses.append(loss.detach())
            micro += 1
        lr = lr_schedule.get_last_lr()[0]
        lr_schedule.step()
        loss_value = accelerator.gather(torch.stack(step_losses).mean()[None]).float().mean().item()
        if not math.isfinite(loss_value):
            raise ValueError(f"the loss is {loss_value} at step {step}: lower the learning rate, or use bf16 "
                             f"instead of fp16 mixed precision.")
        losses.append(loss_value)
        if main:
            with losses_file.open("a", encoding="utf-8") as f:
                f.write(f"{step},{loss_value:.8f},{lr:.6e}\n")
            if on_step is not None:
                on_step(StepReport(step, config.steps, loss_value, lr, time.perf_counter() - started))
        if step % config.checkpoint_every == 0 or step == config.steps:
            _save_checkpoint(config, accelerator, step)
        if config.validation_prompts and main and (
                step == config.steps or (config.validation_every and step % config.validation_every == 0)):
            model.eval()
            _validate(config, data, accelerator.unwrap_model(model), sampler, step, device)
            model.train()
        if stop is not None and stop.is_set() and step < config.steps:
            raise TrainingStopped(step)
    path = config.lora_path
    if main:
        metadata = {"ss_network_dim": str(config.rank), "ss_network_alpha": str(config.alpha),
                    "easyanimate_steps": str(config.steps), "easyanimate_base_model": str(config.model),
                    "easyanimate_target_modules": ",".join(config.target_modules) or "all"}
        try:
            save_lora(path, export_layers(branches, SAVE_DTYPES[config.save_dtype]), metadata=metadata)
        finally:
            checkpoints.remove_partials(config.output)
        logger.info("saved the LoRA (%d layers) to %s", len(branches), path)
    accelerator.wait_for_everyone()
    return TrainingResult(path, config.steps, tuple(losses))


def _save_checkpoint(config: TrainingConfig, accelerator, step: int) -> None:
    final = checkpoints.checkpoint_path(config.output, step)
    if accelerator.is_main_process:
        checkpoints.begin(final)
    accelerator.wait_for_everyone()
    try:
        accelerator.save_state(str(checkpoints.partial_path(final)))
        accelerator.wait_for_everyone()
        if accelerator.is_main_process:
            state = {"step": step, "curve": config.curve_fingerprint(), "time": time.time()}
            checkpoints.commit(final, state)
            checkpoints.prune(config.output, config.checkpoints_keep)
            logger.info("checkpoint %s", final)
    except BaseException:
        if accelerator.is_main_process:
            checkpoints.abort(final)
        raise
