"""Conversations: a follow-up rewritten into a standalone question for retrieval, and the turns the prompt keeps.

A chat client sends the whole conversation; retrieval needs one question that stands on its own ("and for
opened items?" finds nothing by itself), and the prompt needs the earlier turns that fit its budget.

:func:`standalone_question` returns a :class:`Rewrite`: the question retrieval should use and how it was
made: ``"none"`` (no earlier user turn, or the question already stands alone: it is used as asked),
``"model"`` (rewritten by the generating model from a short rewrite prompt, its output validated) or
``"rules"`` (the deterministic rewrite below; also the fallback whenever the model's output is rejected or
the model fails).

The rules (they must be good on their own: small models rewrite unreliably):

1. Earlier user turns are resolved oldest first into a *topic*: a turn that stands alone becomes the
   topic, a follow-up is combined with the topic, a turn without content words ("thanks", "ok") leaves
   it unchanged. Only the last :data:`TOPIC_TURNS` user turns are read.
2. A question is a *follow-up* when it starts with a connective ("and", "but", "also", "what about",
   "how about", "same for", ...), or is a fragment (no question word or auxiliary verb in front) of at
   most two content words ("opened items?", "bob's team?"), or has at most one content word ("why?"),
   or refers back with a pronoun ("it", "they", ...; "that"/"this" when no noun follows, or in a question
   of at most two content words) and has at most three content words of its own ("how long does it
   take?"). A question that stands alone is used as asked, whatever came before.
3. A fragment replaces what it stands for in the topic, the first rule that applies:
   a fragment that starts with a preposition replaces the topic's phrase with the same preposition
   ("what is the return policy for robots" + "and for tents?" → "... for tents?"), or is appended;
   a fragment whose last word is in the topic replaces that word and its modifiers ("can I return damaged
   items" + "opened items?" → "can I return opened items?"; "what does alice's team own" + "bob's team?"
   → "what does bob's team own?"); a lone possessive replaces the topic's possessive; a noun phrase that
   starts with a determiner or a name replaces the object of the topic's last preposition when that
   object does too ("warranty on the Scout S2" + "the Atlas arm?" → "warranty on the Atlas arm?");
   otherwise it is appended with "for" ("how long does the battery last" + "the Atlas arm?" →
   "how long does the battery last for the Atlas arm?").
4. A full question (question word or auxiliary in front) keeps its words and gets the topic's content
   words that it does not already contain (nor "long", "much", ... of "how long"), in parentheses ("how do
   I return a product" + "how long does it take?" → "how long does it take (return product)?").
   A fragment without content words ("go on", "more?") is the topic itself.

The result is at most :data:`MAX_QUESTION_CHARS` characters; only the context is ever shortened, never the
question itself.

Earlier turns are cleaned first (:func:`citeline.answers.history.clean_history`: no system turns, no
citation markers or source lists, chat template control tokens neutralised, turns clipped and merged);
:func:`citeline.answers.history.prompt_history` keeps the most recent cleaned turns that fit the prompt.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass

from citeline.answers.history import MAX_TURN_CHARS, clean_history, clip, prompt_history
from citeline.contracts.generator import ChatMessage, GenerationBackend, GenerationRequest

__all__ = [
    "MAX_QUESTION_CHARS",
    "MAX_TURN_CHARS",
    "REWRITE_PROMPT",
    "Rewrite",
    "clean_history",
    "is_follow_up",
    "prompt_history",
    "rules_rewrite",
    "standalone_question",
]

log = logging.getLogger(__name__)

MAX_QUESTION_CHARS = 1000  # a rewritten question (the follow-up itself is never cut)
TOPIC_TURNS = 8  # earlier user turns read to resolve the topic
MODEL_TURNS = 6  # earlier turns shown to the model in the rewrite prompt
MODEL_TURN_CHARS = 400  # each of them clipped to this
MODEL_MAX_TOKENS = 64

REWRITE_PROMPT = """You rewrite the last question of a conversation so that it can be understood without the \
conversation. Use the conversation only to fill in what the question refers to ("it", "that", "and for ..."). \
Do not answer the question. Reply with the rewritten question only, on one line."""

_WORD = re.compile(r"[A-Za-z0-9]+(?:['’][A-Za-z]+)?")
_TOKEN = re.compile(r"\S+")

_STOP = frozenset("""a about after all also am an and any are as at be been before being both but by can could did
do does doing during each either else for from had has have having he her here hers him his how i if in into is it
its itself just me more most my no nor not now of off on once only or other our ours out over own same she should
so some such than that the their theirs them then there these they this those through to too under until up us
very was we were what when where which while who whom whose why will with would you your yours
ok okay yes yeah please thanks thank hi hello hey tell know explain go continue elaborate""".split())
_FRAME_WORDS = frozenset("long many much often soon".split())
_PRONOUNS = frozenset("it its they them their theirs he him his she her hers one ones same such".split())
_DEMONSTRATIVES = frozenset("that this those these".split())
_WH = frozenset("what how who whom whose when where why which".split())
_AUX = frozenset("""is are was were am be do does did can could will would should shall may might must has have had
i we you tell explain list show describe give find""".split())
_FRAME = frozenset("long much many often far soon".split())  # "how long ...": the question's frame, not its topic
_PREPS = frozenset("""for in on at with about from to during after before under without by of within into over
near per via""".split())
_DETERMINERS = frozenset("the a an this that these those my our your their his her its".split())
_CONNECTIVE = re.compile(
    r"^\s*(?:(?:and|but|or|also|so|then|plus|ok|okay|well|now)\b[\s,]*)*"
    r"(?:(?:what|how)\s+about\b|what\s+of\b|as\s+for\b|same\s+(?:question\s+|thing\s+)?(?=for\b|with\b|in\b|on\b)"
    r"|same\s+(?:question|thing)\b[\s,]*(?:but\s+)?)?[\s,]*",
    re.IGNORECASE)
_LEADS = re.compile(r"^\s*(?:and|but|or|also|so|then|plus|well|now|what\s+about|how\s+about|what\s+of|as\s+for|"
                    r"same\s+(?:for|with|in|on|question|thing))\b", re.IGNORECASE)
_REFUSALS = re.compile(r"\b(?:i\s+(?:don'?t|do\s+not|cannot|can'?t|am\s+unable|'m\s+unable|am\s+not\s+able)|"
                       r"sorry|as\s+an\s+ai|unable\s+to|no\s+question|not\s+enough\s+(?:context|information)|"
                       r"from\s+the\s+available\s+documents)\b", re.IGNORECASE)
_LABEL = re.compile(r"^\s*(?:standalone|rewritten)?\s*(?:question|query)\s*:\s*", re.IGNORECASE)


@dataclass(frozen=True)
class Rewrite:
    question: str  # standalone question used for retrieval
    method: str  # "none" (used as asked), "model" (rewritten by the model), "rules" (deterministic)


# -- the rules ---------------------------------------------------------------------------------------
def _words(text: str) -> list[str]:
    return _WORD.findall(text)


def _content(text: str) -> list[str]:
    return [w for w in _words(text) if w.lower().replace("’", "'") not in _STOP and len(w) > 1]


def _lower_set(words: Sequence[str]) -> set[str]:
    return {w.lower().replace("’", "'") for w in words}


def _strip_end(text: str) -> str:
    return text.strip().rstrip("?!.;:, \t").strip()


def _strip_lead(question: str) -> str:
    """The question without its leading connective ("and what about X?" → "X?", "same for X" → "for X")."""
    rest = _CONNECTIVE.sub("", question, count=1).strip()
    return rest or question.strip()


def _is_full_question(text: str) -> bool:
    first = _words(text)[:1]
    return bool(first) and (first[0].lower() in _WH or first[0].lower() in _AUX)


def _refers_back(text: str) -> bool:
    words = [w.lower() for w in _words(text)]
    short = len(_content(text)) <= 2
    for i, w in enumerate(words):
        if w in _PRONOUNS:
            return True
        if w in _DEMONSTRATIVES:  # "is that covered?", "how long does that take?"; not "that the robot ..."
            nxt = words[i + 1] if i + 1 < len(words) else ""
            if short or not nxt or nxt in _AUX or nxt in _PREPS or nxt in {"one", "ones", "again", "too", "also"}:
                return True
    return False


def is_follow_up(question: str) -> bool:
    """Does the question lean on the conversation (rule 2 of the module docstring)?"""
    if _LEADS.match(question):
        return True
    rest = _strip_lead(question)
    # "how long", "how many": the answer's type, not a topic of the question's own
    content = [w for w in _content(rest) if w.lower() not in _FRAME_WORDS]
    if len(content) <= 1:
        return True
    if not _is_full_question(rest) and len(content) <= 2:
        return True
    return _refers_back(rest) and len([w for w in content if w.lower() not in _PRONOUNS]) <= 3


def _tokens(text: str) -> list[str]:
    return _TOKEN.findall(text)


def _norm(token: str) -> str:
    return re.sub(r"[^\w'’]", "", token).lower().replace("’", "'")


def _singular(word: str) -> str:
    return word[:-1] if len(word) > 3 and word.endswith("s") and not word.endswith("ss") else word


def _join(tokens: Sequence[str]) -> str:
    return " ".join(t for t in tokens if t)


def _replace_prep_phrase(topic: list[str], frag: list[str]) -> list[str] | None:
    prep = _norm(frag[0])
    spots = [i for i, t in enumerate(topic) if _norm(t) == prep]
    if not spots:
        return None
    i = spots[-1]
    j = i + 1
    while j < len(topic) and _norm(topic[j]) not in _PREPS:
        j += 1
    return topic[:i] + frag + topic[j:]


def _replace_head(topic: list[str], frag: list[str]) -> list[str] | None:
    head = _singular(_norm(frag[-1]))
    if not head or head in _STOP:
        return None
    spots = [i for i, t in enumerate(topic) if _singular(_norm(t)) == head]
    if not spots:
        return None
    j = spots[-1]
    mods = [t for t in frag[:-1] if _norm(t) not in _DETERMINERS]
    i = j
    while i > 0 and j - i < max(len(mods), 1) and _norm(topic[i - 1]) not in _STOP | _PREPS:
        i -= 1
    if mods and i > 0 and _norm(topic[i - 1]) in _DETERMINERS:
        i -= 1  # "this week" + "next week?" → "next week", not "this next week"
    lead = [t for t in frag[:-1] if _norm(t) in _DETERMINERS] if not (i > 0 and _norm(topic[i - 1]) in _DETERMINERS) \
        else []
    return topic[:i] + lead + mods + [frag[-1]] + topic[j + 1:]


def _replace_possessive(topic: list[str], frag: list[str]) -> list[str] | None:
    if len(frag) != 1 or not re.search(r"['’]s$", frag[0]):
        return None
    spots = [i for i, t in enumerate(topic) if re.search(r"\w['’]s$", re.sub(r"[^\w'’]+$", "", t))]
    if not spots:
        return None
    i = spots[-1]
    return topic[:i] + frag + topic[i + 1:]


def _is_noun_phrase_start(token: str) -> bool:
    return _norm(token) in _DETERMINERS or token[:1].isupper() or token[:1].isdigit()


def _replace_last_object(topic: list[str], frag: list[str]) -> list[str] | None:
    if not _is_noun_phrase_start(frag[0]):
        return None
    spots = [i for i, t in enumerate(topic) if _norm(t) in _PREPS and i + 1 < len(topic)]
    if not spots:
        return None
    i = spots[-1]
    if not _is_noun_phrase_start(topic[i + 1]):
        return None
    return topic[: i + 1] + frag


def _combine_fragment(topic: str, frag: str) -> str:
    t, f = _tokens(_strip_end(topic)), _tokens(_strip_end(frag))
    if not f or not _content(frag):
        return _strip_end(topic)  # "go on", "more?": still the topic
    if _norm(f[0]) in _PREPS:
        return _join(_replace_prep_phrase(t, f) or t + f)
    for rule in (_replace_head, _replace_possessive, _replace_last_object):
        done = rule(t, f)
        if done is not None:
            return _join(done)
    return _join([*t, "for", *f])


def _combine_question(topic: str, question: str) -> str:
    have = _lower_set(_content(question)) | _lower_set(_words(question))
    context: list[str] = []
    for w in _content(topic):
        key = w.lower().replace("’", "'")
        if key not in have and key not in _PRONOUNS | _FRAME and w not in context:
            context.append(w)
    if not context:
        return _strip_end(question)
    return f"{_strip_end(question)} ({' '.join(context[:16])})"


def _combine(topic: str, question: str) -> str:
    rest = _strip_lead(question)
    combined = _combine_question(topic, rest) if _is_full_question(rest) else _combine_fragment(topic, rest)
    combined = re.sub(r"\s+", " ", combined).strip()
    # only the context is ever cut: a rewrite that grew too long keeps the question and the topic's start
    if len(combined) > MAX_QUESTION_CHARS + len(rest):
        combined = clip(combined, MAX_QUESTION_CHARS + len(rest))
    return combined + "?" if question.strip().endswith("?") or topic.strip().endswith("?") else combined


def _topic(history: Sequence[ChatMessage]) -> str | None:
    users = [m.content for m in clean_history(history) if m.role == "user"][-TOPIC_TURNS:]
    topic: str | None = None
    for turn in users:
        turn = " ".join(turn.split())
        if not _content(turn):
            continue  # "thanks", "ok": the topic stays
        if topic is None or not is_follow_up(turn):
            topic = clip(turn, MAX_QUESTION_CHARS)
        else:
            topic = _combine(topic, turn)
    return topic


def rules_rewrite(question: str, history: Sequence[ChatMessage]) -> Rewrite:
    """The deterministic rewrite (module docstring, rules 1-4)."""
    q = " ".join(question.split())
    topic = _topic(history)
    if topic is None or not q or not is_follow_up(q):
        return Rewrite(question.strip(), "none")
    return Rewrite(_combine(topic, q), "rules")


# -- the model ---------------------------------------------------------------------------------------
def _model_messages(question: str, history: Sequence[ChatMessage]) -> tuple[ChatMessage, ...]:
    lines = []
    for m in clean_history(history)[-MODEL_TURNS:]:
        label = "User" if m.role == "user" else "Assistant"
        lines.append(f"{label}: {clip(' '.join(m.content.split()), MODEL_TURN_CHARS)}")
    q = clip(" ".join(question.split()), MAX_TURN_CHARS)
    user = "Conversation:\n" + "\n".join(lines) + f"\n\nLast question: {q}\n\nRewritten question:"
    return ChatMessage("system", REWRITE_PROMPT), ChatMessage("user", user)


def _stem(word: str) -> str:
    return _singular(re.sub(r"'s$", "", word))[:5]


def _valid_model_rewrite(text: str, question: str, history: Sequence[ChatMessage], rules: str) -> str | None:
    """The model's rewrite, tidied, or ``None`` when it must not be used (see :func:`standalone_question`)."""
    text = text.strip()
    if not text or "\n" in text:
        return None
    text = _LABEL.sub("", text).strip().strip("\"'“”‘’` ").strip()
    if not text or _REFUSALS.search(text):
        return None
    if len(text) > max(3 * len(question), 2 * len(rules), 60):
        return None
    words = _lower_set(_content(text))
    if not words:
        return None
    asked = _lower_set(_content(question))
    known = asked | _lower_set(_content(" ".join(m.content for m in clean_history(history)[-MODEL_TURNS:])))
    if {_stem(w) for w in asked} - {_stem(w) for w in words}:
        return None  # a word of the question was lost ("what about bob's team?" → "... alice's team ...")
    if len(words & known) * 2 < len(words):
        return None  # mostly words from nowhere: a made-up topic
    if " ".join(text.lower().split()).rstrip("?") == " ".join(question.lower().split()).rstrip("?"):
        return None  # not rewritten at all
    return text


def standalone_question(question: str, history: Sequence[ChatMessage], backend: GenerationBackend | None = None,
                        *, use_model: bool = True) -> Rewrite:
    """The question retrieval should use for ``question`` after the earlier turns ``history``.

    No earlier user turn, or a question that stands alone: the question as asked (``"none"``). A follow-up:
    with ``use_model`` and a model backend (not ``extractive``), the model's rewrite when it passes the
    checks (one non-empty line (the request stops at a newline), at most about three times the length,
    keeps every content word of the question, its other words mostly from the conversation, not a refusal,
    not the question unchanged), ``"model"``;
    otherwise, or when the model fails, the deterministic rewrite (``"rules"``).
    """
    rules = rules_rewrite(question, history)
    if rules.method == "none":
        return rules
    if not use_model or backend is None or getattr(backend, "name", "") == "extractive":
        return rules
    try:
        gen = backend.generate(GenerationRequest(_model_messages(question, history), max_tokens=MODEL_MAX_TOKENS,
                                                 temperature=0.0, stop=("\n",)))
    except Exception as exc:  # the rules always answer; a failing model must not fail the question
        log.warning("question rewrite by the %s backend failed (%s); using the rules", getattr(backend, "name", "?"),
                    exc)
        return rules
    text = _valid_model_rewrite(gen.text, question, history, rules.question)
    if text is None:
        log.info("model rewrite rejected: %r; using the rules", gen.text[:200])
        return rules
    return Rewrite(text, "model")
