"""The Ray Serve application: a FastAPI ingress in front of batched predictor replicas.

The routes only, as vLLM's ``api_server.py``: the wire format is serving/protocol.py, the chat logic
serving/chat.py, upload parsing serving/inputs.py, the model replicas serving/replica.py (Hugging Face,
``@serve.batch``) and serving/vllm_replica.py (vLLM). ``Ingress`` checks the API key (serving/security.py),
validates, runs the ECG page gate (``ecg.pagegate``), calls a predictor replica and counts what it did
(serving/metrics.py). Request bodies, images and answers never go to the logs; log lines carry the request id
that the response returns as ``x-request-id``.

Endpoints (all JSON; errors are ``{"error": {"message", "type", "param", "code"}}`` with a 4xx/5xx status):

- ``POST /v1/diagnose``: multipart form, one ECG image (PNG/JPEG) or signal file (CSV, .npy, WFDB .hea + .dat,
  CODE-15 HDF5 + ``index``), optional ``task``, ``question``, ``sampling_rate`` (Hz), ``leads`` (comma list).
  An optional ``history`` field holds earlier turns (JSON ``[{"role", "text"}, ...]``).
- ``POST /v1/chat/completions``: the OpenAI chat-completions shape (whole conversations, ``stream=true``), the
  image as a ``data:`` URI.
- ``GET /healthz`` (open to load balancers), ``GET /v1/models``, ``GET /v1/tasks``.

Start: ``serve run serving/config.yaml`` or ``ecgvlm serve --model tiny --port 8000``; in Python::

    serve.run(build_app({"model": "tiny", "batching": {"enabled": False}}))
"""

# No `from __future__ import annotations`: FastAPI must see the real `Request` class in the signatures of the
# ingress methods (Serve rebuilds them, and string annotations then turn into query parameters).
import asyncio
import json
import logging
import time

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse
from ray import serve
from ray.serve.handle import DeploymentHandle
from starlette.exceptions import HTTPException as StarletteHTTPException

from serving import security
from serving.answers import parse_labels
from serving.chat import collect_events, parse_chat, stream_events
from serving.config import AppConfig
from serving.inputs import FIELDS, InputError, Limits, parse_upload
from serving.metrics import IngressMetrics
from serving.protocol import error_body
from serving.replica import Predictor

log = logging.getLogger("ray.serve")
ROUTES = ("/healthz", "/v1/diagnose", "/v1/chat/completions", "/v1/models", "/v1/tasks")

api = FastAPI(title="ecgvlm", description="ECG diagnosis with a small vision-language model")


def _error(err: InputError) -> JSONResponse:
    return JSONResponse(error_body(str(err), status=err.status, field=err.field), status_code=err.status)


@api.exception_handler(StarletteHTTPException)
async def _http_error(request: Request, err: StarletteHTTPException) -> JSONResponse:
    """404 (no such route) and 405 (wrong method) in OpenAI's error shape, as every other answer."""
    what = {404: f"no route {request.url.path}; see GET /v1/models, POST /v1/chat/completions, POST /v1/diagnose",
            405: f"method {request.method} is not allowed on {request.url.path}"}.get(err.status_code, str(err.detail))
    return JSONResponse(error_body(what, status=err.status_code), status_code=err.status_code,
                        headers=getattr(err, "headers", None))


@api.exception_handler(Exception)
async def _unexpected(request: Request, err: Exception) -> JSONResponse:
    """A bug or a dead replica: still an OpenAI-shaped error body, and the replica keeps serving."""
    log.error("request %s: unexpected %s on %s", request.headers.get("x-request-id", "?"), type(err).__name__,
              request.url.path)  # the type only: an exception's text may quote the request
    return JSONResponse(error_body(f"internal error: {type(err).__name__}", status=500), status_code=500)


class Guard:
    """ASGI middleware: the API key on every /v1 route (401 in OpenAI's shape), one log line per request with its
    id, method, route, status and time (never a body), and the request counter by route and status."""

    keys: tuple[str, ...] = ()  # set by Ingress.__init__ from its config's api_key_env, in the replica's process
    metrics: IngressMetrics | None = None

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        start, path = time.perf_counter(), scope.get("path", "")
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        rid, status = headers.get("x-request-id", "-"), [500]

        async def send_status(message):
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            if path.startswith("/v1/") and Guard.keys and not security.authorized(headers.get("authorization"),
                                                                                     Guard.keys):
                body = json.dumps(error_body(security.auth_error(headers.get("authorization")), status=401)).encode()
                await send_status({"type": "http.response.start", "status": 401, "headers": [
                    (b"content-type", b"application/json"), (b"www-authenticate", b"Bearer")]})
                await send({"type": "http.response.body", "body": body})
                return
            await self.app(scope, receive, send_status)
        finally:
            route = path if path in ROUTES else "other"
            if Guard.metrics is not None:
                Guard.metrics.request(route, status[0])
            log.info("request %s %s %s %d %.1f ms", rid, scope.get("method"), route, status[0],
                     (time.perf_counter() - start) * 1000)


api.add_middleware(Guard)


async def read_capped(request: Request, limit: int) -> bytes:
    """The request body, refusing (413) a declared or actual size over ``limit`` bytes without buffering it all."""
    declared = request.headers.get("content-length")
    if declared is not None and (not declared.isdigit() or int(declared) > limit):
        raise InputError(f"upload of {declared} bytes is over the limit of {limit} bytes", status=413, field="body")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:  # a chunked upload with no Content-Length: stop reading at the cap
            raise InputError(f"upload is over the limit of {limit} bytes", status=413, field="body")
        chunks.append(chunk)
    return b"".join(chunks)


async def read_form(request: Request, body: bytes, limits: Limits) -> tuple[list[tuple[str, bytes]], dict]:
    """(files, text fields) of a multipart body; a raw image/signal body with fields in the query also works."""
    content_type = request.headers.get("content-type", "")
    if not content_type.startswith("multipart/form-data"):  # curl --data-binary @ecg.png
        query = dict(request.query_params)
        name = query.pop("filename", "")  # ?filename=ecg.csv names a raw upload; every other key is a form field
        return ([(name, body)] if body else []), query

    async def replay():  # the body is read already (with the cap): hand it to the multipart parser again
        return {"type": "http.request", "body": body, "more_body": False}

    try:
        form = await Request(request.scope, replay).form(max_files=limits.max_files, max_fields=len(FIELDS) + 1)
    except Exception as err:  # MultiPartException / HTTPException: a malformed or too-many-parts form
        raise InputError(f"malformed multipart form: {getattr(err, 'detail', err)}", status=400, field="body")
    files, fields = [], {}
    for key, value in form.multi_items():
        if isinstance(value, str):
            fields[key] = value
        else:
            files.append((value.filename or key, await value.read()))
    return files, fields


def _float(value) -> float | None:
    return None if value is None or value != value else round(float(value), 2)  # NaN -> None


def _gate(cfg: AppConfig, image: bytes, field: str) -> dict | None:
    """The page gate on image bytes: raises 422 "not an ECG page" (mode reject), else its result for the answer
    (mode flag) or None (off)."""
    if cfg.page_gate.mode == "off":
        return None
    from ecg.images import decode_image
    from ecg.pagegate import check_page

    check = check_page(decode_image(image, field, mode="RGB"), threshold=cfg.page_gate.threshold)
    if cfg.page_gate.mode == "reject" and not check.is_page:
        raise InputError(f"not an ECG page (page score {check.score:.2f} < {cfg.page_gate.threshold}: grid "
                         f"{check.grid:.2f}, traces {check.traces}); send a 12-lead ECG image", status=422, field=field)
    return check.to_dict()


def _history(fields: dict) -> list | None:
    """The optional ``history`` form field of /v1/diagnose: earlier turns as JSON, or None."""
    raw = fields.pop("history", None)
    if not raw or not str(raw).strip():
        return None
    from ecgtasks.conversation import ConversationError, parse_turns

    try:
        return [t.as_history() for t in parse_turns(str(raw), field="history")]
    except ConversationError as err:
        raise InputError(str(err), status=400, field="history") from None


async def _relay(chunks, events):
    """The stream to the client; when the client goes away, the replica's generator is cancelled with it."""
    try:
        async for text in chunks:
            yield text
    finally:
        events.cancel()  # defined before Ingress: Serve pickles the ingress class with the globals it sees


@serve.deployment(name="Ingress")
@serve.ingress(api)
class Ingress:
    def __init__(self, predictor: DeploymentHandle, config: dict):
        self.cfg = AppConfig.model_validate(config)
        self.predictor = predictor
        self.started = int(time.time())
        self.served = self.cfg.served_id()
        Guard.keys, Guard.metrics = security.load_keys(self.cfg.api_key_env), IngressMetrics()
        if self.cfg.require_api_key and not Guard.keys:
            raise RuntimeError(f"require_api_key: set {self.cfg.api_key_env} on the nodes that run the ingress")

    @api.get("/healthz")
    async def healthz(self):
        """200 with the model id once a predictor replica answers; 503 otherwise."""
        try:
            info = await asyncio.wait_for(self.predictor.info.remote(), timeout=10)
        except Exception as err:  # noqa: BLE001 - any failure means not healthy
            return JSONResponse(error_body(f"predictor unavailable: {type(err).__name__}", status=503),
                                status_code=503)
        return {"status": "ok", **info}

    @api.get("/v1/models")
    async def models(self):
        return {"object": "list", "data": [{"id": self.served, "object": "model", "created": self.started,
                                            "owned_by": "ecgvlm"}]}

    @api.get("/v1/tasks")
    async def tasks(self):
        from ecgtasks import all_tasks

        data = [{"name": t.name, "kind": t.kind, "labels": list(t.labels), "aliases": list(t.aliases),
                 "question": t.question, "max_new_tokens": t.max_new_tokens, "version": t.version}
                for t in all_tasks()]
        return {"object": "list", "default": self.cfg.default_task, "data": data}

    @api.post("/v1/diagnose")
    async def diagnose(self, request: Request):
        """Multipart upload -> ``{answer, labels, label_scores, model, task, input, latency_ms, ...}``."""
        start, received = time.perf_counter(), time.time()
        limits = self.cfg.limits
        try:
            body = await read_capped(request, limits.max_upload_bytes)
            files, fields = await read_form(request, body, limits)
            history = _history(fields)
            upload = await asyncio.to_thread(parse_upload, files, fields, limits,
                                             default_task=self.cfg.default_task)
            page = await asyncio.to_thread(_gate, self.cfg, upload.image, "file")
        except InputError as err:
            return _error(err)
        rid = request.headers.get("x-request-id", "-")
        row = {"id": rid, "task": upload.task, "image": upload.image, "question": upload.question,
               "meta": json.dumps({"history": history}) if history else None, "received": received}
        out = await self.predictor.diagnose.remote(row)
        if out.get("error"):
            return _error(InputError(f"the model could not read this input: {out['error']}", status=422,
                                     field="file"))
        scores = out.get("label_scores")
        return {
            "id": row["id"], "model": self.served, "task": upload.task, "answer": out["prediction"],
            "labels": parse_labels(upload.task, upload.question, out["prediction"]),
            "label_scores": json.loads(scores) if isinstance(scores, str) else scores,
            "input": {"kind": upload.kind, **upload.meta},
            "batch_size": int(out.get("batch_size", 1)),
            "label_scoring": out.get("label_scoring", "label probabilities" if scores is not None else "off"),
            "prompt_tokens": int(out["prompt_tokens"]) if out.get("prompt_tokens") is not None else None,
            "model_latency_ms": _float(out.get("latency_ms")),
            "latency_ms": round((time.perf_counter() - start) * 1000, 2),
            **({"page_check": page} if page is not None else {}),
        }

    @api.post("/v1/chat/completions")
    async def chat_completions(self, request: Request):
        """An OpenAI chat request -> a ``chat.completion``, or with ``stream: true`` server-sent chunks."""
        from ecgtasks import get_task

        received, route = time.time(), "/v1/chat/completions"
        limits, task = self.cfg.limits, get_task(self.cfg.default_task)
        try:
            body = await read_capped(request, limits.max_upload_bytes)
            try:
                payload = json.loads(body or b"null")
            except ValueError as err:
                raise InputError(f"body is not JSON: {err}", status=400, field="body") from None
            if not isinstance(payload, dict):
                raise InputError("body must be a JSON object (an OpenAI chat request)", status=400, field="body")
            job = await asyncio.to_thread(parse_chat, payload, limits, served=self.served,
                                          default_question=task.question, default_tokens=task.max_new_tokens)
            page = await asyncio.to_thread(_gate, self.cfg, job["image"], "image_url")
        except InputError as err:
            return _error(err)
        job.update(request_id=request.headers.get("x-request-id", "-"), received=received)
        events = self.predictor.chat.options(stream=True).remote(job)
        first = lambda: Guard.metrics.first_token(route, received)  # noqa: E731
        extra = {"page_check": page} if page is not None else None
        if job["stream"]:
            return StreamingResponse(_relay(stream_events(events, model=self.served, on_first=first, extra=extra,
                                                          include_usage=job["include_usage"]), events),
                                     media_type="text/event-stream", headers={"cache-control": "no-cache"})
        out = await collect_events(events, model=self.served, on_first=first, extra=extra)
        if "error" in out:
            return _error(InputError(f"the model could not read this request: {out['error']}", status=400,
                                     field="messages"))
        return out


def build_app(args: dict | AppConfig | None = None):
    """The application ``serve run serving/config.yaml`` (and ``ecgvlm serve``) deploys, from its ``args``."""
    cfg = args if isinstance(args, AppConfig) else AppConfig.model_validate(args or {})
    scale = cfg.predictor
    if cfg.engine == "vllm":  # vLLM is imported in the replica only: this module imports without it
        from serving.vllm_replica import VLLMReplica

        deployment, ongoing = VLLMReplica, max(scale.max_ongoing_requests, cfg.vllm.max_num_seqs)
    else:
        deployment, ongoing = Predictor, max(scale.max_ongoing_requests, cfg.batching.max_batch_size)
    predictor = deployment.options(
        ray_actor_options={"num_cpus": scale.num_cpus, "num_gpus": scale.num_gpus},
        autoscaling_config=scale.autoscaling(),
        max_ongoing_requests=ongoing,
    ).bind(cfg.model_dump())
    return Ingress.options(
        ray_actor_options={"num_cpus": cfg.ingress.num_cpus},
        num_replicas=cfg.ingress.num_replicas,
        max_ongoing_requests=cfg.ingress.max_ongoing_requests,
    ).bind(predictor, cfg.model_dump())
