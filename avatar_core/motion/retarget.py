"""Retargeting between expression spaces: any motion drives any avatar.

Two head models (say FLAME with exp_000... and the open head with ARKit names) share K
corresponding surface points (the 478 MediaPipe landmarks, embedded on each mesh by
``avatar_core.fit.correspondence`` as face ids + barycentric weights). Evaluating each
model's expression basis at those points gives per-expression offsets,
source S [K, 3, Es] and target T [K, 3, Et]. ``ExpressionRetargeter`` fits the linear map
W [Et, Es] that makes the target reproduce the source's offsets,

    minimise  || T W - S ||^2 + lambda || W ||^2        (T, S flattened to [3K, E])

(ridge least squares, lambda = ``reg`` x the mean squared norm of T's columns, so ``reg``
is unit-free). A frame's coefficients then map as e_t = W e_s.

For ARKit targets, whose coefficients are non-negative activations, the fit is done with
W >= 0 (``nonneg``, the default when the target names are ARKit names). A signed source
(FLAME) is split into its positive and negative parts, each with its own non-negative map:
e_t = W relu(e_s) + W_neg relu(-e_s), so e_t >= 0 always holds.

``retarget(seq, target)`` picks the cheapest correct route:

1. the motion's names are the target's: returned unchanged;
2. a retargeter is given: its map is applied;
3. the names overlap: matching names are copied, target names the motion lacks are 0, and
   motion names the target lacks are dropped with a warning;
4. no overlap and no retargeter: ``MotionError`` naming both spaces.
"""

from __future__ import annotations

import logging
from typing import Optional, Sequence, Tuple, Union

import numpy as np

from avatar_core.errors import MotionError
from avatar_core.motion.arkit import is_arkit_space
from avatar_core.motion.sequence import MotionSequence

log = logging.getLogger(__name__)

NUM_LANDMARKS = 478


# ------------------------------------------------------------------------- bases at points
def _embedding_arrays(embedding) -> Tuple[np.ndarray, np.ndarray]:
    """(face_idx [K] int64, bary [K, 3] float64) from a tuple, a dict or an object."""
    if isinstance(embedding, dict):
        face_idx = embedding.get("face_idx", embedding.get("faces"))
        bary = embedding.get("bary")
    elif isinstance(embedding, (tuple, list)) and len(embedding) == 2:
        face_idx, bary = embedding
    else:
        face_idx = getattr(embedding, "face_idx", getattr(embedding, "faces", None))
        bary = getattr(embedding, "bary", None)
    if face_idx is None or bary is None:
        raise MotionError("A landmark embedding must give face ids [K] and barycentric weights [K, 3] "
                          "(a (face_idx, bary) pair).")
    face_idx = _numpy(face_idx).astype(np.int64).reshape(-1)
    bary = _numpy(bary).astype(np.float64)
    if bary.shape != (face_idx.shape[0], 3):
        raise MotionError(f"A landmark embedding has {face_idx.shape[0]} face ids but barycentric weights of "
                          f"shape {list(bary.shape)}; expected [{face_idx.shape[0]}, 3].")
    return face_idx, bary


def _head_arrays(head) -> Tuple[np.ndarray, np.ndarray, np.ndarray, list]:
    """(template [V, 3], faces [F, 3], exprdirs [V, 3, E], names) of a HeadModel or an Avatar."""
    if hasattr(head, "rig_exprdirs"):  # Avatar: the rig is the head model at LOD 0
        return (_numpy(head.rig_template), _numpy(head.rig_faces).astype(np.int64),
                _numpy(head.rig_exprdirs), list(head.expr_names))
    if hasattr(head, "exprdirs"):
        return (_numpy(head.v_template), _numpy(head.faces).astype(np.int64),
                _numpy(head.exprdirs), list(head.expr_names))
    raise MotionError(f"Expected a head model or an avatar, got {type(head).__name__}.")


def align_embeddings(a, b):
    """Restrict two embeddings to the landmarks both found, in one order.

    Embeddings with ``landmark_ids`` (``fit.correspondence.Embedding``: the subset of the 478
    MediaPipe landmarks located on that mesh) are matched by id; plain (face_idx, bary)
    pairs must already correspond row by row. Returns two (face_idx, bary) pairs.
    """
    fa, ba = _embedding_arrays(a)
    fb, bb = _embedding_arrays(b)
    ia, ib = getattr(a, "landmark_ids", None), getattr(b, "landmark_ids", None)
    if ia is not None and ib is not None:
        ia, ib = _numpy(ia).reshape(-1), _numpy(ib).reshape(-1)
        shared, pa, pb = np.intersect1d(ia, ib, return_indices=True)
        if shared.size < 3:
            raise MotionError(f"The two head models share only {shared.size} located landmarks; "
                              f"at least 3 are needed to retarget expressions.")
        return (fa[pa], ba[pa]), (fb[pb], bb[pb])
    if fa.shape[0] != fb.shape[0]:
        raise MotionError(f"The two landmark embeddings have {fa.shape[0]} and {fb.shape[0]} points and no "
                          f"landmark ids to match them by; expected the same K points in the same order.")
    return (fa, ba), (fb, bb)


def landmark_basis(head, embedding) -> np.ndarray:
    """The expression basis of ``head`` evaluated at embedded surface points.

    Args:
        head: a HeadModel (``exprdirs``, ``faces``) or an Avatar (its LOD-0 rig).
        embedding: (face_idx [K], bary [K, 3]): each point as barycentric weights on a face.
    Returns:
        [K, 3, E] float64: the offset of each point under a unit coefficient of each expression.
    """
    _, faces, dirs, _ = _head_arrays(head)
    face_idx, bary = _embedding_arrays(embedding)
    if face_idx.size and (face_idx.min() < 0 or face_idx.max() >= faces.shape[0]):
        raise MotionError(f"A landmark embedding refers to face {int(face_idx.max())}, but the head has "
                          f"{faces.shape[0]} faces; the embedding belongs to another head model.")
    corner = faces[face_idx]  # [K, 3] vertex ids
    # basis[k, i, e] = sum_c bary[k, c] * dirs[corner[k, c], i, e]
    return np.einsum("kc,kcie->kie", bary, dirs[corner].astype(np.float64))


def landmark_points(head, embedding) -> np.ndarray:
    """Rest positions of embedded points: [K, 3] float64."""
    template, faces, _, _ = _head_arrays(head)
    face_idx, bary = _embedding_arrays(embedding)
    # p[k, i] = sum_c bary[k, c] * template[faces[face_idx[k], c], i]
    return np.einsum("kc,kci->ki", bary, template[faces[face_idx]].astype(np.float64))


# ------------------------------------------------------------------------- the fitted map
class ExpressionRetargeter:
    """A fitted linear map from one expression space to another.

    Args:
        source_basis: [K, 3, Es] offsets of K shared points per source expression.
        target_basis: [K, 3, Et] offsets of the same points per target expression.
        source_names, target_names: the spaces' names (optional; used to align motions).
        reg: ridge weight relative to the mean squared norm of the target columns.
        nonneg: fit W >= 0. None = yes when ``target_names`` are ARKit names.
        source_signed: whether source coefficients can be negative (only matters with
            ``nonneg``). None = no when ``source_names`` are ARKit names, else yes.
    Attributes:
        W: [Et, Es] the map (for the positive part when ``W_neg`` is set).
        W_neg: [Et, Es] the map of the negative part (nonneg with a signed source) or None.
        residual: relative fit error ||T W - S|| / ||S|| over the shared points.
    """

    def __init__(self, source_basis, target_basis, source_names: Optional[Sequence[str]] = None,
                 target_names: Optional[Sequence[str]] = None, reg: float = 1e-4,
                 nonneg: Optional[bool] = None, source_signed: Optional[bool] = None):
        S = _numpy(source_basis).astype(np.float64)
        T = _numpy(target_basis).astype(np.float64)
        if S.ndim != 3 or S.shape[1] != 3 or T.ndim != 3 or T.shape[1] != 3:
            raise MotionError(f"Retargeting bases must be [K, 3, E]; got source {list(S.shape)} and target "
                              f"{list(T.shape)}.")
        if S.shape[0] != T.shape[0]:
            raise MotionError(f"Retargeting bases must cover the same K points; the source has {S.shape[0]} "
                              f"and the target {T.shape[0]}.")
        if not (np.isfinite(S).all() and np.isfinite(T).all()):
            raise MotionError("Retargeting bases contain NaN or infinite values; expected finite offsets.")
        self.source_names = list(source_names) if source_names is not None else None
        self.target_names = list(target_names) if target_names is not None else None
        for names, B, what in ((self.source_names, S, "source"), (self.target_names, T, "target")):
            if names is not None and len(names) != B.shape[2]:
                raise MotionError(f"{len(names)} {what} names for a {what} basis of {B.shape[2]} expressions.")
        if nonneg is None:
            nonneg = self.target_names is not None and is_arkit_space(self.target_names)
        if source_signed is None:
            source_signed = not (self.source_names is not None and is_arkit_space(self.source_names))
        self.nonneg = bool(nonneg)
        self.source_signed = bool(source_signed)
        self.reg = float(reg)
        K, _, Es = S.shape
        Et = T.shape[2]
        A = T.reshape(3 * K, Et)  # rows: (point, axis); columns: expressions
        B = S.reshape(3 * K, Es)
        lam = self.reg * float((A * A).sum()) / max(Et, 1)
        self.W_neg = None
        if not self.nonneg:
            # ridge normal equations: (A^T A + lam I) W = A^T B
            self.W = np.linalg.solve(A.T @ A + lam * np.eye(Et), A.T @ B)
            fit = A @ self.W
        else:
            from scipy.optimize import nnls

            A_aug = np.concatenate([A, np.sqrt(lam) * np.eye(Et)], 0)
            zeros = np.zeros(Et)

            def solve(cols):
                return np.stack([nnls(A_aug, np.concatenate([c, zeros]))[0] for c in cols.T], 1)

            self.W = solve(B)
            fit = A @ self.W
            if self.source_signed:
                self.W_neg = solve(-B)
        norm = float(np.linalg.norm(B))
        self.residual = float(np.linalg.norm(fit - B)) / norm if norm > 0 else 0.0
        log.info("expression retargeter %d -> %d expressions over %d points: residual %.3f%s",
                 Es, Et, K, self.residual, " (non-negative)" if self.nonneg else "")

    @property
    def num_source(self) -> int:
        return int(self.W.shape[1])

    @property
    def num_target(self) -> int:
        return int(self.W.shape[0])

    @classmethod
    def from_heads(cls, source_head, source_embedding, target_head, target_embedding,
                   normalize_scale: bool = True, **kwargs) -> "ExpressionRetargeter":
        """Fit between two head models (or avatars) through embedded corresponding points.

        With ``normalize_scale`` the source offsets are scaled by the ratio of the two point
        sets' sizes (RMS distance to their centroid), so a bigger head's jaw drop maps to a
        proportionally smaller one on a smaller head.
        """
        source_embedding, target_embedding = align_embeddings(source_embedding, target_embedding)
        S = landmark_basis(source_head, source_embedding)
        T = landmark_basis(target_head, target_embedding)
        if normalize_scale:
            ps = landmark_points(source_head, source_embedding)
            pt = landmark_points(target_head, target_embedding)
            rs = np.sqrt(((ps - ps.mean(0)) ** 2).sum(1).mean())
            rt = np.sqrt(((pt - pt.mean(0)) ** 2).sum(1).mean())
            if rs > 0 and rt > 0:
                S = S * (rt / rs)
        return cls(S, T, source_names=_head_arrays(source_head)[3], target_names=_head_arrays(target_head)[3],
                   **kwargs)

    def apply(self, expression) -> np.ndarray:
        """Map coefficients: [T, Es] (or [Es]) -> [T, Et] (or [Et]) float32."""
        e = _numpy(expression).astype(np.float64)
        if e.shape[-1] != self.num_source:
            raise MotionError(f"The retargeter maps {self.num_source} source expressions, but the coefficients "
                              f"have {e.shape[-1]}.")
        if self.W_neg is None:
            if self.nonneg:  # a non-negative source: negative inputs are not in its space
                e = np.maximum(e, 0.0)
            # out[t, j] = sum_i W[j, i] * e[t, i]
            return (e @ self.W.T).astype(np.float32)
        return (np.maximum(e, 0.0) @ self.W.T + np.maximum(-e, 0.0) @ self.W_neg.T).astype(np.float32)

    def align(self, seq: MotionSequence) -> np.ndarray:
        """The motion's coefficients in this retargeter's source order: [T, Es]."""
        if self.source_names is None or list(seq.expr_names) == self.source_names:
            if seq.num_expr != self.num_source:
                raise MotionError(f"{seq.source or 'The motion'} has {seq.num_expr} expressions, but the "
                                  f"retargeter maps {self.num_source}.")
            return seq.expression
        index = {n: i for i, n in enumerate(seq.expr_names)}
        shared = [n for n in self.source_names if n in index]
        if not shared:
            raise MotionError(f"{seq.source or 'The motion'}'s expressions ({describe_names(seq.expr_names)}) are not "
                              f"the retargeter's source space ({describe_names(self.source_names)}).")
        out = np.zeros((seq.num_frames, self.num_source), np.float32)
        for j, n in enumerate(self.source_names):
            if n in index:
                out[:, j] = seq.expression[:, index[n]]
        extra = [n for n in seq.expr_names if n not in set(self.source_names)]
        if extra:
            seq.warn(f"{seq.source or 'the motion'}: {len(extra)} expressions are outside the retargeter's "
                     f"source space and are dropped ({', '.join(extra[:4])}).")
        return out


# ------------------------------------------------------------------------- the entry point
def target_names_of(target) -> list:
    """Expression names of an Avatar, a HeadModel, or a sequence of names."""
    if isinstance(target, (list, tuple)) and all(isinstance(n, str) for n in target):
        return list(target)
    names = getattr(target, "expr_names", None)
    if names is None:
        raise MotionError(f"Cannot retarget to a {type(target).__name__}; expected an avatar, a head model "
                          f"or a list of expression names.")
    return list(names)


def retarget(seq: MotionSequence, target, retargeter: Optional[ExpressionRetargeter] = None) -> MotionSequence:
    """``seq`` in the expression space of ``target`` (an Avatar, HeadModel, or names).

    See the module doc for the four routes. Pose, translation and fps are unchanged; the
    result's warnings extend ``seq``'s.
    """
    names = target_names_of(target)
    where = seq.source or "the motion"
    if list(seq.expr_names) == names:
        return seq
    warnings = list(seq.warnings)
    if retargeter is not None:
        if retargeter.target_names is not None and retargeter.target_names != names:
            raise MotionError(f"The retargeter maps to {describe_names(retargeter.target_names)}, but the target "
                              f"expects {describe_names(names)}.")
        if retargeter.num_target != len(names):
            raise MotionError(f"The retargeter maps to {retargeter.num_target} expressions, but the target "
                              f"has {len(names)}.")
        src = seq.replace(warnings=warnings)
        expression = retargeter.apply(retargeter.align(src))
        note = (f"{where}: retargeted {seq.num_expr} expressions ({describe_names(seq.expr_names)}) to "
                f"{len(names)} ({describe_names(names)}); fit residual {100 * retargeter.residual:.0f}%.")
        log.info("%s", note)
        return seq.replace(expr_names=names, expression=expression, warnings=src.warnings + [note])
    index = {n: i for i, n in enumerate(seq.expr_names)}
    shared = [n for n in names if n in index]
    if not shared:
        raise MotionError(
            f"{where} uses the expressions {describe_names(seq.expr_names)}, but the avatar expects "
            f"{describe_names(names)}, and no expression basis is available to retarget between them "
            f"(fit an ExpressionRetargeter between the two head models).")
    expression = np.zeros((seq.num_frames, len(names)), np.float32)
    for j, n in enumerate(names):
        if n in index:
            expression[:, j] = seq.expression[:, index[n]]
    dropped = [n for n in seq.expr_names if n not in set(names)]
    if dropped:
        msg = (f"{where}: {len(dropped)} of its {seq.num_expr} expressions are not in the avatar's space and are "
               f"dropped ({', '.join(dropped[:4])}{', ...' if len(dropped) > 4 else ''}).")
        log.info("%s", msg)
        warnings.append(msg)
    return seq.replace(expr_names=names, expression=expression, warnings=warnings)


def describe_names(names: Sequence[str]) -> str:
    names = list(names)
    if not names:
        return "no expressions"
    if all(n.startswith("exp_") for n in names):
        return f"{len(names)} FLAME components {names[0]}..{names[-1]}"
    kind = "ARKit names" if is_arkit_space(names) else "names"
    return f"{len(names)} {kind} such as {', '.join(names[:3])}"


def _numpy(x) -> np.ndarray:
    if hasattr(x, "detach"):
        return x.detach().cpu().numpy()
    return np.asarray(x)
