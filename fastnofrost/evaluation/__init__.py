"""The evaluation suite behind ``fastnofrost-evaluate`` (``python -m fastnofrost.evaluate``; see
:mod:`fastnofrost.evaluate`).

* :mod:`.attacks`: the attack menu (clean, pgd, apgd-ce, apgd-dlr, mia, cw, pgd-targeted, rays,
  square, aa) on :mod:`fastnofrost.attacks`, budgets, eps-ball check;
* :mod:`.properties`: the model-property metrics (thickness, margin, smoothness) and settings;
* :mod:`.data`: this rank's examples (spread subset, round-robin shard) in batches;
* :mod:`.runner`: one timed pass with a progress bar per attack or metric;
* (the process group is :mod:`fastnofrost.distributed`'s, shared with training; the
  round-robin dealing and its inverse are :mod:`fastnofrost.data.shard`'s);
* :mod:`.report`: numbers, worst case, gradient-masking warning, Markdown and JSON;
* :mod:`.shift`: ImageNet-C / -R / -A / -Sketch folders and their accuracy.
"""
from .attacks import DEFAULT_ATTACKS, MENU, AttackSettings, build_attacks
from .properties import METRICS, build_metrics
from .report import MASKING_GAP, build_report, to_markdown, write_report
from .shift import ShiftDataError, evaluate_shift, read_class_index

__all__ = ["DEFAULT_ATTACKS", "MENU", "AttackSettings", "build_attacks", "METRICS", "build_metrics", "MASKING_GAP",
           "build_report", "to_markdown", "write_report", "ShiftDataError", "evaluate_shift", "read_class_index"]
