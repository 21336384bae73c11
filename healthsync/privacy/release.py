"""The release policy: the one gate every number any role sees passes through.

HealthSync's design principle is that the hospital is the enforcement point
and every released number leaves through one policy:

- cohort statistics are noised *inside each hospital*, against that
  hospital's own ledger and policy (:mod:`healthsync.privacy.site`), and only
  then combined and thresholded, on the noisy values, by the cohort guards;
- training metrics (per-hospital metrics, ROC and calibration bins, score
  histograms) are coarsened before they are stored where the app can read
  them (:mod:`healthsync.privacy.training`);
- the federation facts on Overview are a cohort release like any other, so
  Overview and the cohort explorer show the same value for the same quantity.

``MIN_CELL`` is the smallest number of patients any released figure may rest
on (the usual small-number rule); no configuration may go below it.
"""

from __future__ import annotations

#: The smallest count released, and the fewest patients of each class a released bin holds.
MIN_CELL = 11
