"""The face pipeline: image loading, face detection, 478 landmarks, head crop, matte.

``process_portrait(path)`` does it all for one photo; ``FaceTracker`` and ``crop_with``
handle video frames. The models are mediapipe 0.10.21's, run in torch (``nets``, ``graph``)
from weights converted once into the cache (``weights``, ``python -m avatar_core fetch-models``);
torch and the weights are loaded on first use, not on import.
"""

from avatar_core.face._models import close_models
from avatar_core.face.crop import CropTransform, crop_with, head_crop, square_crop
from avatar_core.face.detect import FaceDetection, detect_faces
from avatar_core.face.image import LoadedImage, load_image
from avatar_core.face.landmarks import NUM_LANDMARKS, FaceTracker, landmarks_for_face
from avatar_core.face.matte import portrait_matte
from avatar_core.face.portrait import FacePortrait, process_portrait

__all__ = [
    "FacePortrait", "process_portrait", "FaceTracker", "crop_with", "CropTransform", "head_crop",
    "square_crop", "LoadedImage", "load_image", "FaceDetection", "detect_faces", "landmarks_for_face",
    "portrait_matte", "close_models", "NUM_LANDMARKS",
]
