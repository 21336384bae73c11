"""Training runs: the metrics store, what it records, a run's lifecycle, the warm
engine's protocol, reference baselines and scoring with a saved model.
"""
