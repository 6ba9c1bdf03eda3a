"""The gradient that trains: compiled models, kernels without float64 (the float32 fallback), the
runs the training path compares.
"""
