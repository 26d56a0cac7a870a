"""The study workflow: rounds of typed queries, the estimator over their sums, the result."""
