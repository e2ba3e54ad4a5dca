"""Exports of a trained run: a coloured point cloud (points.py)."""
