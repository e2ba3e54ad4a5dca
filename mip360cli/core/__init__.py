"""The bottom layer: errors, files, progress and messages, devices, processes. Imports nothing of mip360."""
