"""Evaluation: real unaligned cases (:mod:`.cases`), metrics (:mod:`.metrics`), per-folder
evaluation (:mod:`.evaluate`), the benchmark against two-stage baselines (:mod:`.benchmark`,
:mod:`.baselines`) and its report (:mod:`.report`)."""
