"""Offline workflows beside the :class:`~citeline.facade.Citeline` facade: a team adapter's data check, training
and evaluation; retrieval and answer-quality evaluation; the scheduler's retry policy.

This module sits in the facade's layer: it may import lora, evaluation, generation and ingest, and the CLI
(like any other front end) reaches those only through it and :mod:`citeline.facade`. Each function here does
the work of one command and returns a report; printing stays with the caller. The result types the callers
read are re-exported here for the same reason.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any, cast

from citeline.errors import ConfigError, GenerationError
from citeline.evaluation.answers import AnswerEvalReport, QAItem, QuestionResult, load_keys, load_qa
from citeline.evaluation.retrieval import EvalReport as RetrievalReport
from citeline.facade import Citeline
from citeline.ingest.scheduler import Outcome, RetryPolicy, RunResult, Scheduler
from citeline.ingest.scheduler_monitor import SchedulerMonitor
from citeline.ingest.sync import SyncReport
from citeline.lora.data import DataReport
from citeline.lora.evaluation import EvalReport as AdapterEvalReport
from citeline.lora.evaluation import PromotionDecision
from citeline.lora.feedback_data import FeedbackData
from citeline.lora.registry import AdapterVersion
from citeline.lora.soft_prompt import DEFAULT_VIRTUAL_TOKENS, PROMPT_LEARNING_RATE
from citeline.lora.training import TrainingConfig, TrainingProgress, TrainingResult
from citeline.settings import Settings

__all__ = [
    "AdapterEvalReport",
    "AnswerEvalReport",
    "DataReport",
    "FeedbackData",
    "Outcome",
    "PromotionDecision",
    "QAItem",
    "QuestionResult",
    "RetrievalReport",
    "RetryPolicy",
    "RunResult",
    "Scheduler",
    "SchedulerMonitor",
    "SyncReport",
    "TrainingConfig",
    "TrainingProgress",
    "TrainingResult",
    "base_model",
    "check_training_data",
    "evaluate_adapter",
    "evaluate_answers",
    "evaluate_retrieval",
    "feedback_training_data",
    "load_keys",
    "load_qa",
    "retry_policy",
    "train_adapter",
]


# -- team adapters: data, training, evaluation ----------------------------------------------------------
def base_model(base: Path | None = None, config: str | Path | None = None) -> Path:
    """The local base model folder adapters are trained and evaluated on: ``base`` (a Hugging Face model
    folder), else ``adapters.base_model_path`` (the copy of the served base that registration checks against),
    else the built-in SmolLM2-135M-Instruct, converted once into ``<home>/models``."""
    settings = Settings.load(config) if base is None else None
    if settings is not None and settings.adapters.base_model_path is not None:
        base = settings.resolve_path(settings.adapters.base_model_path)
        if not (base / "config.json").is_file():
            raise ConfigError(f"adapters.base_model_path {base} is not a local Hugging Face model folder (no "
                              "config.json): point it at a local copy of the served base model")
    if base is not None:
        if not (base / "config.json").is_file():
            raise ConfigError(f"--base {base} is not a local Hugging Face model folder (no config.json)")
        return base.resolve()
    from citeline.generation.local import ensure_base_model

    assert settings is not None
    return ensure_base_model(settings.home)


def _tokenizer(base: Path) -> Any:  # transformers' tokenizer types are heavy to import here
    from transformers import AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    return AutoTokenizer.from_pretrained(base, local_files_only=True)


def check_training_data(file: Path, *, base: Path | None = None, config: str | Path | None = None,
                        max_tokens: int = 1024, heldout: float = 0.1, seed: int = 0) -> DataReport:
    """Schema, role order, empty, overlong and duplicate examples, token lengths (the base model's tokenizer)
    and the train / held-out split of a training file."""
    from citeline.lora.data import chat_token_counter, check_data

    if not file.is_file():
        raise ConfigError(f"{file} does not exist")
    counter = chat_token_counter(_tokenizer(base_model(base, config)))
    return check_data(file, count_tokens=counter, max_tokens=max_tokens, heldout=heldout, seed=seed)


def train_adapter(team: str, data: Path, *, base: Path | None = None, output: Path | None = None,
                  config: str | Path | None = None, progress: Callable[[TrainingProgress], None] | None = None,
                  stop: threading.Event | None = None, resume: bool = True, method: str = "sft", beta: float = 0.1,
                  start_from: str | None = None, **options: Any) -> TrainingResult:
    """Train ``team``'s LoRA adapter into ``output`` (default ``<home>/adapters/<team>``).

    ``method``: ``sft`` (chat examples), ``dpo`` (preference pairs, :mod:`citeline.lora.preference`: ``beta``) or
    ``prompt`` (a soft prompt on chat examples, :mod:`citeline.lora.soft_prompt`: ``virtual_tokens``, ``init_text``;
    learning rate ``PROMPT_LEARNING_RATE`` unless given).
    ``start_from``: ``base`` (default: a fresh adapter), ``active`` (continue the team's active adapter in the
    registry) or an adapter folder. ``options``: the other :class:`TrainingConfig` fields (rank, alpha, epochs,
    learning_rate, ...).
    """
    from citeline.lora.training import train_adapter as train

    if method not in ("sft", "dpo", "prompt"):
        raise ConfigError(f"--method must be sft, dpo or prompt, not {method!r}")
    if method == "prompt":  # a soft prompt (embedded backend only: vLLM does not serve them)
        if start_from not in (None, "base"):
            raise ConfigError("--start-from is for LoRA adapters (--method sft or dpo); a soft prompt starts from "
                              "its init text")
        options = {"learning_rate": PROMPT_LEARNING_RATE, **options, "virtual_tokens": options.get(
            "virtual_tokens") or DEFAULT_VIRTUAL_TOKENS}
    base_dir = base_model(base, config)
    out = output or Settings.load(config).home / "adapters" / team
    cfg = TrainingConfig(team=team, data=data, output=out, base_model=base_dir, **options)
    if method in ("sft", "prompt"):  # from the base, or continuing an adapter (e.g. the active one, on corrections)
        return train(replace(cfg, start_from=_start_from(team, start_from, config)), progress=progress, stop=stop,
                     resume=resume)
    from citeline.lora.preference import train_dpo

    return train_dpo(cfg, beta=beta, start_from=_start_from(team, start_from, config), progress=progress, stop=stop)


def _start_from(team: str, start_from: str | None, config: str | Path | None) -> Path | None:
    if start_from in (None, "base"):
        return None
    if start_from == "active":
        with Citeline.open(config) as cl:
            active = cl.adapters.active(team)
        if active is None:
            raise ConfigError(f"team {team!r} has no active adapter to start from: use --start-from base")
        return active.path
    path = Path(start_from)
    if not (path / "adapter_config.json").is_file():
        raise ConfigError(f"--start-from {start_from}: not an adapter folder (no adapter_config.json); use base, "
                          "active or an adapter folder")
    return path


def evaluate_adapter(adapter: Path | str, rules: Path, *, base: Path | None = None,
                     config: str | Path | None = None, heldout_file: Path | None = None, limit: int | None = None,
                     max_tokens: int = 256, grounding_user: str | None = None, against: str | None = "active",
                     actor: str = "api", progress: Callable[[int, int], None] | None = None) -> tuple[AdapterEvalReport,
                                                                                    PromotionDecision]:
    """Adapter vs base model vs prompting baseline vs the team's current adapter on held-out prompts (written
    to ``citeline_eval.json`` in the adapter folder), and whether that makes it fit to promote.

    ``adapter``: a folder, or the served name of a registered adapter (its copy in the store is evaluated, and
    the report written there is what the promotion gate reads). ``against``: the adapter the new one must beat:
    ``active`` (default: the team's active adapter in the registry, if it has one), ``none``, or a registered
    served name. ``grounding_user``: also ask the held-out questions through the assistant as this principal
    (needs the index), with each model. ``actor``: who, in the audit row that records a registered adapter's
    new numbers.
    """
    from citeline.lora import evaluation as lora_eval
    from citeline.lora.manifest import AdapterManifest

    base_dir = base_model(base, config)
    team_rules = lora_eval.load_rules(rules)
    folder, current = _eval_subjects(adapter, against, team_rules.team, config)
    name = folder.name or "adapter"
    examples = lora_eval.heldout_examples(folder, data=heldout_file)[:limit]
    current_name = current.served_name if current is not None else None
    if not team_rules.team and (manifest := AdapterManifest.read(folder)) is not None and manifest.team:
        team_rules = replace(team_rules, team=manifest.team)
    backend = _embedded_backend(Settings.load(config), base_dir)
    try:  # the model's weights are freed however the evaluation ends
        backend.load_adapter(name, folder)
        if current is not None:
            backend.load_adapter(current.served_name, current.path)
        report = lora_eval.evaluate_adapter(folder, team_rules, backend, adapter_name=name, examples=examples,
                                            max_tokens=max_tokens, current=current_name, progress=progress)
        if grounding_user is not None:
            questions = [lora_eval.question_of(p) for p in report.prompts]
            with Citeline.open(config) as cl:
                grounding = _grounding(cl, backend, grounding_user, questions, adapter_name=name,
                                       current=current_name, max_tokens=max_tokens)
            report = replace(report, grounding=grounding)
    finally:
        backend.close()
    report.write(folder)
    if isinstance(adapter, str) and not Path(adapter).is_dir():  # a served name: the registry's numbers too
        with Citeline.open(config) as cl:
            cl.adapters.record_evaluation(adapter, actor=actor)
    return report, lora_eval.decide_promotion(report)


def _eval_subjects(adapter: Path | str, against: str | None, team: str,
                   config: str | Path | None) -> tuple[Path, AdapterVersion | None]:
    """The folder to evaluate, and the registered adapter it must beat (None: no comparison)."""
    from citeline.lora.manifest import AdapterManifest

    folder = Path(adapter)
    registered = not folder.is_dir() and isinstance(adapter, str) and "/" not in adapter
    if not registered and not folder.is_dir():
        raise ConfigError(f"{adapter} is neither an adapter folder nor a registered adapter's served name")
    if not registered and against in (None, "none"):
        return folder, None
    with Citeline.open(config) as cl:
        if registered:
            folder = cl.adapters.require(str(adapter)).path
        manifest = AdapterManifest.read(folder)
        team = team or (manifest.team if manifest and manifest.team else "")
        if against in (None, "none"):
            return folder, None
        current: AdapterVersion | None
        if against != "active":
            current = cl.adapters.require(against)
        elif not team:
            raise ConfigError(f"which team's active adapter? {folder} names no team (its manifest) and neither does "
                              "the rules file: add team = \"...\" to the rules file, or pass --against none")
        else:
            current = cl.adapters.active(team)
    if current is not None and current.path.resolve() == folder.resolve():
        return folder, None  # the active adapter itself: nothing to beat but the baseline
    return folder, current


def _embedded_backend(settings: Settings, base_dir: Path) -> Any:
    """The in-process backend on ``base_dir``, whatever ``generation.backend`` says (adapters load into it)."""
    from citeline import plugins
    from citeline.generation.local import EmbeddedBackend

    generation = settings.generation  # the embedded backend's own options only when it is the configured one
    options = {**(generation.options if generation.backend == "embedded" else {}), "model": str(base_dir)}
    config = cast("EmbeddedBackend.Config", plugins.configure(EmbeddedBackend, options, section="generation.options"))
    return EmbeddedBackend(config, home=settings.home, generation=generation)


def _grounding(cl: Citeline, backend: Any, user: str, questions: Sequence[str], *, adapter_name: str,
               current: str | None, max_tokens: int) -> Any:
    from citeline.answers.assistant import Assistant
    from citeline.lora.evaluation import grounding_check
    from citeline.settings import GenerationSettings

    # verification off: a fallback would put the extractive answer in place of each model's, and hide the difference
    answer = cl.settings.answer.model_copy(update={"verify": "off"})
    assistant = Assistant(cl.retriever, backend, cl.audit, answer=answer,
                          generation=GenerationSettings(max_tokens=max_tokens))
    return grounding_check(assistant, cl.principals.get(user), questions, adapter_name=adapter_name, current=current)


def feedback_training_data(team: str, output: Path, *, base: Path | None = None, config: str | Path | None = None,
                           max_tokens: int = 1024, heldout: float = 0.1, seed: int = 0,
                           draft_with: str | None = None, draft_model: str | None = None,
                           draft_key: str | None = None) -> tuple[FeedbackData, DataReport, dict[str, Path]]:
    """``team``'s feedback as training data in ``output`` (see :mod:`citeline.lora.feedback_data`): chat
    examples (``sft.jsonl``, checked here as ``adapter train`` will check it), preference pairs, and with
    ``draft_with`` (an OpenAI-compatible server's URL) drafted corrections for review."""
    from citeline.lora.data import chat_token_counter, check_data
    from citeline.lora.feedback_data import build_feedback_data

    counter = chat_token_counter(_tokenizer(base_model(base, config)))
    drafter = _drafter(draft_with, draft_model, draft_key) if draft_with else None
    with Citeline.open(config) as cl:
        rated = cl.feedback.rated_answers(team)
        evidence = cl.feedback.evidence(team, (i for a in rated for i in a.chunk_ids))
    data = build_feedback_data(team, rated, evidence.chunks, evidence.visible, members=len(evidence.members),
                               heldout=heldout, seed=seed, drafter=drafter, count_tokens=counter,
                               max_tokens=max_tokens)
    files = data.write(output)
    report = check_data(files["sft"], count_tokens=counter, max_tokens=max_tokens, heldout=heldout, seed=seed)
    files["sft_heldout"] = output / "sft.heldout.jsonl"  # the examples `adapter train` will hold out (same split):
    files["sft_heldout"].write_text("".join(json.dumps(e.as_json(), ensure_ascii=False) + "\n"  # any adapter's
                                            for e in report.split.heldout), encoding="utf-8")  # --heldout-file
    return data, report, files


def _drafter(url: str, model: str | None, key: str | None) -> Any:
    """Drafted corrections from the chat model at ``url`` (any OpenAI-compatible server; ``/v1`` is added
    when missing); ``model``: its first listed model when not given."""
    from openai import OpenAI, OpenAIError

    from citeline.answers.prompt import REFUSAL

    base = url.rstrip("/")
    client = OpenAI(base_url=base if base.endswith("/v1") else base + "/v1", api_key=key or "none", timeout=600,
                    max_retries=1)
    try:
        name = model or client.models.list().data[0].id
    except (OpenAIError, IndexError) as exc:
        raise ConfigError(f"--draft-with {url}: cannot list its models ({exc}); is it an OpenAI-compatible server? "
                          "Name one with --draft-model") from exc

    def draft(prompt: Sequence[Any], answer: str, reason: str) -> str:
        ask = (f"That answer was rated unhelpful{' (' + reason + ')' if reason else ''}. Write a better answer "
               "from the same evidence only, citing it like [1]; if the evidence does not answer the question, "
               f'reply exactly: "{REFUSAL}"')
        messages: list[Any] = [{"role": m.role, "content": m.content} for m in prompt]
        messages += [{"role": "assistant", "content": answer}, {"role": "user", "content": ask}]
        try:
            reply = client.chat.completions.create(model=name, messages=messages, temperature=0, max_tokens=512)
        except OpenAIError as exc:
            raise GenerationError(f"--draft-with {url}: drafting failed ({type(exc).__name__}: {exc})") from exc
        return reply.choices[0].message.content or ""

    return draft


# -- evaluation of retrieval and answers -----------------------------------------------------------------
def evaluate_retrieval(corpus: Path, queries: Path, qrels: Path, *, config: str | Path | None = None,
                       keep: bool = True,
                       on_progress: Callable[[str, int, int], None] | None = None) -> RetrievalReport:
    """Ingest a BEIR corpus into an isolated namespace; nDCG@10, Recall@100, MRR@10 per search mode."""
    from citeline.evaluation.retrieval import evaluate_retrieval as run

    settings = Settings.load(config)
    shared: dict[str, Any] = {}

    def factory(namespace: str) -> Citeline:  # one embedder for every namespace
        cl = Citeline(settings, namespace=namespace, embedder=shared.get("embedder"))
        shared["embedder"] = cl.embedder
        return cl

    return run(factory, corpus, queries, qrels, keep=keep, on_progress=on_progress)


def evaluate_answers(items: Sequence[QAItem], *, qa_file: Path, url: str | None = None,
                     keys: dict[str, str] | None = None, admin_key: str | None = None, model: str | None = None,
                     backend: str | None = None, verify: str | None = None, config: str | Path | None = None,
                     on_progress: Callable[[int, int, QuestionResult], None] | None = None) -> AnswerEvalReport:
    """Ask every question as its principal, in process (``backend`` / ``verify`` override the configured
    ones) or against the server at ``url`` (with ``keys``: user → API key; the server's own settings apply);
    score the answers."""
    from citeline.evaluation import answers

    if url is not None:
        return answers.run_against_server(url, items, keys or {}, admin_key=admin_key, model=model,
                                          on_progress=on_progress, qa_file=str(qa_file))
    overrides: dict[str, Any] = {}
    if backend:
        overrides["generation"] = {"backend": backend}
    if verify:
        overrides["answer"] = {"verify": verify}
    with Citeline.open(config, **overrides) as cl:
        return answers.run_in_process(cl, items, model=model, on_progress=on_progress, qa_file=str(qa_file))


# -- the sync scheduler ----------------------------------------------------------------------------------
def retry_policy(settings: Settings, *, retries: int | None = None, backoff_s: float | None = None,
                 max_backoff_s: float | None = None) -> RetryPolicy:
    """The ``[scheduler]`` retry policy with the given fields replaced (the longest wait is at least the
    first)."""
    s = settings.scheduler
    backoff = s.backoff_s if backoff_s is None else backoff_s
    longest = s.max_backoff_s if max_backoff_s is None else max_backoff_s
    return RetryPolicy(s.retries if retries is None else retries, backoff, max(longest, backoff))
