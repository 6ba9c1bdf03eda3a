"""The check's precision kept through the model's own casts: the guard, where casts happen, and
float64 compositions of kernels without float64.
"""
