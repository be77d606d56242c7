"""A stand-in for Colab's `google.colab`, so the test suite can run the notebook the way Colab runs it
(tests/test_colab.py). Its functions do to the machine what Colab's do; the browser's side is scripted
through environment variables:

  FAKE_COLAB_UPLOADS    a JSON file with a list of uploads; each files.upload() takes the first one, a list
                        of the file paths the user picks ([]: the user cancelled). An upload nobody queued
                        is an error, so a test notices when the notebook asks for one it should not.
  FAKE_COLAB_DOWNLOADS  the folder that files.download() saves to (the user's computer)
  FAKE_COLAB_DRIVE      the folder holding the user's Google Drive (MyDrive/); it outlives the VM
"""
from google.colab import drive, files  # noqa: F401  (Colab's package imports its modules too)
