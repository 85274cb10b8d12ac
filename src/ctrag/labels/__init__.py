"""Reading the 18 CT-RATE abnormality labels from report text (sentence-level, negation- and hedge-aware)."""
