"""The paper's experiments on `spectral_density`: models, data, training."""
