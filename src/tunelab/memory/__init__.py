"""Memory: measuring peak use of a run (tracker) and predicting it before a run (estimator)."""
