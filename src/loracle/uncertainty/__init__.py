"""Uncertainty: the stochastic-inference switch, MC prediction, pure scores and STAR's dynamic mix."""
