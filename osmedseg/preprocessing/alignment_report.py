"""What the alignment report tells the user: one warning line for the failed volumes, an error if none is left."""
from __future__ import annotations

from osmedseg.errors import OsmError, warn


def check_alignment(report: dict, report_file: str) -> None:
    """One warning line for the volumes whose affine alignment to the atlas failed (they are not trained on); an
    OsmError if that leaves no unlabeled volume."""
    failed = [row for row in report["cases"] if not row["converged"]]
    if not failed:
        return
    unlabeled = [row for row in report["cases"] if row["role"] == "unlabeled"]
    names = ", ".join(f"{row['case_id']} ({row['role']})" for row in failed)
    if all(not row["converged"] for row in unlabeled):
        raise OsmError(f"{report_file}: the affine alignment to the atlas failed for every unlabeled volume "
                       f"({names}; first reason: {failed[0]['message']}); nothing can be trained on - check the "
                       "atlas and the images' orientation headers")
    warn(f"affine alignment of {names} to the atlas failed ({failed[0]['message']}); not used for training "
         f"(details in {report_file})")
