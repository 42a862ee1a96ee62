"""The task registry: a benchmark task is data (label space, question, parser, metric set, version).

Example::

    task = get_task("code15-test")          # an ECGBench config name is an alias
    task.name, task.kind, task.labels       # ("code15", "multilabel", ("1dAVb", "RBBB", ...))
    task.format_answer(["SB", "1dAVb"])     # "SB; 1dAVb"
"""

from __future__ import annotations

from dataclasses import dataclass, field

MULTILABEL, CHOICE, SETMATCH, FREETEXT = "multilabel", "choice", "setmatch", "freetext"


@dataclass(frozen=True)
class Task:
    name: str
    kind: str  # one of MULTILABEL, CHOICE, SETMATCH, FREETEXT
    labels: tuple[str, ...] = ()  # label space (multi-label) or option letters (choice)
    question: str = ""  # the default question a sample of this task asks (ECGBench form)
    max_new_tokens: int = 32  # generation budget per answer
    aliases: tuple[str, ...] = ()
    metrics: tuple[str, ...] = ()
    version: str = "1"
    whole_answers: tuple[str, ...] = field(default=())  # answers that stand alone (code15: NORM, ABNORMAL)
    # strict protocol: label -> regular expressions (lower-case text) that also name it, beside the label itself
    synonyms: tuple[tuple[str, tuple[str, ...]], ...] = ()
    # choice tasks: how the reference takes the gold letter ("first_char": value[0]; "whole": the value)
    gold_rule: str = "whole"
    description: str = ""

    def format_answer(self, labels) -> str:
        """The gold answer text for a set of labels, in the benchmark's form (labels joined by "; ")."""
        labels = list(labels)
        for whole in self.whole_answers:
            if labels == [whole]:
                return whole
        order = {label: i for i, label in enumerate(self.labels)}
        return "; ".join(sorted(labels, key=lambda label: order.get(label, len(order))))


CODE15_LABELS = ("1dAVb", "RBBB", "LBBB", "SB", "ST", "AF")

CODE15_QUESTION = (
    "<image>\nWhich of the following diagnoses fit this 12-lead ECG? Options: "
    "1dAVb (1st degree AV block), RBBB (right bundle branch block), LBBB (left bundle branch block), "
    "SB (sinus bradycardia), ST (sinus tachycardia), AF (atrial fibrillation). "
    "List every option that applies, separated by semicolons. If the ECG is normal answer NORM; "
    "if it is abnormal but none of the options apply answer ABNORMAL. "
    "Answer only with the options, without explanation."
)

# Strict-protocol synonyms are regular expressions over lower-cased text; whole-token boundaries are added
# by metrics.parsing, so "1st" never matches "st" and "afl" never matches "af".
_AVB1 = r"(?:1st|first)[\s-]*degree[\s-]+(?:av|atrio-?ventricular|heart)[\s-]+block"
_CODE15_SYNONYMS = (
    ("1dAVb", (_AVB1, r"1st[\s-]*degree[\s-]+avb", r"i-avb")),
    ("RBBB", (r"(?<!incomplete )right[\s-]+bundle[\s-]+branch[\s-]+block",)),
    ("LBBB", (r"(?<!incomplete )left[\s-]+bundle[\s-]+branch[\s-]+block",)),
    ("SB", (r"sinus[\s-]+bradycardia",)),
    ("ST", (r"sinus[\s-]+tachycardia",)),
    # "AFib" is atrial fibrillation: matched on purpose as a whole token, not by accident as a substring.
    ("AF", (r"atrial[\s-]+fibrillation", r"a-?fib")),
    ("NORM", (r"normal(?:[\s-]+(?:ecg|ekg))?",)),
    ("ABNORMAL", ()),
)
_REGISTRY: dict[str, Task] = {}


def register(task: Task) -> Task:
    for key in (task.name, *task.aliases):
        if key in _REGISTRY and _REGISTRY[key] is not task:
            raise ValueError(f"task name or alias {key!r} is already registered")
        _REGISTRY[key] = task
    return task


def get_task(name: str) -> Task:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise KeyError(f"unknown task {name!r}; known: {sorted({t.name for t in _REGISTRY.values()})}") from None


def all_tasks() -> list[Task]:
    return sorted({t.name: t for t in _REGISTRY.values()}.values(), key=lambda t: t.name)


CODE15 = register(
    Task(
        name="code15",
        kind=MULTILABEL,
        labels=CODE15_LABELS + ("NORM", "ABNORMAL"),
        question=CODE15_QUESTION,
        max_new_tokens=24,
        aliases=("code15-test",),
        metrics=("f1", "auc", "hamming_loss", "anls"),
        whole_answers=("NORM", "ABNORMAL"),
        synonyms=_CODE15_SYNONYMS,
        description="CODE-15% test: 6 rhythm/conduction labels, or NORM / ABNORMAL alone",
    )
)


# ---- the rest of ECGBench (facts in ../shared/ECGBENCH.md) ------------------------------------------------

PTBXL_QUESTION = (
    "<image>\nWhich diagnostic superclasses fit this 12-lead ECG? Options: NORM (normal ECG), "
    "MI (myocardial infarction), STTC (ST/T change), CD (conduction disturbance), HYP (hypertrophy). "
    "List every option that applies, separated by semicolons. "
    "Only answer based on the given Options without any explanation."
)
PTBXL_SUPER = register(
    Task(
        name="ptbxl-super",
        kind=MULTILABEL,
        labels=("NORM", "MI", "STTC", "CD", "HYP"),
        question=PTBXL_QUESTION,
        max_new_tokens=32,
        aliases=("ptb-test",),
        metrics=("f1", "auc", "hamming_loss", "anls"),
        synonyms=(
            ("NORM", (r"normal(?:[\s-]+(?:ecg|ekg))?",)),
            ("MI", (r"myocardial[\s-]+infarction", r"infarction")),
            ("STTC", (r"st/t[\s-]+changes?", r"st-t[\s-]+changes?", r"st[\s-]+t[\s-]+changes?")),
            ("CD", (r"conduction[\s-]+disturbances?",)),
            ("HYP", (r"hypertroph(?:y|ies)",)),
        ),
        description="PTB-XL test fold, 5 diagnostic superclasses",
    )
)

CPSC_QUESTION = (
    "<image>\nWhich of the following diagnoses fit this 12-lead ECG? Options: NORM (normal), "
    "AF (atrial fibrillation), I-AVB (first-degree AV block), LBBB (left bundle branch block), "
    "RBBB (right bundle branch block), PAC (premature atrial contraction), "
    "PVC (premature ventricular contraction), STD (ST-segment depression), STE (ST-segment elevation). "
    "List every option that applies, separated by semicolons. "
    "Only answer based on the given Options without any explanation."
)
CPSC = register(
    Task(
        name="cpsc",
        kind=MULTILABEL,
        labels=("NORM", "AF", "I-AVB", "LBBB", "RBBB", "PAC", "PVC", "STD", "STE"),
        question=CPSC_QUESTION,
        max_new_tokens=48,
        aliases=("cpsc-test",),
        metrics=("f1", "auc", "hamming_loss", "anls"),
        synonyms=(
            ("NORM", (r"normal(?:[\s-]+(?:ecg|ekg))?",)),
            ("AF", (r"atrial[\s-]+fibrillation", r"a-?fib")),
            ("I-AVB", (_AVB1, r"1davb", r"iavb")),
            ("LBBB", (r"(?<!incomplete )left[\s-]+bundle[\s-]+branch[\s-]+block",)),
            ("RBBB", (r"(?<!incomplete )right[\s-]+bundle[\s-]+branch[\s-]+block",)),
            ("PAC", (r"premature[\s-]+atrial[\s-]+(?:contractions?|complex(?:es)?|beats?)",)),
            ("PVC", (r"premature[\s-]+ventricular[\s-]+(?:contractions?|complex(?:es)?|beats?)",)),
            ("STD", (r"st[\s-]+(?:segment[\s-]+)?depression",)),
            ("STE", (r"st[\s-]+(?:segment[\s-]+)?elevation",)),
        ),
        description="CPSC 2018, 9 classes",
    )
)

_LETTERS8 = tuple("ABCDEFGH")
for _name, _alias, _letters, _rule, _desc in (
    ("csn", "csn-test-no-cot", _LETTERS8, "first_char", "Chapman-Shaoxing-Ningbo, options A-H"),
    ("g12", "g12-test-no-cot", _LETTERS8, "first_char", "Georgia 12-lead challenge, options A-H"),
    ("mmmu", "mmmu-ecg", tuple("ABCD"), "whole", "MMMU ECG questions, options A-D"),
):
    register(
        Task(
            name=_name,
            kind=CHOICE,
            labels=_letters,
            question="",  # every sample carries its own question with its options
            max_new_tokens=16,
            aliases=(_alias,),
            metrics=("accuracy", "anls"),
            gold_rule=_rule,
            description=_desc,
        )
    )

ECGQA = register(
    Task(
        name="ecgqa",
        kind=SETMATCH,
        question="",  # per sample: "... Options: a, b, c. Only answer based on the given Options ..."
        max_new_tokens=64,
        aliases=("ecgqa-test",),
        metrics=("accuracy", "anls"),
        description="ECG-QA test: the answer is a set of the listed options",
    )
)

PTBXL_REPORT = register(
    Task(
        name="ptbxl-report",
        kind=FREETEXT,
        question="<image>\nWrite the report of this 12-lead ECG.",
        max_new_tokens=512,
        aliases=("ptb-test-report",),
        metrics=("anls",),
        description="PTB-XL free-text reports (LLM-judged in the paper; ANLS here)",
    )
)

ARENA = register(
    Task(
        name="arena",
        kind=FREETEXT,
        question="",
        max_new_tokens=512,
        aliases=("ecg-arena",),
        metrics=("anls",),
        description="ECG Arena multi-turn dialogues (each turn a row; ANLS per turn; the LLM judge of the paper "
                    "with --judge, one judgment per dialogue)",
    )
)

FREETEXT_TASK = register(
    Task(
        name="freetext",
        kind=FREETEXT,
        question="",
        max_new_tokens=512,
        metrics=("anls",),
        description="any other question with a free-text answer (ECGInstruct's open-ended, fill-in, report and "
                    "follow-up turns that fit no benchmark task); ANLS",
    )
)

# ---- decoding budgets ---------------------------------------------------------------------------------------
PUBLISHED_MAX_NEW_TOKENS = 1024  # ECGBench (PULSE) decodes greedy with max_new_tokens 1024 for every task
STUDY_DECODING = "smolvlm-study"  # the prior SmolVLM study's evaluator: beam search, 4 beams, 32 new tokens
STUDY_MAX_NEW_TOKENS, STUDY_NUM_BEAMS = 32, 4
DECODINGS = ("ecgbench", "fast", STUDY_DECODING)
# The study's evaluator asks each CODE-15 page its own prompt instead of ECGBench's question: the eight classes of
# its scorer (metrics.study.LABELS) in its order and spelling (1dAVb written 1DAVB), answered comma-separated, no
# explanation. The wording is ours; the classes, their order and spelling and the answer form are the study's.
STUDY_QUESTION = ("<image>\nFrom this 12-lead ECG image, give the diagnoses that apply, choosing only among these "
                  "labels: NORM, ABNORMAL, 1DAVB, RBBB, LBBB, SB, ST, AF.\nReply with the chosen labels only, "
                  "separated by commas.")


def budgets(decoding: str = "ecgbench", overrides: str | dict | None = None) -> dict[str, int]:
    """Max new tokens per task name: ``ecgbench`` gives every task the paper's 1024; ``fast`` each task's own
    short budget (``Task.max_new_tokens``: enough for its answer form, for smoke runs and models that do not stop);
    ``smolvlm-study`` the study's 32 for every task; ``overrides`` (``"code15=64,ecgqa=128"`` or a dict; names or
    aliases) win over any of them.

    Example: ``budgets("fast", "code15-test=64")["code15"] == 64``; ``budgets()["mmmu"] == 1024``.
    """
    if decoding not in DECODINGS:
        raise ValueError(f"decoding must be one of {DECODINGS}, got {decoding!r}")
    fixed = {"ecgbench": PUBLISHED_MAX_NEW_TOKENS, STUDY_DECODING: STUDY_MAX_NEW_TOKENS}.get(decoding)
    out = {t.name: fixed or t.max_new_tokens for t in all_tasks()}
    if isinstance(overrides, str):
        pairs = [p.strip() for p in overrides.split(",") if p.strip()]
        parsed = {}
        for pair in pairs:
            name, sep, value = pair.partition("=")
            if not sep or not value.strip().isdigit() or int(value) < 1:
                raise ValueError(f"max_new_tokens: {pair!r} is not TASK=N with N >= 1 (e.g. code15=64)")
            parsed[name.strip()] = int(value)
        overrides = parsed
    for name, value in (overrides or {}).items():
        out[get_task(name).name] = int(value)  # an unknown task name raises, naming the known ones
    return out


def decoding_options(decoding: str = "ecgbench") -> dict:
    """What a decoding sets beside the budgets, as ``vlm.predict_rows`` takes it: ``num_beams`` (1: greedy, the
    engine's batched path; more: beam search one row at a time, ``vlm.beam``) and ``questions`` (task -> the
    question asked instead of the row's own). ``ecgbench`` and ``fast`` are greedy with the rows' questions;
    ``smolvlm-study`` is the study's generation: 4 beams, and its prompt (:data:`STUDY_QUESTION`) for CODE-15.

    Example: ``decoding_options("smolvlm-study") == {"num_beams": 4, "questions": {"code15": STUDY_QUESTION}}``.
    """
    if decoding not in DECODINGS:
        raise ValueError(f"decoding must be one of {DECODINGS}, got {decoding!r}")
    if decoding == STUDY_DECODING:
        return {"num_beams": STUDY_NUM_BEAMS, "questions": {"code15": STUDY_QUESTION}}
    return {"num_beams": 1, "questions": {}}
