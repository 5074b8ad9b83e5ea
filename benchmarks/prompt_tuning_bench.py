"""Prompt vs soft prompt vs LoRA on the support team's data (issue 19): the three rungs, one held-out split.

    python benchmarks/prompt_tuning_bench.py [--epochs 2] [--max-tokens 160] [--threads 2] [--virtual-tokens 20]
                                             [--init fixed|system|both] [--skip-lora] [--reuse]

Trains on ``examples/adapters/support/train.jsonl`` (the CLI's split: seed 0, 10% held out) on the converted
SmolLM2-135M-Instruct, each with the same loop, epochs, batches and checkpoints (:mod:`citeline.lora.training`):

- a soft prompt (peft prompt tuning, ``--virtual-tokens``, learning rate ``--prompt-lr``), initialised from a
  fixed short format instruction (``fixed``), from the team's system prompt (``system``), or both, measured;
- a LoRA adapter (rank 8, all seven projections, learning rate 1e-3: the CLI's defaults).

Then on the held-out split it generates greedily with the base model (the prompt as in the data), the prompting
baseline (base + ``system_prompt.txt``), each soft prompt and the LoRA adapter, all on the embedded backend's
transformers engine, and scores format compliance per rule (``rules.toml``) and ROUGE-L against the references,
as ``citeline adapter eval`` does. Prints a Markdown section for docs/benchmarks.md with the training seconds and
the load average before and after.
"""

from __future__ import annotations

import argparse
import math
import os
import shutil
import sys
import time
from pathlib import Path

from _common import HOME, REPO, git_revision, machine

from citeline.contracts.generator import ChatMessage, GenerationRequest
from citeline.generation.local import EmbeddedBackend, ensure_base_model
from citeline.lora.evaluation import heldout_examples, load_rules, score_outputs
from citeline.lora.manifest import AdapterManifest
from citeline.lora.safetensors_header import safetensors_shapes
from citeline.lora.soft_prompt import DEFAULT_INIT_TEXT
from citeline.lora.training import TrainingConfig, train_adapter
from citeline.settings import GenerationSettings

EXAMPLE = REPO / "examples" / "adapters" / "support"


def load() -> str:
    return " / ".join(f"{x:.2f}" for x in os.getloadavg())


def train(name: str, out: Path, base: Path, args: argparse.Namespace, **kw: object) -> AdapterManifest:
    if out.exists() and not args.reuse:
        shutil.rmtree(out)
    if not (out / "citeline_adapter.json").exists():
        config = TrainingConfig(team="support", data=EXAMPLE / "train.jsonl", output=out, base_model=base,
                                epochs=args.epochs, threads=args.threads, **kw)  # type: ignore[arg-type]
        result = train_adapter(config, progress=lambda p: print(f"  {name} step {p.step}/{p.total_steps} loss "
                                                                  f"{p.loss:.3f} ({p.elapsed_s:.0f} s)",
                                                                  file=sys.stderr, flush=True))
        print(f"{name}: trained in {result.seconds:.0f} s (load {load()})", file=sys.stderr, flush=True)
    manifest = AdapterManifest.read(out)
    assert manifest is not None
    return manifest


def trained_params(adapter: Path) -> int:
    with (adapter / "adapter_model.safetensors").open("rb") as f:
        return sum(math.prod(shape) for shape in safetensors_shapes(f).values())


def with_system(messages: tuple[ChatMessage, ...], system: str) -> tuple[ChatMessage, ...]:
    return (ChatMessage("system", system), *(m for m in messages if m.role != "system"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--virtual-tokens", type=int, default=20)
    parser.add_argument("--prompt-lr", type=float, default=3e-2)
    parser.add_argument("--init", choices=("fixed", "system", "both"), default="both")
    parser.add_argument("--max-tokens", type=int, default=160, help="answer length limit at evaluation")
    parser.add_argument("--limit", type=int, default=None, help="evaluate on the first N held-out examples")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--skip-lora", action="store_true")
    parser.add_argument("--reuse", action="store_true", help="evaluate what an earlier run trained")
    args = parser.parse_args()
    started, load_before = time.monotonic(), load()

    base = ensure_base_model(HOME)
    rules = load_rules(EXAMPLE / "rules.toml")
    assert rules.system_prompt is not None
    inits = {"fixed": DEFAULT_INIT_TEXT, "system": rules.system_prompt}
    trained: dict[str, tuple[Path, AdapterManifest]] = {}
    for init in (("fixed", "system") if args.init == "both" else (args.init,)):
        out = HOME / "adapters" / f"support-prompt-{init}"
        trained[f"soft prompt ({init} init)"] = out, train(
            f"soft prompt ({init})", out, base, args, virtual_tokens=args.virtual_tokens, init_text=inits[init],
            learning_rate=args.prompt_lr)
    if not args.skip_lora:
        out = HOME / "adapters" / "support-lora"
        trained["LoRA (rank 8)"] = out, train("LoRA", out, base, args)

    backend = EmbeddedBackend(EmbeddedBackend.Config(model=str(base), engine="transformers"), home=HOME,
                              generation=GenerationSettings())
    for i, (path, _) in enumerate(trained.values()):
        backend.load_adapter(f"a{i}", path)
    examples = heldout_examples(next(iter(trained.values()))[0])[: args.limit]
    runs = {"base model, prompt as in the data": None, "prompting baseline (+ system_prompt.txt)": None,
            **{label: f"a{i}" for i, label in enumerate(trained)}}
    outputs: dict[str, list[str]] = {label: [] for label in runs}
    t1 = time.monotonic()
    for n, example in enumerate(examples, 1):
        for label, model in runs.items():
            messages = (with_system(example.prompt, rules.system_prompt) if label.startswith("prompting")
                        else tuple(example.prompt))
            request = GenerationRequest(messages, model=model, max_tokens=args.max_tokens, temperature=0.0)
            outputs[label].append(backend.generate(request).text.strip())
        print(f"  evaluated {n}/{len(examples)} ({time.monotonic() - t1:.0f} s)", file=sys.stderr, flush=True)
    eval_s = time.monotonic() - t1
    refs = [e.reference for e in examples]
    scores = {label: score_outputs(label, out, refs, rules.rules) for label, out in outputs.items()}

    print(f"\nMachine: {machine()}; git {git_revision()}; {time.strftime('%Y-%m-%d')}; load average (1/5/15 min) "
          f"{load_before} at the start, {load()} at the end.\n")
    print(f"Training: {args.epochs} epochs each on the same split; evaluation: {len(examples)} held-out prompts, "
          f"greedy, max {args.max_tokens} tokens, {eval_s:.0f} s for all rows.\n")
    print("| model | trained params | train s | held-out loss (base → tuned) | compliant (all rules) | "
          + " | ".join(r.name for r in rules.rules)
          + " | ROUGE-L |")
    print("|---|---|---|---|---|" + "---|" * len(rules.rules) + "---|")
    for label, s in scores.items():
        path, manifest = trained.get(label, (None, None))
        m = manifest.metrics if manifest else {}
        size = f"{trained_params(path):,}" if path else "-"
        loss = f"{m['base_heldout_loss']:.3f} → {m['heldout_loss']:.3f}" if m else "-"
        secs = f"{m['train_seconds']:.0f}" if m else "-"
        print(f"| {label} | {size} | {secs} | {loss} | {s.compliance:.0%} | "
              + " | ".join(f"{s.per_rule[r.name]:.0%}" for r in rules.rules) + f" | {s.similarity:.3f} |")
    print(f"\nTotal {time.monotonic() - started:.0f} s.")
    for label, out in outputs.items():  # the first two answers of each, for the reader
        print(f"\n<!-- {label}: {out[0][:300]!r} | {out[1][:300] if len(out) > 1 else ''!r} -->")


if __name__ == "__main__":
    main()
