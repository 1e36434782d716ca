"""The experiments, one module each; each module binds ``EXPERIMENT``."""
