"""Long-tailed and open-set recognition: data sets (make-lt), metrics and evaluation."""
