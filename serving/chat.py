"""Chat completions: the serving logic between the OpenAI wire format (serving/protocol.py) and the engine.

:func:`parse_chat` reads a whole conversation into a job for the replica: the image (in any user turn, once),
the system message, the earlier turns as the history that training and evaluation give the model
(``vlm.prompt.chat_messages``: the image goes first in the first user turn) and the last user message as the
question. The replica answers a job with a stream of events (``{"delta": text}`` ..., then one ``{"end": ...}``
or ``{"error": ...}``); :func:`stream_events` turns them into server-sent ``chat.completion.chunk`` events and
:func:`collect_events` into one ``chat.completion``. Streamed and non-streamed answers come from the same
events, so their text is the same. :class:`TextStream` makes the deltas out of growing decoded text.

Example::

    job = parse_chat({"model": "tiny", "messages": [
        {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "data:image/png;base64,..."}},
                                     {"type": "text", "text": "Which rhythm?"}]},
        {"role": "assistant", "content": "AF"},
        {"role": "user", "content": "And the rate?"}]}, Limits(), served="tiny", default_question="...",
        default_tokens=64)
    job["question"], job["history"]     # ("And the rate?", [{"role": "user", "text": "Which rhythm?"},
                                        #                    {"role": "assistant", "text": "AF"}])
"""

from __future__ import annotations

import time

from ecgtasks.conversation import ASSISTANT, SYSTEM, USER, ConversationError, parse_turns
from serving.inputs import InputError, Limits, check_image, parse_data_uri
from serving.protocol import DONE, ChatRequest, chunk, completion, error_body, new_id, sse, usage

__all__ = ["parse_chat", "stream_events", "collect_events", "TextStream", "completion", "error_body"]


def _request(body: dict, served: str) -> ChatRequest:
    from pydantic import ValidationError

    try:
        req = ChatRequest.model_validate(body)
    except ValidationError as err:
        first = err.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise InputError(f"invalid chat request at {where}: {first['msg']}", status=400, field=where) from None
    if req.model != served:
        raise InputError(f"model {req.model!r} is not served here; this server serves {served!r}",
                         status=404, field="model")
    if req.n != 1:
        raise InputError("n>1 is not supported (one answer per request)", status=400, field="n")
    return req


def _conversation(req: ChatRequest, limits: Limits) -> tuple[str, list[dict], str | None, str]:
    """(question, history, system, image URL) of a conversation; 400 naming what is wrong with it."""
    try:
        turns = parse_turns([m.model_dump() for m in req.messages], field="messages")
    except ConversationError as err:
        raise InputError(str(err), status=400, field="messages") from None
    system = "\n".join(t.text for t in turns if t.role == SYSTEM and t.text) or None
    dialog = [t for t in turns if t.role != SYSTEM]
    for i, t in enumerate(dialog):
        if t.role not in (USER, ASSISTANT):
            raise InputError(f"messages: a {t.speaker!r} message; this model reads system, user and assistant "
                             "messages", status=400, field="messages")
        if t.role == ASSISTANT and t.images:
            raise InputError("messages: an image in an assistant message; send it in a user message", status=400,
                             field="messages")
    if not dialog or dialog[-1].role != USER:
        raise InputError("messages must end with a user message (the question)", status=400, field="messages")
    if dialog[0].role != USER:
        raise InputError("messages must start with a user message (after any system message)", status=400,
                         field="messages")
    images = [url for t in dialog for url in t.images]
    if len(images) != 1:
        raise InputError(f"the conversation must hold exactly one image_url part (the ECG page), got {len(images)}",
                         status=400, field="messages")
    history = [{"role": t.role, "text": (t.text or "").strip()} for t in dialog[:-1]]
    return (dialog[-1].text or "").strip(), history, system, images[0]


def parse_chat(body: dict, limits: Limits, *, served: str, default_question: str, default_tokens: int) -> dict:
    """A validated chat request as a job: ``{"image": bytes, "question": str, "history": [{"role", "text"}],
    "system": str | None, "max_new_tokens": int, "stream": bool, "include_usage": bool}``.

    ``served`` is the model id the server answers to; ``default_question`` (a lone image) and ``default_tokens``
    come from the default task. Raises :class:`InputError` (4xx) naming the wrong field.
    """
    req = _request(body, served)
    question, history, system, url = _conversation(req, limits)
    image = parse_data_uri(url, limits)
    check_image(image, limits, name="image_url")
    if not question and not history:
        question = default_question  # a lone image: the default task's question
    chars = len(question) + sum(len(t["text"]) for t in history) + len(system or "")
    if chars > limits.max_question_chars:
        raise InputError(f"the conversation has {chars} characters of text; at most {limits.max_question_chars}",
                         status=400, field="messages")
    tokens = req.max_completion_tokens or req.max_tokens or default_tokens
    if tokens > limits.max_new_tokens:
        raise InputError(f"max_tokens {tokens} is over the limit of {limits.max_new_tokens}", status=400,
                         field="max_tokens")
    include_usage = bool(req.stream and req.stream_options and req.stream_options.include_usage)
    return {"image": image, "question": question, "history": history, "system": system, "max_new_tokens": tokens,
            "stream": req.stream, "include_usage": include_usage}


class TextStream:
    """Deltas of a growing decoded answer: each call gets the whole text decoded so far and returns what is new.

    Leading and trailing whitespace and a half-decoded character (U+FFFD) are held back, so the deltas add up to
    ``final.strip()``, the non-streamed answer. Example: ``s = TextStream(); s.update(" S") + s.update(" SB ")
    + s.finish(" SB; AF") == "SB; AF"``.
    """

    def __init__(self):
        self.sent = ""

    def update(self, text: str) -> str:
        stable = text.strip().rstrip("\ufffd").rstrip()
        if len(stable) <= len(self.sent) or not stable.startswith(self.sent):
            return ""  # nothing new, or the decoding of earlier tokens changed: wait for the end
        delta, self.sent = stable[len(self.sent):], stable
        return delta

    def finish(self, text: str) -> str:
        final = text.strip()
        delta = final[len(self.sent):] if final.startswith(self.sent) else ""
        self.sent = final
        return delta


async def stream_events(events, *, model: str, include_usage: bool, on_first=None, extra: dict | None = None):
    """The replica's events -> server-sent events: a role chunk, content chunks, a last chunk with
    ``finish_reason``, a usage chunk when asked (``stream_options.include_usage``), then ``data: [DONE]``.
    An error before the first token ends the stream with an OpenAI error event. ``on_first``: called at the
    first content delta (time to first token)."""
    cid, created = new_id(), int(time.time())
    yield sse(chunk(cid, model, created, delta={"role": "assistant", "content": ""}, extra=extra))
    async for event in events:
        if "error" in event:
            yield sse(error_body(f"the model could not read this request: {event['error']}", status=400,
                                 field="messages"))
            break
        if event.get("delta"):
            if on_first is not None:
                on_first, _ = None, on_first()
            yield sse(chunk(cid, model, created, delta={"content": event["delta"]}))
        if "end" in event:
            end = event["end"]
            yield sse(chunk(cid, model, created, delta={}, finish_reason=end["finish_reason"]))
            if include_usage:
                yield sse(chunk(cid, model, created, usage=usage(end["prompt_tokens"], end["completion_tokens"])))
    yield DONE


async def collect_events(events, *, model: str, on_first=None, extra: dict | None = None) -> dict:
    """The replica's events -> one ``chat.completion``, or ``{"error": message}`` when the model could not read
    the request."""
    async for event in events:
        if "error" in event:
            return {"error": event["error"]}
        if event.get("delta") and on_first is not None:
            on_first, _ = None, on_first()
        if "end" in event:
            end = event["end"]
            return completion(end["text"], model=model, prompt_tokens=end["prompt_tokens"],
                              completion_tokens=end["completion_tokens"], finish_reason=end["finish_reason"],
                              extra=extra)
    return {"error": "the model stopped without an answer"}
