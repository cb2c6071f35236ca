"""HeadSplat's panels: the viewport sidebar's Avatar tab and the engine's render settings."""

from __future__ import annotations

import bpy

from panels import render, sidebar

classes = (*sidebar.classes, *render.classes)
register, unregister = bpy.utils.register_classes_factory(classes)
