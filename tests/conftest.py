import signal
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"
sys.path.insert(0, str(ROOT))

# keep Blender out of the user's home during tests (a temporary folder, removed at exit)
from blender_addon.testing import private_user_resources  # noqa: E402  (bpy-free)

private_user_resources()


def shared_data(*parts) -> Path:
    """A file under ../shared/data, or skip the test with the reason."""
    p = SHARED_DATA.joinpath(*parts)
    if not p.exists():
        pytest.skip(f"shared test data {p} is absent (it lives beside the repository in ../shared/data)")
    return p


@pytest.fixture(scope="session")
def test_head():
    from avatar_core.head.synthetic import make_test_head
    return make_test_head(subdivisions=3)


@pytest.fixture(scope="session")
def small_avatar(test_head):
    from avatar_core.gaussians.build import synthetic_avatar
    return synthetic_avatar(test_head, channels=8)


def default_sigint() -> None:
    """``preexec_fn`` for a command a test interrupts: Ctrl-C at its default in the child. A
    shell's background job (``cmd &`` without job control, as a CI script may start the suite)
    ignores SIGINT, and its children inherit that: the signal would never reach our handler."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
