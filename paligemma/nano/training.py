"""Train PaliGemma-nano with the package's own model and PaliGemma's prefix-LM loss (only the answer is scored)."""

from __future__ import annotations

import json
import math
import random
import time
from pathlib import Path

import torch

from ..configuration import GemmaConfig, PaliGemmaConfig, SiglipVisionConfig
from ..modeling_paligemma import PaliGemmaForConditionalGeneration
from ..processing_paligemma import PaliGemmaProcessor
from .scenes import IMAGE_SIZE, make_scene
from .tasks import sample_task
from .tokenizer import build_tokenizer

class TrainingDiverged(FloatingPointError):
    """The loss became NaN or infinite (a learning rate far too high, usually); nothing was saved."""


HELD_OUT_SEEDS = 10**9  # training draws scene seeds below this; evaluation uses seeds from here on


def nano_config(vocab_size: int) -> PaliGemmaConfig:
    """SigLIP 3 layers x 64 wide on 4x4 patches -> 64 image tokens; Gemma 3 layers x 96 wide, 4 query heads, 1 KV head."""
    vision = SiglipVisionConfig(hidden_size=64, intermediate_size=256, num_hidden_layers=3, num_attention_heads=4,
                                image_size=IMAGE_SIZE, patch_size=4)
    text = GemmaConfig(vocab_size=vocab_size, hidden_size=96, intermediate_size=384, num_hidden_layers=3,
                       num_attention_heads=4, num_key_value_heads=1, head_dim=32, max_position_embeddings=128)
    return PaliGemmaConfig(text_config=text, vision_config=vision, image_token_index=3, projection_dim=96)


def training_batch(processor: PaliGemmaProcessor, rng: random.Random, batch_size: int) -> dict:
    """Fresh scenes every step (never the held-out seeds), one task each, left-padded into a batch."""
    prompts, answers, images = [], [], []
    for _ in range(batch_size):
        scene = make_scene(rng.randrange(HELD_OUT_SEEDS))
        prompt, answer = sample_task(scene, rng)
        prompts.append(prompt), answers.append(answer), images.append(scene.image)
    return processor(text=prompts, images=images, suffix=answers)


def learning_rate(step: int, steps: int, peak: float, warmup: int) -> float:
    """Linear warm-up, then cosine decay to a tenth of the peak."""
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = (step - warmup) / max(1, steps - warmup)
    return peak * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


def _mean_losses(losses: list[float], every: int) -> list[float]:
    """The loss curve as saved and printed: the mean of each block of `every` steps."""
    return [round(sum(losses[i:i + every]) / len(losses[i:i + every]), 5) for i in range(0, len(losses), every)]


def _print_now(line: str) -> None:
    print(line, flush=True)


def _duration(seconds: float) -> str:
    return f"{int(seconds // 60)}m{int(seconds % 60):02d}s"


def train(out: str | Path | None = None, steps: int = 8000, batch_size: int = 32, peak_lr: float = 2e-3,
          warmup: int = 200, seed: int = 0, init: str | Path | None = None, report_every: int = 100,
          save_every: int | None = None, log=_print_now) -> tuple[PaliGemmaForConditionalGeneration, PaliGemmaProcessor, list[float]]:
    """Train (from scratch, or continue from the checkpoint folder `init`); save to `out` if given.

    Deterministic for a given seed and thread count. Returns the model, its processor and the loss of every step.
    """
    for name, value in (("steps", steps), ("batch_size", batch_size), ("report_every", report_every)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    if not (isinstance(peak_lr, (int, float)) and math.isfinite(peak_lr) and peak_lr > 0):
        raise ValueError(f"peak_lr must be a positive, finite number, got {peak_lr!r}")
    torch.manual_seed(seed)
    rng = random.Random(seed)
    if init is not None:
        model = PaliGemmaForConditionalGeneration.from_pretrained(init)
        processor = PaliGemmaProcessor.from_pretrained(init)
    else:
        tokenizer = build_tokenizer()
        config = nano_config(tokenizer.get_vocab_size())
        model = PaliGemmaForConditionalGeneration(config)
        processor = PaliGemmaProcessor(tokenizer, config.vision_config.image_size, config.num_image_tokens)
    history = _history(init)
    run = {"steps": steps, "batch_size": batch_size, "peak_lr": peak_lr, "warmup": warmup, "seed": seed,
           "threads": torch.get_num_threads(), "init": None if init is None else Path(init).name}
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=peak_lr, betas=(0.9, 0.98), weight_decay=0.01)
    losses, start = [], time.perf_counter()
    for step in range(steps):
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(step, steps, peak_lr, warmup)
        batch = training_batch(processor, rng, batch_size)
        loss = model(**batch)["loss"]  # cross-entropy over the answer tokens only (labels are -100 elsewhere)
        if not torch.isfinite(loss):
            raise TrainingDiverged(f"the loss became {loss.item()} at step {step + 1} (learning rate "
                                   f"{group['lr']:.3g}); training stopped and the final checkpoint was not written. Try a smaller learning rate")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        losses.append(loss.item())
        if log is not None and ((step + 1) % report_every == 0 or step + 1 == steps):
            elapsed = time.perf_counter() - start
            left = elapsed / (step + 1) * (steps - step - 1)
            log(f"step {step + 1:>5}/{steps}  loss {_mean_losses(losses, report_every)[-1]:.4f}  "
                f"lr {group['lr']:.2e}  elapsed {_duration(elapsed)}  left {_duration(left)}")
        if out is not None and save_every and (step + 1) % save_every == 0 and step + 1 < steps:
            save(model, processor, Path(out) / f"step-{step + 1}", history + [
                run | {"steps_done": step + 1, "report_every": report_every,
                       "mean_losses": _mean_losses(losses, report_every)}])
    model.eval()
    if out is not None:
        save(model, processor, out,
             history + [run | {"report_every": report_every, "mean_losses": _mean_losses(losses, report_every)}])
    return model, processor, losses


def _history(init: str | Path | None) -> list[dict]:
    """The training runs that produced the checkpoint `init` (continuations append to it)."""
    if init is None or not (Path(init) / "training_runs.json").is_file():
        return []
    return json.loads((Path(init) / "training_runs.json").read_text())


def save(model, processor, out: str | Path, runs: list[dict]) -> None:
    """config.json + model.safetensors + tokenizer.json (Hugging Face layout), and training_runs.json."""
    out = Path(out)
    model.save_pretrained(out)
    processor.save_pretrained(out)
    (out / "training_runs.json").write_text(json.dumps(runs, indent=2) + "\n")
