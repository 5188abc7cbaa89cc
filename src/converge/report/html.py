"""report.html: one self-contained page about a run (plots inlined as PNG data, no script, no external
resource), built from the run folder's files alone, so it can be rebuilt at any time (`converge report`).

It shows what happened (status, stop reason, best epoch, test results), the curves with every decision
marked, a timeline of all events, the hyperparameters and why they were chosen, the diagnosis, and the
doctor's findings and remedies when the folder has them. A run without a summary (killed, or still
running) gets a report too, saying so. Every key is optional: older run folders lack some."""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from converge.errors import ConvergeError, StorageError
from converge.io.atomic import atomic_write_text
from converge.io.lock import holder
from converge.io.runfolder import (BEST_WEIGHTS, DOCTOR_FINDINGS, EVENTS, LR_FIND_PLOT, METRICS, REMEDIES, REPORT,
                                   RUN_INFO, SUMMARY, read_json_file)
from converge.io.weights import weights_readable
from converge.report._figures import as_float, curves_png
from converge.report._page import escape, img, number, table
from converge.status import STOP_EVENTS, Status

UNFINISHED = "unfinished"
LIVE = "training"

# Hyperparameter -> the tuning event that explains its value.
_CHOSEN_BY = {"optimizer": "chose_optimizer", "lr": "chose_lr", "weight_decay": "chose_weight_decay",
              "batch_size": "chose_batch_size", "warmup_steps": "warmup"}
_GOOD, _WARN, _BAD = "good", "warn", "bad"
_STATUS_TONE = {**{status.value: status.tone for status in Status}, UNFINISHED: "muted", LIVE: "info"}
# A diagnosis card's colour: "converged" is good news; otherwise by the finding's severity.
_DIAGNOSIS_TONE = {"converged": _GOOD, "still_improving": _WARN, "overfitting": _WARN, "underfitting": _WARN,
                   "lr_too_high": _BAD, "diverged": _BAD}
_SEVERITY_TONE = {"info": "info", "warning": _WARN, "error": _BAD}


def _diagnosis_tone(code, severity) -> str:
    """A code's own tone, else its severity's (a code the table does not know, e.g. ``collapsed``)."""
    return _DIAGNOSIS_TONE.get(code) or _SEVERITY_TONE.get(severity, "muted")


@dataclass
class RunFiles:
    """What the report is built from: each file as read, None (or empty) when it is missing."""
    path: Path
    info: dict
    summary: dict | None
    history: list[dict]
    events: list[dict]
    doctor: list | None
    remedies: list | None
    lr_find_png: bytes | None
    problems: list[str] = field(default_factory=list)   # files that are there but cannot be read
    live: str | None = None     # who is writing the run now (its folder lock's holder), when someone is
    curves_png: bytes | None = None   # the curves already drawn from these files (the trainer's curves.png)


def write_report(run_dir: str | Path, *, summary: dict | None = None, curves_png: bytes | None = None) -> Path:
    """Write ``run_dir/report.html`` atomically and return its path. ``summary`` is the run's summary when
    the caller holds it (the trainer writes the report before summary.json, its completion marker);
    otherwise summary.json is read if present. ``curves_png``: the curves the caller has just drawn from the
    same files (drawing them again cost as much as the rest of the report)."""
    run = dataclasses.replace(read_run(run_dir, summary=summary), curves_png=curves_png)
    path = run.path / REPORT
    page = render(run)
    try:
        atomic_write_text(path, page)
    except OSError as exc:
        raise StorageError.from_os_error(exc, path) from None
    return path


# --- reading ---------------------------------------------------------------------------------------
def read_run(run_dir: str | Path, *, summary: dict | None = None) -> RunFiles:
    path = Path(run_dir)
    if not path.exists():
        raise ConvergeError(f"run folder {str(path)!r} does not exist")
    if not path.is_dir():
        raise ConvergeError(f"{str(path)!r} is not a folder")
    info = _read_json(path / RUN_INFO)
    if not isinstance(info, dict) and summary is None:
        raise ConvergeError(f"{str(path)!r} is not a converge run folder (no readable {RUN_INFO})")
    if summary is None:
        summary = _read_json(path / SUMMARY)
    problems = [f"{name} cannot be read" for name, value in ((RUN_INFO, info), (SUMMARY, summary))
                if (path / name).exists() and not isinstance(value, dict)]
    if isinstance(summary, dict) and (path / BEST_WEIGHTS).exists() and not weights_readable(path / BEST_WEIGHTS):
        problems.append(f"{BEST_WEIGHTS} cannot be read (`converge resume {path}` writes it again from the "
                        f"final checkpoint)")
    found = holder(path)
    png = path / LR_FIND_PLOT
    return RunFiles(path=path, info=info if isinstance(info, dict) else {},
                    summary=summary if isinstance(summary, dict) else None,
                    history=_read_jsonl(path / METRICS), events=_read_jsonl(path / EVENTS),
                    doctor=_as_list(_read_json(path / DOCTOR_FINDINGS)), remedies=_as_list(_read_json(path / REMEDIES)),
                    lr_find_png=png.read_bytes() if png.is_file() else None, problems=problems,
                    live=found.describe() if found is not None and not found.is_self else None)


def _read_json(path: Path) -> Any:
    """Missing or unreadable reads as None: the report says what it lacks instead of failing."""
    return read_json_file(path, strict=False)


def _read_jsonl(path: Path) -> list[dict]:
    try:
        with open(path, encoding="utf-8", errors="replace") as handle:
            lines = handle.readlines()
    except OSError:
        return []
    records = []
    for line in lines:
        try:
            record = json.loads(line)
        except ValueError:
            continue  # a line cut short by a kill in mid-append
        if isinstance(record, dict):
            records.append(record)
    return records


def _as_list(value: Any) -> list | None:
    return [v for v in value if isinstance(v, dict)] if isinstance(value, list) else None


# --- formatting ------------------------------------------------------------------------------------
def _kv_table(pairs: dict, cls: str = "kv") -> str:
    return table(None, [[escape(k), escape(number(v))] for k, v in pairs.items()], cls)


def _section(title: str, body: str, anchor: str) -> str:
    return f"<section id='{anchor}'><h2>{escape(title)}</h2>{body}</section>" if body else ""


# --- what happened ---------------------------------------------------------------------------------
def run_status(run: RunFiles) -> tuple[str, str]:
    """(status, stop reason). Without a summary: the last stop event, unless the run was resumed after
    it; otherwise the run is unfinished (killed, or still running)."""
    if run.summary is not None:
        return str(run.summary.get("status") or UNFINISHED), str(run.summary.get("stop_reason") or "")
    if run.live:
        return LIVE, f"the run is live: {run.live}; this page shows it as of now"
    last = next((e for e in reversed(run.events) if e.get("event") in (*STOP_EVENTS, "resumed")), None)
    if last is not None and last["event"] != "resumed":
        return last["event"], f"{last.get('reason') or ''} (the run stopped before writing {SUMMARY})".strip()
    done = run.history[-1].get("epoch") if run.history else 0
    return UNFINISHED, (f"no {SUMMARY}: the run is still training, or was killed, after {number(done)} finished "
                        f"epoch(s); `converge resume {run.path}` continues it from its last checkpoint")


def best_of(run: RunFiles) -> tuple[Any, str, Any]:
    """(best epoch, monitored name, best value), from the summary or else the last new_best event."""
    summary = run.summary or {}
    monitor = summary.get("monitor") or (run.info.get("config") or {}).get("monitor") or "val_loss"
    if summary.get("best_epoch") is not None:
        return summary["best_epoch"], monitor, (summary.get("best") or {}).get(monitor)
    best = next((e for e in reversed(run.events) if e.get("event") == "new_best"), None)
    if best is None:
        return None, monitor, None
    return best.get("epoch"), best.get("monitor") or monitor, best.get("value")


def _header(run: RunFiles) -> str:
    status, reason = run_status(run)
    name = (run.summary or {}).get("name") or run.info.get("name") or run.path.name
    tone = _STATUS_TONE.get(status, "muted")
    task = (run.summary or {}).get("task") or run.info.get("task")
    return (f"<header><div class='title'><h1>{escape(name)}</h1><span class='badge tone-{tone}'>{escape(status)}</span>"
            f"</div><p class='reason'>{escape(reason)}</p>"
            f"{f'<p class=sub>task <code>{escape(task)}</code></p>' if task else ''}"
            f"{_kind(run.summary or {})}"
            f"<p class='sub'>run folder <code>{escape(run.path)}</code></p>{_facts(run)}</header>")


def _kind(summary: dict) -> str:
    """What kind of task converge took it for (decided once from the targets and outputs), and its loss."""
    kind, description = summary.get("task_kind"), summary.get("task_description")
    if not kind:
        return ""
    return f"<p class='sub'>kind <code>{escape(kind)}</code>{': ' + escape(description) if description else ''}</p>"


def _facts(run: RunFiles) -> str:
    """The numbers a reader wants first, as tiles."""
    summary = run.summary or {}
    best_epoch, monitor, best = best_of(run)
    epochs = summary.get("epochs", run.history[-1].get("epoch") if run.history else 0)
    tiles = [("epochs", number(epochs)), (f"best {monitor}", number(best)), ("best epoch", number(best_epoch))]
    tiles += [(f"test {k}", number(v)) for k, v in (summary.get("test") or {}).items()]
    cuts = sum(1 for e in run.events if e.get("event") == "lr_reduced")
    rollbacks = sum(1 for e in run.events if e.get("event") == "rollback")
    tiles += [("LR cuts", str(cuts)), ("rollbacks", str(rollbacks))]
    if summary.get("final_lr") is not None:
        tiles.append(("final LR", number(summary["final_lr"])))
    if summary.get("wall_seconds") is not None:
        tiles.append(("wall time", f"{number(summary['wall_seconds'])} s"))
    body = "".join(f"<div class='tile'><div class='label'>{escape(label)}</div><div class='value'>{escape(value)}</div>"
                   f"</div>" for label, value in tiles)
    return f"<div class='tiles'>{body}</div>"


# --- curves ----------------------------------------------------------------------------------------
def _curves(run: RunFiles) -> str:
    best_epoch, monitor, _ = best_of(run)
    png = run.curves_png or curves_png(run.history, run.events, best_epoch=best_epoch, monitor=monitor)
    if png is None:
        return "<p class='muted'>No epoch has finished yet: there is nothing to plot.</p>"
    bad = sum(1 for r in run.history for k in ("train_loss", "val_loss") if k in r and
              not math.isfinite(as_float(r[k])))
    note = (f"<p class='note tone-bad'>{bad} loss value(s) were not finite (NaN or inf): marked ✕ at the top of "
            f"the loss panel.</p>" if bad else "")
    return (f"{note}<figure>{img(png, 'loss, metric and learning-rate curves')}<figcaption>Vertical lines mark "
            f"the decisions: the best epoch, every LR cut, every rollback and the stop. The loss is drawn on a log "
            f"scale when it spans more than two decades.</figcaption></figure>")


# --- diagnosis and doctor --------------------------------------------------------------------------
def _card(title: str, tone: str, message: Any, evidence: Any, fix: Any, aside: str = "") -> str:
    rows = _kv_table(evidence, "evidence") if isinstance(evidence, dict) and evidence else ""
    fix_html = f"<p class='fix'><strong>Fix:</strong> {escape(fix)}</p>" if fix else ""
    aside_html = f"<span class='aside'>{escape(aside)}</span>" if aside else ""
    return (f"<div class='card tone-{tone}'><div class='card-head'><span class='code'>{escape(title)}</span>"
            f"{aside_html}</div><p>{escape(message or '')}</p>{rows}{fix_html}</div>")


def _diagnosis(run: RunFiles) -> str:
    findings = (run.summary or {}).get("diagnosis")
    if isinstance(findings, list) and findings:
        cards = "".join(_card(str(f.get("code", "?")), _diagnosis_tone(f.get("code"), f.get("severity")),
                              f.get("message"), f.get("evidence"), f.get("fix"))
                        for f in findings if isinstance(f, dict))
        final = f"<div class='cards'>{cards}</div>"
    elif run.summary is None:
        final = "<p class='muted'>The final diagnosis is written when the run finishes.</p>"
    else:
        final = "<p class='muted'>This run's summary holds no diagnosis.</p>"
    live = [e for e in run.events if e.get("event") == "diagnosis"]
    if not live:
        return final
    rows = [[escape(number(e.get("epoch"))),
             f"<span class='tag tone-{_diagnosis_tone(e.get('code'), e.get('severity'))}'>{escape(e.get('code', '?'))}</span>",
             escape(e.get("message") or ""), escape(e.get("fix") or "")] for e in live]
    return (f"{final}<h3>Told during training</h3>"
            f"{table(['epoch', 'code', 'message', 'fix'], rows, 'live')}")


def _doctor(run: RunFiles) -> str:
    parts = []
    if run.doctor is not None:
        cards = "".join(_card(str(f.get("code", "?")), _SEVERITY_TONE.get(f.get("severity"), "muted"),
                              f.get("message"), f.get("evidence"), f.get("fix"), aside=str(f.get("severity") or ""))
                        for f in run.doctor)
        parts.append(f"<div class='cards'>{cards}</div>" if cards else
                     "<p class='muted'>The checks before training found nothing.</p>")
    if run.remedies:
        rows = [[f"<code>{escape(r.get('remedy', '?'))}</code>", _detail(r.get("detail"))]
                for r in run.remedies]
        parts.append(f"<h3>Remedies applied</h3>{table(['remedy', 'detail'], rows)}")
    return "".join(parts)


def _detail(detail: Any) -> str:
    return _kv_table(detail, "kv inner") if isinstance(detail, dict) else escape(number(detail))


# --- timeline --------------------------------------------------------------------------------------
def _g(value: Any) -> str:
    return number(as_float(value)) if isinstance(value, (int, float)) and not isinstance(value, bool) else number(value)


def _then(reason: Any) -> str:
    return f": {reason}" if reason else ""


def _race(e: dict) -> str:
    arms = ", ".join(f"{a.get('optimizer')} {_g(a.get('lr'))} -> {_g(a.get('best'))}" for a in e.get("arms") or [])
    kept = ", ".join(f"{a.get('optimizer')} {_g(a.get('lr'))}" for a in e.get("kept") or [])
    return f"race rung {e.get('rung')} ({e.get('epochs')} epoch(s) each, {e.get('monitor')}): {arms}; kept {kept}"


def _rollback(e: dict) -> str:
    where = f"batch {e['batch']}" if e.get("batch") is not None else "validation"
    before = e.get("previous_clip_grad")
    clip = (f", gradient clipping {'off' if before is None else _g(before)} -> {_g(e['clip_grad'])}"
            if e.get("clip_grad") is not None and e.get("clip_grad") != e.get("previous_clip_grad") else "")
    return (f"{e.get('reason') or e.get('kind') or 'blow-up'} ({where}, loss {_g(e.get('loss'))}, gradient norm "
            f"{_g(e.get('grad_norm'))}): rolled back to step {e.get('to_step')}, LR {_g(e.get('lr'))} -> "
            f"{_g(e.get('new_lr'))}{clip}")


# kind -> one readable line from its fields; a missing field raises KeyError and the generic line is used.
_DESCRIBE = {
    "chose_batch_size": lambda e: f"batch size {e['value']}{_then(e.get('reason'))}",
    "chose_optimizer": lambda e: f"optimizer {e['value']}{_then(e.get('reason'))}",
    "chose_lr": lambda e: f"learning rate {_g(e['value'])}{_then(e.get('reason'))}",
    "chose_weight_decay": lambda e: f"weight decay {_g(e['value'])}{_then(e.get('reason'))}",
    "warmup": lambda e: f"linear warmup over {e.get('steps', e.get('value'))} steps{_then(e.get('reason'))}",
    "lr_range_test": lambda e: (f"{e['optimizer']} range test over {e.get('steps')} steps (batch "
                                f"{e.get('batch_size')}) -> LR {_g(e.get('suggested_lr'))}{_then(e.get('reason'))}"),
    "race_rung": _race,
    "new_best": lambda e: (f"{e['monitor']} {_g(e['value'])} (previous best {_g(e.get('previous'))})"
                           + ("" if e.get("significant", True) else "; not a significant improvement")),
    "lr_reduced": lambda e: f"LR {_g(e['old_lr'])} -> {_g(e['new_lr'])}{_then(e.get('reason'))}",
    "restored_best": lambda e: (f"restored the best weights, of epoch {e['best_epoch']} ({e.get('monitor')} "
                                f"{_g(e.get('value'))})"),
    "still_descending": lambda e: str(e["reason"]),
    "restarted_from_best": lambda e: (f"went on from the best weights, of epoch {e['best_epoch']}, at the cut LR: "
                                      f"validation loss had risen {e['val_rise']:.0%} since while training loss "
                                      f"fell {e['train_fall']:.0%} (overfitting)"),
    "resumed": lambda e: (f"resumed from {e['checkpoint']} after epoch {e.get('epoch_done')}"
                          + (f", batch {e['batch']}" if e.get("batch") else "")),
    "checkpoint_fallback": lambda e: f"used {e['used']}: {e.get('problem')}",
    "rollback": _rollback,
    "diagnosis": lambda e: f"{e['code']}: {e.get('message')}" + (f"; fix: {e['fix']}" if e.get("fix") else ""),
    "doctor_finding": lambda e: f"{e.get('severity', '')} {e['code']}: {e.get('message')}".strip(),
    "remedy": lambda e: f"{e['remedy']}: {number(e.get('detail'))}",
    **{kind: (lambda e: str(e["reason"])) for kind in STOP_EVENTS},
}


def describe(event: dict) -> str:
    """One line of plain text for an event; unknown kinds and odd fields get `name value` pairs."""
    try:
        return _DESCRIBE[event.get("event")](event)
    except (KeyError, TypeError, ValueError, AttributeError):
        fields = {k: v for k, v in event.items() if k not in ("event", "epoch", "step")}
        return "; ".join(f"{k} {number(v)}" for k, v in fields.items())


def _tag_tone(kind: str) -> str:
    if kind in STOP_EVENTS:
        return Status(kind).tone
    if kind in ("rollback", "checkpoint_fallback"):
        return _BAD
    if kind in ("lr_reduced", "diagnosis", "doctor_finding"):
        return _WARN
    if kind in ("new_best", "restored_best", "restarted_from_best"):
        return _GOOD
    return "info" if kind.startswith(("chose_", "lr_range", "race", "warmup")) else "muted"


def _timeline(run: RunFiles) -> str:
    if not run.events:
        return "<p class='muted'>No events were recorded.</p>"
    rows = []
    for e in run.events:
        kind = str(e.get("event", "?"))
        text = describe(e)
        shown = text if len(text) <= 400 else text[:400] + " …"  # the fields stay whole in events.jsonl
        rows.append([escape(number(e.get("epoch"))), escape(number(e.get("step"))),
                     f"<span class='tag tone-{_tag_tone(kind)}'>{escape(kind)}</span>", escape(shown)])
    return ("<p class='muted'>Every event in events.jsonl, in order; epoch 0 is tuning, before training.</p>"
            + table(["epoch", "step", "event", "what happened"], rows, "timeline"))


# --- hyperparameters -------------------------------------------------------------------------------
def _config(run: RunFiles) -> dict:
    config = (run.summary or {}).get("config") or run.info.get("config")
    return config if isinstance(config, dict) else {}


def _hyperparameters(run: RunFiles) -> str:
    """The chosen values, each with the reason its tuning event gave, then the evidence behind them."""
    config = _config(run)
    values = dict((run.summary or {}).get("hyperparameters") or {})
    for name in _CHOSEN_BY:
        if name not in values and name in config:
            values[name] = config[name]
    chosen = {e.get("event"): e for e in run.events if str(e.get("event", "")).startswith("chose_")
              or e.get("event") == "warmup"}
    if "chose_lr" not in chosen and "lr" in chosen.get("chose_optimizer", {}):
        chosen["chose_lr"] = chosen["chose_optimizer"]  # older runs: the LR came with the optimizer's event
    rows = []
    for name, value in values.items():
        event = chosen.get(_CHOSEN_BY.get(name, ""))
        why = (f"<span class='tag tone-info'>auto</span> {escape(event.get('reason') or '')}" if event is not None
               else "<span class='tag tone-muted'>set</span> by the run's options or their default (not tuned)")
        rows.append([f"<code>{escape(name)}</code>", escape(number(value)), why])
    parts = [table(["hyperparameter", "value", "why"], rows, "hp") if rows else
             "<p class='muted'>No hyperparameters recorded.</p>"]
    tuning = (run.summary or {}).get("tuning_epochs")
    if tuning:
        parts.append(f"<p class='muted'>Choosing them took {escape(number(tuning))} epochs' worth of training.</p>")
    parts += [_range_tests(run), _races(run), img(run.lr_find_png, "LR range test")]
    if config:
        parts.append(f"<details><summary>Full configuration ({len(config)} options)</summary>"
                     f"{_kv_table(config)}</details>")
    return "".join(parts)


def _range_tests(run: RunFiles) -> str:
    tests = [e for e in run.events if e.get("event") == "lr_range_test"]
    if not tests:
        return ""
    rows = [[escape(e.get("optimizer", "?")), escape(number(e.get("steps"))), escape(_g(e.get("suggested_lr"))),
             escape(_g(e.get("min_loss_lr"))), escape(number(e.get("candidates"))), escape(e.get("reason") or "")] for e in tests]
    return ("<h3>LR range tests</h3>"
            + table(["optimizer", "steps", "suggested LR", "loss minimum at", "rules", "reason"], rows))


def _races(run: RunFiles) -> str:
    rungs = [e for e in run.events if e.get("event") == "race_rung"]
    if not rungs:
        return ""
    rows = []
    for e in rungs:
        kept = {(a.get("optimizer"), a.get("lr")) for a in e.get("kept") or []}
        for arm in e.get("arms") or []:
            won = (arm.get("optimizer"), arm.get("lr")) in kept
            rows.append([escape(number(e.get("rung"))), escape(arm.get("optimizer", "?")), escape(_g(arm.get("lr"))),
                         escape(_g(arm.get("best"))), "<span class='tag tone-good'>kept</span>" if won else "out"])
    monitor = rungs[0].get("monitor") or "monitored value"
    return ("<h3>Race on validation</h3><p class='muted'>Candidates trained side by side from the same weights; "
            "the better half went on.</p>" + table(["rung", "optimizer", "LR", f"best {monitor}", ""], rows))


# --- the page --------------------------------------------------------------------------------------
def _about(run: RunFiles) -> str:
    source = {**run.info, **(run.summary or {})}
    keys = ("name", "task", "task_sha256", "task_kind", "device", "steps", "converge_version", "torch_version")
    shown = {k: source[k] for k in keys if source.get(k) is not None}
    return _kv_table(shown) if shown else ""


def _problems(run: RunFiles) -> str:
    if not run.problems:
        return ""
    items = "".join(f"<li>{escape(problem)}</li>" for problem in run.problems)
    return f"<div class='note tone-bad'><strong>Damaged files:</strong><ul>{items}</ul></div>"


def render(run: RunFiles) -> str:
    status, _ = run_status(run)
    sections = [_section("Diagnosis", _diagnosis(run), "diagnosis"), _section("Curves", _curves(run), "curves"),
                _section("Hyperparameters and why", _hyperparameters(run), "hyperparameters"),
                _section("Data and model checks", _doctor(run), "doctor"),
                _section("Timeline", _timeline(run), "timeline"), _section("Run", _about(run), "run")]
    title = f"{(run.summary or {}).get('name') or run.info.get('name') or run.path.name}: {status}"
    # The policy makes self-containment checkable: the page can fetch nothing and run no script.
    return ("<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'>"
            "<meta name='viewport' content='width=device-width, initial-scale=1'>"
            "<meta http-equiv='Content-Security-Policy' content=\"default-src 'none'; img-src data:; "
            "style-src 'unsafe-inline'\">"
            f"<title>converge · {escape(title)}</title><style>{_STYLE}</style></head>\n<body><main>"
            f"{_header(run)}\n{_problems(run)}" + "\n".join(s for s in sections if s) +
            "\n<footer>Written by converge from the run folder's files; rebuild it with "
            f"<code>converge report {escape(run.path)}</code>.</footer></main></body></html>\n")


_STYLE = """
:root { --fg: #1f2328; --muted: #656d76; --line: #d0d7de; --bg: #f6f8fa;
  --good: #1a7f37; --good-bg: #dafbe1; --warn: #9a6700; --warn-bg: #fff8c5; --bad: #cf222e; --bad-bg: #ffebe9;
  --info: #0969da; --info-bg: #ddf4ff; --mu: #57606a; --mu-bg: #eaeef2; }
* { box-sizing: border-box; }
body { margin: 0; background: #fff; color: var(--fg); line-height: 1.45;
  font: 15px/1.5 system-ui, -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif; }
main { max-width: 1080px; margin: 0 auto; padding: 28px 24px 48px; }
header { border-bottom: 1px solid var(--line); padding-bottom: 18px; margin-bottom: 8px; }
.title { display: flex; align-items: center; gap: 14px; flex-wrap: wrap; }
h1 { font-size: 28px; margin: 0; } h2 { font-size: 20px; margin: 32px 0 12px; padding-bottom: 6px;
  border-bottom: 1px solid var(--line); } h3 { font-size: 16px; margin: 22px 0 8px; }
.reason { font-size: 16px; margin: 10px 0 4px; } .sub, .muted, figcaption { color: var(--muted); }
.sub { margin: 2px 0; font-size: 13px; }
code { font: 12.5px ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; background: var(--bg);
  padding: 1px 5px; border-radius: 4px; word-break: break-all; }
.badge { font-weight: 600; font-size: 14px; padding: 3px 12px; border-radius: 999px; border: 1px solid; }
.tag { font: 12px ui-monospace, Menlo, Consolas, monospace; padding: 1px 7px; border-radius: 999px;
  white-space: nowrap; }
.tone-good { color: var(--good); background: var(--good-bg); border-color: var(--good); }
.tone-warn { color: var(--warn); background: var(--warn-bg); border-color: var(--warn); }
.tone-bad { color: var(--bad); background: var(--bad-bg); border-color: var(--bad); }
.tone-info { color: var(--info); background: var(--info-bg); border-color: var(--info); }
.tone-muted { color: var(--mu); background: var(--mu-bg); border-color: var(--mu); }
.tiles { display: grid; grid-template-columns: repeat(auto-fill, minmax(150px, 1fr)); gap: 10px; margin-top: 16px; }
.tile { border: 1px solid var(--line); border-radius: 8px; padding: 8px 12px; background: var(--bg); }
.tile .label { font-size: 12px; color: var(--muted); } .tile .value { font-size: 18px; font-weight: 600;
  overflow-wrap: anywhere; }
.cards { display: grid; grid-template-columns: repeat(auto-fill, minmax(320px, 1fr)); gap: 12px; }
.card { border: 1px solid var(--line); border-left: 5px solid; border-radius: 8px; padding: 10px 14px;
  background: #fff; color: var(--fg); }
.card.tone-good { border-left-color: var(--good); } .card.tone-warn { border-left-color: var(--warn); }
.card.tone-bad { border-left-color: var(--bad); } .card.tone-info { border-left-color: var(--info); }
.card.tone-muted { border-left-color: var(--mu); }
.card-head { display: flex; justify-content: space-between; align-items: baseline; }
.card .code { font-weight: 700; font-family: ui-monospace, Menlo, Consolas, monospace; }
.card p { margin: 6px 0; } .card .fix { background: var(--bg); padding: 6px 8px; border-radius: 6px; }
.aside { font-size: 12px; text-transform: uppercase; letter-spacing: .04em; color: var(--muted); }
.note { padding: 8px 12px; border-radius: 6px; border: 1px solid; }
table { border-collapse: collapse; width: 100%; margin: 6px 0 14px; font-size: 13.5px; }
th, td { text-align: left; vertical-align: top; padding: 5px 10px; border-bottom: 1px solid var(--line); }
th { background: var(--bg); font-weight: 600; } tbody tr:nth-child(even) { background: #fbfcfd; }
table.kv td:first-child, table.evidence td:first-child { color: var(--muted); width: 40%; }
table.evidence { font-size: 12.5px; margin: 4px 0; } table.inner { margin: 0; }
table.timeline td:nth-child(-n+2) { text-align: right; color: var(--muted); width: 4em; }
figure { margin: 0; } img { max-width: 100%; height: auto; display: block; margin: 8px auto; }
details { margin: 10px 0; } summary { cursor: pointer; color: var(--info); }
footer { margin-top: 40px; color: var(--muted); font-size: 12.5px; border-top: 1px solid var(--line);
  padding-top: 12px; }
"""
