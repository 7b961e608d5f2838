"""Closed loop: the pose client, rules on keypoints, and the actions they fire.

>>> from livepose.closedloop import PoseClient, ClosedLoop, Rule, Sphere   # doctest: +SKIP
"""

from livepose.closedloop.actions import ActionEvent, ActionLog, Callback, CameraOutput, TTLPulse
from livepose.closedloop.client import Pose, PoseClient
from livepose.closedloop.rules import Box, ClosedLoop, HalfSpace, Rule, RuleEngine, Sphere

__all__ = [
    "ActionEvent", "ActionLog", "Box", "Callback", "CameraOutput", "ClosedLoop", "HalfSpace",
    "Pose", "PoseClient", "Rule", "RuleEngine", "Sphere", "TTLPulse",
]
