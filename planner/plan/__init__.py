"""Planning from the results tables alone (no torch): Pareto front, budgets, selection."""
