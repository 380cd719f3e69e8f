"""Evaluate a folder of predictions against a folder of references and write an nnU-Net-style ``summary.json``.

Layout of the summary (NaN is written as ``null``)::

    {"foreground_mean": {metric: mean over labels of the label means, ..., "Dice_zeros_dropped": ...},
     "per_subject": {"mean": {metric: ...}, "std": {metric: ...}},  # over the per-case foreground means
     "mean": {"1": {metric: nanmean over cases, ..., "n_empty": .., "n_absent": ..}, ...},
     "std": {"1": {metric: nanstd over cases}, ...},
     "metric_per_case": [{"reference_file", "prediction_file", "metrics": {"1": {...}}, "foreground_mean": {...}}],
     "labels": [1, ...], "notes": [...]}

Per-case metrics follow :mod:`osmedseg.evaluation.metrics`. ``n_absent`` counts the cases where a label is in neither
file (its Dice/IoU/HD95/ASSD are NaN and left out of the means); ``n_empty`` counts the cases where it is in exactly one
of them (Dice 0, HD95/ASSD NaN). The per-case foreground mean averages the labels of that case (METHODS section 8:
mean ± std over subjects of these is ``per_subject``); ``Dice_zeros_dropped`` leaves out the labels with Dice 0 first,
as the OS-MedSeg notebook does (it inflates the score; both are reported). ``foreground_mean["Dice_zeros_dropped"]``
is its mean over subjects.
"""
from __future__ import annotations

import math
import multiprocessing
import os
import warnings
from typing import Any, Sequence

import numpy as np

from osmedseg.errors import OsmError
from osmedseg.evaluation.metrics import METRICS, compute_metrics
from osmedseg.io import SUPPORTED_ENDINGS, file_ending, read_label
from osmedseg.utilities.atomic import save_json_atomic

CASE_METRICS = ("Dice", "Dice_zeros_dropped", "IoU", "HD95", "ASSD")
NOTES = ("Dice = 2TP/(2TP+FP+FN), IoU = TP/(TP+FP+FN); both NaN if a label is in neither file (excluded from means).",
         "HD95/ASSD (mm): 95th percentile / mean of the pooled surface-to-surface distances of both directions "
         "(surface = voxels with a face neighbour outside the mask); NaN when only one file has the label (n_empty).",
         "foreground_mean: mean of the label means (nnU-Net); per_subject: mean/std over cases of each case's label "
         "average; Dice_zeros_dropped leaves out labels with Dice 0 first (OS-MedSeg notebook, inflated).")


def evaluate_folders(ref_dir: str, pred_dir: str, labels: Sequence[int] | None = None,
                     output_file: str | None = None, num_processes: int = 2) -> dict:
    """Evaluate every reference in ``ref_dir`` against the prediction of the same name in ``pred_dir``.

    ``labels`` defaults to the union of the non-zero values of the references. The summary is returned and, if
    ``output_file`` is given, written there atomically. ``num_processes=0`` evaluates in this process.
    """
    pairs, notes = match_files(ref_dir, pred_dir)
    jobs = [(ref, pred, None if labels is None else list(labels)) for ref, pred in pairs]
    if num_processes > 0 and len(jobs) > 1:
        with multiprocessing.get_context("spawn").Pool(min(num_processes, len(jobs))) as pool:
            results = pool.starmap(_evaluate_case, jobs)
    else:
        results = [_evaluate_case(*job) for job in jobs]
    if labels is None:
        labels = sorted(set().union(*(present for _, present in results)))
    summary = summarize([case for case, _ in results], [int(v) for v in labels], list(NOTES) + notes)
    if output_file is not None:
        save_json_atomic(json_safe(summary), output_file)
    return summary


def match_files(ref_dir: str, pred_dir: str) -> tuple[list[tuple[str, str]], list[str]]:
    """Pair references with predictions by name (any supported ending); notes list the ignored predictions."""
    refs, preds = _list_cases(ref_dir), _list_cases(pred_dir)
    if not refs:
        raise OsmError(f"{ref_dir}: no reference files (supported: {', '.join(SUPPORTED_ENDINGS)})")
    missing = [refs[name] for name in refs if name not in preds]
    if missing:
        raise OsmError(f"{pred_dir}: no prediction for {len(missing)} reference(s): {', '.join(missing[:5])}"
                       + (" ..." if len(missing) > 5 else ""))
    extra = sorted(os.path.basename(preds[name]) for name in preds if name not in refs)
    notes = [f"ignored {len(extra)} prediction(s) without a reference: {', '.join(extra)}"] if extra else []
    return [(refs[name], preds[name]) for name in sorted(refs)], notes


def _list_cases(folder: str) -> dict[str, str]:
    if not os.path.isdir(folder):
        raise OsmError(f"{folder}: folder not found")
    cases: dict[str, str] = {}
    for entry in sorted(os.listdir(folder)):
        ending = file_ending(entry)
        if ending is None or entry.startswith("."):
            continue
        name = entry[: -len(ending)]
        if name in cases:
            raise OsmError(f"{folder}: two files for case {name!r} ({os.path.basename(cases[name])}, {entry})")
        cases[name] = os.path.join(folder, entry)
    return cases


def _evaluate_case(ref_path: str, pred_path: str, labels: list[int] | None) -> tuple[dict, set[int]]:
    """Metrics of one case and the non-zero values of its reference; without ``labels``, of every value present."""
    ref, ref_geometry = read_label(ref_path)
    pred, pred_geometry = read_label(pred_path)
    if ref.shape != pred.shape:
        raise OsmError(f"{pred_path}: shape {pred.shape} differs from reference {ref_path} {ref.shape}")
    problem = ref_geometry.mismatch(pred_geometry)
    if problem:
        raise OsmError(f"{pred_path}: geometry differs from reference {ref_path}: {problem}")
    ref_values = set(np.flatnonzero(np.bincount(ref.ravel())).tolist()) - {0}
    if labels is None:
        labels = sorted(ref_values | set(np.flatnonzero(np.bincount(pred.ravel())).tolist()) - {0})
    metrics = compute_metrics(ref, pred, labels, ref_geometry.spacing)
    return {"reference_file": ref_path, "prediction_file": pred_path, "metrics": metrics}, ref_values


def summarize(cases: list[dict], labels: list[int], notes: list[str]) -> dict:
    """Aggregate per-case metrics (int label keys) into the summary layout of the module docstring."""
    empty = np.zeros((1, 1, 1), np.uint8)
    absent = compute_metrics(empty, empty, [1], (1, 1, 1))[1]  # the metrics of a label in neither file
    per_case = []
    for case in cases:
        metrics = {str(v): case["metrics"].get(v, absent) for v in labels}
        per_case.append({"reference_file": case["reference_file"], "prediction_file": case["prediction_file"],
                         "metrics": metrics, "foreground_mean": _case_foreground(metrics)})
    mean, std = {}, {}
    for key in map(str, labels):
        table = {m: np.array([c["metrics"][key][m] for c in per_case], dtype=np.float64) for m in METRICS}
        mean[key] = {m: _nanmean(v) for m, v in table.items()}
        std[key] = {m: _nanstd(v) for m, v in table.items()}
        n_ref, n_pred = table["n_ref"] > 0, table["n_pred"] > 0
        mean[key]["n_empty"] = int(np.sum(n_ref != n_pred))
        mean[key]["n_absent"] = int(np.sum(~n_ref & ~n_pred))
    missing = [key for key in mean if mean[key]["n_absent"] == len(per_case)]
    if missing:
        notes = notes + [f"label(s) {', '.join(missing)} occur in no reference and no prediction: their metrics are "
                         "NaN (check -l / -djfile)"]
    foreground = {m: _nanmean(np.array([mean[k][m] for k in mean], dtype=np.float64)) for m in METRICS}
    case_means = {m: np.array([c["foreground_mean"][m] for c in per_case], dtype=np.float64) for m in CASE_METRICS}
    per_subject = {"mean": {m: _nanmean(v) for m, v in case_means.items()},
                   "std": {m: _nanstd(v) for m, v in case_means.items()}}
    foreground["Dice_zeros_dropped"] = per_subject["mean"]["Dice_zeros_dropped"]
    return {"foreground_mean": foreground, "per_subject": per_subject, "mean": mean, "std": std,
            "metric_per_case": per_case, "labels": labels, "notes": notes}


def _case_foreground(metrics: dict[str, dict[str, float]]) -> dict[str, float]:
    """Label averages of one case; ``Dice_zeros_dropped`` leaves out labels with Dice 0."""
    values = {m: np.array([v[m] for v in metrics.values()], dtype=np.float64) for m in ("Dice", "IoU", "HD95", "ASSD")}
    result = {m: _nanmean(v) for m, v in values.items()}
    result["Dice_zeros_dropped"] = _nanmean(values["Dice"][values["Dice"] != 0])
    return result


def _nanmean(values: np.ndarray) -> float:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return float(np.nanmean(values)) if values.size else math.nan


def _nanstd(values: np.ndarray) -> float:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return float(np.nanstd(values)) if values.size else math.nan


def json_safe(obj: Any) -> Any:
    """Copy of ``obj`` with NaN/Inf as ``None`` and numpy scalars as Python numbers, so the JSON is valid."""
    if isinstance(obj, dict):
        return {str(k): json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def format_table(summary: dict) -> str:
    """A readable table: per label mean ± std of Dice and HD95, then the foreground figures."""
    lines = [f"{'label':>8}  {'Dice':>17}  {'HD95 (mm)':>17}  {'n_empty':>7}  {'n_absent':>8}"]
    for key, m in summary["mean"].items():
        s = summary["std"][key]
        lines.append(f"{key:>8}  {_pm(m['Dice'], s['Dice'], 4):>17}  {_pm(m['HD95'], s['HD95'], 2):>17}  "
                     f"{m['n_empty']:>7}  {m['n_absent']:>8}")
    fg, subj = summary["foreground_mean"], summary["per_subject"]
    n = len(summary["metric_per_case"])
    lines += [f"foreground mean (mean of label means): Dice {fg['Dice']:.4f}  IoU {fg['IoU']:.4f}  "
              f"HD95 {fg['HD95']:.2f} mm  ASSD {fg['ASSD']:.2f} mm",
              f"Dice per subject over {n} case(s): {_pm(subj['mean']['Dice'], subj['std']['Dice'], 4)} with zeros, "
              f"{_pm(subj['mean']['Dice_zeros_dropped'], subj['std']['Dice_zeros_dropped'], 4)} with zeros dropped "
              f"(OS-MedSeg notebook; inflated)",
              "labels absent in both reference and prediction are NaN and excluded from means (n_absent); "
              "HD95 is NaN where only one side has the label (n_empty)"]
    return "\n".join(lines)


def _pm(mean: float, std: float, digits: int) -> str:
    return "nan" if math.isnan(mean) else f"{mean:.{digits}f} ± {std:.{digits}f}"
