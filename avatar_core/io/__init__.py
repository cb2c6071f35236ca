"""Files: the avatar file (safetensors + JSON metadata) and 3DGS PLY."""

from avatar_core.io.avatar_file import load_avatar, read_metadata, save_avatar
from avatar_core.io.ply import read_ply, write_ply

__all__ = ["load_avatar", "read_metadata", "save_avatar", "read_ply", "write_ply"]
