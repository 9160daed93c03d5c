"""`visionzoo check-data`: what is wrong with a data set, found before it costs a training run.

inputs (the splits, through data.sources) -> scan (every entry decoded once by the loader's decoder, hashed) ->
duplicates (exact pixels, perceptual near copies, train/val leakage, one image under two labels) -> labels
(confident learning on a model's probabilities or cross-validated probes on its embeddings) -> stats -> report
(report.json, the summary) and page (report.html); fix writes cleaned list files. check.check_data runs it all.
"""

from .check import CheckOptions, Findings, check_data

__all__ = ["CheckOptions", "Findings", "check_data"]
