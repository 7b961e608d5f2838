"""Closed loop: a TTL pulse when the snout enters a sphere (docs/closed-loop.md).

Run ``livepose demo`` in one terminal (it prints the pose3d endpoint), then
``python examples/closed_loop_roi.py ENDPOINT [--ttl /dev/ttyACM1] [--control ENDPOINT]``.
"""

import argparse

from livepose.closedloop import ActionLog, ClosedLoop, Rule, Sphere
from livepose.closedloop.actions import Callback, TTLPulse
from livepose.core.config import load_default_config
from livepose.core.modelinfo import model_keypoints

ap = argparse.ArgumentParser()
ap.add_argument("endpoint", help="the pose3d endpoint printed by livepose run/demo")
ap.add_argument("--ttl", help="trigger box serial port (default: just print)")
ap.add_argument("--control", help="supervisor control endpoint: log into the recording")
ap.add_argument("--seconds", type=float, default=60.0)
args = ap.parse_args()

names, _ = model_keypoints(load_default_config())  # keypoint names of the model in use
action = TTLPulse(args.ttl, width_us=2000) if args.ttl else Callback(
    lambda e: print(f"frame {e.frame_id}: {e.keypoint} in ROI at {e.xyz}"), "print")
rule = Rule("snout-in-roi", "snout", Sphere(center=(60.0, 0.0, 20.0), radius=60.0),
            action=action, hysteresis_mm=10.0, min_frames=2, refractory_s=1.0)
log = ActionLog("closed_loop_actions.jsonl", control=args.control)
loop = ClosedLoop(args.endpoint, names, [rule], log)
n = loop.run(duration_s=args.seconds)
print(f"{n} poses, {loop.engine.fired} actions ({log.written} logged)")
