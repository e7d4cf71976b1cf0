"""lrbench runner: the Hydra app, training loop, results store and collector."""
