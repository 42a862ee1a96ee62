"""Reports: a plain-text table, the published CODE-15 rows beside ours, and a Markdown + self-contained HTML
page (plots embedded as base64 PNG) written to a local folder or ``s3://``.

Example::

    uris = write_report({"code15": score_frame("code15", frame)}, "runs/eval", samples=frame.head(8))
    uris["html"]                       # "runs/eval/report.html"
"""

from __future__ import annotations

import base64
import html
import io

from ecg import storage

# ECGBENCH.md "Published numbers on CODE-15" (F1 / AUC / HL / ANLS, x100; None where the paper gives none):
# facts from the papers, not rerun here.
PUBLISHED_CODE15 = (
    ("random", 15.0, 48.8, 32.1, None, "PULSE Table 3"),
    ("GPT-4o", 24.9, 59.9, 15.7, None, "PULSE Table 3"),
    ("Gemini 1.5 Pro", 20.0, 56.7, 15.9, None, "PULSE Table 3"),
    ("Claude 3.5 Sonnet", 20.3, 58.3, 17.8, None, "PULSE Table 3"),
    ("LLaVA-Med", 27.0, 69.2, 33.4, None, "PULSE Table 3"),
    ("MiniCPM-V-2.6", 25.3, 56.6, 22.0, None, "PULSE Table 3"),
    ("PULSE-7B", 85.4, 90.7, 5.0, None, "PULSE Table 3"),
    ("GEM-7B", 86.4, 91.5, 4.7, None, "GEM paper Table 2"),
    ("SmolVLM-256M fine-tuned (a prior study)", 27.5, 65.3, 16.5, 68.7, "not scored with this protocol"),
)
PUBLISHED_NOTE = "published, not rerun here"
# how the published models are named at their endpoints or on the hub (lower-case substrings of --model):
# a run of one of them is set right below its published row and the row is marked as rerun
RUN_NAMES = {"GPT-4o": ("gpt-4o",), "Gemini 1.5 Pro": ("gemini-1.5-pro",),
             "Claude 3.5 Sonnet": ("claude-3-5-sonnet", "claude-3.5-sonnet"), "LLaVA-Med": ("llava-med",),
             "MiniCPM-V-2.6": ("minicpm-v-2_6", "minicpm-v-2.6"), "PULSE-7B": ("pulse-7b",), "GEM-7B": ("gem-7b",)}


def _f(v, ci=None) -> str:
    if v is None:
        return "-"
    out = f"{v:.1f}" if isinstance(v, (int, float)) else str(v)
    return out + (f" [{ci[0]:.1f}, {ci[1]:.1f}]" if ci and None not in ci else "")


def task_rows(results: dict) -> list[list[str]]:
    """One row per task: task, n, errors, ecgbench F1 / AUC / HL / accuracy, ANLS, strict numbers with 95% CI."""
    rows = []
    for name, r in results.items():
        s, iv = r.get("strict") or {}, (r.get("strict") or {}).get("intervals") or {}
        rows.append([name, (r.get("data") or {}).get("label", "-"), str(r.get("n", "-")), str(r.get("errors", 0)),
                     _f(r.get("f1")), _f(r.get("auc")),
                     _f(r.get("hamming_loss")), _f(r.get("accuracy")), _f(r.get("anls")),
                     _f(s.get("f1_macro"), iv.get("f1_macro")), _f(s.get("f1_micro"), iv.get("f1_micro")),
                     _f(s.get("auc"), iv.get("auc")), _f(s.get("accuracy"), iv.get("accuracy"))])
    return rows


TASK_HEADER = ["task", "data", "n", "errors", "F1", "AUC", "HL", "acc", "ANLS",
               "strict F1 macro [95% CI]", "strict F1 micro", "strict AUC", "strict acc"]
CLASS_HEADER = ["task", "label", "support", "predicted", "precision", "recall", "F1", "AUC", "ecgbench F1"]


def class_rows(results: dict) -> list[list[str]]:
    rows = []
    for name, r in results.items():
        eb = (r.get("ecgbench") or {}).get("per_class") or {}
        for c in (r.get("strict") or {}).get("per_class") or []:
            rows.append([name, c["label"], str(c["support"]), str(c["predicted"]), _f(c["precision"]),
                         _f(c["recall"]), _f(c["f1"]), _f(c["auc"]), _f((eb.get(c["label"]) or {}).get("f1"))])
    return rows


def _text_table(header, rows) -> str:
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows)] if rows else [len(h) for h in header]
    line = lambda cells: "  ".join(str(c).ljust(w) for c, w in zip(cells, widths))  # noqa: E731
    return "\n".join([line(header), line(["-" * w for w in widths])] + [line(r) for r in rows])


def headline(results: dict) -> str:
    """The task table alone, one row per task: n, errors, the ECGBench F1 / AUC / HL / accuracy / ANLS and the strict
    figures with their 95% intervals (x100): what ``ecgvlm evaluate`` prints when it ends.

    Example: ``print(headline({"code15": score_frame("code15", frame)}))``.
    """
    return _text_table(TASK_HEADER, task_rows(results))


def format_table(results: dict) -> str:
    """A readable plain-text summary: the task table, per-class rows, warnings."""
    parts = ["ECGBench protocol (published rules; x100, one decimal) and strict protocol (95% bootstrap CI)",
             _text_table(TASK_HEADER, task_rows(results))]
    classes = class_rows(results)
    if classes:
        parts += ["", _text_table(CLASS_HEADER, classes)]
    for name, r in results.items():
        sv = r.get("smolvlm-study") or {}
        if "f1" in sv:
            parts.append(f"{name}: smolvlm-study protocol F1 {_f(sv['f1'])}, AUC {_f(sv['auc'])}, "
                         f"HL {_f(sv['hamming_loss'])}, ANLS {_f(sv['anls'])}")
        jd = r.get("judge") or {}
        if jd:
            parts.append(f"{name}: {judge_line(jd)}")
        parts += [f"{name}: {w}" for w in r.get("warnings", [])]
        parts += [f"{name}: {n}" for n in (r.get("ecgbench") or {}).get("notes", [])]
    return "\n".join(parts)


JUDGE_HEADER = ["record", "score", "criteria (0-10)", "turns", "error"]


def judge_line(jd: dict) -> str:
    """One line for a task's ``judge`` section: its judge, prompt version, score and the rubric's means."""
    criteria = jd.get("criteria") or {"diagnosis": "Diagnosis", "waveform": "Waveform", "rhythm": "Rhythm"}
    means = ", ".join(f"{label} {_f(jd.get(key))}" for key, label in criteria.items())
    return (f"judge {jd['model']} (prompt {jd['prompt_version']}): score {_f(jd['score'])} ({means}; "
            f"{jd['judged']} judged, {jd['failed']} failed)")


def judge_record_rows(results: dict) -> list[list[str]]:
    """Per-record rows of the judged tasks that list their records (the arena): score, criteria, turns, error."""
    rows = []
    for name, r in results.items():
        jd = r.get("judge") or {}
        labels = jd.get("criteria") or {}
        for rec in jd.get("records") or []:
            crit = ", ".join(f"{label} {_f(rec.get(key))}" for key, label in labels.items())
            turns = f"{rec.get('answered_turns', '-')}/{rec.get('turns', '-')}" if "turns" in rec else "-"
            rows.append([f"{name} {rec['id']}", _f(rec.get("score")), crit, turns, str(rec.get("error") or "")[:160]])
    return rows


def rerun_of(model: str | None) -> str | None:
    """The published row a ``--model`` reruns (``openai:gpt-4o-2024-08-06`` -> "GPT-4o"), or None."""
    low = (model or "").lower()
    hits = [name for name, keys in RUN_NAMES.items() if any(k in low for k in keys)]
    return max(hits, key=len) if hits else None


def data_note(r: dict) -> str:
    """How a run's CODE-15 rows relate to the published ones: the same data, or other data said plainly."""
    from ecg.provenance import comparable

    data = r.get("data")
    if data is None:
        return "data not recorded"
    if comparable(data, "code15"):
        return f"on {data['label']}"
    return f"NOT CODE-15 data: {data['label']}; not comparable with the published rows"


def _run_rows(r: dict, label: str, when: str) -> list[list[str]]:
    """A run's CODE-15 rows: the ECGBench protocol, and the prior study's protocol on the same predictions."""
    where = data_note(r)
    rows = [[label, _f(r.get("f1")), _f(r.get("auc")), _f(r.get("hamming_loss")), _f(r.get("anls")),
             f"ECGBench protocol, n={r.get('n')}; {when}; {where}"]]
    sv = r.get("smolvlm-study") or {}
    if "f1" in sv:
        rows.append([f"{label} (smolvlm-study protocol)", _f(sv.get("f1")), _f(sv.get("auc")),
                     _f(sv.get("hamming_loss")), _f(sv.get("anls")),
                     f"the prior study's evaluator on the same predictions, n={r.get('n')}; {when}; {where}"])
    return rows


def published_rows(results: dict, ours_label: str = "ours, this run", *, model: str | None = None,
                   earlier: list[dict] | None = None) -> list[list[str]]:
    """The published CODE-15 rows with the runs: this run (``results``, ``model``) and named earlier runs
    (``earlier``: ``{"model", "result", "where"}`` each). A run of a published model sits right below its published
    row, which is marked "rerun"; other runs follow the table. Rows never run stay "published, not rerun here"."""
    runs = []  # (published row it reruns or None, its rows)
    if results.get("code15"):
        label = f"{model}, this run" if model else ours_label
        runs.append((rerun_of(model), _run_rows(results["code15"], label, "run here")))
    for e in earlier or []:
        if (e.get("result") or {}).get("n"):
            runs.append((rerun_of(e.get("model")), _run_rows(e["result"], f"{e.get('model')}, earlier run",
                                                             f"run earlier: {e.get('where')}")))
    rows = []
    for m, f1, auc, hl, anls, src in PUBLISHED_CODE15:
        mine = [r for of, rs in runs if of == m for r in rs]
        src = f"{src}; real CODE-15 exams (ECGBench code15-test)"
        note = f"{src}; published, rerun below" if mine else f"{src}; {PUBLISHED_NOTE}"
        rows += [[m, _f(f1), _f(auc), _f(hl), _f(anls), note]] + mine
    return rows + [r for of, rs in runs if of is None for r in rs]


def earlier_runs(uris: str | None) -> list[dict]:
    """``{"model", "result", "where"}`` of earlier ``ecgvlm evaluate --out`` folders (comma-separated, local or
    s3://): their run.json model and metrics.json CODE-15 result. A folder without them is named in the error."""
    import json

    out = []
    for uri in [u.strip() for u in (uris or "").split(",") if u.strip()]:
        try:
            run = json.loads(storage.read_text(storage.join(uri, "run.json")))
            metrics = json.loads(storage.read_text(storage.join(uri, "metrics.json")))
        except (FileNotFoundError, OSError, ValueError) as err:
            raise FileNotFoundError(f"--compare {uri}: not an evaluate output folder (run.json, metrics.json): "
                                    f"{err}") from None
        out.append({"model": run.get("model"), "result": metrics.get("code15") or {}, "where": uri})
    return out


PROTOCOL_HEADER = ["protocol", "F1", "AUC", "HL", "ANLS", "n"]


def protocol_rows(results: dict) -> list[list[str]]:
    """CODE-15 by protocol on the same predictions: ecgbench, smolvlm-study, strict (macro F1)."""
    r = results.get("code15")
    if not r:
        return []
    rows = []
    if "ecgbench" in r:
        rows.append(["ecgbench", _f(r.get("f1")), _f(r.get("auc")), _f(r.get("hamming_loss")), _f(r.get("anls")),
                     str(r.get("n"))])
    sv = r.get("smolvlm-study") or {}
    if "f1" in sv:
        rows.append(["smolvlm-study", _f(sv["f1"]), _f(sv["auc"]), _f(sv["hamming_loss"]), _f(sv["anls"]),
                     str(r.get("n"))])
    st = r.get("strict") or {}
    if st.get("f1_macro") is not None:
        rows.append(["strict (macro)", _f(st.get("f1_macro")), _f(st.get("auc")), _f(st.get("hamming_loss")),
                     _f(st.get("anls")), str(r.get("n"))])
    return rows


RUN_HEADER = ["what", "value"]


def run_rows(run: dict | None) -> list[list[str]]:
    """The run's model, decoding, rows, speed, answers cut by the budget, and an endpoint's requests and cost."""
    if not run:
        return []
    rows = [["model", str(run.get("model"))], ["decoding", str(run.get("decoding", "-"))],
            ["new rows (errors)", f"{run.get('new_rows')} ({run.get('new_errors')})"],
            ["rows/s", _f(run.get("rows_per_s"))]]
    cut = {t: k for t, k in (run.get("truncated") or {}).items() if k}
    rows.append(["answers cut by the token budget", ", ".join(f"{t}: {k}" for t, k in cut.items()) or "none"])
    gate = run.get("page_gate")
    if gate and gate.get("mode", "off") != "off":
        rows.append([f"not an ECG page ({gate['mode']}, page gate)", f"{gate.get('not_pages', 0)} of "
                     f"{gate.get('checked', 0)} images"])
    ep = run.get("endpoint")
    if ep:
        rows += [["endpoint", f"{ep.get('api_base')} ({ep.get('model')})"],
                 ["requests sent (retries)", f"{ep.get('requests', 0)} ({ep.get('retries', 0)})"],
                 ["answers from the cache", str(ep.get("cache_hits", 0))],
                 ["tokens sent: prompt / completion",
                  f"{ep.get('prompt_tokens', 0)} / {ep.get('completion_tokens', 0)}"],
                 ["estimated cost, USD", "-" if ep.get("cost_usd") is None else f"{ep['cost_usd']:.4f}"]]
    return rows


PUBLISHED_HEADER = ["model", "F1", "AUC", "HL", "ANLS", "source"]


def published_table(results: dict, ours_label: str = "ours, this run", *, model: str | None = None,
                    earlier: list[dict] | None = None) -> str:
    """The published CODE-15 rows (marked "published, not rerun here") with the runs, as plain text."""
    return "CODE-15 (F1 / AUC / HL / ANLS, x100)\n" + _text_table(
        PUBLISHED_HEADER, published_rows(results, ours_label, model=model, earlier=earlier))


def _md_table(header, rows) -> str:
    esc = lambda x: str(x).replace("|", "\\|").replace("\n", " ")  # noqa: E731
    return "\n".join(["| " + " | ".join(map(esc, header)) + " |", "|" + "---|" * len(header)]
                     + ["| " + " | ".join(map(esc, r)) + " |" for r in rows])


def _html_table(header, rows) -> str:
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _png(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode()


def class_f1_figure(per: list[dict], ecgbench_per_class: dict):
    """Bars of per-class F1 (strict beside ecgbench), one pair per class, labels readable (never overlapping)."""
    import matplotlib

    matplotlib.use("Agg")  # no display: files only
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(max(5.0, 0.75 * len(per) + 2), 3.4))
    x = range(len(per))
    ax.bar([i - 0.2 for i in x], [c["f1"] for c in per], 0.4, label="strict")
    ax.bar([i + 0.2 for i in x], [(ecgbench_per_class.get(c["label"]) or {}).get("f1") or 0 for c in per], 0.4,
           label="ecgbench")
    # labels such as NORM and ABNORMAL are long for a bar: slanted, right-aligned under their bars
    ax.set_xticks(list(x), [c["label"] for c in per], rotation=35, ha="right", rotation_mode="anchor")
    ax.set_ylabel("F1 (x100)")
    ax.set_ylim(0, 100)
    ax.legend()
    fig.tight_layout()
    return fig


def plots(results: dict) -> list[tuple[str, str]]:
    """``[(title, base64 PNG)]``: per-class F1 bars per multi-label task; ROC curves where scores exist."""
    import matplotlib

    matplotlib.use("Agg")  # no display: files only
    import matplotlib.pyplot as plt

    out = []
    for name, r in results.items():
        per = [c for c in (r.get("strict") or {}).get("per_class") or [] if c["f1"] is not None]
        eb = (r.get("ecgbench") or {}).get("per_class") or {}
        if per:
            out.append((f"{name}: per-class F1", _png(class_f1_figure(per, eb))))
        roc = (r.get("strict") or {}).get("roc") or {}
        if roc:
            fig, ax = plt.subplots(figsize=(4.5, 4.5))
            for label, c in roc.items():
                ax.plot(c["fpr"], c["tpr"], label=label)
            ax.plot([0, 1], [0, 1], "k:", lw=0.8)
            ax.set_xlabel("false positive rate")
            ax.set_ylabel("true positive rate")
            ax.legend(fontsize=7)
            out.append((f"{name}: ROC from label_scores", _png(fig)))
    return out


def sample_rows(samples, k: int = 8) -> list[list[str]]:
    if samples is None or len(samples) == 0:
        return []
    cols = [c for c in ("id", "task", "answer", "prediction", "error") if c in samples]
    rows = samples[cols].head(k).astype(object).where(samples[cols].head(k).notna(), "")
    return [[str(v)[:200] for v in row] for row in rows.itertuples(index=False)], cols


def write_report(results: dict, out_uri: str, samples=None, *, run: dict | None = None,
                 earlier: list[dict] | None = None) -> dict:
    """Write ``report.md`` and ``report.html`` under ``out_uri`` (local or s3://); returns their URIs.
    ``run``: the evaluate job's run.json (model, decoding, speed, an endpoint's requests, tokens and cost);
    ``earlier``: runs to set in the comparison table beside this one (:func:`earlier_runs`)."""
    results = {k: v for k, v in results.items()}
    sections = [("Tasks", TASK_HEADER, task_rows(results)), ("Per class", CLASS_HEADER, class_rows(results)),
                ("CODE-15 by protocol, same predictions", PROTOCOL_HEADER, protocol_rows(results)),
                ("CODE-15: published numbers beside ours", PUBLISHED_HEADER,
                 published_rows(results, model=(run or {}).get("model"), earlier=earlier))]
    judged = [[name, judge_line(r["judge"])] for name, r in results.items() if r.get("judge")]
    if judged:
        sections.append(("LLM judge", ["task", "judge"], judged))
    if any((r.get("judge") or {}).get("records") for r in results.values()):
        sections.append(("LLM judge, per record", JUDGE_HEADER, judge_record_rows(results)))
    if run:
        sections.insert(0, ("Run", RUN_HEADER, run_rows(run)))
    got = sample_rows(samples)
    if got:
        rows, cols = got
        sections.append(("Sample predictions with their gold answers", cols, rows))
    notes = [f"{n}: {w}" for n, r in results.items()
             for w in list(r.get("warnings", [])) + list((r.get("ecgbench") or {}).get("notes", []))]
    title = "ecgvlm score report"
    intro = ("ECGBench protocol: the published rules (x100, one decimal). Strict: whole-token, case-insensitive "
             "parsing with synonyms, no random letters, 95% bootstrap intervals. smolvlm-study: the prior SmolVLM "
             "study's own CODE-15 evaluator on the same predictions. Published rows are marked "
             f"\"{PUBLISHED_NOTE}\".")
    md = [f"# {title}", "", intro, ""]
    for head, header, rows in sections:
        md += [f"## {head}", "", _md_table(header, rows) if rows else "(none)", ""]
    md += ["## Notes", ""] + [f"- {n}" for n in notes or ["none"]]
    figs = plots(results)
    body = [f"<h1>{title}</h1>", f"<p>{html.escape(intro)}</p>"]
    for head, header, rows in sections:
        body += [f"<h2>{html.escape(head)}</h2>", _html_table(header, rows) if rows else "<p>(none)</p>"]
    body += ["<h2>Plots</h2>"] + [f'<figure><img alt="{html.escape(t)}" src="data:image/png;base64,{b}">'
                                  f"<figcaption>{html.escape(t)}</figcaption></figure>" for t, b in figs]
    body += ["<h2>Notes</h2><ul>"] + [f"<li>{html.escape(n)}</li>" for n in notes or ["none"]] + ["</ul>"]
    style = ("body{font-family:sans-serif;max-width:1100px;margin:2em auto}table{border-collapse:collapse;"
             "margin:1em 0}td,th{border:1px solid #ccc;padding:3px 8px;font-size:13px}th{background:#eee}")
    page = (f"<!doctype html><html><head><meta charset='utf-8'><title>{title}</title><style>{style}</style>"
            f"</head><body>{''.join(body)}</body></html>")
    uris = {"markdown": storage.join(out_uri, "report.md"), "html": storage.join(out_uri, "report.html")}
    storage.write_text(uris["markdown"], "\n".join(md) + "\n")
    storage.write_text(uris["html"], page)
    return uris
