"""Rendering novel views: camera paths, frame and video writers, the render loop."""
