"""The study's report: ``report.json`` (the numbers), ``report.md`` and a
self-contained ``report.html`` (figures inlined as base64 PNG).

Its verdicts are computed from the numbers (:func:`tfnas.study.stats.describe`):
direction, size, whether the bootstrap interval excludes zero, whether that
agrees with the paper, and a warning when there are too few cells.  Nothing
is written in advance: if the paper's claims do not hold at the scale that
was run, the report says so.
"""

from __future__ import annotations

import base64
import html
import os
import re
import time

from tfnas.files import atomic_write_json, atomic_write_text
from tfnas.study import stats
from tfnas.study.figures import draw_figures
from tfnas.study.results import collect

__all__ = ["X_KEYS", "Y_KEYS", "correlations", "verdicts", "write_report"]

X_KEYS = ("width", "depth")
# y key -> (label, sign of its rank correlation with width the paper predicts)
Y_KEYS = {"epochs_to_target": ("epochs to the target test loss", -1),
          "early_auc": ("area under the early test-loss curve", -1),
          "final_test_acc": ("final test accuracy", None),
          "final_test_loss": ("final test loss", None),
          "top_eigenvalue": ("top Hessian eigenvalue λ_max", -1),
          "trace": ("Hessian trace", -1),
          "gradient_variance": ("gradient variance E‖g−ḡ‖", -1)}
CELL_COLUMNS = ("name", "width", "depth", "params", "final_test_loss", "final_test_acc", "early_test_acc",
                "epochs_to_target", "early_auc", "top_eigenvalue", "lambda_min", "eigen_ratio", "trace",
                "gradient_variance")


def _y_keys(table) -> dict:
    """Y_KEYS plus the probes of early epochs (``<key>_e<epoch>``)."""
    keys = dict(Y_KEYS)
    for cell in table["cells"]:
        for key in cell:
            base, _, epoch = key.rpartition("_e")
            if base in ("top_eigenvalue", "gradient_variance") and epoch.isdigit():
                keys[key] = (f"{Y_KEYS[base][0]}, epoch {epoch}", Y_KEYS[base][1])
    return keys


def correlations(table: dict) -> list:
    """Rank correlations of width and depth with every measured quantity,
    and of the early with the final test accuracy (the paper's point 4)."""
    analysis = table["settings"]["analysis"]
    cells = [c for c in table["cells"] if c["n_seeds"] > 0]
    rows = []
    for x in X_KEYS:
        for y in _y_keys(table):
            if any(c.get(y) is not None for c in cells):
                rows.append(stats.correlate([c[x] for c in cells], [_num(c.get(y)) for c in cells], x, y,
                                            analysis["resamples"], analysis["level"]))
    for x in ("early_test_acc", "early_auc"):
        if any(c.get(x) is not None for c in cells):
            rows.append(stats.correlate([_num(c.get(x)) for c in cells],
                                        [_num(c.get("final_test_acc")) for c in cells], x, "final_test_acc",
                                        analysis["resamples"], analysis["level"]))
    return rows


def _num(value):
    return float("nan") if value is None else float(value)


def _find(rows, x, y):
    return next((r for r in rows if r["x"] == x and r["y"] == y), None)


def verdicts(table: dict, rows: list) -> list:
    """``[{"claim", "sentences"}]``: the paper's claims, each answered from ``rows``."""
    labels = {**{k: v[0] for k, v in _y_keys(table).items()}, "width": "width", "depth": "depth",
              "early_test_acc": f"accuracy after epoch {table['early_epoch']}",
              "early_auc": "the early test-loss area"}
    signs = {k: v[1] for k, v in _y_keys(table).items()}

    def say(x, y, statistic="spearman", sign=None):
        row = _find(rows, x, y)
        if row is None:
            return f"{labels.get(y, y)} against {x}: not measured in this study."
        if sign is None and signs.get(y) is not None:
            sign = signs[y] if x == "width" else -signs[y]
        return stats.describe(row, statistic, labels.get(x, x), labels.get(y, y), sign)

    early_keys = sorted(k for k in _y_keys(table) if re.search(r"_e\d+$", k))
    return [
        {"claim": "1. Wide, shallow cells converge faster in the first epochs.",
         "sentences": [say("width", "early_auc"), say("width", "epochs_to_target"), say("depth", "early_auc")]},
        {"claim": "3a. Their loss landscape is smoother (smaller top Hessian eigenvalue).",
         "sentences": [say("width", "top_eigenvalue"), say("depth", "top_eigenvalue")]
         + [say("width", k) for k in early_keys if k.startswith("top_eigenvalue")]},
        {"claim": "3b. Their gradients are more accurate (smaller gradient variance).",
         "sentences": [say("width", "gradient_variance"), say("depth", "gradient_variance")]
         + [say("width", k) for k in early_keys if k.startswith("gradient_variance")]},
        {"claim": "4. Fast convergence is not better generalisation.",
         "sentences": [say("width", "final_test_acc"), _point4(_find(rows, "early_test_acc", "final_test_acc"),
                                                              table)]},
    ]


def _point4(row, table) -> str:
    """Does what a NAS algorithm sees (early accuracy) predict the final accuracy?"""
    if row is None or row["kendall"] is None:
        return "Early against final accuracy: not measurable here."
    sentence = stats.describe(row, "kendall", f"accuracy after epoch {table['early_epoch']}",
                              f"final accuracy (epoch {table['epochs']})")
    low, tau = row["kendall_ci_low"], row["kendall"]
    if low is not None and low > 0:
        answer = ("So here a NAS algorithm judging cells by their early accuracy would rank them much as "
                  "their final accuracy does: fast convergence did predict generalisation at this scale")
    elif row["kendall_ci_high"] is not None and row["kendall_ci_high"] < 0:
        answer = ("So here early accuracy ranks the cells against their final accuracy: fast convergence "
                  "predicted worse generalisation at this scale")
    else:
        answer = ("So whether early accuracy predicts final accuracy is not established by this study "
                  f"(τ = {tau:+.2f})")
    return f"{sentence} {answer}; 'final' is epoch {table['epochs']} of this study's training."


def _timings(manifest) -> dict:
    """The work (every finished job's seconds, from its status file: it
    counts whichever session ran it) and the orchestration overhead (wall
    time outside jobs) of the finished one-job-at-a-time sessions."""
    from tfnas.study.jobs import plan_jobs, read_status
    sessions = manifest.data.get("sessions", [])
    finished = [s for s in sessions if s.get("finished")]
    work = {"train": 0.0, "probe": 0.0}
    for train, probes in plan_jobs(manifest):
        for job in [train] + probes:
            status = read_status(manifest.dir, job) or {}
            if status.get("state") == "done":
                work[job.kind] += float(status.get("seconds", 0.0))
    sequential = [s for s in finished if "overhead_seconds" in s]
    overhead = sum(s["overhead_seconds"] for s in sequential)
    seq_wall = sum(s["wall_seconds"] for s in sequential)
    return {"sessions": sessions, "finished_sessions": len(finished),
            "interrupted_sessions": len(sessions) - len(finished),
            "job_seconds": work["train"] + work["probe"], "train_seconds": work["train"],
            "probe_seconds": work["probe"],
            "overhead_seconds": overhead if sequential else None,
            "session_overhead_fraction": overhead / seq_wall if seq_wall > 0 else None,
            # the study's time = all its work + the measured orchestration
            "overhead_fraction": overhead / (overhead + work["train"] + work["probe"])
            if sequential and overhead + work["train"] + work["probe"] > 0 else None}


def _fmt(key: str, value) -> str:
    if value is None:
        return "–"
    if isinstance(value, str):
        return value
    if key.endswith("_acc"):
        return f"{100 * value:.1f}%"
    if key == "width":
        return f"{value:g}c"
    if key in ("depth", "params"):
        return f"{int(round(value)):,}"
    if key == "epochs_to_target":
        return f"{value:.3g}"
    return f"{value:.4g}"


_HEADERS = {"name": "cell", "width": "width", "depth": "depth", "params": "params",
            "final_test_loss": "final test loss", "final_test_acc": "final test acc",
            "early_test_acc": "early test acc", "epochs_to_target": "epochs to target",
            "early_auc": "early loss area", "top_eigenvalue": "λ_max", "lambda_min": "λ_min",
            "eigen_ratio": "λ_min/λ_max", "trace": "trace", "gradient_variance": "E‖g−ḡ‖"}


def _cell_table(table) -> tuple:
    """(headers, rows of strings) of the per-cell table."""
    headers = [_HEADERS[k] for k in CELL_COLUMNS]
    rows = [[_fmt(k, c.get(k)) for k in CELL_COLUMNS] for c in table["cells"]]
    return headers, rows


def _correlation_table(rows) -> tuple:
    headers = ["x", "y", "n", "Spearman ρ", "95% CI", "Kendall τ", "95% CI"]

    def interval(low, high):
        return "–" if low is None else f"{low:+.2f} … {high:+.2f}"
    body = [[r["x"], r["y"], str(r["n"]), "–" if r["spearman"] is None else f"{r['spearman']:+.2f}",
             interval(r["ci_low"], r["ci_high"]), "–" if r["kendall"] is None else f"{r['kendall']:+.2f}",
             interval(r["kendall_ci_low"], r["kendall_ci_high"])] for r in rows]
    return headers, body


def _setup_lines(table, timings) -> list:
    s = table["settings"]
    probe = s["probe"]
    config = table["config"]
    lines = [f"{len(table['cells'])} cells × {len(s['seeds'])} seed(s) ({', '.join(map(str, s['seeds']))}), "
             f"base genotype {s['genotype']}, design: {', '.join(s['variants']) or 'none'}"
             + (f" ({s['per_band']} per width band {', '.join(f'{b:g}c' for b in s['bands'])})"
                if "stratified" in s["variants"] else ""),
             f"Training: preset {s['preset']} (C={config['init_channels']}, {config['layers']} cells, "
             f"{config['epochs']} epochs, batch {config['batch_size']}, auxiliary head "
             f"{'on' if config['auxiliary'] else 'off'}, cutout {config['cutout']}, drop path "
             f"{config['drop_path_prob']}) on {s['dataset']}" + (", deterministic" if s["deterministic"] else ""),
             (f"Probes on {probe['images']} images of the {probe['split']} split (a sample fixed by seed {probe['seed']}, "
              "the same for every cell), batch " if probe["images"] else f"Probes on the whole {probe['split']} split, batch ")
             + f"{probe['batch_size']} (the gradient variance's batch size), BN in inference mode, at epochs "
             f"{', '.join(map(str, table['probe_epochs']))}; Hessian over "
             + ("the weights of rank > 1 (biases and BN parameters excluded, as the authors)"
                if probe["hessian_weights"] == "rank2" else "all trainable variables")
             + f", Lanczos ≤ {probe['hessian_iter']} steps (tol {probe['hessian_tol']:g}), Hutchinson trace ≤ "
             f"{probe['trace_iter']} HVPs; loss = mean cross-entropy over the probed images",
             f"Landscape: {probe['landscape_points']}×{probe['landscape_points']} grid over "
             f"[−{probe['landscape_span']:g}, {probe['landscape_span']:g}]² on "
             f"{probe['landscape_images'] or 'all'} images, filter-normalised random directions"
             + (", gradient variance at every point" if probe["landscape_gradvar"] else ""),
             f"Convergence speed: epochs to reach test loss {table['target_loss']:.4g} ({table['target_loss_rule']}),"
             f" and the mean test loss over epochs 1–{table['early_epoch']}; 'early' accuracy is that after epoch "
             f"{table['early_epoch']}" if table["target_loss"] is not None else "Convergence speed: no complete run yet"]
    if timings["job_seconds"]:
        over = timings["overhead_fraction"]
        lines.append(f"Time: {timings['job_seconds'] / 60:.1f} min of work (training "
                     f"{timings['train_seconds'] / 60:.1f} min, probes {timings['probe_seconds'] / 60:.1f} min)"
                     + (f"; orchestration {timings['overhead_seconds']:.0f} s ({100 * over:.1f}% of the study's "
                        f"time) over {timings['finished_sessions']} finished session(s)" if over is not None else "")
                     + (f", {timings['interrupted_sessions']} session(s) interrupted"
                        if timings["interrupted_sessions"] else ""))
    for key, symbol in (("lambda_max", "λ_max"), ("lambda_min", "λ_min")):
        names = [c["name"] for c in table["cells"] if key in c.get("unconverged", ())]
        if names:
            lines.append(f"{symbol} did not reach Lanczos's tolerance for {len(names)} of {len(table['cells'])} "
                         f"cell(s) ({', '.join(names[:4])}{'…' if len(names) > 4 else ''}): approximate there, "
                         "its relative residual is in the probe files (raise --hessian-iter)")
    return lines


_FIGURE_TITLES = (("cells", "The normal cells, with width and depth"),
                  ("test_loss_curves", "Test loss per epoch, grouped by width band"),
                  ("test_acc_curves", "Test accuracy per epoch, grouped by width band"),
                  ("scatter", "Width and depth against convergence, accuracy and smoothness"),
                  ("early_vs_final", "What a NAS algorithm sees against what it wants"),
                  ("landscape_contours", "Loss contours"),
                  ("gradvar_surfaces", "Gradient-variance surfaces"))


def _markdown(table, rows, claims, figures, timings) -> str:
    out = [f"# Study: {table['settings']['genotype']} — width, depth, convergence and smoothness", "",
           f"Written {time.strftime('%Y-%m-%d %H:%M')} from `{table['study']}`.", ""]
    out += [f"- {line}" for line in _setup_lines(table, timings)] + ["", "## Verdicts", ""]
    for claim in claims:
        out += [f"**{claim['claim']}**", ""] + [f"- {s}" for s in claim["sentences"]] + [""]
    for title, (headers, body) in (("## Cells", _cell_table(table)), ("## Correlations", _correlation_table(rows))):
        out += [title, "", "| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
        out += ["| " + " | ".join(r) + " |" for r in body] + [""]
    out += ["## Figures", ""]
    for name, title in _FIGURE_TITLES:
        if name in figures:
            out += [f"### {title}", "", f"![{title}]({os.path.relpath(figures[name]['png'], table['study'])})", ""]
    return "\n".join(out)


_CSS = """body{font-family:system-ui,-apple-system,Segoe UI,sans-serif;max-width:1150px;margin:2em auto;
padding:0 1em;color:#222;line-height:1.45}table{border-collapse:collapse;font-size:13px;margin:.5em 0 1.5em}
td,th{border:1px solid #ddd;padding:3px 7px;text-align:right}th{background:#f3f5f8}td:first-child,
th:first-child,table.corr td:nth-child(2),table.corr th:nth-child(2){text-align:left}img{max-width:100%;border:1px solid #eee;margin:.3em 0 1.2em}
h1{font-size:1.6em}h2{border-bottom:1px solid #ddd;padding-bottom:.2em;margin-top:1.6em}
.claim{font-weight:600;margin-top:1em}li{margin:.25em 0}"""


def _html_table(headers, body, css_class: str = "") -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
    rows = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>" for r in body)
    return f"<table class='{css_class}'><tr>{head}</tr>{rows}</table>"


def _html(table, rows, claims, figures, timings) -> str:
    parts = [f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>Study: "
             f"{html.escape(table['settings']['genotype'])}</title><style>{_CSS}</style></head><body>",
             f"<h1>Study: {html.escape(table['settings']['genotype'])} — width, depth, convergence and "
             f"smoothness</h1><p>Written {time.strftime('%Y-%m-%d %H:%M')} from <code>"
             f"{html.escape(table['study'])}</code>.</p><ul>"
             + "".join(f"<li>{html.escape(line)}</li>" for line in _setup_lines(table, timings)) + "</ul>",
             "<h2>Verdicts</h2>"]
    for claim in claims:
        parts.append(f"<p class='claim'>{html.escape(claim['claim'])}</p><ul>"
                     + "".join(f"<li>{html.escape(s)}</li>" for s in claim["sentences"]) + "</ul>")
    parts += ["<h2>Cells</h2>", _html_table(*_cell_table(table)),
              "<h2>Correlations</h2>", _html_table(*_correlation_table(rows), "corr"), "<h2>Figures</h2>"]
    for name, title in _FIGURE_TITLES:
        if name in figures:
            with open(figures[name]["png"], "rb") as fh:
                data = base64.b64encode(fh.read()).decode("ascii")
            parts.append(f"<h3>{html.escape(title)}</h3><img alt='{html.escape(title)}' "
                         f"src='data:image/png;base64,{data}'>")
    parts.append("</body></html>")
    return "\n".join(parts)


def _json_table(table) -> dict:
    return {"study": table["study"], "settings": table["settings"], "config": table["config"],
            "epochs": table["epochs"], "early_epoch": table["early_epoch"],
            "probe_epochs": table["probe_epochs"], "target_loss": table["target_loss"],
            "target_loss_rule": table["target_loss_rule"],
            "cells": table["cells"],
            "runs": table["runs"]}


def write_report(study_dir: str, log=None, hparams: bool = True) -> dict:
    """Collect the study's numbers, draw its figures, write report.json,
    report.md and report.html (and the TensorBoard HParams); returns their paths."""
    table = collect(study_dir)
    manifest = table.pop("manifest")
    settings = manifest.settings
    table["config"] = settings.train_config(settings.genotype, settings.seeds[0]).to_dict()
    table["probe_epochs"] = sorted(set(settings.probe_epochs()) | set(settings.probe_epochs("landscape_epochs")))
    rows = correlations(table)
    claims = verdicts(table, rows)
    timings = _timings(manifest)
    figures = draw_figures(table, rows, os.path.join(manifest.dir, "figures"))
    paths = {"json": os.path.join(manifest.dir, "report.json"), "md": os.path.join(manifest.dir, "report.md"),
             "html": os.path.join(manifest.dir, "report.html")}
    atomic_write_json(paths["json"], {**_json_table(table), "correlations": rows, "verdicts": claims,
                                      "timings": timings, "figures": figures})
    atomic_write_text(paths["md"], _markdown(table, rows, claims, figures, timings) + "\n")
    atomic_write_text(paths["html"], _html(table, rows, claims, figures, timings) + "\n")
    if hparams and any(r.get("complete") for r in table["runs"]):
        paths["tensorboard"] = _hparams(table)
    if log is not None:
        print(f"wrote {paths['html']}, {paths['md']}, {paths['json']} and {len(figures)} figures", file=log)
    return paths


def _hparams(table) -> str:
    from tfnas.study.hparams import write_hparams
    return write_hparams(table)
