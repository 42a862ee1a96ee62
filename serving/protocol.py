"""The OpenAI wire format: request models and the response objects we send (no logic, no Ray, no HTTP).

As vLLM's ``protocol.py``: the chat request we accept (:class:`ChatRequest`), the ``chat.completion`` object, the
``chat.completion.chunk`` objects of a stream, their server-sent-event framing and the error object every 4xx/5xx
carries. serving/chat.py turns a request into a job and the engine's events into these; serving/app.py routes.

Example::

    completion("SB", model="tiny", prompt_tokens=90, completion_tokens=2, finish_reason="stop")
    # {"id": "chatcmpl-...", "object": "chat.completion", "choices": [{"message": {"role": "assistant",
    #  "content": "SB"}, "finish_reason": "stop", ...}], "usage": {"prompt_tokens": 90, ...}}
    sse(chunk("chatcmpl-1", "tiny", 0, delta={"content": "SB"}))   # 'data: {"id": "chatcmpl-1", ...}\\n\\n'
"""

from __future__ import annotations

import json
import time
from typing import Literal, Union

from pydantic import BaseModel, ConfigDict, Field

DONE = "data: [DONE]\n\n"  # the stream's last event, as OpenAI sends it


class ImageURL(BaseModel):
    url: str
    detail: str | None = None


class TextPart(BaseModel):
    type: Literal["text"]
    text: str


class ImagePart(BaseModel):
    type: Literal["image_url"]
    image_url: ImageURL


class Message(BaseModel):
    model_config = ConfigDict(extra="allow")  # clients add "name" and other fields we do not use

    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: Union[str, list[Union[TextPart, ImagePart]], None] = None


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="allow")

    include_usage: bool = False


class ChatRequest(BaseModel):
    """The subset of the OpenAI request we honour; unknown sampling knobs are accepted and ignored."""

    model_config = ConfigDict(extra="allow")

    model: str
    messages: list[Message] = Field(min_length=1)
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    n: int = 1
    stream: bool = False
    stream_options: StreamOptions | None = None
    temperature: float | None = None
    top_p: float | None = None


def usage(prompt_tokens: int, completion_tokens: int) -> dict:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


def completion(content: str, *, model: str, prompt_tokens: int, completion_tokens: int, finish_reason: str,
               id: str | None = None, extra: dict | None = None) -> dict:
    """The OpenAI ``chat.completion`` object for one answer; ``finish_reason`` "length" when the budget ended it.
    ``extra``: more top-level fields (the page gate's flag)."""
    return {
        "id": id or new_id(), "object": "chat.completion", "created": int(time.time()), "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": content},
                     "finish_reason": finish_reason, "logprobs": None}],
        "usage": usage(prompt_tokens, completion_tokens), **(extra or {}),
    }


def chunk(id: str, model: str, created: int, *, delta: dict | None = None, finish_reason: str | None = None,
          usage: dict | None = None, extra: dict | None = None) -> dict:
    """One ``chat.completion.chunk``: a delta (``{"role": "assistant"}`` first, then ``{"content": ...}``), the
    last one with ``finish_reason``, or (``delta`` None) the usage-only chunk with ``choices: []``."""
    choices = [] if delta is None else [{"index": 0, "delta": delta, "finish_reason": finish_reason,
                                         "logprobs": None}]
    out = {"id": id, "object": "chat.completion.chunk", "created": created, "model": model, "choices": choices}
    if usage is not None:
        out["usage"] = usage
    return {**out, **(extra or {})}


def sse(obj: dict) -> str:
    """A server-sent event carrying ``obj`` as JSON."""
    return f"data: {json.dumps(obj, separators=(',', ':'))}\n\n"


def new_id() -> str:
    import uuid

    return f"chatcmpl-{uuid.uuid4().hex}"


def error_body(message: str, *, status: int, field: str | None = None) -> dict:
    """The OpenAI error object, which the ``openai`` client turns into ``APIStatusError.message``."""
    kind = {401: "authentication_error", 404: "not_found_error"}.get(
        status, "invalid_request_error" if status < 500 else "server_error")
    return {"error": {"message": message, "type": kind, "param": field, "code": status}}
