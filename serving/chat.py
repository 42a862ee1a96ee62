"""The OpenAI chat-completions shape: request and response models, and the pure step from one to the other.

Only what a single-image ECG model can honour is accepted: one image as a base64 ``data:`` URI in the
last user message, its text as the question (the task's question when there is none), greedy decoding
(``temperature``/``top_p`` are accepted and ignored), ``n == 1``, no streaming.

Example request (what ``openai.OpenAI(base_url="http://127.0.0.1:8000/v1").chat.completions.create``
sends)::

    {"model": "tiny", "max_tokens": 16,
     "messages": [{"role": "user", "content": [
         {"type": "text", "text": "Which rhythm is this?"},
         {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KG..."}}]}]}

Example response::

    {"id": "chatcmpl-5f0c...", "object": "chat.completion", "created": 1764300000, "model": "tiny",
     "choices": [{"index": 0, "message": {"role": "assistant", "content": "SB"}, "finish_reason": "stop"}],
     "usage": {"prompt_tokens": 90, "completion_tokens": 2, "total_tokens": 92}}
"""

from __future__ import annotations

import time
import uuid
from typing import Literal, Union

from pydantic import BaseModel, ConfigDict, Field

from ecgtasks.conversation import USER, ConversationError, last_question, parse_turns
from serving.inputs import InputError, Limits, check_image, parse_data_uri


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


class ChatRequest(BaseModel):
    """The subset of the OpenAI request we honour; unknown sampling knobs are accepted and ignored."""

    model_config = ConfigDict(extra="allow")

    model: str
    messages: list[Message] = Field(min_length=1)
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    n: int = 1
    stream: bool = False
    temperature: float | None = None
    top_p: float | None = None


def parse_chat(body: dict, limits: Limits, *, served: str, default_question: str,
               default_tokens: int) -> dict:
    """A validated chat request as ``{"image": bytes, "question": str, "max_new_tokens": int}``.

    ``served`` is the model id the server answers to; ``default_question`` and ``default_tokens``
    come from the default task. Raises :class:`InputError` (4xx) naming the wrong field.
    """
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
    if req.stream or req.n != 1:
        raise InputError("stream=true and n>1 are not supported", status=400, field="stream" if req.stream else "n")
    try:
        turns = parse_turns([m.model_dump() for m in req.messages], field="messages")
    except ConversationError as err:
        raise InputError(str(err), status=400, field="messages") from None
    if not any(t.role == USER for t in turns):
        raise InputError("messages has no user message", status=400, field="messages")
    question, _earlier = last_question(turns)  # a single-turn model: the last user message is the question
    if len(question.images) != 1:
        raise InputError(f"the last user message must hold exactly one image_url part, got {len(question.images)}",
                         status=400, field="messages")
    image = parse_data_uri(question.images[0], limits)
    check_image(image, limits, name="image_url")
    text = (question.text or "").strip() or default_question
    if len(text) > limits.max_question_chars:
        raise InputError(f"question has {len(text)} characters; at most {limits.max_question_chars}",
                         status=400, field="messages")
    tokens = req.max_completion_tokens or req.max_tokens or default_tokens
    if tokens > limits.max_new_tokens:
        raise InputError(f"max_tokens {tokens} is over the limit of {limits.max_new_tokens}", status=400,
                         field="max_tokens")
    return {"image": image, "question": text, "max_new_tokens": tokens}


def completion(content: str, *, model: str, prompt_tokens: int, completion_tokens: int,
               max_new_tokens: int, truncated: bool | None = None) -> dict:
    """The OpenAI ``chat.completion`` object for one generated answer; ``truncated`` (the model generated no stop
    token before the budget) gives ``finish_reason`` "length", else the token count against the budget decides."""
    cut = truncated if truncated is not None else completion_tokens >= max_new_tokens
    return {
        "id": f"chatcmpl-{uuid.uuid4().hex}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [{
            "index": 0,
            "message": {"role": "assistant", "content": content},
            # the budget ran out rather than the model ending its answer
            "finish_reason": "length" if cut else "stop",
            "logprobs": None,
        }],
        "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                  "total_tokens": prompt_tokens + completion_tokens},
    }


def error_body(message: str, *, status: int, field: str | None = None) -> dict:
    """The OpenAI error object, which the ``openai`` client turns into ``APIStatusError.message``."""
    kind = "invalid_request_error" if status < 500 else "server_error"
    return {"error": {"message": message, "type": kind, "param": field, "code": status}}
