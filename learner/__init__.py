"""cyclr's Learner: the fit loop, metrics and models."""
