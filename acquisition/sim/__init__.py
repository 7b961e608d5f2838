"""Simulated rig: an articulated rodent in an arena, rendered through the core camera model."""
