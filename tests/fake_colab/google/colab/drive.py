"""google.colab.drive: mount() makes the user's Drive (FAKE_COLAB_DRIVE) appear at the mount point, with
Colab's checks and messages (see __init__.py)."""
import os


def mount(mountpoint, force_remount=False, timeout_ms=120000, readonly=False):
    if " " in mountpoint:
        raise ValueError("Mountpoint must not contain a space.")
    mountpoint = os.path.expanduser(mountpoint)
    if not force_remount and os.path.isdir(os.path.join(mountpoint, "MyDrive")):
        print(f'Drive already mounted at {mountpoint}; to attempt to forcibly remount, call '
              f'drive.mount("{mountpoint}", force_remount=True).')
        return
    if force_remount and os.path.islink(mountpoint):           # unmount first, as Colab does
        os.unlink(mountpoint)
    if os.path.islink(mountpoint):
        raise ValueError("Mountpoint must not be a symlink")
    if os.path.isdir(mountpoint) and os.listdir(mountpoint):
        raise ValueError("Mountpoint must not already contain files")
    if not os.path.isdir(mountpoint) and os.path.exists(mountpoint):
        raise ValueError("Mountpoint must either be a directory or not exist")
    normed = os.path.normpath(mountpoint)
    if "/" in normed and not os.path.exists(os.path.dirname(normed)):
        raise ValueError("Mountpoint must be in a directory that exists")
    if os.path.isdir(mountpoint):
        os.rmdir(mountpoint)
    os.symlink(os.environ["FAKE_COLAB_DRIVE"], mountpoint)
    print(f"Mounted at {mountpoint}")
