"""ARKit-52 blendshape CSV files, as iPhone face-capture apps (Live Link Face) export them.

Accepted layout: one header row, then one row per frame. Column names are matched without
regard to case, so Live Link Face's ``EyeBlinkLeft`` is our ``eyeBlinkLeft``.

* ``Timecode`` (optional): ``HH:MM:SS:FF`` or ``HH:MM:SS:FF.fff`` (hours, minutes, seconds,
  frame at the timecode rate, fraction of a frame). The frame rate of the rows is estimated
  from it: rows per second between whole-second changes when the file spans at least one
  whole second, otherwise from the spacing of the timecodes at the timecode rate (the
  largest frame number seen + 1, rounded up to a standard rate). The estimate is snapped to
  a standard rate (24, 25, 30, 50, 60, ...) within 1.5 %. Without a timecode column, or when
  the timecodes do not settle it (fewer than two rows, going backwards), 60 fps is assumed
  with a warning. The caller's ``fps`` overrides all of this.
* ``BlendShapeCount`` (optional): ignored.
* The 52 ARKit blendshapes (``EyeBlinkLeft`` ... ``TongueOut``), values usually in [0, 1].
  Any missing ones are held at 0 with a warning; the sequence always carries all 52 names
  in Apple's order. A file with none of them is refused.
* ``HeadYaw, HeadPitch, HeadRoll`` (optional, radians): the head's rotation, stored on the
  neck joint (``head_joint="neck"``, default: the shoulders stay put) or the root joint.
* ``LeftEyeYaw, LeftEyePitch, LeftEyeRoll, RightEyeYaw, ...`` (optional, radians): the
  eye_L / eye_R joint rotations. "Left" is the subject's own left, as in ARKit.
  Angles follow the head-frame convention of ``arkit`` (R = Ry(yaw) Rx(pitch) Rz(roll);
  positive yaw turns toward the subject's left, positive pitch looks down, positive roll
  tilts toward the subject's right shoulder); ``euler_signs`` flips any of them.
* Any other column is ignored with a warning. A file without a header row whose rows have
  exactly 52 numbers is read as the 52 blendshapes in Apple's order (warning).
* Empty or NaN cells: gaps of up to 2 frames are interpolated (warning), longer refused.

Translation is zero (these apps do not record it).
"""

from __future__ import annotations

import csv
import logging
import re
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from avatar_core.errors import MotionError
from avatar_core.motion.arkit import ARKIT_BY_LOWER, ARKIT_NAMES, NUM_ARKIT, euler_to_axis_angle
from avatar_core.motion.repair import describe_frames, fill_gaps
from avatar_core.motion.sequence import NUM_JOINTS, MotionSequence

log = logging.getLogger(__name__)

DEFAULT_FPS = 60.0
STANDARD_RATES = (23.976, 24.0, 25.0, 29.97, 30.0, 48.0, 50.0, 59.94, 60.0, 90.0, 100.0, 120.0, 240.0)
TIMECODE_RATES = (24, 25, 30, 48, 50, 60, 120)
TIMECODE_RE = re.compile(r"^\s*(\d+):(\d+):(\d+)[:;](\d+)(?:\.(\d*))?\s*$")
TIMECODE_COLUMNS = ("timecode", "time code")
IGNORED_COLUMNS = ("blendshapecount",)
HEAD_COLUMNS = ("headyaw", "headpitch", "headroll")
EYE_COLUMNS = {3: ("lefteyeyaw", "lefteyepitch", "lefteyeroll"),
               4: ("righteyeyaw", "righteyepitch", "righteyeroll")}
JOINT_INDEX = {"root": 0, "neck": 1}


def read_csv(path, fps: Optional[float] = None, head_joint: str = "neck",
             euler_signs: Sequence[float] = (1.0, 1.0, 1.0)) -> MotionSequence:
    """Read an ARKit-52 CSV (see the module doc) into a ``MotionSequence``."""
    path = Path(path)
    where = repr(str(path))
    if head_joint not in JOINT_INDEX:
        raise MotionError(f"head_joint must be 'neck' or 'root', not {head_joint!r}.")
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            rows = [r for r in csv.reader(f) if any(c.strip() for c in r)]
    except UnicodeDecodeError:
        raise MotionError(f"{where} is not a text CSV file; expected an ARKit-52 CSV.") from None
    except OSError as exc:
        raise MotionError(f"Cannot read the motion file {where}: {exc.strerror}.") from None
    if not rows:
        raise MotionError(f"{where} is empty; expected a header row and one row per frame.")
    warnings: List[str] = []
    header = [c.strip() for c in rows[0]]
    if _is_number_row(header):
        if len(header) != NUM_ARKIT:
            raise MotionError(f"{where} has no header row and {len(header)} columns; expected a header naming "
                              f"the ARKit blendshapes (EyeBlinkLeft, ...), or exactly 52 unnamed columns.")
        header = list(ARKIT_NAMES)
        body = rows
        warnings.append(f"{where} has no header row; its 52 columns are read as the ARKit blendshapes in "
                        f"Apple's order.")
    else:
        body = rows[1:]
    if not body:
        raise MotionError(f"{where} has a header but no frames; expected one row per frame.")
    lower = [h.lower() for h in header]
    shape_cols = {i: ARKIT_BY_LOWER[h] for i, h in enumerate(lower) if h in ARKIT_BY_LOWER}
    if not shape_cols:
        raise MotionError(
            f"{where} names none of the 52 ARKit blendshapes in its header ({', '.join(header[:4])}, ...); "
            f"expected columns such as EyeBlinkLeft, JawOpen, TongueOut.")
    time_col = next((i for i, h in enumerate(lower) if h in TIMECODE_COLUMNS), None)
    angle_cols = {h: i for i, h in enumerate(lower) if h in HEAD_COLUMNS + EYE_COLUMNS[3] + EYE_COLUMNS[4]}
    known = set(shape_cols) | set(angle_cols.values()) | {i for i, h in enumerate(lower) if h in IGNORED_COLUMNS}
    if time_col is not None:
        known.add(time_col)
    unknown = [header[i] for i in range(len(header)) if i not in known]
    if unknown:
        warnings.append(f"{where}: ignored unknown columns {', '.join(unknown[:6])}"
                        f"{' and more' if len(unknown) > 6 else ''}.")

    numeric_cols = sorted(shape_cols) + sorted(angle_cols.values())
    T = len(body)
    values = np.empty((T, len(header)), np.float64)
    values[:] = np.nan
    times: List[str] = []
    first_line = 1 if body is not rows else 0
    for r, row in enumerate(body):
        line = r + 1 + first_line
        if len(row) < len(header):
            raise MotionError(f"{where}, line {line}: {len(row)} cells for {len(header)} header columns; "
                              f"expected one cell per column.")
        for c in numeric_cols:
            cell = row[c].strip()
            if cell == "":
                continue  # NaN, repaired below
            try:
                values[r, c] = float(cell)
            except ValueError:
                raise MotionError(f"{where}, line {line}, column {header[c]}: {cell!r} is not a number.") from None
        if time_col is not None:
            times.append(row[time_col].strip())

    expression = np.zeros((T, NUM_ARKIT), np.float64)
    index = {n: i for i, n in enumerate(ARKIT_NAMES)}
    for c, name in shape_cols.items():
        expression[:, index[name]] = values[:, c]
    missing = [n for n in ARKIT_NAMES if n not in shape_cols.values()]
    if missing:
        warnings.append(f"{where} lacks {len(missing)} of the 52 ARKit blendshapes ({', '.join(missing[:4])}"
                        f"{', ...' if len(missing) > 4 else ''}); they are held at 0.")
    expression, filled = fill_gaps(where, "the blendshapes", expression)
    if filled:
        warnings.append(f"{where}: interpolated the blendshapes over {len(filled)} frame(s) with empty or NaN "
                        f"cells ({describe_frames(filled)}).")

    pose = np.zeros((T, NUM_JOINTS, 3), np.float64)
    for joint, cols, label in ((JOINT_INDEX[head_joint], HEAD_COLUMNS, "head"),
                               (3, EYE_COLUMNS[3], "left eye"), (4, EYE_COLUMNS[4], "right eye")):
        present = [c for c in cols if c in angle_cols]
        if not present:
            continue
        if len(present) < 3:
            warnings.append(f"{where}: the {label} rotation lacks {', '.join(c for c in cols if c not in present)}; "
                            f"the missing angles are 0.")
        ang = np.zeros((T, 3))
        for k, c in enumerate(cols):
            if c in angle_cols:
                ang[:, k] = values[:, angle_cols[c]]
        ang, filled = fill_gaps(where, f"the {label} angles", ang)
        if filled:
            warnings.append(f"{where}: interpolated the {label} angles over {len(filled)} frame(s) "
                            f"({describe_frames(filled)}).")
        pose[:, joint] = euler_to_axis_angle(ang[:, 0], ang[:, 1], ang[:, 2], euler_signs)

    if fps is None:
        if time_col is None:
            fps = DEFAULT_FPS
            warnings.append(f"{where} has no Timecode column; assuming {DEFAULT_FPS:g} fps.")
        else:
            fps, note = estimate_fps(times)
            if note:
                warnings.append(f"{where}: {note}")

    for w in warnings:
        log.info("%s", w)
    return MotionSequence(fps=fps, expr_names=list(ARKIT_NAMES), expression=expression, pose=pose,
                          translation=np.zeros((T, 3)), source=str(path), warnings=warnings)


def parse_timecode(text: str) -> Optional[Tuple[int, float]]:
    """``HH:MM:SS:FF[.fff]`` -> (whole seconds since midnight, frame + fraction) or None."""
    m = TIMECODE_RE.match(text)
    if not m:
        return None
    h, mi, s, fr = (int(m.group(i)) for i in range(1, 5))
    sub = float("0." + m.group(5)) if m.group(5) else 0.0
    return h * 3600 + mi * 60 + s, fr + sub


def estimate_fps(timecodes: Sequence[str]) -> Tuple[float, str]:
    """Frame rate of rows stamped with ``timecodes``; returns (fps, warning or "")."""
    parsed = [parse_timecode(t) for t in timecodes]
    if len(parsed) < 2 or any(p is None for p in parsed):
        bad = next((t for t, p in zip(timecodes, parsed) if p is None), None)
        why = f"timecode {bad!r} is not HH:MM:SS:FF[.fff]" if bad is not None else "fewer than two frames"
        return DEFAULT_FPS, f"cannot estimate the frame rate ({why}); assuming {DEFAULT_FPS:g} fps."
    secs = np.array([p[0] for p in parsed], np.int64)
    frames = np.array([p[1] for p in parsed], np.float64)
    if np.any(np.diff(secs) < 0):
        return DEFAULT_FPS, f"the timecodes go backwards; assuming {DEFAULT_FPS:g} fps."
    starts = np.nonzero(np.diff(secs) != 0)[0] + 1  # first row of each new second
    if len(starts) >= 2 and secs[starts[-1]] > secs[starts[0]]:
        # rows per second over the whole seconds the file covers; needs no timecode rate
        fps = (starts[-1] - starts[0]) / float(secs[starts[-1]] - secs[starts[0]])
        return snap_rate(fps), ""
    if len(starts) >= 1:
        # timecode rate from the largest frame number, then the spacing of the stamps
        top = int(np.floor(frames.max())) + 1
        rate = next((r for r in TIMECODE_RATES if r >= top), top)
        t = secs + frames / rate
        d = np.diff(t)
        d = d[d > 0]
        if d.size:
            return snap_rate(1.0 / float(np.median(d))), ""
    return DEFAULT_FPS, (f"the timecodes span less than a second, so the timecode rate is unknown; "
                         f"assuming {DEFAULT_FPS:g} fps.")


def snap_rate(fps: float, tolerance: float = 0.015) -> float:
    """The nearest standard frame rate within ``tolerance`` (relative), else fps to 0.01."""
    best = min(STANDARD_RATES, key=lambda r: abs(r - fps))
    if abs(best - fps) <= tolerance * best:
        return float(best)
    return round(float(fps), 2)


def _is_number_row(cells: Sequence[str]) -> bool:
    try:
        [float(c) for c in cells]
        return True
    except ValueError:
        return False
