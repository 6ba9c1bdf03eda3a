"""The stages of one check: arguments, scope and sampling, the eager check's algorithm, the
comparison of backprop with the estimate, the directional mode, the generic point, the
product-rule finding.
"""
