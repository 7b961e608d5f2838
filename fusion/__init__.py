"""livepose stage."""
