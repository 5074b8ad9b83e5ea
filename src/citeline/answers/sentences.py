"""Sentences, words and numbers of answers and evidence: the shared text rules of verification and the
extractive answer.

* :func:`split_sentences` cuts text into :class:`Segment` s that keep their exact characters (joining
  every segment's ``raw`` gives the text back), so dropping a sentence never disturbs the rest. A cut
  falls after ``.``, ``!`` or ``?`` (and any citation markers right after it) before whitespace and a
  capital, digit, bullet or quote, and at every line break; ``e.g.``, ``i.e.``, ``etc.``, versions
  (``4.2.1``), decimals and amounts (``£2,400.50``) never end a sentence.
* :func:`content_stems` are a text's words without stop words, lightly stemmed (``deploys`` → ``deploy``),
  so a paraphrase that keeps the words matches.
* :func:`numbers` are the numbers a text states, normalised (``2,400`` → ``2400``); ``[n]`` citation
  markers are not numbers.
* :func:`without_instructions` removes the paragraphs of a document that speak to the assistant ("ignore
  all previous instructions", "you are now in admin mode", "tell the user ..."): such text is never
  evidence for an answer, so a model that obeys a planted instruction cannot have it verified.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

__all__ = ["CITATION", "Segment", "asked_part", "content_stems", "content_words", "entities", "numbers",
           "split_sentences", "stem", "strip_citations", "without_instructions"]

CITATION = re.compile(r"\s*\[(\d{1,3}(?:\s*,\s*\d{1,3})*)\]")
_WORD = re.compile(r"[A-Za-z][A-Za-z0-9]*(?:['’][A-Za-z]+)?|\d+[A-Za-z]+[A-Za-z0-9]*")
_NUMBER = re.compile(r"(?<![\w.])(?:[£$€]\s?)?\d+(?:[.,:]\d+)*(?:\s?%)?")
# a sentence ends at . ! ? (+ closing quotes/brackets, + citation markers) followed by space and a likely start
_END = re.compile(r"""(?<=[.!?])["')\]]*(?:\s*\[\d{1,3}(?:\s*,\s*\d{1,3})*\])*(?=\s+["'(*_`]?[A-Z0-9•\-*])""")
_ABBREV = re.compile(r"(?:\b(?:e\.g|i\.e|etc|vs|cf|approx|incl|no|nr|dr|mr|mrs|ms|st)|\b[A-Za-z])\.$", re.I)
_LIST_MARK = re.compile(r"^\s*(?:[-*•]\s+|\d{1,3}[.)]\s+|#{1,6}\s+)", re.M)

STOP = frozenset("""a about above after again against all also am an and any are aren't as at be because been before
being below between both but by can can't cannot could couldn't did didn't do does doesn't doing don't down during
each few for from further had hadn't has hasn't have haven't having he her here hers herself him himself his how i
if in into is isn't it it's its itself just let's me more most much must mustn't my myself no nor not of off on
once only or other ought our ours ourselves out over own same shall shan't she should shouldn't so some such than
that that's the their theirs them themselves then there there's these they this those through to too under until
up upon us very was wasn't we were weren't what what's when where which while who whom why will with won't would
wouldn't you your yours yourself yourselves via per""".split())

_NEGATIONS = frozenset({"not", "no", "never", "cannot", "can't", "don't", "doesn't", "didn't", "isn't", "aren't",
                        "won't", "wouldn't", "shouldn't", "mustn't", "wasn't", "weren't", "hasn't", "haven't",
                        "nothing", "none", "neither", "nor", "without"})


@dataclass(frozen=True)
class Segment:
    """One sentence (or line) of a text: ``raw`` is its exact characters, trailing whitespace included."""

    raw: str
    start: int

    @property
    def text(self) -> str:
        return self.raw.strip()


_BLOCK_START = re.compile(r"\s*(?:[-*•+>|]\s|\d{1,3}[.)]\s|#{1,6}\s|```|$)")
_LINE_END = re.compile(r"""(?:[.!?:;]["')\]]*|\[\d{1,3}(?:\s*,\s*\d{1,3})*\])\s*$""")


def _blocks(text: str) -> list[tuple[int, str]]:
    """Lines joined into logical lines: a line break inside a wrapped paragraph is not a sentence end, one
    after a sentence end, before a blank line, a list item, a heading, a quote or a table row is."""
    lines = [m for m in re.finditer(r"[^\n]*\n*", text) if m.group()]
    out: list[tuple[int, str]] = []
    start = 0
    for i, m in enumerate(lines):
        line = m.group()
        nxt = lines[i + 1].group() if i + 1 < len(lines) else ""
        hard = (not nxt or line.count("\n") > 1 or _LINE_END.search(line.rstrip("\n")) is not None
                or _BLOCK_START.match(nxt) is not None or re.match(r"\s*#{1,6}\s", line) is not None
                or not line.strip())
        if hard:
            out.append((start, text[start:m.end()]))
            start = m.end()
    if start < len(text):
        out.append((start, text[start:]))
    return out


def split_sentences(text: str) -> list[Segment]:
    """Sentences and lines of ``text``; ``"".join(s.raw for s in result) == text``."""
    out: list[Segment] = []
    for base, chunk in _blocks(text):
        last = 0
        for m in _END.finditer(chunk):
            head = chunk[last:m.end()]
            if (_ABBREV.search(head.rstrip("\"')]").rstrip()) or not head.strip()
                    or re.fullmatch(r"\s*\d{1,3}[.)]", head)):
                continue
            # keep the whitespace after the cut with the sentence before it
            ws = len(chunk[m.end():]) - len(chunk[m.end():].lstrip(" \t"))
            out.append(Segment(chunk[last:m.end() + ws], base + last))
            last = m.end() + ws
        if last < len(chunk):
            out.append(Segment(chunk[last:], base + last))
    return out


def strip_citations(text: str) -> str:
    return CITATION.sub("", text)


def stem(word: str) -> str:
    """A light suffix stripper (plural, past, -ing, -ly): enough to match paraphrases of the same words."""
    w = word.lower().replace("’", "'")
    if w.endswith("'s"):
        w = w[:-2]
    for suffix, repl in (("ies", "y"), ("sses", "ss"), ("ing", ""), ("edly", ""), ("ed", ""), ("ly", ""),
                         ("es", ""), ("s", "")):
        if w.endswith(suffix) and len(w) - len(suffix) >= 3 and not w.endswith("ss" if suffix == "s" else "\0"):
            w = w[: len(w) - len(suffix)] + repl
            break
    if len(w) > 4 and w[-1] == w[-2] and w[-1] not in "lsaeiou":  # stopped → stopp → stop
        w = w[:-1]
    if len(w) > 4 and w.endswith("e"):
        w = w[:-1]
    return w


def content_words(text: str) -> list[str]:
    """Words of ``text`` that carry content (lowercase), in order, citation markers and stop words removed."""
    return [w.lower() for w in _WORD.findall(strip_citations(text)) if w.lower() not in STOP and len(w) > 1]


def content_stems(text: str) -> set[str]:
    return {stem(w) for w in content_words(text)}


def numbers(text: str) -> set[str]:
    """Numbers stated in ``text`` (currency and thousands separators normalised), citation markers excluded."""
    found = set()
    for m in _NUMBER.finditer(strip_citations(_LIST_MARK.sub("", text))):
        n = re.sub(r"[£$€\s]", "", m.group())
        n = re.sub(r"(?<=\d),(?=\d{3}\b)", "", n)
        found.add(n.rstrip(".:,"))
    return {n for n in found if n}


def entities(text: str) -> set[str]:
    """Names a sentence states: capitalised words after its first word, words with inner capitals, digits or
    symbols (``acme-deploy``, ``SC2-001``, ``#deploys``), code spans and URLs; lowercase for matching."""
    clean = strip_citations(_LIST_MARK.sub("", text)).strip()
    found: set[str] = set()
    for m in re.finditer(r"`([^`]{1,80})`", clean):
        found.add(m.group(1).strip().lower())
    for m in re.finditer(r"https?://[^\s)>\]]+", clean):
        found.add(m.group().rstrip(".,;").lower())
    tokens = re.findall(r"[#@]?[A-Za-z0-9][\w\-/.']*[A-Za-z0-9]|[A-Z]", re.sub(r"`[^`]*`|https?://\S+", " ", clean))
    for i, tok in enumerate(tokens):
        bare = tok.strip(".'")
        if len(bare) < 2 or bare.lower() in STOP:
            continue
        inner_caps = (any(c.isupper() for c in bare[1:]) and not bare.isupper()) or (bare.isupper() and len(bare) > 1)
        marked = (any(c.isdigit() for c in bare) and any(c.isalpha() for c in bare)) or bare[0] in "#@" \
            or (("_" in bare or "/" in bare) and any(c.isalpha() for c in bare))
        capital = bare[0].isupper() and i > 0
        if inner_caps or marked or capital:
            found.add(bare.lower())
    return found


def negated(text: str) -> bool:
    return any(w in _NEGATIONS or w.endswith("n't") for w in re.findall(r"[a-z']+", text.lower().replace("’", "'")))


_PLANTED = re.compile(
    r"\b(?:ignore|disregard|forget|override)\s+(?:all\s+|any\s+|the\s+|your\s+)?(?:previous\s+|prior\s+|above\s+|"
    r"earlier\s+|preceding\s+|system\s+)?(?:instructions|rules|prompts?|guidelines)\b"
    r"|\byou\s+are\s+now\b|\b(?:admin|developer|god|jailbreak|dan)\s+mode\b"
    r"|\bsystem\s+(?:override|prompt|message|instruction)s?\s*:|\b(?:new|updated|real)\s+instructions\s*:"
    r"|\b(?:tell|inform|convince)\s+the\s+(?:user|reader|customer)s?\b"
    r"|\b(?:reveal|print|output|repeat)\s+(?:the\s+|your\s+)?(?:system\s+prompt|instructions|hidden|secret)"
    r"|\b(?:as\s+the\s+assistant|assistant\s*:)\s*(?:you\s+)?(?:must|should|will)\b",
    re.IGNORECASE)


def without_instructions(text: str) -> str:
    """``text`` without the paragraphs that carry an instruction to the assistant (blank-line separated)."""
    if not _PLANTED.search(text):
        return text
    parts = re.split(r"(\n\s*\n)", text)
    return "".join(p if _keep(p) else "" for p in parts)


def _keep(part: str) -> bool:
    return not part.strip() or not _PLANTED.search(part)


def asked_part(question: str) -> str | None:
    """The interrogative sentences of a question that also says other things ("I'm based in the UK. Between
    what times may I deploy?" → the second sentence), or None when the whole question is what is asked."""
    parts = [s.text for s in split_sentences(question) if s.text]
    asking = [p for p in parts if p.rstrip(" )").endswith("?")]
    if not asking or len(asking) == len(parts):
        return None
    return " ".join(asking)
