"""Named subsets of the 478 face-mesh landmarks (mediapipe's index order; our own constants).

The groups are the points of the face mesh's feature contours: the face oval, the lips'
outer and inner contours, each eyelid contour and brow, the nose, and the irises. Left and
right are the subject's (the subject's left eye is on the image's right in a frontal photo).
"""

from __future__ import annotations

import functools

import numpy as np

NUM_LANDMARKS = 478
IRIS_LEFT = tuple(range(473, 478))   # subject's left iris (image right in a frontal photo)
IRIS_RIGHT = tuple(range(468, 473))

FACE_OVAL = (10, 21, 54, 58, 67, 93, 103, 109, 127, 132, 136, 148, 149, 150, 152, 162, 172, 176, 234, 251,
             284, 288, 297, 323, 332, 338, 356, 361, 365, 377, 378, 379, 389, 397, 400, 454)
# outer contour (lower then upper), inner contour (lower then upper)
LIPS = (61, 146, 91, 181, 84, 17, 314, 405, 321, 375, 291, 185, 40, 39, 37, 0, 267, 269, 270, 409,
        78, 95, 88, 178, 87, 14, 317, 402, 318, 324, 308, 191, 80, 81, 82, 13, 312, 311, 310, 415)
# eyelid contours: lower (corner to corner), then upper
LEFT_EYE = (263, 249, 390, 373, 374, 380, 381, 382, 362, 466, 388, 387, 386, 385, 384, 398)
RIGHT_EYE = (33, 7, 163, 144, 145, 153, 154, 155, 133, 246, 161, 160, 159, 158, 157, 173)
LEFT_BROW = (276, 282, 283, 285, 293, 295, 296, 300, 334, 336)
RIGHT_BROW = (46, 52, 53, 55, 63, 65, 66, 70, 105, 107)
NOSE = (1, 2, 4, 5, 6, 19, 45, 48, 64, 94, 97, 98, 115, 168, 195, 197, 220, 275, 278, 294, 326, 327, 344, 440)


# Left-right twins: landmark i of a face is landmark j of its mirror image. Derived with our own
# face models by `scripts/landmark_mirror.py` (landmarks of the open head's frontal render and
# the six test portraits against those of their horizontal flips, matched as one assignment);
# the 28 landmarks in no pair lie on the face's midline.
MIRROR_PAIRS = (
    (3, 248), (7, 249), (20, 250), (21, 251), (22, 252), (23, 253), (24, 254), (25, 255),
    (26, 256), (27, 257), (28, 258), (29, 259), (30, 260), (31, 261), (32, 262), (33, 263),
    (34, 264), (35, 265), (36, 266), (37, 267), (38, 268), (39, 269), (40, 270), (41, 271),
    (42, 272), (43, 273), (44, 274), (45, 275), (46, 276), (47, 277), (48, 278), (49, 279),
    (50, 280), (51, 281), (52, 282), (53, 283), (54, 284), (55, 285), (56, 286), (57, 287),
    (58, 288), (59, 289), (60, 290), (61, 291), (62, 292), (63, 293), (64, 294), (65, 295),
    (66, 296), (67, 297), (68, 298), (69, 299), (70, 300), (71, 301), (72, 302), (73, 303),
    (74, 304), (75, 305), (76, 306), (77, 307), (78, 308), (79, 309), (80, 310), (81, 311),
    (82, 312), (83, 313), (84, 314), (85, 315), (86, 316), (87, 317), (88, 318), (89, 319),
    (90, 320), (91, 321), (92, 322), (93, 323), (95, 324), (96, 325), (97, 326), (98, 327),
    (99, 328), (100, 329), (101, 330), (102, 331), (103, 332), (104, 333), (105, 334), (106, 335),
    (107, 336), (108, 337), (109, 338), (110, 339), (111, 340), (112, 341), (113, 342), (114, 343),
    (115, 344), (116, 345), (117, 346), (118, 347), (119, 348), (120, 349), (121, 350), (122, 351),
    (123, 352), (124, 353), (125, 354), (126, 355), (127, 356), (128, 357), (129, 358), (130, 359),
    (131, 360), (132, 361), (133, 362), (134, 363), (135, 364), (136, 365), (137, 366), (138, 367),
    (139, 368), (140, 369), (141, 370), (142, 371), (143, 372), (144, 373), (145, 374), (146, 375),
    (147, 376), (148, 377), (149, 378), (150, 379), (153, 380), (154, 381), (155, 382), (156, 383),
    (157, 384), (158, 385), (159, 386), (160, 387), (161, 388), (162, 389), (163, 390), (165, 391),
    (166, 392), (167, 393), (169, 394), (170, 395), (171, 396), (172, 397), (173, 398), (174, 399),
    (176, 400), (177, 401), (178, 402), (179, 403), (180, 404), (181, 405), (182, 406), (183, 407),
    (184, 408), (185, 409), (186, 410), (187, 411), (188, 412), (189, 413), (190, 414), (191, 415),
    (192, 416), (193, 417), (194, 418), (196, 419), (198, 420), (201, 421), (202, 422), (203, 423),
    (204, 424), (205, 425), (206, 426), (207, 427), (208, 428), (209, 429), (210, 430), (211, 431),
    (212, 432), (213, 433), (214, 434), (215, 435), (216, 436), (217, 437), (218, 438), (219, 439),
    (220, 440), (221, 441), (222, 442), (223, 443), (224, 444), (225, 445), (226, 446), (227, 447),
    (228, 448), (229, 449), (230, 450), (231, 451), (232, 452), (233, 453), (234, 454), (235, 455),
    (236, 456), (237, 457), (238, 458), (239, 459), (240, 460), (241, 461), (242, 462), (243, 463),
    (244, 464), (245, 465), (246, 466), (247, 467), (468, 473), (469, 476), (470, 475), (471, 474),
    (472, 477))


@functools.lru_cache(maxsize=None)
def mirror_index() -> np.ndarray:
    """[478] int64: the index of each landmark's left-right twin (itself on the midline)."""
    m = np.arange(NUM_LANDMARKS, dtype=np.int64)
    for a, b in MIRROR_PAIRS:
        m[a], m[b] = b, a
    return m


@functools.lru_cache(maxsize=None)
def landmark_groups() -> dict:
    """{'oval', 'lips', 'left_eye', 'right_eye', 'left_brow', 'right_brow', 'nose', 'left_iris',
    'right_iris'}: sorted int64 index arrays."""
    def idx(points):
        return np.array(sorted(set(points)), dtype=np.int64)
    return {
        "oval": idx(FACE_OVAL), "lips": idx(LIPS), "left_eye": idx(LEFT_EYE), "right_eye": idx(RIGHT_EYE),
        "left_brow": idx(LEFT_BROW), "right_brow": idx(RIGHT_BROW), "nose": idx(NOSE),
        "left_iris": np.array(IRIS_LEFT), "right_iris": np.array(IRIS_RIGHT),
    }


def landmark_weights() -> np.ndarray:
    """Per-landmark weights for fitting [478]: the face oval is a silhouette (its 3D position
    slides with the view) so it counts less; eyes, irises, lips and brows count more."""
    g = landmark_groups()
    w = np.ones(NUM_LANDMARKS, dtype=np.float32)
    for key in ("lips", "left_eye", "right_eye", "left_brow", "right_brow"):
        w[g[key]] = 2.0
    for key in ("left_iris", "right_iris"):
        w[g[key]] = 2.0
    w[g["oval"]] = 0.3
    return w
