"""Animation that reads: the ``render`` still command, the mouth interior, eyes and gaze,
and the figures ``eval expressions`` prints (issue 15), on a tiny reconstruction of the
astronaut (quality "test": LOD 0, low resolution)."""

import os
import subprocess
import sys

import numpy as np
import pytest

from conftest import ROOT


def _astronaut() -> np.ndarray:
    from skimage import data
    return data.astronaut()


def _cli(*args, timeout=600):
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""),
               PYTHONUNBUFFERED="1")
    return subprocess.run([sys.executable, "-m", "avatar_core", *map(str, args)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """(avatar, path): one tiny reconstruction of the astronaut."""
    from avatar_core.recon import reconstruct
    out = tmp_path_factory.mktemp("expr") / "astronaut.avatar"
    avatar, _ = reconstruct(_astronaut(), out_path=out, quality="test", device="cpu")
    return avatar, out


def test_render_still_sets_expressions_and_turns_about_the_head(tiny):
    from avatar_core.recon.still import render_still
    avatar, _ = tiny
    neutral = render_still(avatar, res=96).astype(float)
    jaw = render_still(avatar, {"jawOpen": 1.0}, res=96).astype(float)
    turned = render_still(avatar, yaw=30, res=96).astype(float)
    assert neutral.shape == (96, 96, 3)
    # the jaw moves the lower face only; turning moves everything
    diff = np.abs(jaw - neutral).mean(-1)
    assert diff[60:].mean() > diff[:30].mean() + 1.0
    assert np.abs(turned - neutral).mean() > np.abs(jaw - neutral).mean()


def test_cli_render_writes_a_png(tiny, tmp_path):
    import cv2
    _, path = tiny
    out = tmp_path / "still.png"
    r = _cli("render", path, "-o", out, "--expr", "jawOpen=1", "--expr", "eyeBlinkLeft=0.5",
             "--yaw", "20", "--pitch", "-5", "--res", "80", "--lod", "0", "--device", "cpu")
    assert r.returncode == 0, r.stderr
    img = cv2.imread(str(out))
    assert img.shape == (80, 80, 3)
    assert "jawOpen=1" in r.stdout


@pytest.mark.parametrize("expr, words", [("jawopen=1", "did you mean jawOpen"), ("jawOpen", "NAME=VALUE"),
                                         ("jawOpen=x", "not a number")])
def test_cli_render_bad_expression_is_one_sentence(tiny, tmp_path, expr, words):
    _, path = tiny
    out = tmp_path / "bad.png"
    r = _cli("render", path, "-o", out, "--expr", expr, "--res", "64", "--device", "cpu")
    assert r.returncode == 1
    lines = [ln for ln in r.stderr.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1 and words in lines[0], r.stderr
    assert not out.exists()


def test_eye_look_turns_the_eyeball_rigidly_by_the_gaze_angle():
    import math

    import torch

    from avatar_core.head.open_head import GAZE_DEGREES, load_open_head_with_metadata
    head, meta = load_open_head_with_metadata()
    ids = torch.tensor(meta["regions"]["eye_L"])
    p = head.v_template[ids]
    c = p.mean(0)
    q = p + head.exprdirs[ids, :, head.expr_names.index("eyeLookOutLeft")]
    # rigid: distances to the centre kept; the front point turned toward +X by the angle
    assert torch.allclose((q - c).norm(dim=1), (p - c).norm(dim=1), atol=1e-5)
    front = (p[:, 2] - c[2]).argmax()
    before, after = p[front] - c, q[front] - c
    angle = math.degrees(math.atan2(float(after[0]), float(after[2])) - math.atan2(float(before[0]), float(before[2])))
    assert abs(angle - GAZE_DEGREES["Out"]) < 1.0


def test_cli_animate_tracks_a_video_motion_first(tiny, tmp_path):
    import cv2
    _, path = tiny
    video = tmp_path / "drive.mp4"
    face = cv2.resize(np.ascontiguousarray(_astronaut()[:300, 100:400, ::-1]), (192, 192))
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"mp4v"), 10.0, (192, 192))
    for k in range(4):
        writer.write(np.roll(face, k, axis=1))
    writer.release()
    out = tmp_path / "frames"
    r = _cli("animate", path, "--motion", video, "-o", out, "--res", "64", "--device", "cpu",
             "--track-steps", "10", "--track-size", "128")
    assert r.returncode == 0, r.stderr
    assert "tracked 4 frames" in r.stderr
    assert len(list(out.glob("frame_*.png"))) == 4


def test_eval_expressions_figures_on_a_tiny_avatar(tiny, tmp_path):
    """Issue 15's mouth, blink and gaze figures, measured by the landmarker on rendered stills
    of the tiny astronaut (LOD 0 only, 256 px crop, 4 optimisation steps). Its mouth figures
    are at the mercy of float rounding: the same code read a dark ratio under 1 on CI's machine
    and 1.15 on this one (its LOD-0 Gaussians blur the lips into the opening), so here they only
    have to exist and be sane; the targets are checked on a fast-quality avatar below."""
    from avatar_core.eval.expressions import expression_figures
    avatar, _ = tiny
    fig = expression_figures(avatar, res=256, stills_dir=tmp_path / "stills")
    mouth, eyes = fig["mouth"], fig["eyes"]
    assert mouth["detected"] and eyes["detected"], fig
    assert 0 < mouth["dark_ratio"] < 1.5, fig              # 1.15-1.26 measured on this CPU
    assert mouth["teeth_over_cavity"] > 0.5, fig           # 0.94-0.97
    assert mouth["tongue_changed"] > 0.01, fig
    assert max(eyes["blink_delta_e_left"], eyes["blink_delta_e_right"]) <= 12.0, fig
    assert "gaze_shift_landmarks" in eyes and "gaze_shift" in eyes, fig
    assert (tmp_path / "stills" / "jaw.png").exists()


def test_cli_eval_expressions_prints_json(tiny, tmp_path):
    import json
    _, path = tiny
    out = tmp_path / "fig.json"
    r = _cli("eval", "expressions", path, "--res", "128", "--lod", "0", "--device", "cpu", "--json", out)
    assert r.returncode == 0, r.stderr
    line = json.loads([ln for ln in r.stdout.splitlines() if ln.startswith("{")][0])
    assert set(line) >= {"mouth", "eyes", "pass"}
    assert json.loads(out.read_text())[str(path)]["res"] == 128


def _rest_frames(avatar):
    from avatar_core.gaussians.avatar import face_frames
    verts, transforms = avatar.deform_rig()
    return verts, face_frames(verts, avatar.rig_faces), transforms


def test_an_open_mouth_is_closed_at_the_back(tiny):
    """Behind the teeth and tongue an open mouth shows the dark backstop: the open head's
    mouth bag is open toward the throat, and without it the inside of the neck showed through,
    lit and skin-coloured. Checked with the teeth and tongue hidden, on the mouth's centre
    line, against the same render with the backstop hidden too."""
    import copy

    import torch

    from avatar_core.head.open_head import open_head_metadata
    from avatar_core.recon.interior import luminance
    from avatar_core.recon.still import render_still
    from avatar_core.regions import REGION_SHOULDER
    avatar, _ = tiny
    regions = open_head_metadata()["regions"]
    inner = torch.zeros(avatar.num_gaussians, dtype=torch.bool)
    for key in ("teeth_upper", "teeth_lower", "tongue"):
        inner |= torch.isin(avatar.bind_ids, torch.as_tensor(regions[key])).all(1) & (avatar.frame_face >= 0)
    # the backstop: head-bound discs of the shoulder region in the teeth' box, behind the teeth
    index = torch.arange(avatar.num_gaussians)
    with torch.no_grad():
        means = avatar.place_means(*_rest_frames(avatar), index)[0]
    verts = avatar.rig_template
    teeth = torch.as_tensor(list(regions["teeth_upper"]) + list(regions["teeth_lower"]))
    lo, hi = verts[teeth].min(0).values, verts[teeth].max(0).values
    inside = ((means[:, 0] > lo[0] - 1e-3) & (means[:, 0] < hi[0] + 1e-3) & (means[:, 1] > lo[1] - 0.03)
              & (means[:, 1] < hi[1] + 1e-3) & (means[:, 2] < lo[2] + 1e-3) & (means[:, 2] > lo[2] - 0.01))
    backstop = (avatar.region == REGION_SHOULDER) & (avatar.frame_face >= 0) & inside
    assert int(backstop.sum()) > 50

    def mouth_centre(hide):
        a = copy.deepcopy(avatar)
        with torch.no_grad():
            a.opacity_logit[hide] = -20.0
        img = render_still(a, {"jawOpen": 1.0}, res=256, background=(1.0, 1.0, 1.0)).astype(float) / 255
        return img

    with_back = mouth_centre(inner)
    without = mouth_centre(inner | backstop)
    changed = np.abs(with_back - without).max(-1) > 0.1
    assert changed.sum() > 20, "the backstop shows nowhere in the open mouth"
    dark, lit = float(np.median(luminance(with_back[changed]))), float(np.median(luminance(without[changed])))
    assert dark < 0.3 and lit > dark + 0.2, (dark, lit)


def test_the_fast_astronaut_meets_the_mouth_and_glance_targets():
    """A fast-quality astronaut, rendered at four sizes: issue 15's mouth targets (the opening at
    most 0.6 of the lips' luminance, a teeth band brighter than the cavity) and its glance
    target (eyeLookOutLeft = 1 moves the visible iris by at least 0.25 of the eye's width) at
    every size, and the face landmarker sees the glance too.

    The landmarker's figure is noisy: the same code read 0.10-0.31 (median over the four sizes)
    when the photo's crop was moved by 1/64 to 1/8 px, and 0.13-0.26 on one avatar from size to
    size; the visible iris read 0.31-0.35 throughout, the mouth 0.54-0.57. Its bound catches
    the iris held in place: 0.02 when the fitted lids' skin was painted with the iris, before it
    was hidden."""
    from avatar_core.eval.expressions import expression_figures
    from avatar_core.recon import reconstruct
    avatar, _ = reconstruct(_astronaut(), quality="fast", device="cpu")
    figs = {res: expression_figures(avatar, res=res) for res in (320, 384, 448, 512)}
    for res, fig in figs.items():
        mouth, eyes = fig["mouth"], fig["eyes"]
        assert mouth["dark_ratio"] <= 0.6 and mouth["teeth_over_cavity"] > 1.0, (res, mouth)
        assert eyes["gaze_shift"] >= 0.25, (res, eyes)
    landmarker = float(np.median([fig["eyes"]["gaze_shift_landmarks"] for fig in figs.values()]))
    assert landmarker >= 0.08, {res: fig["eyes"] for res, fig in figs.items()}


def test_eye_opening_distance_is_zero_inside_and_the_gap_outside():
    """Distances from two elliptical eye contours: 0 inside either, the gap to the nearer
    contour outside, and the same inside/outside split as the rasterised opening mask."""
    import torch

    from avatar_core.recon.interior import EYE_LEFT, EYE_RIGHT, eye_opening_distance, in_eye_openings
    lm = np.zeros((478, 3))
    th = np.linspace(0, 2 * np.pi, len(EYE_LEFT), endpoint=False)
    for eye, cx in ((EYE_LEFT, 300.0), (EYE_RIGHT, 200.0)):
        lm[list(eye), 0] = cx + 20 * np.cos(th)
        lm[list(eye), 1] = 250 + 8 * np.sin(th)
    d = eye_opening_distance(torch.tensor([[300.0, 250.0], [200.0, 251.0], [300.0, 270.0], [330.0, 250.0]]), lm)
    assert d[0] == 0 and d[1] == 0
    assert abs(float(d[2]) - 12.0) < 0.1 and abs(float(d[3]) - 10.0) < 0.1, d
    uv = torch.rand(20000, 2, generator=torch.Generator().manual_seed(0)) * 512
    inside = eye_opening_distance(uv, lm) == 0
    assert float((inside == in_eye_openings(uv, lm, 512)).float().mean()) > 0.999
    assert torch.isinf(eye_opening_distance(uv[:3], None)).all()


def test_the_inner_eye_corners_keep_their_skin():
    """painting_s0 at fast quality, rendered at its source camera: inside a disc of 0.15 of the
    eye's width round each inner eye corner (the caruncle, which does not turn with the eye) the
    still matches the photo to a mean of 0.03 (0.021 / 0.023 measured). With the skin there hidden
    along with the rest of the eye opening, the eyeball's white showed as a bright spot in each
    corner (0.041 / 0.045), and the source view lost 0.4 dB."""
    from conftest import shared_data

    from avatar_core.face import process_portrait
    from avatar_core.recon import reconstruct
    from avatar_core.recon.still import render_still
    photo = shared_data("portraits", "painting_s0.jpg")
    avatar, _ = reconstruct(str(photo), quality="fast", device="cpu")
    portrait = process_portrait(str(photo), size=512)
    still = render_still(avatar, res=512)[..., :3].astype(np.float64) / 255.0
    lm = portrait.landmarks
    yy, xx = np.mgrid[:512, :512]
    for inner, outer in ((133, 33), (362, 263)):
        width = np.linalg.norm(lm[inner, :2] - lm[outer, :2])
        disc = np.hypot(xx - lm[inner, 0], yy - lm[inner, 1]) < 0.15 * width
        err = float(np.abs(still[disc] - portrait.image[disc]).mean())
        assert err <= 0.03, (inner, err)


def test_a_bright_photo_keeps_the_teeth_and_sclera_priors_warm():
    """The priors are toned to the photo (``photo_tone``'s gain, 1.4 / 1.2 / 1.2 on driving video
    d10's bright first frame). Clamped channel by channel the teeth came out 1.0 / 1.0 / 0.92, a
    grey that read as teal beside the lips; scaled as a whole they keep the prior's hue. (The
    sclera's brightness floor stays near-white: ``interior_paint``.)"""
    from avatar_core.recon.interior import SCLERA_RGB, TEETH_RGB, toned
    gain = np.array([1.41, 1.21, 1.21])
    for prior in (TEETH_RGB, SCLERA_RGB):
        c = toned(prior, gain).numpy()
        want = np.asarray(prior) * gain
        assert abs(c.max() - 1.0) < 1e-6 and c[0] > c[1] + 0.1
        np.testing.assert_allclose(c / c.max(), want / want.max(), rtol=1e-5)
    dim = np.array([0.8, 0.7, 0.7])
    np.testing.assert_allclose(toned(TEETH_RGB, dim).numpy(), np.asarray(TEETH_RGB) * dim, rtol=1e-5)


def test_the_white_of_the_eye_keeps_the_fits_shading_not_its_hues():
    """``shade_sclera``: after the photo fit the eyeball's white keeps its painted colour times
    the fit's shading (within ``SCLERA_SHADE``); the fit's hues (the iris' mauve at its edge, a
    lid's pink shadow), which turned with the eyeball into patches on the white, are dropped.
    The iris is left as the fit made it."""
    from types import SimpleNamespace

    import torch

    from avatar_core.recon.interior import SCLERA_SHADE, shade_sclera
    white = torch.tensor([0.85, 0.84, 0.80])
    fitted = torch.tensor([[0.85, 0.84, 0.80],     # as painted
                           [0.80, 0.55, 0.62],     # pink
                           [0.20, 0.18, 0.22],     # a dark blotch
                           [0.35, 0.20, 0.15]])    # the iris (not on the white)
    avatar = SimpleNamespace(features=torch.cat([fitted, torch.zeros(4, 2)], 1))
    mask = torch.tensor([True, True, True, False])
    shade_sclera(avatar, (mask, white.expand(4, 3).clone()))
    out = avatar.features[:, :3]
    lum = torch.tensor([0.2126, 0.7152, 0.0722])
    torch.testing.assert_close(out[0], white)
    # the pink keeps its brightness on the white's hue
    torch.testing.assert_close(out[1] / out[1].sum(), white / white.sum())
    assert abs(float(out[1] @ lum) - float(fitted[1] @ lum)) < 1e-5
    # the blotch is lifted to the shading's floor; the iris and the extra channels are untouched
    torch.testing.assert_close(out[2], SCLERA_SHADE[0] * white)
    torch.testing.assert_close(out[3], fitted[3])
    assert float(avatar.features[:, 3:].abs().max()) == 0.0


def test_the_painted_iris_takes_the_photos_size():
    """``eyeball_colour`` paints an iris of the radius it is given (``photo_irises`` measures
    the photo's); a point 6.3 mm off the gaze axis is iris on an 8 mm iris, white on the 6 mm
    default."""
    import math

    import torch

    from avatar_core.recon.interior import IRIS_RADIUS, eyeball_colour
    R = 0.0167
    axis = torch.tensor([0.0, 0.0, 1.0])
    a = math.asin(0.0063 / R)
    p = torch.tensor([[R * math.sin(a), 0.0, R * math.cos(a)], [0.0, 0.0, R], [0.0, 0.0, -R]])
    iris, sclera = torch.tensor([0.3, 0.2, 0.1]), torch.tensor([0.9, 0.9, 0.88])
    small = eyeball_colour(p, axis, R, iris, sclera)
    large = eyeball_colour(p, axis, R, iris, sclera, iris_radius=0.008)
    assert IRIS_RADIUS < 0.0063
    torch.testing.assert_close(small[0], sclera)
    torch.testing.assert_close(large[0], iris)
    # the pupil at the axis is dark either way; the back of the eyeball is white
    assert float(small[1].max()) < 0.1 and float(large[1].max()) < 0.1
    torch.testing.assert_close(large[2], sclera)
