"""Machine learning that knows nothing of Flower: models, features, local training,
block (many-hospital) training, metrics and simulated bad actors.
"""
