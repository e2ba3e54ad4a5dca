"""A run folder and everything in it: its layout, checkpoints, cameras.json, camera-path files,
metrics.jsonl, and opening a trained run to render it. Stages read and write runs through here."""
