"""The evaluation report: numbers from per-sample results, the gradient-masking warning, and the
Markdown / JSON files.

* Robust accuracy under an attack counts an example when it is classified correctly both clean
  and attacked (the clean input is inside every eps-ball, so an attacker may keep it).
* Worst case (white-box): correct clean and under every white-box attack run, per example;
  worst case (all): correct under every attack run, AutoAttack and black-box ones included.
* Masking warning: when PGD's robust accuracy is at least ``MASKING_RATIO`` times the per-example
  worst case of every attack run, and the gap is more than ``MASKING_GAP`` points and more than
  ``MASKING_SHARE`` of the clean accuracy: gradients are likely masked (obfuscated) and PGD
  overstates robustness, as for the released NoFrost ResNet-50 (74.1% clean, 22.5% PGD, 1.3%
  AutoAttack: PGD 17x the worst case, a gap of 29% of the clean accuracy). Why three tests:
  masking makes PGD's number a multiple of the truth, while on honest models stronger attacks
  only break some of PGD's robust examples (APGD's adaptive step): the digits demo, 97.2% clean,
  PGD-20 89.1%, AutoAttack 81.6%; in its third epoch of training, PGD-10 65.6% and APGD 46.9% on
  32 examples. The ratio alone would fire on a weak model whose few robust examples fall to any
  stronger attack (a linear model at eps 32/255: PGD 7.8%, APGD 1.6%, 97% clean), hence the gap
  relative to the clean accuracy; and a few examples of a small subset would pass both, hence
  the 5 points. Training's validation uses the same rule (fastnofrost/training/validate.py).
"""
import json
import math
import os
from typing import Dict, List, Optional

import torch

from .attacks import BLACK_BOX, WHITE_BOX, AttackSettings, kind, label

MASKING_RATIO = 2.0   # PGD's accuracy at least this multiple of the worst case, and the gap above ...
MASKING_GAP = 5.0     # ... this many percentage points and ...
MASKING_SHARE = 0.15  # ... this share of the clean accuracy: a masking sign


def _pct(mask: torch.Tensor) -> float:
    return 100.0 * mask.double().mean().item() if mask.numel() else 0.0


def attack_rows(results: Dict[str, dict], settings: AttackSettings) -> Dict[str, dict]:
    """One row per attack run: robust accuracy, n, time, examples/s, largest L-inf distance."""
    clean = results["clean"]["correct"]
    rows = {}
    for name, res in results.items():
        robust = clean if name == "clean" else clean & res["correct"]
        n, seconds = robust.numel(), res["seconds"]
        rows[name] = {
            "label": label(name, settings), "kind": kind(name), "accuracy": _pct(robust), "n": n,
            "seconds": seconds, "examples_per_s": n / seconds if seconds > 0 else None,
            "max_linf": res.get("max_linf", 0.0),
            "settings": {} if name == "clean" else settings.kwargs(name),
        }
    return rows


def worst_case(results: Dict[str, dict]) -> Dict[str, Optional[dict]]:
    """Per-example worst case over the white-box attacks run, and over all attacks run."""
    groups = {"white-box": [n for n in results if kind(n) == WHITE_BOX],
              "all": [n for n in results if n != "clean"]}
    out = {}
    for group, names in groups.items():
        robust = results["clean"]["correct"].clone()
        for name in names:
            robust &= results[name]["correct"]
        out[group] = {"accuracy": _pct(robust), "attacks": names} if names else None
    return out


def masking_warnings(rows: Dict[str, dict], worst: Optional[dict]) -> List[str]:
    """The gradient-masking warning: PGD's robust accuracy at least MASKING_RATIO times
    ``worst`` (the per-example worst case over every attack run, :func:`worst_case`'s 'all'), by
    more than MASKING_GAP points and more than MASKING_SHARE of the clean accuracy; none unless
    PGD and another attack ran."""
    if "pgd" not in rows or worst is None or len(worst["attacks"]) < 2:
        return []
    pgd, clean = rows["pgd"]["accuracy"], rows["clean"]["accuracy"]
    gap = pgd - worst["accuracy"]
    if pgd < MASKING_RATIO * worst["accuracy"] or gap <= MASKING_GAP or gap <= MASKING_SHARE * clean:
        return []
    others = ", ".join(rows[n]["label"] for n in worst["attacks"] if n != "pgd")
    return [f"{rows['pgd']['label']} robust accuracy ({pgd:.2f}%) is {pgd / max(worst['accuracy'], 1e-9):.1f}x the "
            f"per-example worst case of it and {others} ({worst['accuracy']:.2f}%), {gap:.2f} points above it (>= "
            f"{MASKING_RATIO:g}x, > {MASKING_GAP:g} points and > {MASKING_SHARE:.0%} of the clean accuracy, "
            f"{clean:.2f}%): a sign of gradient masking, so PGD overstates this model's robustness; trust the worst "
            "case."]


def metric_rows(metrics: Dict[str, dict]) -> Dict[str, dict]:
    """Mean of each metric over the examples where it is finite (inf: not found)."""
    rows = {}
    for name, res in metrics.items():
        values = res["values"].double()
        finite = values[values.isfinite()]
        rows[name] = {"mean": finite.mean().item() if finite.numel() else None, "n": finite.numel(),
                      "not_found": values.numel() - finite.numel(), "seconds": res["seconds"],
                      "settings": res["settings"]}
    return rows


def build_report(results: Dict[str, dict], settings: AttackSettings, metrics: Dict[str, dict], meta: dict) -> dict:
    """The report dict (written as report.json) from merged per-sample results."""
    rows = attack_rows(results, settings)
    worst = worst_case(results)
    return {"meta": meta, "n_examples": rows["clean"]["n"], "eps": settings.eps, "eps_255": settings.eps * 255,
            "settings": settings.as_dict(), "attacks": rows, "worst_case": worst,
            "metrics": metric_rows(metrics), "warnings": masking_warnings(rows, worst["all"])}


# ------------------------------------------------------------------------------ Markdown

def _fmt(value, digits=2) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "-"
    return f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def _table(header: List[str], rows: List[List[str]]) -> List[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] * len(header)) + "|"]
    return lines + ["| " + " | ".join(row) + " |" for row in rows]


def _settings(kw: dict, skip=()) -> str:
    return ", ".join(f"{k}={_fmt(v, 4) if isinstance(v, float) else v}" for k, v in kw.items() if k not in skip)


def _main_table(report: dict) -> List[str]:
    rows, worst = report["attacks"], report["worst_case"]
    header = ["Model"] + [r["label"] for r in rows.values()]
    values = [_fmt(r["accuracy"]) for r in rows.values()]
    for group in ("white-box", "all"):
        if worst[group] is not None:
            header.append(f"Worst case ({group})")
            values.append(_fmt(worst[group]["accuracy"]))
    return _table(header, [[report["meta"].get("model", "model")] + values])


def _groups_line(report: dict) -> str:
    kinds = {}
    for r in report["attacks"].values():
        kinds.setdefault(r["kind"], []).append(r["label"])
    parts = [f"{k.capitalize()}: {', '.join(kinds[k])}" for k in (WHITE_BOX, BLACK_BOX) if k in kinds]
    parts += ["AA: AutoAttack 'standard' (APGD-CE, APGD-T, FAB-T, Square)"] if "aa" in report["attacks"] else []
    return ("; ".join(parts) + ". " if parts else "") + (
        "An example is robust to an attack when classified correctly both clean and attacked; worst case: "
        "correct under every attack of the group, per example.")


def _shift_lines(shift: dict) -> List[str]:
    rows = []
    for name, res in shift.items():
        rows.append([name, _fmt(res["accuracy"]), str(res["n"])])
        for corruption, c in res.get("corruptions", {}).items():
            severities = ", ".join(f"{s}: {_fmt(v['accuracy'], 1)}" for s, v in c["severities"].items())
            rows.append([f"{name} / {corruption}", _fmt(c["accuracy"]), f"{c['n']} (severity {severities})"])
    return _table(["Data set", "Accuracy (%)", "n"], rows)


def to_markdown(report: dict) -> str:
    meta = report["meta"]
    data = meta.get("data", "?")  # the command line says which examples (meta "examples"); the Python API counts
    examples = (f"{data}: {meta['examples']}. " if meta.get("examples")
                else f"{report['n_examples']} examples of {data}, ")
    lines = [f"# Robustness evaluation: {meta.get('model', 'model')}", "",
             f"{examples}L-inf eps = {report['eps_255']:.4g}/255 "
             f"in [0, 1] pixels; checkpoint {meta.get('checkpoint', '-')}; {meta.get('device', '?')}, "
             f"{meta.get('world_size', 1)} process(es), torch {meta.get('torch', '?')}.", "",
             "## Robust accuracy (%)", ""] + _main_table(report) + ["", _groups_line(report), ""]
    for warning in report["warnings"]:
        lines += [f"> **WARNING: {warning}**", ""]
    lines += ["## Attacks", ""]
    lines += _table(["Attack", "Kind", "Robust acc. (%)", "n", "max L-inf (x 1/255)", "Time (s)", "Examples/s",
                     "Settings"],
                    [[r["label"], r["kind"], _fmt(r["accuracy"]), str(r["n"]), _fmt(r["max_linf"] * 255, 3),
                      _fmt(r["seconds"], 1), _fmt(r["examples_per_s"], 1), _settings(r["settings"], skip=("eps",))]
                     for r in report["attacks"].values()])
    if report["metrics"]:
        lines += ["", "## Model properties", ""]
        lines += _table(["Metric", "Mean", "n", "Not found", "Time (s)", "Settings"],
                        [[name, _fmt(m["mean"], 4), str(m["n"]), str(m["not_found"]), _fmt(m["seconds"], 1),
                          _settings(m["settings"])] for name, m in report["metrics"].items()])
    if report.get("shift"):
        lines += ["", "## Distribution shift (clean accuracy)", ""] + _shift_lines(report["shift"])
    return "\n".join(lines) + "\n"


def write_report(report: dict, out_dir: str) -> Dict[str, str]:
    """``out_dir/report.json`` and ``out_dir/report.md``; returns their paths."""
    os.makedirs(out_dir, exist_ok=True)
    paths = {"json": os.path.join(out_dir, "report.json"), "md": os.path.join(out_dir, "report.md")}
    with open(paths["json"], "w") as f:
        json.dump(report, f, indent=2, allow_nan=False)
        f.write("\n")
    with open(paths["md"], "w") as f:
        f.write(to_markdown(report))
    return paths
