"""The video backend on small lossless (FFV1) multi-view videos made here with PyAV: file
matching by camera name, frame ``frame_id`` = frame index (bit-exact), skipping ahead,
looping, free run, end of video, bad paths."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
from session_files import frame_table, write_video

from livepose.core.config import parse_config
from livepose.core.errors import UserError

pytestmark = pytest.mark.skipif(importlib.util.find_spec("av") is None, reason="PyAV not installed")

N = 7


@pytest.fixture(scope="module")
def session(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, list[np.ndarray]]]:
    root = tmp_path_factory.mktemp("videos")
    rng = np.random.default_rng(1)
    views = {}
    for cam in ("cam1", "cam10"):
        views[cam] = [rng.integers(0, 256, (24, 32), dtype=np.uint8) for _ in range(N)]
        write_video(root / f"session_{cam}.mkv", views[cam])
    (root / "notes.txt").write_text("not a video")
    return root, views


def _cam(path: Path, name: str = "cam1", **kw: object):  # type: ignore[no-untyped-def]
    from livepose.acquisition.base import make_backend

    cfg = parse_config({"calibration": "x.toml", "cameras": [
        {"backend": "video", "name": name, "path": str(path), **kw},
        {"backend": "video", "name": "other", "path": str(path / "session_cam10.mkv")},
    ]})
    cam = make_backend(cfg.cameras[0])
    cam.open()
    cam.arm()
    return cam


def _at(cam, frame_id: int) -> np.ndarray | None:  # type: ignore[no-untyped-def]
    cam.software_trigger(frame_id, 0)
    g = cam.grab(0.1)
    if g is None:
        return None
    assert g.counter == frame_id
    return g.image  # type: ignore[no-any-return]


def test_frame_id_is_frame_index_bit_exact_with_skips(session) -> None:  # type: ignore[no-untyped-def]
    root, views = session
    for name in ("cam1", "cam10"):  # cam1 must not pick cam10's file
        cam = _cam(root, name)
        assert cam.pixel_format == "Mono8"
        for k in (0, 1, 2, 5, 6):  # 3 and 4 skipped (a lost pulse)
            assert np.array_equal(_at(cam, k), views[name][k]), (name, k)
        assert cam.counters["skipped"] == 2
        assert _at(cam, N) is None and cam.counters["end_of_video"] == 1
        assert np.array_equal(_at(cam, 1), views[name][1])  # behind: re-opened
        cam.close()


def test_loop_and_free_run(session) -> None:  # type: ignore[no-untyped-def]
    from livepose.acquisition.video import probe_rate

    root, views = session
    cam = _cam(root, loop=True)
    for k in range(2 * N + 3):
        assert np.array_equal(_at(cam, k), views["cam1"][k % N]), k
    cam.close()
    free = _cam(root, free_run=True, loop=False)
    assert not free.software_triggered
    got = [free.grab(0.1) for _ in range(N + 1)]
    assert [g.counter for g in got[:N]] == list(range(N)) and got[N] is None
    assert all(np.array_equal(g.image, views["cam1"][k]) for k, g in enumerate(got[:N]))
    free.close()
    assert probe_rate(root / "session_cam1.mkv") == pytest.approx(25.0)


def test_bad_paths_name_the_camera(session, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    root, _ = session
    with pytest.raises(UserError, match=r"camera 'cam2': path: expected one video .* found none"):
        _cam(root, "cam2")
    with pytest.raises(UserError, match=r"camera 'cam1': path: .* does not exist"):
        _cam(tmp_path / "nope")
    bad = tmp_path / "cam1.mkv"
    bad.write_bytes(b"not a video at all")
    with pytest.raises(UserError, match=r"camera 'cam1': path: cannot decode"):
        _cam(bad)


def _yuv_video(path: Path, frames: list[np.ndarray]) -> None:
    """RGB frames → a yuv420p FFV1 video (what phones and most cameras record)."""
    import av

    with av.open(str(path), "w") as out:
        s = out.add_stream("ffv1", rate=25)
        s.width, s.height, s.pix_fmt = frames[0].shape[1], frames[0].shape[0], "yuv420p"
        for im in frames:
            vf = av.VideoFrame.from_ndarray(im, format="rgb24").reformat(format="yuv420p")
            for pkt in s.encode(vf):
                out.mux(pkt)
        for pkt in s.encode():
            out.mux(pkt)


@pytest.mark.parametrize("color", ["auto", "rgb", "mono"])
def test_yuv420_colour_video_is_rgb_and_grey_video_mono(tmp_path: Path, color: str) -> None:
    """A colour yuv420 video reaches the pipeline as RGB8 (``color: auto`` or ``rgb``);
    one whose chroma is flat (a recording of mono frames) as Mono8, its luma."""
    red = np.zeros((32, 48, 3), np.uint8)
    red[..., 0] = 200
    red[:, 24:, 2] = 180  # right half magenta
    _yuv_video(tmp_path / "x_cam1.mkv", [red] * 3)
    grey = np.repeat(np.random.default_rng(0).integers(0, 256, (32, 48, 1), np.uint8), 3, 2)
    _yuv_video(tmp_path / "x_cam2.mkv", [grey] * 3)
    cam = _cam(tmp_path, "cam1", color=color)
    img = _at(cam, 0)
    assert img is not None
    if color == "mono":
        assert cam.pixel_format == "Mono8" and img.ndim == 2
    else:
        assert cam.pixel_format == "RGB8" and img.shape == (32, 48, 3)
        assert abs(int(img[16, 5, 0]) - 200) < 12 and img[16, 5, 1] < 15
        assert img[16, 5, 2] < 15 and abs(int(img[16, 40, 2]) - 180) < 12
    cam.close()
    cam = _cam(tmp_path, "cam2", color=color)
    img = _at(cam, 0)
    assert img is not None
    if color == "rgb":
        assert cam.pixel_format == "RGB8"
    else:
        assert cam.pixel_format == "Mono8" and img.ndim == 2
        assert np.abs(img.astype(int) - grey[..., 0]).max() <= 3
    cam.close()


def test_a_recorded_session_replays_by_its_frame_tables_across_segments(
        tmp_path: Path) -> None:
    """A session whose encoder lost frame 3 (lapped) and was restarted (frame 4 lost, then
    ``cam0.1``): pulse k shows the frame recorded as k from whichever segment holds it, a
    lost frame is not delivered (``not_recorded``, not the end), and nothing shifts."""
    from livepose.kit.session import recorded_segments

    video = tmp_path / "video"
    video.mkdir()
    rng = np.random.default_rng(2)
    frames = {k: rng.integers(0, 256, (24, 32), dtype=np.uint8) for k in (0, 1, 2, 5, 6)}
    write_video(video / "cam0.mkv", [frames[k] for k in (0, 1, 2)])
    frame_table(video / "cam0_frames.csv", [(0, 0, 1), (1, 1, 1), (2, 2, 1), (3, 0, 0)])
    write_video(video / "cam0.1.mkv", [frames[k] for k in (5, 6)])
    frame_table(video / "cam0.1_frames.csv", [(4, 0, 0), (5, 0, 1), (6, 1, 1)])
    segs = recorded_segments(tmp_path, "cam0")
    assert [s.stem for s in segs] == ["cam0", "cam0.1"]
    assert [s.frame_ids.tolist() for s in segs] == [[0, 1, 2], [5, 6]]
    assert segs[1].trigger_ids.tolist() == [4, 5, 6]

    from livepose.acquisition.base import make_backend

    cfg = parse_config({"calibration": "x.toml", "cameras": [
        {"backend": "video", "name": "cam0", "path": str(tmp_path)},
        {"backend": "video", "name": "cam1", "path": str(tmp_path)}]})
    cam = make_backend(cfg.cameras[0])
    cam.open()
    cam.arm()
    try:
        for k in range(7):
            image = _at(cam, k)
            if k in frames:
                assert image is not None and np.array_equal(image, frames[k]), k
            else:
                assert image is None, k
        assert cam.counters["not_recorded"] == 2 and not cam.ended
        assert np.array_equal(_at(cam, 1), frames[1])  # back into the first segment
        assert _at(cam, 7) is None and cam.ended
    finally:
        cam.close()
