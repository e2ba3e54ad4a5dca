"""The model: pure math modules (coord, stepfun, render, losses) composed in model.py."""
