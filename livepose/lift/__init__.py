"""Lifters: single-camera 3D trained from multi-camera sessions (docs/lifting.md)."""
