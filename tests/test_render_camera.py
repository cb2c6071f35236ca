"""Camera conventions: OpenCV axes, Y-up orbit, look_at, scaling, projection."""

import math

import pytest
import torch

from avatar_core.errors import ParameterError
from avatar_core.render import Camera, focal_from_fov, intrinsics, look_at, orbit_camera


def test_orbit_yaw0_is_on_plus_z_facing_the_face():
    cam = orbit_camera(target=(0.0, 0.1, 0.0), distance=0.8, yaw_deg=0, pitch_deg=0, focal=1000.0,
                       width=512, height=512, dtype=torch.float64)
    assert torch.allclose(cam.position[0], torch.tensor([0.0, 0.1, 0.8], dtype=torch.float64), atol=1e-12)
    pts = torch.tensor([[[0.0, 0.1, 0.0], [0.05, 0.1, 0.0], [0.0, 0.15, 0.0], [0.0, 0.1, 0.05]]],
                       dtype=torch.float64)
    uv, z = cam.project(pts)
    c = 255.5
    assert torch.allclose(uv[0, 0], torch.tensor([c, c], dtype=torch.float64))  # target at the image centre
    assert uv[0, 1, 0] > c  # +X (subject's left) appears on the image's right
    assert uv[0, 2, 1] < c  # +Y (up) appears up (smaller v)
    assert z[0, 3] < z[0, 0]  # +Z (the nose) is nearer the camera
    assert uv[0, 1, 0].item() - c == pytest.approx(1000.0 * 0.05 / 0.8)


def test_orbit_yaw_and_pitch_move_the_camera():
    cam = orbit_camera(distance=1.0, yaw_deg=[90.0, 0.0], pitch_deg=[0.0, 30.0], width=64, height=64,
                       dtype=torch.float64)
    assert cam.batch == 2
    assert torch.allclose(cam.position[0], torch.tensor([1.0, 0.0, 0.0], dtype=torch.float64), atol=1e-12)
    assert torch.allclose(cam.position[1], torch.tensor([0.0, 0.5, math.cos(math.radians(30))],
                                                        dtype=torch.float64), atol=1e-12)
    # the target stays at the image centre for every camera
    uv, _ = cam.project(torch.zeros(1, 1, 3, dtype=torch.float64))
    assert torch.allclose(uv, torch.full_like(uv, 31.5))


def test_look_at_is_a_rigid_opencv_transform():
    view = look_at(torch.tensor([0.3, 0.2, 0.9]), (0.0, 0.0, 0.0))
    R = view[:3, :3]
    assert torch.allclose(R @ R.T, torch.eye(3), atol=1e-6)
    assert torch.det(R).item() == pytest.approx(1.0, abs=1e-6)
    eye_cam = R @ torch.tensor([0.3, 0.2, 0.9]) + view[:3, 3]
    assert torch.allclose(eye_cam, torch.zeros(3), atol=1e-6)
    tgt_cam = view[:3, 3]  # the target (origin) is straight ahead
    assert abs(tgt_cam[0]) < 1e-6 and abs(tgt_cam[1]) < 1e-6 and tgt_cam[2] > 0
    with pytest.raises(ParameterError):
        look_at((0.0, 1.0, 0.0), (0.0, 0.0, 0.0))  # up parallel to the view direction


def test_scaled_keeps_image_points():
    cam = Camera(intrinsics((900.0, 950.0), 512, 384, cx=250.0, cy=190.0, dtype=torch.float64),
                 look_at((0.1, 0.0, 0.7), (0.0, 0.0, 0.0)).double(), 512, 384)
    small = cam.scaled(256)
    assert (small.width, small.height) == (256, 192)
    pts = torch.randn(1, 10, 3, dtype=torch.float64) * 0.05
    uv, _ = cam.project(pts)
    uv2, _ = small.project(pts)
    assert torch.allclose(uv2, (uv + 0.5) * 0.5 - 0.5, atol=1e-9)


def test_camera_validation_and_helpers():
    with pytest.raises(ParameterError):
        Camera(torch.eye(3)[None].expand(2, 3, 3), torch.eye(4)[None].expand(3, 4, 4), 8, 8)
    with pytest.raises(ParameterError):
        orbit_camera(fov_deg=20, focal=100)
    cam = Camera(torch.eye(3), torch.eye(4)[None].expand(3, 4, 4), 8, 8)  # K broadcast
    assert cam.K.shape == (3, 3, 3) and cam.index(1).batch == 1 and cam.to(dtype=torch.float64).dtype == torch.float64
    assert focal_from_fov(90.0, 512) == pytest.approx(256.0)
