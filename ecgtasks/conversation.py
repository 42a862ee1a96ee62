"""Conversations in every shape the project reads, as one typed list of turns.

Accepted shapes (a list of turns, or its JSON text):

- ECGBench / ECGInstruct: ``[{"from": "human" | "gpt", "value": str}, ...]`` (an answer may be a list of
  texts, ECG-QA's gold, kept as its JSON text);
- a sample row's history (``meta["history"]``, what ``ecgvlm prepare`` writes): ``[{"role", "text"}, ...]``;
- OpenAI chat messages: ``[{"role": "user", "content": str | [{"type": "text", "text": ...},
  {"type": "image_url", "image_url": {"url": "data:image/png;base64,..."}}]}, ...]``.

Roles become ``user`` / ``assistant`` (``human`` / ``gpt`` too), ``system`` (also ``developer``) or ``tool``.
Every error is a :class:`ConversationError` naming the record (when given) and the turn.

Example::

    turns = parse_turns([{"from": "human", "value": "<image>\\nRhythm?"}, {"from": "gpt", "value": "SB"}])
    turns[0]                            # Turn(role='user', text='<image>\\nRhythm?', images=())
    turn_pairs(turns)                   # [('<image>\\nRhythm?', 'SB')]
    question, history = last_question(parse_turns(openai_messages, field="messages"))
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from ecgtasks.gold import gold_text

USER, ASSISTANT, SYSTEM, TOOL = "user", "assistant", "system", "tool"
ROLES = {"human": USER, "user": USER, "gpt": ASSISTANT, "assistant": ASSISTANT, "system": SYSTEM,
         "developer": SYSTEM, "tool": TOOL}
# the speaker names the ECGBench form uses, for errors about a turn out of place
SPEAKERS = {USER: "human", ASSISTANT: "gpt"}


@dataclass(frozen=True)
class Turn:
    """One turn: ``role`` (one of :data:`ROLES`' values, or None for a speaker we do not know), its ``text``
    (None when it has none), the image URLs it carries (OpenAI ``image_url`` parts) and the ``speaker`` as given."""

    role: str | None
    text: str | None
    images: tuple[str, ...] = ()
    speaker: str | None = None

    def as_history(self) -> dict:
        """The ``meta["history"]`` form: ``{"role": "user", "text": "Rhythm?"}``."""
        return {"role": self.role, "text": self.text}


class ConversationError(ValueError):
    """A conversation that cannot be read, naming the ``record`` (when known) and the ``turn`` (its index)."""

    def __init__(self, message: str, *, record: str | None = None, turn: int | None = None,
                 field: str = "conversations"):
        where = (f"record {record!r} " if record is not None else "") + field
        super().__init__(f"{where}{'' if turn is None else f' turn {turn}'}: {message}")
        self.record, self.turn, self.field = record, turn, field


def _content(content, fail) -> tuple[str | None, tuple[str, ...]]:
    """``(text, image urls)`` of a turn's content: a text, or OpenAI content parts."""
    if content is None or isinstance(content, str):
        return content, ()
    texts, images = [], []
    for part in content:
        part = dict(part) if hasattr(part, "keys") else {}
        if part.get("type") == "text":
            texts.append(str(part.get("text") or ""))
        elif part.get("type") == "image_url":
            url = part.get("image_url")
            images.append(str(url.get("url") if hasattr(url, "get") else url))
        elif part.get("type") == "image":
            images.append("")  # an image placeholder with its bytes elsewhere (the processor's own form)
        else:
            fail(f"a content part of type {part.get('type')!r} (text or image_url)")
    return "\n".join(texts) if texts else None, tuple(images)


def parse_turn(turn, index: int = 0, *, record: str | None = None, field: str = "conversations") -> Turn:
    """One turn in any accepted shape -> :class:`Turn`. An answer given as a list of texts becomes its JSON text.
    Example: ``parse_turn({"from": "gpt", "value": ["a", "b"]}).text == '["a", "b"]'``."""
    if isinstance(turn, Turn):
        return turn

    def fail(message):
        raise ConversationError(message, record=record, turn=index, field=field)

    turn = dict(turn) if hasattr(turn, "keys") else {}
    speaker = turn.get("from", turn.get("role"))
    role = ROLES.get(str(speaker if speaker is not None else ""))
    value = next((turn[k] for k in ("value", "content", "text") if turn.get(k) is not None), None)
    if role == ASSISTANT and value is not None and not isinstance(value, str) and not _is_parts(value):
        try:
            return Turn(role, gold_text(value), (), speaker)  # ECG-QA's list gold -> its JSON text
        except ValueError as exc:
            fail(str(exc))
    if value is not None and not isinstance(value, str) and not _is_parts(value):
        return Turn(role, None, (), speaker)  # a value that is no text: the caller says what it wanted
    text, images = _content(value, fail)
    return Turn(role, text, images, speaker)


def _is_parts(value) -> bool:
    """OpenAI content parts: a list of ``{"type": ...}`` objects."""
    items = value.tolist() if hasattr(value, "tolist") else value
    return isinstance(items, (list, tuple)) and all(hasattr(p, "keys") and "type" in p for p in items) and bool(items)


def parse_turns(value, *, record: str | None = None, field: str = "conversations") -> list[Turn]:
    """Every turn of a conversation (a list, a Parquet list cell, or JSON text) as a :class:`Turn`.

    Not JSON, not a list, or no turns at all raise :class:`ConversationError`.
    Example: ``parse_turns('[{"role": "user", "content": "q"}]') == [Turn("user", "q", (), "user")]``.
    """
    if isinstance(value, (str, bytes)):
        try:
            value = json.loads(value)
        except ValueError as exc:
            raise ConversationError(f"not JSON ({exc})", record=record, field=field) from None
    if value is None or isinstance(value, (str, dict)) or not hasattr(value, "__iter__"):
        raise ConversationError(f"expected a list of turns, got {type(value).__name__}", record=record, field=field)
    turns = [parse_turn(t, i, record=record, field=field) for i, t in enumerate(value)]
    if not turns:
        raise ConversationError("empty", record=record, field=field)
    return turns


def turn_pairs(value, *, record: str | None = None) -> list[tuple[str, str]]:
    """Every ``(question, answer)`` pair of a conversation, in order.

    The turns must alternate, human first, and end with an answer; otherwise a :class:`ConversationError`
    names the first turn out of place.
    Example: ``turn_pairs([{"from": "human", "value": "q"}, {"from": "gpt", "value": "a"}]) == [("q", "a")]``.
    """
    turns = parse_turns(value, record=record)  # typed turns pass through as they are
    pairs, question = [], None
    for i, turn in enumerate(turns):
        want = USER if question is None else ASSISTANT
        if turn.role != want or not isinstance(turn.text, str):
            got = f"from={turn.speaker!r}" + ("" if isinstance(turn.text, str) else ", no text")
            raise ConversationError(f"expected a {SPEAKERS[want]} turn with text, got {got}", record=record, turn=i)
        if question is None:
            question = turn.text
        else:
            pairs.append((question, turn.text))
            question = None
    if question is not None:
        raise ConversationError("a human turn with no answer after it", record=record, turn=len(turns) - 1)
    return pairs


def first_text(value, role: str, *, record: str | None = None) -> str | None:
    """The text of the first turn of ``role`` ("user" / "human", "assistant" / "gpt"), or None where the
    conversation is missing (None, NaN, empty) or has no such turn.
    Example: ``first_text([{"from": "human", "value": "q"}, {"from": "gpt", "value": "a"}], "gpt") == "a"``."""
    if value is None or (isinstance(value, float) and value != value) or (hasattr(value, "__len__") and not len(value)):
        return None
    want = ROLES.get(role, role)
    return next((t.text for t in parse_turns(value, record=record) if t.role == want), None)


def history(meta) -> list[Turn] | None:
    """The earlier turns of a sample row from its ``meta`` (JSON text or dict): ``meta["history"]``, or None.
    ``meta`` is free-form: only a JSON object with a non-empty ``history`` carries turns.
    Example: ``history('{"history": [{"role": "user", "text": "q"}]}') == [Turn("user", "q", (), "user")]``."""
    meta = _meta_dict(meta)
    turns = meta.get("history") if meta else None
    return parse_turns(turns, field="history") if turns else None


def followups(meta) -> list[tuple[str, str]] | None:
    """Questions asked after a sample row's answer, with their replies: ``meta["followups"]`` (user and assistant
    turns in turn, :func:`history`'s shape) as ``[(question, reply), ...]``, or None. Training can add them to the
    row's text after its answer, with loss on each reply (``ecgvlm train --followups``); a prompt is never changed.
    Example: ``followups({"followups": [{"role": "user", "text": "Rate?"}, {"role": "assistant", "text": "70"}]})``
    -> ``[("Rate?", "70")]``."""
    meta = _meta_dict(meta)
    turns = meta.get("followups") if meta else None
    if not turns:
        return None
    turns = parse_turns(turns, field="followups")
    for i, t in enumerate(turns):
        if t.role != (USER, ASSISTANT)[i % 2] or t.text is None:
            raise ConversationError("must be user and assistant turns in turn, each with text", turn=i,
                                    field="followups")
    if len(turns) % 2:
        raise ConversationError("ends with a question that has no reply", turn=len(turns) - 1, field="followups")
    return [(q.text, a.text) for q, a in zip(turns[::2], turns[1::2])]


def _meta_dict(meta) -> dict | None:
    """A row's ``meta`` (JSON text, dict, None or NaN) as a dict, or None."""
    if meta is None or (isinstance(meta, float) and meta != meta):  # None / NaN from pandas
        return None
    if isinstance(meta, (str, bytes)):
        try:
            meta = json.loads(meta) if meta else None
        except ValueError:
            return None
    return meta if isinstance(meta, dict) else None


def dialogue(question: str, earlier=None) -> list[Turn]:
    """The turns of one prompt: the ``earlier`` turns (any accepted shape, or None), then ``question`` as a
    user turn; it must start with a user turn and hold only user and assistant turns (else ConversationError).
    Example: ``[t.role for t in dialogue("And the rate?", [{"role": "user", "text": "Rhythm?"},
    {"role": "assistant", "text": "AF"}])] == ["user", "assistant", "user"]``."""
    before = parse_turns(earlier, field="chat history") if earlier else []
    turns = [*before, Turn(USER, question, (), USER)]
    if turns[0].role != USER:
        raise ConversationError(f"must start with a user turn, got {turns[0].speaker!r}", field="chat history")
    for i, t in enumerate(turns):
        if t.role not in (USER, ASSISTANT):
            raise ConversationError(f"unknown role {t.speaker!r} (user or assistant)", turn=i, field="chat history")
    return turns


def last_question(turns: list[Turn]) -> tuple[Turn, list[Turn]]:
    """``(the last user turn, every turn before it)``: the question a chat request asks and its history.
    Raises :class:`ConversationError` when there is no user turn.
    Example: ``last_question(parse_turns([{"role": "user", "content": "q"}]))[0].text == "q"``."""
    at = next((i for i in range(len(turns) - 1, -1, -1) if turns[i].role == USER), None)
    if at is None:
        raise ConversationError("has no user message", field="messages")
    return turns[at], turns[:at]
