"""Team adapter benchmark: train the example support adapter on CPU, then adapter vs base vs prompting baseline.

    python benchmarks/adapter_bench.py [--epochs 2] [--max-tokens 160] [--no-grounding] [--reuse]

Trains ``examples/adapters/support/train.jsonl`` into ``$CITELINE_BENCH_HOME/adapters/support`` (default
``/tmp/citeline-bench``) on the converted SmolLM2-135M-Instruct, with the CLI's defaults (rank 8, all seven
Llama projections, 2 epochs), then on the held-out split generates with the adapter, the base model and
the prompting baseline (base + ``system_prompt.txt``) and scores format compliance against ``rules.toml``
and ROUGE-L against the references. With grounding (the default) it indexes the Acme example in its own
namespace of the embedded database and asks the held-out questions as alice through the real Assistant,
with and without the adapter. Prints a Markdown section for docs/benchmarks.md and writes the full report
(every output) to ``citeline_eval.json`` in the adapter folder.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
import uuid
from pathlib import Path

from _common import HOME, REPO, database_url, git_revision, machine

from citeline.generation.local import EmbeddedBackend, ensure_base_model
from citeline.lora.evaluation import (
    decide_promotion,
    evaluate_adapter,
    grounding_check,
    heldout_examples,
    load_rules,
    question_of,
)
from citeline.lora.manifest import AdapterManifest
from citeline.lora.training import TrainingConfig, train_adapter
from citeline.settings import GenerationSettings, Settings

EXAMPLE = REPO / "examples" / "adapters" / "support"


def grounding(backend: EmbeddedBackend, questions: list[str], max_tokens: int):
    from citeline.answers.assistant import Assistant
    from citeline.facade import Citeline

    root = Path(tempfile.mkdtemp(prefix="adapter-bench-")) / "acme"
    shutil.copytree(REPO / "examples" / "acme", root, ignore=shutil.ignore_patterns(".citeline"))
    settings = Settings.load(root / "citeline.toml", database_url=database_url(),
                             database={"namespace": f"adapter_{uuid.uuid4().hex[:8]}"})
    with Citeline(settings) as cl:
        cl.sync()
        cl.admin.import_principals(root / "principals.toml", actor="adapter-bench")
        assistant = Assistant(cl.retriever, backend, cl.audit, answer=settings.answer,
                              generation=GenerationSettings(max_tokens=max_tokens))
        result = grounding_check(assistant, cl.principals.get("alice"), questions, adapter_name="support")
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--rank", type=int, default=8)
    parser.add_argument("--max-tokens", type=int, default=160, help="answer length limit at evaluation")
    parser.add_argument("--limit", type=int, default=None, help="evaluate on the first N held-out examples")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--no-grounding", action="store_true")
    parser.add_argument("--reuse", action="store_true", help="evaluate an adapter trained by an earlier run")
    args = parser.parse_args()

    base = ensure_base_model(HOME)
    out = HOME / "adapters" / "support"
    if out.exists() and not args.reuse:
        shutil.rmtree(out)
    t0 = time.monotonic()
    if not (out / "citeline_adapter.json").exists():
        config = TrainingConfig(team="support", data=EXAMPLE / "train.jsonl", output=out, base_model=base,
                                rank=args.rank, alpha=2 * args.rank, epochs=args.epochs, threads=args.threads)
        result = train_adapter(config, progress=lambda p: print(f"  step {p.step}/{p.total_steps} loss "
                                                                  f"{p.loss:.3f} ({p.elapsed_s:.0f} s)",
                                                                  file=sys.stderr, flush=True))
        print(f"trained in {result.seconds:.0f} s", file=sys.stderr)
    manifest = AdapterManifest.read(out)
    assert manifest is not None
    rules = load_rules(EXAMPLE / "rules.toml")
    backend = EmbeddedBackend(EmbeddedBackend.Config(model=str(base)), home=HOME, generation=GenerationSettings())
    backend.load_adapter("support", out)
    examples = heldout_examples(out)[: args.limit]
    t1 = time.monotonic()
    report = evaluate_adapter(out, rules, backend, adapter_name="support", examples=examples,
                              max_tokens=args.max_tokens,
                              progress=lambda i, n: print(f"  evaluated {i}/{n}", file=sys.stderr, flush=True))
    eval_s = time.monotonic() - t1
    g = None
    if not args.no_grounding:
        g = grounding(backend, [question_of(p) for p in report.prompts], args.max_tokens)
        report = type(report)(**{**report.__dict__, "grounding": g})
    report.write(out)
    decision = decide_promotion(report)
    m = manifest.metrics

    print(f"\nMachine: {machine()}; git {git_revision()}; {time.strftime('%Y-%m-%d')}.\n")
    print(f"Training: {int(m['train_examples'])} examples ({int(m['heldout_examples'])} held out), rank "
          f"{manifest.rank}, {int(m['epochs'])} epochs, {int(m['steps'])} steps in {m['train_seconds']:.0f} s on CPU; "
          f"held-out loss {m['base_heldout_loss']:.3f} (base) → {m['heldout_loss']:.3f} (adapter).")
    print(f"Evaluation: {report.examples} held-out prompts, greedy, max {args.max_tokens} tokens, "
          f"{eval_s:.0f} s.\n")
    names = {"base": "base model, same prompt", "baseline": "prompting baseline (base + team system prompt)",
             "adapter": "adapter"}
    print("| model | compliant (all rules) | " + " | ".join(report.rules) + " | ROUGE-L |")
    print("|---|---|" + "---|" * len(report.rules) + "---|")
    for key in ("base", "baseline", "adapter"):
        s = report.scores[key]
        print(f"| {names[key]} | {s.compliance:.0%} | " + " | ".join(f"{s.per_rule[r]:.0%}" for r in report.rules)
              + f" | {s.similarity:.3f} |")
    if g is not None:
        print(f"\nGrounding ({g.questions} questions as alice): answers citing only shown evidence "
              f"{g.base_grounded}/{g.base_answered} = {g.base_share:.0%} without the adapter, "
              f"{g.adapter_grounded}/{g.adapter_answered} = {g.adapter_share:.0%} with it.")
    print(f"\nPromotion gate: {'promote' if decision.promote else 'refuse'} ({'; '.join(decision.reasons)}).")
    print(f"Total {time.monotonic() - t0:.0f} s.")


if __name__ == "__main__":
    main()
