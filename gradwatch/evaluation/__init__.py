"""J at many θ: the cost on private float64 copies of the model's tensors, and the ways perturbed
copies are evaluated (vmap, low-rank updates, output shifts, the plain loop).
"""
