"""Data: cameras, format readers, the example scene and the ray cache."""
