"""What the alignment report tells the user: one warning line for the failed volumes, an error if none is left."""
from __future__ import annotations

from osmedseg.errors import OsmError, warn


def warn_failed_alignments(report: dict, report_file: str) -> None:
    """One warning line naming the volumes whose affine alignment to the atlas failed (they are not trained on)."""
    failed = [row for row in report["cases"] if not row["converged"]]
    if failed:
        names = ", ".join(f"{row['case_id']} ({row['role']})" for row in failed)
        warn(f"affine alignment of {names} to the atlas failed ({failed[0]['message']}); not used for training "
             f"(details in {report_file})")


def check_some_unlabeled_aligned(report: dict, report_file: str) -> None:
    """OsmError if the affine alignment of every unlabeled volume failed: the registration stage has nothing to
    train on."""
    unlabeled = [row for row in report["cases"] if row["role"] == "unlabeled"]
    if unlabeled and not any(row["converged"] for row in unlabeled):
        raise OsmError(f"{report_file}: the affine alignment to the atlas failed for every unlabeled volume; nothing "
                       "can be trained on - check the atlas and the images' orientation headers")
